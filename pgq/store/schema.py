"""The pgq schema described with SQLAlchemy Core.

This is the *public, stable* description of the tables operators audit with SQL and
applications may read in their own sessions (``select(pgq.schema.jobs)``). Alembic
revisions in ``migrations/`` create exactly this; a test fails if the two drift.
pgq's runtime statements do not go through these objects: they are hand-written SQL in
``pgq/queries.sql``.

Index budget (every index costs every insert and every state change):

``pgq_jobs_claim_idx``
    ``(queue, priority, run_at, id) WHERE state IN ('available','scheduled','retryable')``:
    the claim's WHERE and ORDER BY, exactly. Partial, so finished rows — the vast
    majority of a busy table — are not in it and the claim never walks them.
``pgq_jobs_task_created_idx``
    ``(task, created_at)``: audits of one task by enqueue time, and a bound that narrows
    per-task failure and run-time queries; without it every per-task audit scans the
    table. (Cross-task questions about finish times scan; see docs/schema.md.)
``pgq_jobs_unique_idx``
    ``UNIQUE (task, unique_key) WHERE unique_held``: the database, not the client,
    enforces "one job per key", so it holds under concurrent transactions and rollbacks.
    Partial, so only jobs that currently hold a key pay for it.

``pgq_jobs_running_idx``
    ``(lease_owner) WHERE state = 'running'``: the few running jobs, for reclaiming expired
    leases and rescuing a dead worker's jobs without scanning the table.

``pgq_jobs_isolated_idx``
    ``(queue, priority, run_at, id) WHERE isolated AND state IN (claimable)``: the jobs
    that must run alone (suspects of a worker crash, see ``pgq.worker.reclaim``); nearly always
    empty, so asking "does any wait?" costs one index page.

``pgq_jobs_queue_done_idx``, ``pgq_jobs_unique_key_idx``, ``pgq_jobs_dead_task_idx``,
``pgq_jobs_tags_idx``, ``pgq_jobs_meta_idx``
    The dashboard's job lists (``job_list``, issue 16): the first page of a filter that
    matches few jobs (a quiet queue, a unique key, failed jobs of a rare task, a tag, a
    tenant in meta) reads its index instead of the whole table newest first. All partial:
    ``(queue, id)`` of finished jobs takes one entry per job, at its finish (a queue's
    waiting and running jobs come from the claim and running indexes); the others only
    keyed, dead (failed or cancelled), tagged or meta-carrying jobs. Costs and timings:
    bench/README.md, "web_reads: 10M rows".

``pgq_jobs_failed_type_idx``
    ``(coalesce(errors->-1->>'type', ''), id) WHERE state = 'failed'`` (migration 0012):
    failed jobs by their last error's type, the dead-letter groups' key, so
    ``state=failed&error_type=X`` is one range in id order (a rare type's first page
    walked the table before). Its expression is the one queries.sql's filters write.

``pgq_job_actions_job_idx``
    ``(job_id, at)`` on ``pgq_job_actions``: "who did what to this job, when" is one
    index range.

``lease_expires_at`` is deliberately unindexed, and ``lease_owner`` only changes at claim
time, so heartbeat updates stay HOT (no index maintenance).
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    MetaData,
    Sequence,
    SmallInteger,
    Table,
    Text,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from pgq.core.states import CLAIMABLE_STATES, JobState
from pgq.store.views import VIEWS

metadata = MetaData()

_STATE_LIST = ", ".join(f"'{s.value}'" for s in JobState)
_CLAIMABLE_LIST = ", ".join(f"'{s.value}'" for s in sorted(CLAIMABLE_STATES))

JOBS_STORAGE = {
    # Room on each page for a row's next version: a heartbeat (lease_expires_at,
    # progress: unindexed) then stays a HOT update on the same page, and a claim's or
    # completion's new version usually lands on the page it came from.
    "fillfactor": "85",
    # A queue table churns: every job leaves several dead versions behind, and the claim
    # index walks past the dead ones until vacuum removes them. Vacuum after 2 % of the
    # table changed (PostgreSQL's default is 20 %), analyze after 5 %, and let vacuum run
    # without sleeping between pages.
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_vacuum_insert_scale_factor": "0.02",
    "autovacuum_analyze_scale_factor": "0.05",
    "autovacuum_vacuum_cost_delay": "0",
}
"""Storage parameters of pgq_jobs (migration 0005)."""

jobs = Table(
    "pgq_jobs",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True,
           comment="Job id, assigned at enqueue; never reused."),
    Column("queue", Text, nullable=False, server_default=text("'default'"),
           comment="Queue the job waits in; workers subscribe to queues."),
    Column("task", Text, nullable=False, comment="Registered task name that runs the job."),
    Column("state", Text, nullable=False, server_default=text("'available'"),
           comment="scheduled | available | running | retryable | completed | failed | cancelled"),
    Column("priority", SmallInteger, nullable=False, server_default=text("0"),
           comment="-100..100; lower runs first within a queue."),
    Column("attempt", Integer, nullable=False, server_default=text("0"),
           comment="Attempts started so far (a claim increments it)."),
    Column("max_attempts", Integer, nullable=False, server_default=text("25"),
           comment="Attempts allowed before the job ends failed."),
    Column("args", JSONB, nullable=False, server_default=text("'{}'::jsonb"),
           comment="Keyword arguments for the task (JSON object)."),
    Column("run_at", DateTime(timezone=True), nullable=False, server_default=text("now()"),
           comment="Earliest time the job may run (database clock)."),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()"),
           comment="Enqueue time (transaction start of the enqueuing transaction)."),
    Column("started_at", DateTime(timezone=True),
           comment="Start of the latest attempt."),
    Column("finished_at", DateTime(timezone=True),
           comment="When the job reached completed, failed or cancelled."),
    Column("lease_owner", Text, comment="Worker holding the lease while running."),
    Column("lease_expires_at", DateTime(timezone=True),
           comment="Lease expiry (database clock); past it the job is reclaimed."),
    Column("timeout_seconds", Double, comment="Per-attempt time limit; NULL for none."),
    Column("unique_key", Text, comment="Deduplication key, unique per task while held."),
    Column("unique_until", DateTime(timezone=True),
           comment="End of the unique window: a completed job holds its key until then."),
    Column("unique_held", Boolean, nullable=False, server_default=text("false"),
           comment="True while this row may hold unique_key; released lazily."),
    Column("tags", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]"),
           comment="Free-form labels for audits and filtering."),
    Column("meta", JSONB, nullable=False, server_default=text("'{}'::jsonb"),
           comment="Application metadata (tenant, request id, ...); not passed to the task."),
    Column("errors", JSONB, nullable=False, server_default=text("'[]'::jsonb"),
           comment="One entry per failed attempt: attempt, at, type, message, traceback, worker."),
    Column("result", JSONB, comment="Return value of the successful attempt."),
    Column("progress", JSONB,
           comment="Latest progress the running task reported (JSON), flushed with heartbeats."),
    Column("isolated", Boolean, nullable=False, server_default=text("false"),
           comment="Runs alone in its worker process: it was running when a process died "
                   "alongside others (a suspect), or it crashed one alone."),
    Column("notify_done", Boolean, nullable=False, server_default=text("false"),
           comment="Someone waits for this job's final state (app.jobs.result): its finish "
                   "sends NOTIFY pgq_done with the job id."),
    CheckConstraint(f"state IN ({_STATE_LIST})", name="pgq_jobs_state_check"),
    CheckConstraint("priority BETWEEN -100 AND 100", name="pgq_jobs_priority_check"),
    CheckConstraint("attempt >= 0", name="pgq_jobs_attempt_check"),
    CheckConstraint("max_attempts >= 1", name="pgq_jobs_max_attempts_check"),
    CheckConstraint("NOT unique_held OR unique_key IS NOT NULL", name="pgq_jobs_unique_held_check"),
    comment="pgq jobs: one row per job, the source of truth. See docs/schema.md.",
    postgresql_with=JOBS_STORAGE,
)

Index(
    "pgq_jobs_claim_idx",
    jobs.c.queue, jobs.c.priority, jobs.c.run_at, jobs.c.id,
    postgresql_where=text(f"state IN ({_CLAIMABLE_LIST})"),
)
Index("pgq_jobs_task_created_idx", jobs.c.task, jobs.c.created_at)
Index(
    "pgq_jobs_running_idx",
    jobs.c.lease_owner,
    postgresql_where=text("state = 'running'"),
)
Index(
    "pgq_jobs_finished_idx",
    jobs.c.state, jobs.c.finished_at,
    postgresql_where=text("state IN ('cancelled', 'completed', 'failed')"),
)
Index(
    "pgq_jobs_isolated_idx",
    jobs.c.queue, jobs.c.priority, jobs.c.run_at, jobs.c.id,
    postgresql_where=text(f"isolated AND state IN ({_CLAIMABLE_LIST})"),
)
Index(
    "pgq_jobs_unique_idx",
    jobs.c.task, jobs.c.unique_key,
    unique=True,
    postgresql_where=text("unique_held"),
)
# The dashboard's job lists (migration 0011): a filter matching few jobs reads an index,
# not the whole table newest first. Partial, so the hot path pays little for them.
Index("pgq_jobs_queue_done_idx", jobs.c.queue, jobs.c.id,
      postgresql_where=text("state IN ('cancelled', 'completed', 'failed')"))
Index("pgq_jobs_unique_key_idx", jobs.c.unique_key,
      postgresql_where=text("unique_key IS NOT NULL"))
Index("pgq_jobs_dead_task_idx", jobs.c.task, jobs.c.id,
      postgresql_where=text("state IN ('failed', 'cancelled')"))
Index("pgq_jobs_tags_idx", jobs.c.tags, postgresql_using="gin",
      postgresql_where=text("tags <> '{}'"))
Index("pgq_jobs_meta_idx", jobs.c.meta, postgresql_using="gin",
      postgresql_ops={"meta": "jsonb_path_ops"}, postgresql_where=text("meta <> '{}'::jsonb"))
# Failed jobs by last error type (migration 0012): the same expression as the error_type
# filters in queries.sql, or the planner cannot match it; written as PostgreSQL prints it
# back, so that Alembic's comparison with the database finds no drift.
Index("pgq_jobs_failed_type_idx",
      text("COALESCE((errors -> '-1'::integer) ->> 'type'::text, ''::text)"), jobs.c.id,
      postgresql_where=text("state = 'failed'"))

locks = Table(
    "pgq_locks",
    metadata,
    Column("key", Text, primary_key=True, comment="Run-time lock key (e.g. sync:tenant:7)."),
    Column("token", Text, nullable=False, comment="Random token of the holder."),
    Column("holder", Text, nullable=False, comment="Worker holding the lock."),
    Column("expires_at", DateTime(timezone=True), nullable=False,
           comment="Expiry by the database clock."),
    comment="pgq run-time locks when Redis is unavailable (PostgreSQL fallback).",
)

leader_terms = Sequence("pgq_leader_terms", metadata=metadata)
"""Fencing tokens for leaderships (see ``pgq.coordination.leader``)."""

leaders = Table(
    "pgq_leaders",
    metadata,
    Column("name", Text, primary_key=True, comment="Leadership role (e.g. maintenance)."),
    Column("holder", Text, nullable=False, comment="Process holding the role."),
    Column("term", BigInteger, nullable=False,
           comment="Fencing token: larger for every new leadership, Redis or PostgreSQL."),
    Column("expires_at", DateTime(timezone=True), nullable=False,
           comment="Expiry by the database clock."),
    comment="pgq leader leases when Redis is unavailable (PostgreSQL fallback).",
)

cron_fires = Table(
    "pgq_cron_fires",
    metadata,
    Column("entry", Text, primary_key=True, comment="Cron entry name."),
    Column("fire_at", DateTime(timezone=True), primary_key=True,
           comment="The tick this fire is for (not when it was enqueued)."),
    Column("job_id", BigInteger, nullable=False,
           comment="The job enqueued for it (may since have been pruned)."),
    Column("enqueued_at", DateTime(timezone=True), nullable=False, server_default=text("now()"),
           comment="When the scheduler enqueued it (database clock)."),
    Column("scheduler", Text, nullable=False, comment="The scheduler process that fired."),
    Column("term", BigInteger, comment="That scheduler's leadership term."),
    comment="One row per (cron entry, tick) ever fired: the primary key makes a tick "
            "fire once cluster-wide, whatever the schedulers believe.",
)

instance = Table(
    "pgq_instance",
    metadata,
    Column("one", Boolean, primary_key=True, server_default=text("true"),
           comment="Always true: the table has at most one row."),
    Column("id", Text, nullable=False,
           comment="Random id of this database's pgq, made on first use; namespaces "
                   "its Redis keys (a copy of the database made before first use "
                   "gets its own)."),
    CheckConstraint("one", name="pgq_instance_one_row"),
    comment="pgq's identity in this database.",
)

queues = Table(
    "pgq_queues",
    metadata,
    Column("name", Text, primary_key=True, comment="Queue name."),
    Column("paused", Boolean, nullable=False, server_default=text("false"),
           comment="While true, no worker claims this queue's jobs."),
    Column("paused_at", DateTime(timezone=True), comment="When the queue was last paused."),
    Column("paused_by", Text, comment="Who paused it (free-text actor)."),
    Column("pause_reason", Text, comment="Why it was paused."),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()"),
           comment="Last change of this row."),
    comment="pgq queues with settings of their own (paused; limits later). A queue "
            "without a row has the defaults.",
)

job_actions = Table(
    "pgq_job_actions",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True, comment="Action id."),
    Column("job_id", BigInteger, nullable=False,
           comment="The job acted on (no foreign key: the record outlives a "
                   "deleted or pruned job)."),
    Column("at", DateTime(timezone=True), nullable=False, server_default=text("now()"),
           comment="When the action was committed with its change (database clock)."),
    Column("actor", Text, nullable=False,
           comment="Who acted: free text (an OS user, a dashboard user)."),
    Column("action", Text, nullable=False,
           comment="retry | cancel | delete | reschedule | set_priority"),
    Column("reason", Text, comment="Why, as the actor said."),
    Column("detail", JSONB, comment="The action's parameters and the job's state before it."),
    comment="pgq operator actions, one row per job changed, written in the same "
            "statement as the change.",
)
Index("pgq_job_actions_job_idx", job_actions.c.job_id, job_actions.c.at)

workers = Table(
    "pgq_workers",
    metadata,
    Column("id", Text, primary_key=True, comment="Worker process id (host:pid:...)."),
    Column("host", Text, nullable=False, comment="Host name."),
    Column("pid", Integer, nullable=False, comment="Process id on that host."),
    Column("queues", JSONB, nullable=False, server_default=text("'{}'::jsonb"),
           comment="Queues served and their weights (JSON object)."),
    Column("concurrency", Integer, nullable=False, comment="Job slots."),
    Column("version", Text, nullable=False, comment="pgq version it runs."),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=text("now()"),
           comment="Process start."),
    Column("last_seen", DateTime(timezone=True), nullable=False, server_default=text("now()"),
           comment="Latest heartbeat (database clock)."),
    Column("running", Integer, nullable=False, server_default=text("0"),
           comment="Jobs running at the latest heartbeat."),
    Column("tasks", JSONB, nullable=False, server_default=text("'[]'::jsonb"),
           comment="Task names this process registered (JSON array)."),
    Column("lease_seconds", Double, nullable=False, server_default=text("12"),
           comment="The lease its heartbeats extend: alive while last_seen is younger, "
                   "pruned once it is 3 x older."),
    comment="pgq worker processes, kept fresh by their heartbeats.",
)

stats = Table(
    "pgq_stats",
    metadata,
    Column("key", Text, primary_key=True, comment="What the document is (\"queues\")."),
    Column("data", JSONB, nullable=False, comment="The stats document."),
    Column("computed_at", DateTime(timezone=True), nullable=False, server_default=text("now()"),
           comment="When the document was computed (database clock)."),
    comment="pgq stats computed by the stats leader, the copy readers use without "
            "Redis (the same document is cached in Redis).",
)

api_keys = Table(
    "pgq_api_keys",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True, comment="Key id."),
    Column("name", Text, nullable=False, unique=True,
           comment="What the key is for, unique (shown in lists and audit)."),
    Column("scopes", ARRAY(Text), nullable=False,
           comment="What the key may do: enqueue, read, operate."),
    # 32 random bytes of secret: a fast hash is enough (nothing to brute-force).
    Column("key_hash", Text, nullable=False, unique=True,
           comment="Hex SHA-256 of the secret (the secret itself is never stored)."),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()"),
           comment="When the key was made."),
    Column("created_by", Text, comment="Who made it (free-text actor)."),
    Column("last_used_at", DateTime(timezone=True),
           comment="Latest accepted use, to the minute (written at most once a minute)."),
    Column("revoked_at", DateTime(timezone=True),
           comment="When it was revoked; a revoked key is refused."),
    Column("revoked_by", Text, comment="Who revoked it."),
    comment="pgq HTTP API keys, hashed, with their scopes.",
)

idempotency_keys = Table(
    "pgq_idempotency_keys",
    metadata,
    Column("key", Text, primary_key=True, comment="The client's idempotency key."),
    Column("fingerprint", Text, nullable=False,
           comment="What the first request asked for: the same key with another "
                   "fingerprint is refused."),
    Column("job_id", BigInteger,
           comment="The job the first request enqueued (no foreign key: the key "
                   "outlives a pruned job)."),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()"),
           comment="First use; the key is honoured for 24 hours, then replaced or pruned."),
    comment="pgq idempotent enqueues: one job per key for 24 hours.",
)

# Joint (queue, state) frequencies: the planner's, and the stats' estimates (0008).
event.listen(jobs, "after_create", DDL(  # type: ignore[no-untyped-call]
    "CREATE STATISTICS pgq_jobs_queue_state (mcv) ON queue, state FROM pgq_jobs"))

# The audit views (pgq.store.views): created after the tables, dropped before them.
for _name, _body in VIEWS.items():
    event.listen(metadata, "after_create", DDL(f"CREATE VIEW {_name} AS{_body}"))  # type: ignore[no-untyped-call]
for _name in reversed(VIEWS):
    event.listen(metadata, "before_drop", DDL(f"DROP VIEW IF EXISTS {_name}"))  # type: ignore[no-untyped-call]
