"""Budgets and rate limits per tenant and per key: daily and monthly spend, requests and tokens per minute.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the budgets table; one row per tenant, key (or none: the whole tenant) and kind."""
    op.create_table(
        "budgets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("limit", sa.Float, nullable=False),
        sa.Column("soft_ratio", sa.Float, nullable=False, server_default="0.8"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
    )
    # NULLs are distinct in a plain unique index, so the tenant-wide row (key_id NULL) is
    # made unique through coalesce; SQLite and PostgreSQL both index the expression.
    op.create_index(
        "ux_budgets_scope", "budgets", ["tenant", sa.text("coalesce(key_id, '')"), "kind"], unique=True
    )


def downgrade() -> None:
    """Drop the budgets table."""
    op.drop_table("budgets")
