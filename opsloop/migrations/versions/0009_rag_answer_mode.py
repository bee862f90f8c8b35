"""RAG queries record how their answer was made: generated, extractive (the fallback), and so on.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``rag_queries.answer_mode``; rows written before it stay NULL (their mode is unknown)."""
    with op.batch_alter_table("rag_queries") as batch:
        batch.add_column(sa.Column("answer_mode", sa.String(16), nullable=True))


def downgrade() -> None:
    """Drop ``rag_queries.answer_mode``."""
    with op.batch_alter_table("rag_queries") as batch:
        batch.drop_column("answer_mode")
