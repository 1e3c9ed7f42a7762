"""``app.jobs.result`` / ``aresult``: wait for a job's final state, woken by PostgreSQL,
never polling.

The waiter opens its own connection, ``LISTEN pgq_done``, then marks the job
(``job_result_watch`` sets ``notify_done``, migration 0009), then reads the row. The
worker's fenced write of a final outcome (``job_finish_many``), the reclaim's, and an
operator's cancel each send ``NOTIFY pgq_done`` with the job id for a marked job only,
so jobs nobody waits for cost nothing. The order closes every gap: a finish that commits
before the mark is seen by the read; one that commits after it sees the mark and
notifies a connection that already listens. The wait is one ``notifies`` call per
wake-up; a notification for another job is skipped without a query.

The result comes from PostgreSQL, with or without Redis: the NOTIFY rides in the
finishing transaction (delivered only if it commits) and reaches the waiter whatever
Redis's state, so a Redis publish would add a second path without making the first
faster.
"""

from __future__ import annotations

import time
from typing import Any

from pgq.core.errors import InvalidOptionError, JobCancelled, JobFailed, JobNotFound, ResultTimeout
from pgq.core.settings import Settings
from pgq.store.database import connect, connect_async, execute, execute_async

FINAL = ("completed", "failed", "cancelled")
_PENDING = object()


def _check(job_id: Any, timeout: Any) -> tuple[int, float]:
    if not isinstance(job_id, int) or isinstance(job_id, bool) or job_id < 1:
        raise InvalidOptionError(f"job_id must be a positive integer, got {job_id!r}")
    if (not isinstance(timeout, int | float) or isinstance(timeout, bool)
            or not 0 <= timeout <= 86_400):
        raise InvalidOptionError(f"timeout must be seconds from 0 to 86400, got {timeout!r}")
    return job_id, float(timeout)


def _outcome(job_id: int, rows: list[Any]) -> Any:
    """The stored result of a final job, the typed error of a failed or cancelled one, or
    ``_PENDING``."""
    if not rows:
        raise JobNotFound(f"no job {job_id}")
    state, result, last_error = rows[0]
    if state == "completed":
        return result
    if state == "failed":
        raise JobFailed(job_id, last_error if isinstance(last_error, dict) else None)
    if state == "cancelled":
        raise JobCancelled(job_id, last_error if isinstance(last_error, dict) else None)
    return _PENDING


def _timed_out(job_id: int, timeout: float) -> ResultTimeout:
    return ResultTimeout(f"job {job_id} did not finish within {timeout:g}s")


def wait_result(settings: Settings, job_id: int, timeout: float) -> Any:
    job_id, timeout = _check(job_id, timeout)
    deadline = time.monotonic() + timeout
    key = str(job_id)
    with connect(settings, autocommit=True) as conn:
        execute(conn, "done_listen", {})
        execute(conn, "job_result_watch", {"id": job_id})
        while True:
            value = _outcome(job_id, execute(conn, "job_result_read", {"id": job_id}))
            if value is not _PENDING:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timed_out(job_id, timeout)
            for note in conn.notifies(timeout=remaining):
                if note.payload == key:
                    break
            # woken for this job, or out of time: one more read says which


async def await_result(settings: Settings, job_id: int, timeout: float) -> Any:
    job_id, timeout = _check(job_id, timeout)
    deadline = time.monotonic() + timeout
    key = str(job_id)
    async with await connect_async(settings, autocommit=True) as conn:
        await execute_async(conn, "done_listen", {})
        await execute_async(conn, "job_result_watch", {"id": job_id})
        while True:
            value = _outcome(job_id, await execute_async(conn, "job_result_read", {"id": job_id}))
            if value is not _PENDING:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timed_out(job_id, timeout)
            async for note in conn.notifies(timeout=remaining):
                if note.payload == key:
                    break
