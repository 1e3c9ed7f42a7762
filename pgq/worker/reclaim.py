"""Reclaim: returning the jobs of dead or silent workers, and deciding whom to blame.

A ``running`` job whose lease expired, or whose owner a supervisor saw die, lost its
attempt. How that loss is charged depends on what is known about its cause:

=====================================  ==========================================================
what is known                          what happens to each of the owner's jobs
=====================================  ==========================================================
the lease expired (nobody saw why:     the attempt counts, an ``errors`` entry of type
a host lost, a partition, a pause)     ``pgq.WorkerLost`` is charged to the crash budget, and the
                                       job runs again at once (no backoff: a lost worker is not
                                       a failing downstream)
a supervisor saw its child die while   the crash is charged to that job, as above, and the job is
running **one** job                    marked ``isolated``: it never again shares a process
a supervisor saw its child die while   nobody can tell the culprit yet: every job is a *suspect*,
running **several** jobs               handed back without spending an attempt or crash budget,
                                       and ``isolated``; each then runs alone, so a poison job's
                                       next crash is charged to it and to nobody else
a supervisor ended its child because   that job failed its attempt with ``pgq.Timeout`` (retry
one job overran its hard timeout       policy as any timeout); the others are bystanders, handed
                                       back uncharged
=====================================  ==========================================================

A job whose charged losses reach ``crash_budget`` ends ``failed``: a task that segfaults
or gets OOM-killed must not take down workers forever. Uncharged entries carry
``"charged": false`` so an auditor sees every interruption and the budget counts only
the ones that were the job's fault.

Each reclaimed job gets the worker's per-job line shape once the transaction committed
(``job=... queue=... outcome=failed error=pgq.WorkerLost: ...``), and a job it ended
``failed`` is a dead letter like any other: the caller's ``dead_letter`` (the process's
``DeadLetterHooks.submit``) is told after the commit, so the app's ``on_dead_letter``
hooks run for it too, although the worker that ran it is gone.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pgq.core.backoff import Backoff
from pgq.core.tasks import TaskRegistry
from pgq.observability import metrics
from pgq.store.database import execute_async
from pgq.worker.deadletters import FailedJob
from pgq.worker.failure import LOST_TYPE, error_entry
from pgq.worker.joblog import error_text

log = logging.getLogger("pgq.reclaim")

DEFAULT_CRASH_BUDGET = 3


@dataclass(frozen=True, slots=True)
class LostJob:
    """A reclaimed job as its row says (a ``FailedJob`` for the dead-letter hooks)."""

    job_id: int
    task: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: str
    """Its lease owner: the worker that ran the lost attempt."""


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
    witnessed: bool = False,
    timed_out: Mapping[int, float] | None = None,
    dead_letter: Callable[[FailedJob, str], None] | None = None,
) -> int:
    """Reclaim up to ``limit`` lost jobs in one transaction; returns how many.

    ``witnessed``: a supervisor saw ``dead_owners`` die, so their jobs are judged by how
    many were running together (the table above). ``timed_out``: jobs (id -> timeout)
    whose overrun made the supervisor end the process; its other jobs are bystanders.
    ``dead_letter(job, error)``: told of each job this ended ``failed``, after the commit."""
    timed_out = timed_out or {}
    decided: list[tuple[LostJob, str, str]] = []  # (job, state, errors entry)
    async with conn.transaction():
        rows = await execute_async(conn, "job_lost_lock", {
            "now": now, "dead_owners": list(dead_owners), "limit": limit})
        if not rows:
            return 0
        together = Counter(row[2] for row in rows)
        batch: dict[str, list[Any]] = {k: [] for k in (
            "ids", "attempts", "owners", "states", "delays", "refunds", "results", "errors")}
        isolate: list[int] = []

        def add(job: LostJob, state: str, *, delay: float = 0.0, refund: int = 0,
                error: str) -> None:
            for key, value in (("ids", job.job_id), ("attempts", job.attempt),
                               ("owners", job.worker_id), ("states", state), ("delays", delay),
                               ("refunds", refund), ("results", None), ("errors", error)):
                batch[key].append(value)
            decided.append((job, state, error))

        for job_id, attempt, owner, task_name, max_attempts, lost, queue in rows:
            job = LostJob(job_id, task_name, queue, attempt, max_attempts, owner)
            task = registry.get(task_name)
            backoff = task.backoff if task is not None else Backoff()
            seen = owner in dead_owners and witnessed
            why = reason if owner in dead_owners and reason else (
                f"lease expired: worker {owner} stopped renewing it")
            if seen and job_id in timed_out:
                limit_s = timed_out[job_id]
                exhausted = attempt >= max_attempts
                state = "failed" if exhausted else "retryable"
                message = (f"attempt exceeded its timeout of {limit_s:g}s and did not return; "
                           "its worker process was ended")
                add(job, state, delay=0.0 if exhausted else backoff.delay(attempt),
                    error=error_entry(attempt, reclaimer, type_name="pgq.Timeout",
                                      message=message))
            elif seen and (timed_out or together[owner] > 1):
                if timed_out:
                    message = (f"{why} during attempt {attempt}, ended for another job's "
                               "timeout; handed back, not charged")
                else:
                    message = (f"{why} during attempt {attempt} while running with "
                               f"{together[owner] - 1} other job(s); a suspect, not charged: "
                               "it runs alone next")
                    isolate.append(job_id)
                state = "available"
                add(job, state, refund=1, error=error_entry(
                    attempt, reclaimer, type_name=LOST_TYPE, message=message, charged=False))
            else:
                exhausted = attempt >= max_attempts or lost + 1 >= crash_budget
                state = "failed" if exhausted else "retryable"
                message = f"{why} during attempt {attempt}"
                if lost + 1 >= crash_budget:
                    message += f"; lost its worker {lost + 1} times (crash budget {crash_budget})"
                if seen:
                    isolate.append(job_id)  # it crashed a process alone: never share one again
                # No backoff: a lost worker is not a failing downstream, and the crash
                # budget, not the delay, is what stops a poison job.
                add(job, state,
                    error=error_entry(attempt, reclaimer, type_name=LOST_TYPE, message=message))
        done = await execute_async(conn, "job_finish_many", {**batch, "now": now})
        if isolate:
            await execute_async(conn, "job_isolate_many", {"ids": isolate})
    stored = {row[0] for row in done}
    for lost_job, state, error in decided:
        if lost_job.job_id not in stored:
            continue
        metrics.recorder.reclaimed(lost_job.queue, lost_job.task, state == "failed")
        # The worker's per-job line (pgq.worker.joblog), with who reclaimed it for the
        # duration nobody measured.
        log.warning("job=%s task=%s queue=%s attempt=%d/%d outcome=%s reclaimed_by=%s %s",
                    lost_job.job_id, lost_job.task, lost_job.queue, lost_job.attempt,
                    lost_job.max_attempts, state, reclaimer, error_text(error))
        if state == "failed" and dead_letter is not None:
            dead_letter(lost_job, error)
    return len(done)

