"""Cron fires (the cluster-wide record that makes each tick fire once), the index that
lets retention find finished jobs without scanning the table, and pgq's instance id.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pgq_cron_fires",
        sa.Column("entry", sa.Text, primary_key=True, comment="Cron entry name."),
        sa.Column("fire_at", TZ, primary_key=True,
                  comment="The tick this fire is for (not when it was enqueued)."),
        sa.Column("job_id", sa.BigInteger, nullable=False,
                  comment="The job enqueued for it (may since have been pruned)."),
        sa.Column("enqueued_at", TZ, nullable=False, server_default=sa.text("now()"),
                  comment="When the scheduler enqueued it (database clock)."),
        sa.Column("scheduler", sa.Text, nullable=False, comment="The scheduler process that fired."),
        sa.Column("term", sa.BigInteger, comment="That scheduler's leadership term."),
        comment="One row per (cron entry, tick) ever fired: the primary key makes a tick "
                "fire once cluster-wide, whatever the schedulers believe.",
    )
    op.create_table(
        "pgq_instance",
        sa.Column("one", sa.Boolean, primary_key=True, server_default=sa.true(),
                  comment="Always true: the table has at most one row."),
        sa.Column("id", sa.Text, nullable=False,
                  comment="Random id of this database's pgq, made on first use; namespaces "
                          "its Redis keys (a copy of the database made before first use "
                          "gets its own)."),
        sa.CheckConstraint("one", name="pgq_instance_one_row"),
        comment="pgq's identity in this database.",
    )
    # Retention walks finished jobs oldest first, per state; partial, so the claim path's
    # rows never pay for it until they finish.
    op.create_index("pgq_jobs_finished_idx", "pgq_jobs", ["state", "finished_at"],
                    postgresql_where=sa.text("state IN ('cancelled', 'completed', 'failed')"))


def downgrade() -> None:
    op.drop_index("pgq_jobs_finished_idx", table_name="pgq_jobs")
    op.drop_table("pgq_cron_fires")
    op.drop_table("pgq_instance")
