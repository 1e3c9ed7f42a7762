"""Reclaim: returning the jobs of dead or silent workers.

A ``running`` job whose lease expired, or whose owner a supervisor saw die, lost its
attempt: the task may have half-run, so the attempt counts, an ``errors`` entry of type
``pgq.WorkerLost`` records it, and the job follows the retry path (``retryable`` with the
task's backoff, or ``failed`` when attempts are exhausted). A job that has now lost its
worker ``crash_budget`` times ends ``failed``: a task that segfaults or gets OOM-killed
must not take down workers forever.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from pgq.backoff import Backoff
from pgq.database import execute_async
from pgq.failure import LOST_TYPE, error_entry
from pgq.tasks import TaskRegistry

log = logging.getLogger("pgq.reclaim")

DEFAULT_CRASH_BUDGET = 3


async def reclaim(
    conn: psycopg.AsyncConnection[Any],
    registry: TaskRegistry,
    *,
    reclaimer: str,
    dead_owners: Sequence[str] = (),
    crash_budget: int = DEFAULT_CRASH_BUDGET,
    now: datetime | None = None,
    limit: int = 500,
    reason: str | None = None,
) -> int:
    """Reclaim up to ``limit`` lost jobs in one transaction; returns how many."""
    async with conn.transaction():
        rows = await execute_async(conn, "job_lost_lock", {
            "now": now, "dead_owners": list(dead_owners), "limit": limit})
        if not rows:
            return 0
        batch: dict[str, list[Any]] = {k: [] for k in (
            "ids", "attempts", "owners", "states", "delays", "refunds", "results", "errors")}
        for job_id, attempt, owner, task_name, max_attempts, lost in rows:
            task = registry.get(task_name)
            backoff = task.backoff if task is not None else Backoff()
            exhausted = attempt >= max_attempts or lost + 1 >= crash_budget
            why = reason if owner in dead_owners and reason else (
                f"lease expired: worker {owner} stopped renewing it")
            message = f"{why} during attempt {attempt}"
            if lost + 1 >= crash_budget:
                message += f"; lost its worker {lost + 1} times (crash budget {crash_budget})"
            batch["ids"].append(job_id)
            batch["attempts"].append(attempt)
            batch["owners"].append(owner)
            batch["states"].append("failed" if exhausted else "retryable")
            batch["delays"].append(0.0 if exhausted else backoff.delay(attempt))
            batch["refunds"].append(0)
            batch["results"].append(None)
            batch["errors"].append(error_entry(attempt, reclaimer, type_name=LOST_TYPE,
                                               message=message))
            log.warning("job=%s task=%s attempt=%s/%s outcome=%s reason=%r", job_id, task_name,
                        attempt, max_attempts, "failed" if exhausted else "retryable", message)
        done = await execute_async(conn, "job_finish_many", {**batch, "now": now})
        return len(done)
