"""The RAG query log: one row per query, with retrieved chunk ids, scores, tokens and timings.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the rag_queries table."""
    op.create_table(
        "rag_queries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("collection", sa.String(64), nullable=False),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("chunk_ids", sa.JSON, nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("dense_scores", sa.JSON, nullable=False),
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("prompt_version", sa.String(64), nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("retrieval_ms", sa.Float, nullable=False),
        sa.Column("generation_ms", sa.Float, nullable=True),
    )
    op.create_index("ix_rag_queries_tenant_collection_at", "rag_queries", ["tenant", "collection", "at"])


def downgrade() -> None:
    """Drop the rag_queries table."""
    op.drop_table("rag_queries")
