"""Retraining: every run with its trigger, status and result, and one lease per model.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``retraining_runs`` and ``retraining_leases`` (empty)."""
    op.create_table(
        "retraining_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("cause", sa.JSON, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("started_by", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("experiment", sa.String(64), nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
    )
    op.create_index("ix_retraining_runs_model", "retraining_runs", ["model", "id"])
    op.create_table(
        "retraining_leases",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop both; the registry keeps every version retraining registered."""
    op.drop_table("retraining_leases")
    op.drop_index("ix_retraining_runs_model", table_name="retraining_runs")
    op.drop_table("retraining_runs")
