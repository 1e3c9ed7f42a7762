"""The completer: stores outcomes in batches, each row fenced on its lease.

One ``job_finish_many`` statement per flush, on the worker's second connection, so
claiming overlaps with storing. A batch waits for more outcomes at most
``completion_window`` seconds, and not at all once every held job has its outcome
(nothing more is coming, and the slots they hold are what the producer waits for), nor
once ``concurrency`` outcomes wait (a batch as large as a claim: the producer, which may
claim while one such batch is written, would wait on it). A job keeps its slot and its
lease until its outcome is stored, so a lagging database slows claiming instead of
letting leases expire.

**Outcomes ride with claims.** When the producer is about to claim, it takes the
outcomes waiting here (``take``) and stores them in its claim's own statement
(``job_finish_and_claim``): a cycle of quick jobs then costs one statement and one
commit instead of two of each. ``record`` leaves them to the producer while a claim is
coming; every path on which the producer does not claim hands them back or kicks this
service (``kick``), and outcomes a combined statement could not store are stored here,
alone, and never ride again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from pgq.core.clock import Clock
from pgq.core.errors import DatabaseError, DatabaseUnavailable, LeaseLost
from pgq.core.outage import Outage
from pgq.core.settings import Settings
from pgq.observability import metrics
from pgq.store.database import connect, execute, execute_async
from pgq.worker.config import WorkerConfig
from pgq.worker.connection import Conn, open_connection, reopen
from pgq.worker.context import Context
from pgq.worker.failure import error_entry
from pgq.worker.held import HeldJobs, Outcome, Running
from pgq.worker.joblog import log, log_job, log_outcome


class Completer:
    def __init__(self, held: HeldJobs, config: WorkerConfig, settings: Settings, clock: Clock,
                 worker_id: str) -> None:
        self.held = held
        self.config = config
        self.settings = settings
        self.clock = clock
        self.worker_id = worker_id
        self._outcomes: list[Outcome] = []
        self._storing = 0
        """Outcomes in the statement being written now (their jobs are still held)."""
        self._stopping = False
        self._solo = False
        """Outcomes were handed back after a failed combined statement: store them here."""
        self.claim_coming: Callable[[], bool] = lambda: False
        """Is the producer about to claim (it then takes the outcomes waiting)?"""
        self.dead_letter: Callable[[Context, str | None], None] = lambda ctx, error: None
        """Told of each job just stored as ``failed`` (the dead-letter hooks' ``submit``)."""
        self._stored_instead: dict[int, Outcome] = {}
        """Per job, the ``pgq.UnstorableOutcome`` failure ``_store`` wrote in place of the
        outcome the database refused: it is what ``_settle`` logs and reports."""
        self._outage = Outage(f"worker {worker_id}: outcome connection", logger=log,
                               kind="outcome")
        self._flush_now = asyncio.Event()
        self._all_decided = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: Conn | None = None

    def bind(self) -> None:
        """Fresh events for a run on the running loop (see ``Producer.bind``)."""
        self._flush_now = asyncio.Event()
        self._all_decided = asyncio.Event()
        self._stopping = False
        self._solo = False

    async def start(self) -> None:
        self._conn = await self._connect()
        self._task = asyncio.create_task(self._run(), name="pgq-completer")

    async def stop(self) -> None:
        """Store every outcome recorded so far, then close."""
        self._stopping = True
        self._flush_now.set()
        if self._task is not None:
            await self._task
        if self._conn is not None:
            await self._conn.close()

    def record(self, running: Running, outcome: Outcome) -> None:
        """The job's outcome is decided: it frees its slot now and is stored soon, with
        the producer's next claim if one is coming, else by this service."""
        running.decided = True
        running.ended = time.monotonic()
        self._outcomes.append(outcome)
        self.held.on_freed()
        if not self.claim_coming() or self._solo:
            self._flush_now.set()
        if len(self._outcomes) + self._storing >= len(self.held):
            self._all_decided.set()

    def kick(self) -> None:
        """The producer is not claiming now: store what waits without it."""
        if self._outcomes:
            self._flush_now.set()

    def take(self) -> list[Outcome]:
        """For the producer's claim: every outcome waiting (none after a failed ride)."""
        if self._solo or not self._outcomes:
            return []
        batch, self._outcomes = self._outcomes, []
        self._storing += len(batch)
        return batch

    def stored(self, batch: list[Outcome], owned: set[int]) -> None:
        """The producer's statement stored ``batch``; ``owned``: the ids still ours."""
        self._storing -= len(batch)
        self._settle(batch, owned)

    def give_back(self, batch: list[Outcome], *, failed: bool) -> None:
        """The producer did not store ``batch``; with ``failed``, its statement failed,
        so they are stored here, alone (split if one of them is the reason)."""
        self._storing -= len(batch)
        self._outcomes[:0] = batch
        self._solo = self._solo or failed
        self._flush_now.set()

    def params(self, batch: list[Outcome]) -> dict[str, Any]:
        """``job_finish_many``'s parameters for ``batch`` (also ``job_finish_and_claim``'s)."""
        return self._params(batch)

    def pending(self, job_id: int) -> bool:
        """Is this job's outcome recorded and not yet taken for storing?"""
        return any(o.job_id == job_id for o in self._outcomes)

    @property
    def waiting(self) -> int:
        return len(self._outcomes)

    async def _run(self) -> None:
        while True:
            await self._flush_now.wait()
            if self._outcomes and not self._stopping and \
                    len(self._outcomes) < self.config.concurrency and \
                    len(self._outcomes) + self._storing < len(self.held):
                self._all_decided.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._all_decided.wait(),
                                           self.config.completion_window)
            self._flush_now.clear()
            batch, self._outcomes = self._outcomes, []
            self._solo = False
            if batch:
                self._storing += len(batch)
                try:
                    await self._flush(batch)
                finally:
                    self._storing -= len(batch)
            if self._stopping and not self._outcomes:
                return

    async def _flush(self, batch: list[Outcome]) -> None:
        began = time.monotonic()
        rows = await self._store(batch)
        metrics.recorder.flushed(len(batch), time.monotonic() - began)
        self._settle(batch, {row[0] for row in rows})

    def _settle(self, batch: list[Outcome], stored: set[int]) -> None:
        """Log and forget the jobs of a committed batch (fenced out: lease lost); pass
        the dead letters on to the hooks."""
        for decided in batch:
            outcome = (self._stored_instead.pop(decided.job_id, decided)
                       if self._stored_instead else decided)  # nearly always empty
            running = self.held.get(outcome.job_id)
            if running is None:
                continue
            if outcome.job_id in stored:
                log_outcome(running, outcome)
                self.held.forget(running, outcome.state)
                if outcome.state == "failed":
                    self.dead_letter(running.ctx, outcome.error)
            elif running.cancelled_by is not None:  # the operator's cancel committed first
                log_job(running, "cancelled", f"{running.cancelled_by}; outcome "
                        f"{outcome.state} discarded")
                self.held.forget(running, "cancelled")
            else:
                log_job(running, "lease-lost", f"outcome {outcome.state} discarded: "
                        "the job was reclaimed by another worker")
                self.held.forget(running, "lease-lost")

    async def _store(self, batch: list[Outcome]) -> list[Any]:
        """Write ``batch``; returns the rows still owned (the others were fenced out).

        A lost connection is retried until it comes back: the jobs keep their slots and
        leases meanwhile, so claiming pauses instead of leases expiring. An outcome the
        database refuses (a data error) must not poison its batch: the batch is split,
        and a row that still fails is stored as ``failed`` with the reason instead."""
        while True:
            assert self._conn is not None
            try:
                rows = await execute_async(self._conn, "job_finish_many",
                                           self._params(batch), binary=True)
                self._outage.recovered()
                return rows
            except DatabaseError as exc:
                if self._conn.closed or self._conn.broken or isinstance(exc, DatabaseUnavailable):
                    conn = await self._reconnect(exc)
                    if conn is None:
                        log.error("worker %s: stopping without recording %d outcome(s): the "
                                  "database stayed unavailable (%s); their leases will expire "
                                  "and the jobs be reclaimed", self.worker_id, len(batch), exc)
                        return []
                    self._conn = conn
                    continue
                if len(batch) > 1:
                    return [row for one in batch for row in await self._store([one])]
                (bad,) = batch
                log.error("job=%s: the database refused its outcome %s (%s); recording it as "
                          "failed", bad.job_id, bad.state, exc)
                if bad.state == "failed" and bad.result is None and bad.error is not None \
                        and '"pgq.UnstorableOutcome"' in bad.error:
                    return []  # even the fallback failed: the lease will expire and reclaim it
                instead = Outcome(bad.job_id, bad.attempt, "failed", error=error_entry(
                    bad.attempt, self.worker_id, exc, type_name="pgq.UnstorableOutcome",
                    message=f"outcome {bad.state} could not be stored: {exc}"))
                self._stored_instead[bad.job_id] = instead  # a dead letter, logged as such
                return await self._store([instead])

    def _params(self, batch: list[Outcome]) -> dict[str, Any]:
        return {
            "ids": [o.job_id for o in batch], "attempts": [o.attempt for o in batch],
            "owners": [self.worker_id] * len(batch), "states": [o.state for o in batch],
            "delays": [o.delay for o in batch], "refunds": [o.refund for o in batch],
            "results": [o.result for o in batch], "errors": [o.error for o in batch],
            "now": self.clock.now(),
        }

    async def _connect(self) -> Conn:
        return await open_connection(self.settings, async_commit=self.config.async_commit)

    async def _reconnect(self, reason: Exception) -> Conn | None:
        """Keep trying while the worker runs, and during a stop for the shutdown grace
        period; then give up (None): the leases expire and the jobs are reclaimed."""
        assert self._conn is not None
        began = time.monotonic()

        async def wait(delay: float) -> bool:
            if self._stopping and time.monotonic() - began > self.config.shutdown_seconds:
                return False
            await asyncio.sleep(delay)
            return True

        return await reopen(self._conn, self._outage, reason, self._connect, wait)

    @contextmanager
    def transaction(self, ctx: Context) -> Iterator[psycopg.Connection[Any]]:
        """``ctx.transaction()``: the task's writes and its completion commit together
        (called on the task's thread)."""
        with connect(self.settings) as conn, conn.transaction():
            yield conn
            rows = execute(conn, "job_finish_many", {
                "ids": [ctx.job_id], "attempts": [ctx.attempt], "owners": [self.worker_id],
                "states": ["completed"], "delays": [0.0], "refunds": [0],
                "results": [ctx.encoded_result()], "errors": [None],
                "now": self.clock.now()})
            if not rows:
                raise LeaseLost(f"job {ctx.job_id}: lease lost before the transaction "
                                "committed; rolled back")
