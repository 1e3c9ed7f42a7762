"""The jobs table, its claim, audit and unique-key indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pgq_jobs",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True,
                  comment="Job id, assigned at enqueue; never reused."),
        sa.Column("queue", sa.Text, nullable=False, server_default=sa.text("'default'"),
                  comment="Queue the job waits in; workers subscribe to queues."),
        sa.Column("task", sa.Text, nullable=False, comment="Registered task name that runs the job."),
        sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'available'"),
                  comment="scheduled | available | running | retryable | completed | failed | cancelled"),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default=sa.text("0"),
                  comment="-100..100; lower runs first within a queue."),
        sa.Column("attempt", sa.Integer, nullable=False, server_default=sa.text("0"),
                  comment="Attempts started so far (a claim increments it)."),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default=sa.text("25"),
                  comment="Attempts allowed before the job ends failed."),
        sa.Column("args", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"),
                  comment="Keyword arguments for the task (JSON object)."),
        sa.Column("run_at", TZ, nullable=False, server_default=sa.text("now()"),
                  comment="Earliest time the job may run (database clock)."),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()"),
                  comment="Enqueue time (transaction start of the enqueuing transaction)."),
        sa.Column("started_at", TZ, comment="Start of the latest attempt."),
        sa.Column("finished_at", TZ, comment="When the job reached completed, failed or cancelled."),
        sa.Column("lease_owner", sa.Text, comment="Worker holding the lease while running."),
        sa.Column("lease_expires_at", TZ,
                  comment="Lease expiry (database clock); past it the job is reclaimed."),
        sa.Column("timeout_seconds", sa.Double, comment="Per-attempt time limit; NULL for none."),
        sa.Column("unique_key", sa.Text, comment="Deduplication key, unique per task while held."),
        sa.Column("unique_until", TZ,
                  comment="End of the unique window: a completed job holds its key until then."),
        sa.Column("unique_held", sa.Boolean, nullable=False, server_default=sa.text("false"),
                  comment="True while this row may hold unique_key; released lazily."),
        sa.Column("tags", postgresql.ARRAY(sa.Text), nullable=False,
                  server_default=sa.text("'{}'::text[]"),
                  comment="Free-form labels for audits and filtering."),
        sa.Column("meta", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"),
                  comment="Application metadata (tenant, request id, ...); not passed to the task."),
        sa.Column("errors", postgresql.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb"),
                  comment="One entry per failed attempt: attempt, at, type, message, traceback, worker."),
        sa.Column("result", postgresql.JSONB, comment="Return value of the successful attempt."),
        sa.CheckConstraint(
            "state IN ('scheduled', 'available', 'running', 'retryable', "
            "'completed', 'failed', 'cancelled')",
            name="pgq_jobs_state_check",
        ),
        sa.CheckConstraint("priority BETWEEN -100 AND 100", name="pgq_jobs_priority_check"),
        sa.CheckConstraint("attempt >= 0", name="pgq_jobs_attempt_check"),
        sa.CheckConstraint("max_attempts >= 1", name="pgq_jobs_max_attempts_check"),
        sa.CheckConstraint("NOT unique_held OR unique_key IS NOT NULL",
                           name="pgq_jobs_unique_held_check"),
        comment="pgq jobs: one row per job, the source of truth. See docs/schema.md.",
    )
    # The claim's WHERE and ORDER BY exactly; partial so finished rows stay out of it.
    op.create_index(
        "pgq_jobs_claim_idx", "pgq_jobs", ["queue", "priority", "run_at", "id"],
        postgresql_where=sa.text("state IN ('available', 'retryable', 'scheduled')"),
    )
    # Audits by task and time, and per-task retention.
    op.create_index("pgq_jobs_task_created_idx", "pgq_jobs", ["task", "created_at"])
    # One holder per (task, unique_key), enforced by the database under concurrency.
    op.create_index(
        "pgq_jobs_unique_idx", "pgq_jobs", ["task", "unique_key"], unique=True,
        postgresql_where=sa.text("unique_held"),
    )


def downgrade() -> None:
    op.drop_table("pgq_jobs")
