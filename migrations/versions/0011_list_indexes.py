"""Indexes for the dashboard's job lists (issue 16): the first page of a job list whose
filter matches few jobs answers from an index instead of walking the whole table newest
first. On 10,000,000 rows (bench/README.md, "web_reads: 10M rows") such pages took, at
p95: a unique key 1.4 s, a quiet queue 1.4 s, an absent tag 7.0 s, an absent tenant in
meta 4.3 s, failed jobs of a rare task 0.3 s; with these, under 50 ms.

What each costs the hot path. Every update of a job (claim, finish, retry) changes its
state, which other indexes cover, so it is never a HOT update: each index whose predicate
holds for the new row version gets an entry.

* ``pgq_jobs_queue_done_idx`` (queue, id) of finished jobs: every job, once, at its
  finish (+1 WAL record a job; an index of all jobs by (queue, id) took +3, one at the
  insert, the claim and the finish: +17 % WAL bytes a job). job_list reads a queue's
  waiting jobs from the claim index and its running ones from the running index.
* ``pgq_jobs_unique_key_idx``: only jobs that have a unique key.
* ``pgq_jobs_dead_task_idx`` (task, id): only failed and cancelled jobs, once each (the
  failures page filters dead letters by task).
* ``pgq_jobs_tags_idx``, ``pgq_jobs_meta_idx`` (GIN): only jobs with tags, or with meta;
  partial, so job_list adds the "not empty" conjunct that lets the planner use them.

Built in the migration's transaction like every other pgq revision (a host application
may run pgq's history inside its own transaction), so the builds block writes to
pgq_jobs while they run (about 35 s on the 10,000,000-row bench table, most of it the
queue index). On a large table an operator can build them first without blocking, each
with ``CREATE INDEX CONCURRENTLY`` and the same name and definition; the migration then
skips them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("pgq_jobs_queue_done_idx", "pgq_jobs", ["queue", "id"],
                    postgresql_where=sa.text("state IN ('cancelled', 'completed', 'failed')"),
                    if_not_exists=True)
    op.create_index("pgq_jobs_unique_key_idx", "pgq_jobs", ["unique_key"],
                    postgresql_where=sa.text("unique_key IS NOT NULL"), if_not_exists=True)
    op.create_index("pgq_jobs_dead_task_idx", "pgq_jobs", ["task", "id"],
                    postgresql_where=sa.text("state IN ('failed', 'cancelled')"),
                    if_not_exists=True)
    op.create_index("pgq_jobs_tags_idx", "pgq_jobs", ["tags"], postgresql_using="gin",
                    postgresql_where=sa.text("tags <> '{}'"), if_not_exists=True)
    op.create_index("pgq_jobs_meta_idx", "pgq_jobs", [sa.text("meta jsonb_path_ops")],
                    postgresql_using="gin", postgresql_where=sa.text("meta <> '{}'::jsonb"),
                    if_not_exists=True)


def downgrade() -> None:
    for name in ("pgq_jobs_meta_idx", "pgq_jobs_tags_idx", "pgq_jobs_dead_task_idx",
                 "pgq_jobs_unique_key_idx", "pgq_jobs_queue_done_idx"):
        op.drop_index(name, table_name="pgq_jobs")
