"""Job runs: one row per fire of a periodic job, claimed by the one process that runs it.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``job_runs`` (empty); its primary key (job, slot) is the claim."""
    op.create_table(
        "job_runs",
        sa.Column("job", sa.String(128), primary_key=True),
        sa.Column("slot", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )


def downgrade() -> None:
    """Drop it; the jobs then run in every process that schedules them."""
    op.drop_table("job_runs")
