"""The audit views (migration 0007), as SQL text: what ``pgq.store.schema`` creates
with its tables for ``metadata.create_all``. The migration writes the same texts out
itself (a migration keeps meaning what it meant); ``tests/integration/test_audit_views.py``
checks that both produce the same views. What each view answers: docs/audit.md.
"""

from __future__ import annotations

VIEWS: dict[str, str] = {
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
