"""Ledger rows record the experiment and variant whose request made the LLM call.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``experiment`` and ``variant`` (NULL where no experiment routed the call)."""
    with op.batch_alter_table("llm_calls") as batch:
        batch.add_column(sa.Column("experiment", sa.String(64), nullable=True))
        batch.add_column(sa.Column("variant", sa.String(16), nullable=True))


def downgrade() -> None:
    """Drop the two columns."""
    with op.batch_alter_table("llm_calls") as batch:
        batch.drop_column("variant")
        batch.drop_column("experiment")
