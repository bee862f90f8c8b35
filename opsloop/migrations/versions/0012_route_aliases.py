"""Route aliases: the configured route that serves a gateway route's name once an experiment promoted it.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``route_aliases`` (empty: every route serves its own backends)."""
    op.create_table(
        "route_aliases",
        sa.Column("route", sa.String(256), primary_key=True),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    """Drop it; every route serves its own backends again."""
    op.drop_table("route_aliases")
