"""Control messages to a worker process: an operator's cancel of a running job.

``app.jobs.cancel`` sets a running job ``cancelled`` in one fenced statement, then sends
its worker (the row's ``lease_owner``) a JSON message through the wake-up channels:
Redis PUBLISH on the instance's control channel, or ``NOTIFY pgq_control``; the worker's
``WakeupListener`` passes it here. The heartbeat, which finds such a job no longer
running, is the floor: ``why_lost`` reads the row to tell a cancel from a lost lease.
docs/operations.md has the race rules.
"""

from __future__ import annotations

import json
from typing import Any

from pgq.core.errors import PgqError
from pgq.core.settings import Settings
from pgq.store.database import connect_async, execute_async
from pgq.worker.joblog import log


def parse(payload: str, worker_id: str) -> tuple[int, int, str] | None:
    """(job id, attempt, who and why) of a cancel addressed to ``worker_id``, else None."""
    try:
        message = json.loads(payload)
        if message.get("action") != "cancel" or message.get("worker") != worker_id:
            return None
        return int(message["job"]), int(message["attempt"]), cancelled_by(message)
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("worker %s: ignored a malformed control message %.200r", worker_id, payload)
        return None


def cancelled_by(entry: dict[str, Any]) -> str:
    """``by ACTOR (reason: ...)`` for the log line of a cancelled job."""
    reason = entry.get("reason")
    return f"by {entry.get('actor')}" + (f" (reason: {reason})" if reason else "")


async def why_lost(settings: Settings, job_id: int, attempt: int) -> str | None:
    """The heartbeat found the job no longer running: ``cancelled_by`` if an operator
    cancelled this attempt, else None (reclaimed: a lost lease). One short connection of
    its own: not the app's async pool, which would outlive the worker's event loop (a
    pool opened here kept a stopping worker process alive)."""
    try:
        async with await connect_async(settings, autocommit=True) as conn:
            rows = await execute_async(conn, "job_get", {"id": job_id})
    except PgqError:
        return None
    if not rows:
        return None
    state, row_attempt, errors = rows[0][3], rows[0][5], rows[0][20]
    if state != "cancelled" or row_attempt != attempt or not errors:
        return None
    last = errors[-1]
    if not isinstance(last, dict) or last.get("type") != "pgq.Cancelled" or "actor" not in last:
        return None
    actor, message = last.get("actor"), last.get("message")
    return cancelled_by({"actor": actor,
                         "reason": None if message == f"cancelled by {actor}" else message})
