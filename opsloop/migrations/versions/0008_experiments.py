"""Experiments: their definition and state, one outcome row per routed request, the decider's lease.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the experiment tables and tag prediction rows with the experiment that routed them."""
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target_kind", sa.String(16), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("champion", sa.String(128), nullable=False),
        sa.Column("challenger", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("checks", sa.JSON, nullable=False),
        sa.Column("decision", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    # One running experiment per target: the decider and the routers rely on it. A partial
    # unique index says so on both SQLite and PostgreSQL.
    op.create_index(
        "ux_experiments_active_target",
        "experiments",
        ["target_kind", "target"],
        unique=True,
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.create_table(
        "experiment_outcomes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("experiment", sa.String(64), nullable=False),
        sa.Column("variant", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("error_type", sa.String(64), nullable=True),
        sa.Column("agreed", sa.Boolean, nullable=True),
    )
    op.create_index("ix_experiment_outcomes_at", "experiment_outcomes", ["experiment", "variant", "at"])
    op.create_table(
        "experiment_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("experiment", sa.String(64), nullable=True))


def downgrade() -> None:
    """Drop the experiment tables and the predictions' experiment column."""
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("experiment")
    op.drop_table("experiment_leases")
    op.drop_table("experiment_outcomes")
    op.drop_table("experiments")
