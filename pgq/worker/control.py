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

from pgq.client.app import App
from pgq.core.errors import PgqError
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


async def why_lost(app: App, job_id: int, attempt: int) -> str | None:
    """The heartbeat found the job no longer running: ``cancelled_by`` if an operator
    cancelled this attempt, else None (reclaimed: a lost lease)."""
    try:
        job = await app.jobs.aget(job_id)
    except PgqError:
        return None
    if job is None or job.state != "cancelled" or job.attempt != attempt or not job.errors:
        return None
    last = job.errors[-1]
    if not isinstance(last, dict) or last.get("type") != "pgq.Cancelled" or "actor" not in last:
        return None
    actor, message = last.get("actor"), last.get("message")
    return cancelled_by({"actor": actor,
                         "reason": None if message == f"cancelled by {actor}" else message})
