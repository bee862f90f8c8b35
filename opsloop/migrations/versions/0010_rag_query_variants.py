"""RAG queries record the prompt experiment and variant that answered them, and the answer's feedback.

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
    """Add ``experiment`` and ``variant`` (NULL where none routed the query) and the feedback score."""
    with op.batch_alter_table("rag_queries") as batch:
        batch.add_column(sa.Column("experiment", sa.String(64), nullable=True))
        batch.add_column(sa.Column("variant", sa.String(16), nullable=True))
        batch.add_column(sa.Column("feedback_score", sa.Float, nullable=True))
        batch.add_column(sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drop the four columns."""
    with op.batch_alter_table("rag_queries") as batch:
        batch.drop_column("feedback_at")
        batch.drop_column("feedback_score")
        batch.drop_column("variant")
        batch.drop_column("experiment")
