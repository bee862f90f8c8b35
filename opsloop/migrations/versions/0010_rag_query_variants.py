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
    """Add ``experiment`` and ``variant`` (NULL where none routed the query) and the feedback score.

    Indexed: feedback finds an answer by tenant and request id, the decider a variant's scores.
    """
    with op.batch_alter_table("rag_queries") as batch:
        batch.add_column(sa.Column("experiment", sa.String(64), nullable=True))
        batch.add_column(sa.Column("variant", sa.String(16), nullable=True))
        batch.add_column(sa.Column("feedback_score", sa.Float, nullable=True))
        batch.add_column(sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_rag_queries_request", "rag_queries", ["tenant", "request_id"])
    op.create_index("ix_rag_queries_experiment", "rag_queries", ["experiment", "variant"])


def downgrade() -> None:
    """Drop the two indexes and the four columns."""
    op.drop_index("ix_rag_queries_experiment", table_name="rag_queries")
    op.drop_index("ix_rag_queries_request", table_name="rag_queries")
    with op.batch_alter_table("rag_queries") as batch:
        batch.drop_column("feedback_at")
        batch.drop_column("feedback_score")
        batch.drop_column("variant")
        batch.drop_column("experiment")
