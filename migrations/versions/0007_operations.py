"""Operations (issue 14): queues that can be paused, operator actions recorded per job,
a registry of worker processes, and views for audits.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)

# Written out, not imported from pgq.store.schema: a migration must keep meaning what it
# meant when it was written. pgq/store/schema.py repeats these texts, and
# tests/integration/test_audit_views.py compares the views each creates.
VIEWS = {
    "pgq_dead_letters": """
SELECT j.id, j.queue, j.task, j.attempt, j.max_attempts, j.created_at, j.finished_at,
       (j.errors -> -1 ->> 'at')::timestamptz AS last_error_at,
       j.errors -> -1 ->> 'type' AS last_error_type,
       j.errors -> -1 ->> 'message' AS last_error_message,
       j.errors -> -1 ->> 'worker' AS last_error_worker,
       j.args, j.meta, j.tags, j.unique_key
FROM pgq_jobs AS j
WHERE j.state = 'failed'""",
    "pgq_attempts": """
SELECT j.id AS job_id, j.queue, j.task, j.state AS job_state, e.n AS entry_no,
       (e.entry ->> 'attempt')::int AS attempt,
       (e.entry ->> 'at')::timestamptz AS at,
       e.entry ->> 'type' AS error_type,
       e.entry ->> 'message' AS error_message,
       e.entry ->> 'traceback' AS error_traceback,
       e.entry ->> 'worker' AS worker,
       e.entry ->> 'actor' AS actor,
       coalesce((e.entry ->> 'charged')::boolean, true) AS charged
FROM pgq_jobs AS j
CROSS JOIN LATERAL jsonb_array_elements(j.errors) WITH ORDINALITY AS e(entry, n)""",
    "pgq_queue_overview": """
SELECT coalesce(c.queue, p.name) AS queue,
       coalesce(c.available, 0) AS available, coalesce(c.scheduled, 0) AS scheduled,
       coalesce(c.retryable, 0) AS retryable, coalesce(c.running, 0) AS running,
       coalesce(c.completed, 0) AS completed, coalesce(c.failed, 0) AS failed,
       coalesce(c.cancelled, 0) AS cancelled,
       now() - c.oldest_due_run_at AS oldest_due_age,
       coalesce(p.paused, false) AS paused, p.paused_at, p.paused_by, p.pause_reason
FROM (SELECT queue,
             count(*) FILTER (WHERE state = 'available') AS available,
             count(*) FILTER (WHERE state = 'scheduled') AS scheduled,
             count(*) FILTER (WHERE state = 'retryable') AS retryable,
             count(*) FILTER (WHERE state = 'running') AS running,
             count(*) FILTER (WHERE state = 'completed') AS completed,
             count(*) FILTER (WHERE state = 'failed') AS failed,
             count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
             min(run_at) FILTER (WHERE state IN ('available', 'retryable', 'scheduled')
                                   AND run_at <= now()) AS oldest_due_run_at
      FROM pgq_jobs
      GROUP BY queue) AS c
FULL JOIN pgq_queues AS p ON p.name = c.queue""",
    "pgq_stuck_jobs": """
SELECT j.id, j.queue, j.task, j.attempt, j.max_attempts, j.lease_owner, j.started_at,
       j.lease_expires_at, now() - j.lease_expires_at AS overdue,
       now() - j.started_at AS running_for
FROM pgq_jobs AS j
WHERE j.state = 'running' AND j.lease_expires_at < now()""",
    "pgq_operator_actions": """
SELECT a.id, a.at, a.actor, a.action, a.reason, a.job_id, a.detail,
       j.queue, j.task, j.state AS job_state
FROM pgq_job_actions AS a
LEFT JOIN pgq_jobs AS j ON j.id = a.job_id""",
}


def upgrade() -> None:
    op.create_table(
        "pgq_queues",
        sa.Column("name", sa.Text, primary_key=True, comment="Queue name."),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.text("false"),
                  comment="While true, no worker claims this queue's jobs."),
        sa.Column("paused_at", TZ, comment="When the queue was last paused."),
        sa.Column("paused_by", sa.Text,
                  comment="Who paused it (free-text actor)."),
        sa.Column("pause_reason", sa.Text, comment="Why it was paused."),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.text("now()"),
                  comment="Last change of this row."),
        comment="pgq queues with settings of their own (paused; limits later). A queue "
                "without a row has the defaults.",
    )
    op.create_table(
        "pgq_job_actions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True,
                  comment="Action id."),
        sa.Column("job_id", sa.BigInteger, nullable=False,
                  comment="The job acted on (no foreign key: the record outlives a "
                          "deleted or pruned job)."),
        sa.Column("at", TZ, nullable=False, server_default=sa.text("now()"),
                  comment="When the action was committed with its change (database clock)."),
        sa.Column("actor", sa.Text, nullable=False,
                  comment="Who acted: free text (an OS user, a dashboard user)."),
        sa.Column("action", sa.Text, nullable=False,
                  comment="retry | cancel | delete | reschedule | set_priority"),
        sa.Column("reason", sa.Text, comment="Why, as the actor said."),
        sa.Column("detail", postgresql.JSONB,
                  comment="The action's parameters and the job's state before it."),
        comment="pgq operator actions, one row per job changed, written in the same "
                "statement as the change.",
    )
    op.create_index("pgq_job_actions_job_idx", "pgq_job_actions", ["job_id", "at"])
    op.create_table(
        "pgq_workers",
        sa.Column("id", sa.Text, primary_key=True, comment="Worker process id (host:pid:...)."),
        sa.Column("host", sa.Text, nullable=False, comment="Host name."),
        sa.Column("pid", sa.Integer, nullable=False, comment="Process id on that host."),
        sa.Column("queues", postgresql.JSONB, nullable=False,
                  server_default=sa.text("'{}'::jsonb"),
                  comment="Queues served and their weights (JSON object)."),
        sa.Column("concurrency", sa.Integer, nullable=False, comment="Job slots."),
        sa.Column("version", sa.Text, nullable=False, comment="pgq version it runs."),
        sa.Column("started_at", TZ, nullable=False, server_default=sa.text("now()"),
                  comment="Process start."),
        sa.Column("last_seen", TZ, nullable=False, server_default=sa.text("now()"),
                  comment="Latest heartbeat (database clock)."),
        sa.Column("running", sa.Integer, nullable=False, server_default=sa.text("0"),
                  comment="Jobs running at the latest heartbeat."),
        comment="pgq worker processes, kept fresh by their heartbeats.",
    )
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS{body}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    op.drop_table("pgq_workers")
    op.drop_index("pgq_job_actions_job_idx", table_name="pgq_job_actions")
    op.drop_table("pgq_job_actions")
    op.drop_table("pgq_queues")
