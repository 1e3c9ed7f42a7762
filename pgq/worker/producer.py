"""The producer: claims jobs for the free slots and hands them to the executor.

Claims are sized to free capacity, per queue by weight (in turns carried across rounds)
or in strict order (``queues.allocate``), with one ``job_claim`` statement for all the
queues, each walk starting where that queue's live jobs start (``claim_cursor``). It
claims again at once when a queue came back full or when slots are left that a queue
not asked this round may fill; otherwise it waits for a wake-up (Redis or NOTIFY), a
freed slot or the poll interval. On its reclaim cadence it also returns expired leases
to their queues (``reclaim``), and now and then reports due jobs whose task this worker
does not know (they are never claimed, never failed).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Protocol

from pgq.client.app import App
from pgq.core.settings import Settings
from pgq.observability import metrics
from pgq.store.database import execute_async
from pgq.worker.claim_cursor import ClaimCursors
from pgq.worker.config import WorkerConfig
from pgq.worker.connection import ClaimLink
from pgq.worker.deadletters import FailedJob
from pgq.worker.held import HeldJobs, Outcome
from pgq.worker.joblog import log
from pgq.worker.queues import Turns, allocate
from pgq.worker.reclaim import reclaim

StopWhen = str | None
"""``"due"``/``"done"`` (demos and tests, ``Worker.run_async``) or None: run until stopped."""


class Outcomes(Protocol):
    """What the producer needs of the completer: the outcomes waiting, to send them with
    a claim (``job_finish_and_claim``), and a kick when it will not claim."""

    @property
    def waiting(self) -> int: ...
    def take(self) -> list[Outcome]: ...
    def stored(self, batch: list[Outcome], owned: set[int]) -> None: ...
    def give_back(self, batch: list[Outcome], *, failed: bool) -> None: ...
    def params(self, batch: list[Outcome]) -> dict[str, Any]: ...
    def kick(self) -> None: ...


class Producer:
    def __init__(self, app: App, config: WorkerConfig, settings: Settings, worker_id: str,
                 held: HeldJobs, run_job: Callable[[tuple[Any, ...], Any], None],
                 outcomes: Outcomes) -> None:
        self.app = app
        self.config = config
        self.settings = settings
        self.worker_id = worker_id
        self.held = held
        self.run_job = run_job
        """Starts a claimed job (the executor)."""
        self.outcomes = outcomes
        """The completer: outcomes waiting ride with the next claim."""
        self.dead_letter: Callable[[FailedJob, str], None] | None = None
        """Told of each job its reclaim ended ``failed`` (the dead-letter hooks' ``submit``)."""
        self.claiming = False
        """A claim statement is in flight."""
        self._looping = False
        """``run`` is claiming (not yet stopped)."""
        self.wake = asyncio.Event()
        """Set by a wake-up or a freed slot: claim now."""
        self.stop_requested = asyncio.Event()
        self.stopping = False
        """The worker is shutting down (every freed slot wakes the waiting drain)."""
        self.stop_when: StopWhen = None
        self._hungry: dict[str, bool] = dict.fromkeys((q.name for q in config.queues), True)
        """Per queue: may it have due work (its last claim came back full, or it was woken
        since, or it was never asked)? Unknown is hungry, never empty."""
        self._round = random.randrange(1 << 16)
        """Claim rounds, from a random start: it orders the queues' first turns, so worker
        processes serving the same queues start their rounds at different queues instead
        of all locking (and skipping) the same rows at the same moment."""
        self._turns = Turns()
        """Whose turn it is to get slots, carried from one claim round to the next."""
        self._cursors = ClaimCursors()
        """Where each queue's claimable jobs start, so claims skip the index's dead head."""
        self._isolated_due = True
        """Jobs that must run alone may be due (asked at start and every reclaim round)."""
        self.link = ClaimLink(settings, async_commit=config.async_commit,
                              poll_seconds=config.poll_seconds, label=f"worker {worker_id}",
                              log=log, stop_requested=lambda: self.stop_requested)

    def bind(self) -> None:
        """Fresh events for a run on the running loop (a worker may be run again, on
        another loop, as tests do)."""
        self.wake = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.stopping = False

    async def start(self) -> None:
        """Open the claim connection (checking the database's schema on it)."""
        await self.link.open()

    async def stop(self) -> None:
        await self.link.close()

    async def run(self) -> None:
        """Claim until a stop is requested (or, with ``stop_when``, the work is done)."""
        self._looping = True
        try:
            await self._run()
        finally:
            self._looping = False
            self.outcomes.kick()  # no claim will take what waits now

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_reclaim = loop.time()
        next_report = loop.time() + 5
        tasks = [t.name for t in self.app.registry]
        queues = [q.name for q in self.config.queues]
        stop_when = self.stop_when
        rechecked = -1  # stop_when="due": jobs claimed when every queue was last re-asked
        while not self.stop_requested.is_set():
            now = loop.time()
            if now >= next_reclaim:
                await self.link.safely(reclaim(self.link.conn, self.app.registry,
                                           reclaimer=self.worker_id,
                                           crash_budget=self.config.crash_budget,
                                           now=self.app.clock.now(),
                                           dead_letter=self.dead_letter))
                due = await self.link.safely(self._execute("job_isolated_due", {
                    "queues": queues, "tasks": tasks, "now": self.app.clock.now()}))
                self._isolated_due = self._isolated_due or bool(due and due[0][0])
                next_reclaim = now + self.config.reclaim_seconds
            if now >= next_report:
                await self.link.safely(self._report_unknown(queues, tasks))
                next_report = now + 60
            # Cleared before the claim, not after: a wake-up arriving while the claim is
            # in flight must survive it, or an idle worker sleeps a whole poll interval.
            self.wake.clear()
            if self._isolated_due and await self._claim_alone(queues, tasks):
                pass  # isolation owns this process until no isolated job is due
            elif await self._claim(tasks):
                continue  # a queue has more work: claim again at once
            self.outcomes.kick()  # not claiming now: outcomes waiting are stored without us
            if stop_when and not self.held and not self.outcomes.waiting:
                if stop_when == "due" and not self._isolated_due and not any(
                        self._hungry.get(q.name, True) for q in self.config.queues):
                    if rechecked == self.held.stats.claimed:
                        return  # every queue was asked since the last job was claimed
                    # A queue found empty earlier may have work due now, and with fewer
                    # slots than idle queues a round probes only some: ask each again.
                    self._hungry.update(dict.fromkeys(queues, True))
                    self._cursors.forget()  # and from their beginnings (claim_cursor)
                    rechecked = self.held.stats.claimed
                    continue
                if stop_when == "done" and not await self._active_jobs(queues, tasks):
                    return
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake_or_stop(), self.config.poll_seconds)

    async def _claim_alone(self, queues: list[str], tasks: list[str]) -> bool:
        """Jobs marked ``isolated`` (suspects of a worker crash, see ``reclaim``) run
        alone: claim one only when this process runs nothing else, and nothing else while
        it runs. Returns True while isolation owns the producer; False once none is due.
        A busy process stops claiming until its jobs end: the price, paid only while
        isolated jobs wait, of telling an innocent job from the one that crashes."""
        if self.held:
            return True
        rows = await self.link.safely(self._execute("job_claim_isolated", {
            "queues": queues, "tasks": tasks, "worker": self.worker_id,
            "lease_seconds": self.config.lease_seconds, "now": self.app.clock.now()},
            binary=True))
        if rows is None:
            return True  # the database is in trouble; try again next round
        if not rows:
            self._isolated_due = False
            return False
        self.held.stats.claimed += 1
        self.run_job(rows[0][:9], rows[0][9])  # the job, and its trace context
        return True

    def claim_coming(self) -> bool:
        """Will a claim start soon (so outcomes recorded now can ride with it)?"""
        return self.claiming or (self._looping and self.wake.is_set()
                                 and not self.stop_requested.is_set())

    def woken(self, queue: str) -> None:
        """A wake-up for ``queue`` (Redis or NOTIFY): it has work; claim now."""
        self._hungry[queue] = True
        self.wake.set()

    def slot_freed(self) -> None:
        """Claim now, if that can find anything: a queue whose last claim came back full
        (or was woken since) has more work. A queue that came back short is claimed again
        on its next wake-up or poll; claiming it at every freed slot cost two empty claims
        per job at low rates. Stopping, and the demo/test modes, always want to know."""
        if (self.stopping or self.stop_when is not None or self.stop_requested.is_set()
                or self._isolated_due or any(self._hungry.values())):
            self.wake.set()

    async def _wake_or_stop(self) -> None:
        wake = asyncio.ensure_future(self.wake.wait())
        stop = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait({wake, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            stop.cancel()

    async def _active_jobs(self, queues: list[str], tasks: list[str]) -> int:
        rows = await self._execute("job_count_active", {"queues": queues, "tasks": tasks})
        return int(rows[0][0])

    async def _claim(self, tasks: list[str]) -> bool:
        """Claim for the free slots. A slot is free once its task has finished, before
        its outcome is stored, so claiming overlaps with writing outcomes; but no more
        than ``concurrency`` outcomes may wait to be stored when a claim starts, so a
        worker holds at most ``max_held`` (2 x concurrency) jobs: a lagging database
        then stops claiming instead of letting the jobs' leases expire. A full batch of
        outcomes waiting still claims (the bound was ``< concurrency`` before): with
        quick tasks the next batch is claimed while the last one's outcomes are written,
        where claims and flushes of 10 no-op jobs used to run strictly in turn."""
        await self._gather_slots()
        batch = self.outcomes.take()  # stored by this claim's statement, if it runs
        running, waiting = self.held.running_by_queue()
        waiting -= len(batch)
        if waiting > self.config.concurrency:  # max-held: claimed + waiting <= 2 x concurrency
            if batch:
                self.outcomes.give_back(batch, failed=False)
            return False  # a forgotten job wakes the producer when the outcomes are stored
        self._round += 1
        limits = allocate(self.config.queues, self.config.concurrency, running, self._hungry,
                          strict=self.config.strict, rotation=self._round, turns=self._turns)
        wanted = {q: n for q, n in limits.items() if n > 0}
        if not wanted:
            if batch:
                self.outcomes.give_back(batch, failed=False)
            return False
        params = {
            "queues": list(wanted), "limits": list(wanted.values()), "tasks": tasks,
            "worker": self.worker_id, "lease_seconds": self.config.lease_seconds,
            "now": self.app.clock.now(), **self._cursors.bounds(list(wanted))}
        self.claiming = True
        try:
            if batch:
                rows = await self.link.safely(self._finish_and_claim(batch, params))
            else:
                rows = await self.link.safely(self._execute("job_claim", params, binary=True))
        finally:
            self.claiming = False
        if rows is None:
            if batch:
                self.outcomes.give_back(batch, failed=True)
            return False
        # job_claim's last two columns are each job's place in its queue (claim cursors).
        self._cursors.claimed((row[1], row[9], row[10], row[0]) for row in rows)
        if metrics.recorder.on:
            self._pickups(rows)
        got: dict[str, int] = {}
        for row in rows:
            got[row[1]] = got.get(row[1], 0) + 1
            self.run_job(row[:9], row[11])  # the job, and its trace context
        self.held.stats.claimed += len(rows)
        full = False
        woken = self.wake.is_set()  # during the claim
        for queue, n in wanted.items():
            hit = got.get(queue, 0) >= n
            self._hungry[queue] = hit or woken
            full = full or hit
        if full:
            return True
        # Slots are still free and a queue that may have work was not asked this round
        # (more such queues than free slots): its turn is next, now, not after a poll
        # interval. Each such round asks at least one of them or fills the slots, so
        # this ends within as many rounds as there are queues.
        free = self.config.concurrency - sum(running.values()) - len(rows)
        return free > 0 and any(
            self._hungry.get(q.name, True) and q.name not in wanted
            and (q.cap is None or running.get(q.name, 0) + got.get(q.name, 0) < q.cap)
            for q in self.config.queues)

    def _pickups(self, rows: list[Any]) -> None:
        """Each claimed job's pickup delay: its claim (``started_at``, the lease's start)
        minus when it was due (``run_at``, its enqueue for a job due at once)."""
        lease, pickup = self.config.lease_seconds, metrics.recorder.pickup
        for row in rows:
            pickup(row[1], (row[7] - row[10]).total_seconds() - lease)

    async def _gather_slots(self) -> None:
        """Wait (``claim_window`` at most) while jobs run and fewer than half the slots
        are free: more are about to free (see ``WorkerConfig.claim_window``)."""
        concurrency, window = self.config.concurrency, self.config.claim_window
        running, _ = self.held.running_by_queue()
        if window <= 0 or not sum(running.values()) > 0 or \
                2 * (concurrency - sum(running.values())) >= concurrency:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        self.claiming = True  # outcomes recorded meanwhile ride with this claim
        try:
            while 2 * (concurrency - sum(self.held.running_by_queue()[0].values())) < concurrency:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), deadline - loop.time())
                except TimeoutError:
                    return
        finally:
            self.claiming = False

    async def _finish_and_claim(self, batch: list[Outcome], params: dict[str, Any]
                                ) -> list[Any]:
        """Store ``batch`` and claim in one statement; returns the claimed rows (as
        ``job_claim`` returns them) and tells the completer which outcomes were stored."""
        began = time.monotonic()
        rows = await self._execute("job_finish_and_claim",
                                   {**self.outcomes.params(batch), **params}, binary=True)
        metrics.recorder.flushed(len(batch), time.monotonic() - began)
        self.outcomes.stored(batch, {row[1] for row in rows if row[0]})
        return [row[1:] for row in rows if not row[0]]

    async def _execute(self, name: str, params: dict[str, Any], *,
                       binary: bool = False) -> list[Any]:
        return await execute_async(self.link.conn, name, params, binary=binary)

    async def _report_unknown(self, queues: list[str], tasks: list[str]) -> None:
        for queue, task, count in await self._execute(
                "job_unknown_tasks", {"queues": queues, "tasks": tasks}):
            log.warning("%d due job(s) of task %r in queue %r are waiting for a worker that "
                        "knows that task; this worker does not (rolling deploy?)",
                        count, task, queue)
