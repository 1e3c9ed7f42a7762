"""The jobs a worker process holds a lease on: the one table its services share.

The producer adds a job when it claims it, the executor decides its outcome, the
completer stores that outcome and then forgets the job; the heartbeat thread renews
the leases of what is held and the supervisor (through the lease table) does too.
Everything a held job owns is released in one place, ``HeldJobs.forget``: its entry,
its lease-table slot, its run-time lock, and a freed slot for the producer. The
heartbeat thread reads the table, so every access from another thread takes ``lock``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgq.client.tracing import Attempt
from pgq.core.tasks import Task
from pgq.observability import metrics
from pgq.worker.context import Context
from pgq.worker.leasetable import LeaseTable


@dataclass(eq=False)
class Running:
    job_id: int
    attempt: int
    task: Task
    ctx: Context
    started: float
    handle: asyncio.Future[Any] | None = None
    span: Attempt | None = None
    """Its attempt's OpenTelemetry span, ended by ``forget`` (None: not traced)."""
    lost: bool = False
    released: bool = False
    lock_key: str | None = None
    lock_token: str = ""
    lock_held: bool = False
    """Set once the lock is acquired: only then does the heartbeat renew it."""
    timed_out: bool = False
    decided: bool = False
    """Its outcome is known (waiting to be stored): the job no longer takes a slot."""
    slot: int | None = None
    cancelled_by: str | None = None
    """An operator cancelled it (who and why, for the log): its row is ``cancelled``."""
    ended: float | None = None
    """When its outcome was decided (``time.monotonic()``): the end of its run time."""
    """Its entry in the lease table shared with the supervisor, if any."""


@dataclass(frozen=True, slots=True)
class Outcome:
    job_id: int
    attempt: int
    state: str
    delay: float = 0.0
    refund: int = 0
    result: str | None = None
    error: str | None = None


@dataclass
class Stats:
    claimed: int = 0
    finished: dict[str, int] = field(default_factory=dict)


class HeldJobs:
    def __init__(self, lease_table: LeaseTable | None,
                 release_lock: Callable[[str, str], None]) -> None:
        self.lock = threading.Lock()
        self.lease_table = lease_table
        """Shared with the supervisor, which renews these leases too (``leasetable``)."""
        self.stats = Stats()
        self.on_freed: Callable[[], None] = lambda: None
        """Called when a job stops taking a slot (its outcome decided, or forgotten)."""
        self._jobs: dict[int, Running] = {}
        self._release_lock = release_lock

    def __len__(self) -> int:
        return len(self._jobs)

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._jobs

    def get(self, job_id: int) -> Running | None:
        return self._jobs.get(job_id)

    def values(self) -> list[Running]:
        with self.lock:
            return list(self._jobs.values())

    def add(self, running: Running, timeout: float | None) -> None:
        with self.lock:
            self._jobs[running.job_id] = running
        if self.lease_table is not None:
            running.slot = self.lease_table.put(running.job_id, running.attempt, timeout)

    def running_by_queue(self) -> tuple[dict[str, int], int]:
        """Undecided jobs per queue (they take slots), and jobs whose outcome waits."""
        running: dict[str, int] = {}
        with self.lock:
            for r in self._jobs.values():
                if not r.decided:
                    running[r.ctx.queue] = running.get(r.ctx.queue, 0) + 1
            return running, len(self._jobs) - sum(running.values())

    def forget(self, running: Running, outcome: str) -> None:
        """The job is no longer this process's: release all it held, count its outcome."""
        with self.lock:
            held = self._jobs.pop(running.job_id, None)
        recorder = metrics.recorder
        if recorder.on and held is not None:  # counted once, where every outcome ends
            ctx = running.ctx
            recorder.job_ended(ctx.queue, ctx.task, outcome,
                               (running.ended or time.monotonic()) - running.started)
        if running.slot is not None and self.lease_table is not None:
            slot, running.slot = running.slot, None
            self.lease_table.clear(slot)
        if running.lock_key is not None:
            key, running.lock_key = running.lock_key, None
            # Off the loop: releasing talks to Redis or PostgreSQL.
            threading.Thread(target=self._release_lock, args=(key, running.lock_token),
                             daemon=True).start()
        if running.span is not None:
            running.span.end(outcome)
        self.stats.finished[outcome] = self.stats.finished.get(outcome, 0) + 1
        self.on_freed()

    # --- for the heartbeat thread ----------------------------------------------------

    def to_renew(self) -> list[tuple[int, int, str | None]]:
        """The leases to renew: running jobs, not those lost or already completed by
        their own ``ctx.transaction()`` (no longer ``running``, so not ours to renew)."""
        with self.lock:
            return [(r.job_id, r.attempt, r.ctx.take_progress())
                    for r in self._jobs.values()
                    if not r.lost and not r.ctx.completed_in_transaction]

    def renewed(self, deadlines: dict[int, Any]) -> None:
        """Publish the new lease deadlines to the tasks' contexts."""
        with self.lock:
            for job_id, deadline in deadlines.items():
                running = self._jobs.get(job_id)
                if running is not None:
                    running.ctx.lease_expires_at = deadline

    def locks(self) -> list[tuple[int, str, str]]:
        """(job, key, token) of every run-time lock held, to renew with the leases."""
        with self.lock:
            return [(r.job_id, r.lock_key, r.lock_token) for r in self._jobs.values()
                    if r.lock_key is not None and r.lock_held and not r.lost]

    def give_up_overdue(self, now: float, renewed: float, after: float,
                        given_up: set[int]) -> list[Running]:
        """Mark lost, and return, the jobs no renewal has extended for ``after`` seconds
        (a job claimed after the last renewal has its lease from the claim). Marked under
        the lock, before anyone is told: their results must not be stored."""
        with self.lock:
            overdue = [r for r in self._jobs.values()
                       if not (r.lost or r.decided or r.released or r.job_id in given_up
                               or r.ctx.completed_in_transaction)
                       and now - max(renewed, r.started) >= after]
            for running in overdue:
                running.lost = True
            return overdue
