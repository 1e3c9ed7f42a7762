"""Stats and the worker registry's tasks (issue 14 items 3 and 4): ``pgq_stats``, the
PostgreSQL copy of the cached queue stats (one row per key), and ``pgq_workers.tasks``,
the tasks each worker process registered (stats show a queue's jobs whose task no live
worker knows as orphaned), and ``pgq_workers.lease_seconds``, which says when a row is
stale (maintenance prunes rows not seen for 3 leases).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("pgq_workers", sa.Column(
        "tasks", postgresql.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb"),
        comment="Task names this process registered (JSON array)."))
    op.add_column("pgq_workers", sa.Column(
        "lease_seconds", sa.Double, nullable=False, server_default=sa.text("12"),
        comment="The lease its heartbeats extend: alive while last_seen is younger, "
                "pruned once it is 3 x older."))
    op.create_table(
        "pgq_stats",
        sa.Column("key", sa.Text, primary_key=True, comment="What the document is (\"queues\")."),
        sa.Column("data", postgresql.JSONB, nullable=False, comment="The stats document."),
        sa.Column("computed_at", TZ, nullable=False, server_default=sa.text("now()"),
                  comment="When the document was computed (database clock)."),
        comment="pgq stats computed by the stats leader, the copy readers use without "
                "Redis (the same document is cached in Redis).",
    )
    # Joint (queue, state) frequencies for the planner, which the stats read as estimates
    # of the counts too large to take exactly (pg_stats_ext): catalogue reads only.
    op.execute("CREATE STATISTICS pgq_jobs_queue_state (mcv) ON queue, state FROM pgq_jobs")


def downgrade() -> None:
    op.execute("DROP STATISTICS pgq_jobs_queue_state")
    op.drop_table("pgq_stats")
    op.drop_column("pgq_workers", "lease_seconds")
    op.drop_column("pgq_workers", "tasks")
