"""History of scheduled drift checks.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the drift_checks table."""
    op.create_table(
        "drift_checks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("dataset_drift", sa.Boolean, nullable=False),
        sa.Column("share_drifted", sa.Float, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
    )
    op.create_index("ix_drift_checks_model_at", "drift_checks", ["model", "at"])


def downgrade() -> None:
    """Drop the drift_checks table."""
    op.drop_table("drift_checks")
