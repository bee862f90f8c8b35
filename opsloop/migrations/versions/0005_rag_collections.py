"""RAG collections: per-collection chunking settings and the summary of the last ingestion.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the rag_collections table."""
    op.create_table(
        "rag_collections",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("chunk_tokens", sa.Integer, nullable=False),
        sa.Column("overlap_tokens", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_ingest_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_ingest", sa.JSON, nullable=True),
    )


def downgrade() -> None:
    """Drop the rag_collections table."""
    op.drop_table("rag_collections")
