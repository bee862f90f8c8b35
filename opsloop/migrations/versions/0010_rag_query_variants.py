"""RAG queries record the prompt experiment and variant that answered them, as predictions do.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``rag_queries.experiment`` and ``variant``; NULL where no experiment routed the query."""
    with op.batch_alter_table("rag_queries") as batch:
        batch.add_column(sa.Column("experiment", sa.String(64), nullable=True))
        batch.add_column(sa.Column("variant", sa.String(16), nullable=True))


def downgrade() -> None:
    """Drop ``rag_queries.experiment`` and ``variant``."""
    with op.batch_alter_table("rag_queries") as batch:
        batch.drop_column("variant")
        batch.drop_column("experiment")
