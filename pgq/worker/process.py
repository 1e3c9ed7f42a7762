"""The worker: claims jobs, runs them, records their outcomes, and never loses one.

One worker process runs an asyncio loop that owns:

* the **producer**: claims batches sized to free capacity, per queue by weight (in turns
  carried across rounds) or strict order (``pgq.queues``), with one ``job_claim``
  statement; claims again at once when a queue came back full or slots are left that a
  queue not asked this round may fill, else waits for a freed slot or the poll interval;
* the **executor**: async tasks run as asyncio tasks on the loop, sync tasks on a pool of
  reused daemon threads (``pgq.executor``) with no asyncio task of their own; timeouts
  cancel async tasks and abandon (and signal) sync threads;
* the **completer**: outcomes are written in batches, one ``job_finish_many`` statement
  per flush (a flush window of ``completion_window`` seconds, 10 ms by default), every
  row fenced on (id, attempt, lease owner); a job keeps its slot and its lease until its
  outcome is stored, so a lagging database slows claiming instead of expiring leases;
* periodic **reclaim** of expired leases (``pgq.reclaim``) and a report of due jobs whose
  task this worker does not know (they are never claimed, never failed).

Leases are renewed by a **heartbeat thread** with its own connection, one
``job_heartbeat_many`` statement per interval for all of the process's jobs. Because
it is an OS thread doing blocking I/O (which releases the GIL), a task that blocks the
event loop, or sleeps in C, does not stop the heartbeat. C code that holds the GIL for
longer than the lease can still starve it: the lease then expires, the job is reclaimed,
and the stale worker's writes are fenced out and logged as "lease lost" — never silent.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import psycopg
from psycopg.types.array import ListBinaryDumper

from pgq.app import App
from pgq.claim_cursor import ClaimCursors
from pgq.context import Context, LeaseLost
from pgq.coordination import WakeupListener
from pgq.database import connect, connect_async, execute, execute_async
from pgq.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    InvalidArgsError,
    MigrationError,
    PgqError,
)
from pgq.executor import ThreadPool
from pgq.failure import error_entry
from pgq.leasetable import LeaseTable
from pgq.maintenance import Maintenance
from pgq.outage import Outage
from pgq.outcomes import Cancel, Fail, Retry, Snooze
from pgq.queues import QueueSpec, Turns, allocate
from pgq.reclaim import DEFAULT_CRASH_BUDGET, reclaim
from pgq.revision import SCHEMA_REVISION
from pgq.scheduler import Scheduler
from pgq.tasks import Task
from pgq.validation import encode_result

log = logging.getLogger("pgq.worker")

EXIT_OK = 0
EXIT_RECYCLE = 75
EXIT_CONFIG = 78
"""Exit code of a worker that cannot start (configuration, schema): the supervisor stops
instead of restarting it in a loop."""
DEFAULT_LEASE_SECONDS = 12.0
"""Short enough that a dead worker's jobs run again within about 17 s (lease, plus the
5 s reclaim cadence); long enough for three heartbeats (every 4 s) to fail before a job
is lost. Its cost: one heartbeat statement per process every 4 s, and a worker cut off
from PostgreSQL for more than 12 s has its jobs run elsewhere (fencing keeps its late
writes out). The supervisor renews leases too, so a task holding the GIL cannot lose one."""
ABANDON_GRACE_SECONDS = 1.0
"""How long a timed-out sync task has to return (heeding ``ctx.cancelled``) before its
thread counts as stuck towards ``max_abandoned_threads``."""
"""Exit code of a worker that stopped itself to be replaced (too many abandoned threads)."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    queues: tuple[QueueSpec, ...] = (QueueSpec("default"),)
    concurrency: int = 10
    """Jobs this process runs at once, all queues together."""
    strict: bool = False
    """Serve queues in strict order instead of by weight."""
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    """How long a claim or heartbeat keeps a job; a worker silent this long loses it, and
    its jobs run again within lease + ``reclaim_seconds`` (+ a claim): 17 s by default."""
    heartbeat_seconds: float | None = None
    """Heartbeat interval; default a third of the lease, so two heartbeats can fail."""
    poll_seconds: float = 1.0
    """Longest wait between claims when idle (the floor under wake-ups)."""
    shutdown_seconds: float = 30.0
    """Grace period on SIGTERM for running jobs before they are handed back."""
    reclaim_seconds: float = 5.0
    """How often this worker looks for expired leases to reclaim."""
    crash_budget: int = DEFAULT_CRASH_BUDGET
    """Times a job may lose its worker (crash, kill, hang) before it ends failed."""
    completion_window: float = 0.01
    """Seconds outcomes wait to be written together. A crash inside it re-runs those jobs."""
    max_abandoned_threads: int | None = None
    """Timed-out sync threads still running that are tolerated before the worker recycles
    itself (default: concurrency). A thread that returns after its timeout (a task that
    heeds ``ctx.cancelled``) no longer counts."""
    scheduler: bool = False
    """Also run the cron scheduler in this process (it fires only while leader)."""
    maintenance: bool = True
    """Campaign for the maintenance role (retention of finished jobs) in this process."""
    wakeups: bool = True
    """Listen for wake-ups (Redis SUBSCRIBE and PostgreSQL LISTEN). Off: poll only, for
    diagnosis and benchmarks; pickup then takes up to ``poll_seconds``."""
    async_commit: bool = False
    """Commit claims and outcomes with ``synchronous_commit = off``: no wait for the WAL
    flush. A crash of PostgreSQL (not of a worker) can then lose the last moments of
    them (up to 3 x ``wal_writer_delay``, 0.6 s by default): a lost completion runs its
    job again once the lease expires, a lost claim makes the job claimable again. No
    other guarantee changes; a task's own ``ctx.transaction()`` commits synchronously."""
    lock_wait_seconds: float = 0.5
    """A job whose run-time lock is taken waits this long (±50 %) before trying again,
    without spending an attempt."""

    def __post_init__(self) -> None:
        if not self.queues:
            raise ConfigError("a worker needs at least one queue")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if self.lease_seconds < 1 or self.poll_seconds <= 0 or self.shutdown_seconds < 0:
            raise ConfigError("lease must be >= 1 s, poll > 0 s and shutdown timeout >= 0 s")
        if self.crash_budget < 1:
            raise ConfigError("crash budget must be at least 1")

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds or self.lease_seconds / 3

    @property
    def max_held(self) -> int:
        """Jobs a worker holds at most (leases it owns): ``concurrency`` running and up
        to as many again whose outcomes wait to be stored. One batch of outcomes deeper
        than the running jobs lets the next claim run while the last outcomes are being
        written; a database that stops storing outcomes still stops the claims."""
        return 2 * self.concurrency


@dataclass(eq=False)
class _Running:
    job_id: int
    attempt: int
    task: Task
    ctx: Context
    started: float
    handle: asyncio.Future[Any] | None = None
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
    """Its entry in the lease table shared with the supervisor, if any."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    job_id: int
    attempt: int
    state: str
    delay: float = 0.0
    refund: int = 0
    result: str | None = None
    error: str | None = None


@dataclass
class _Stats:
    claimed: int = 0
    finished: dict[str, int] = field(default_factory=dict)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, app: App, config: WorkerConfig | None = None, *,
                 worker_id: str | None = None, lease_table: LeaseTable | None = None) -> None:
        self.app = app
        self.lease_table = lease_table
        """Shared with the supervisor, which renews these leases too (``pgq.leasetable``)."""
        self.config = config or WorkerConfig()
        self.settings = app.settings.for_lease(self.config.lease_seconds)
        """The app's settings for this worker's own connections (claims, outcomes,
        heartbeats, ``ctx.transaction()``): a silent network fails them within a quarter
        of the lease, so a heartbeat can reconnect and try again before the lease ends."""
        self.id = worker_id or new_worker_id()
        self.stats = _Stats()
        self._held: dict[int, _Running] = {}
        self._held_lock = threading.Lock()
        self._outcomes: list[_Outcome] = []
        self._hungry: dict[str, bool] = dict.fromkeys((q.name for q in self.config.queues), True)
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
        self._stopping = False
        self._abandoned = 0
        self._exit_code = EXIT_OK
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._flush_now: asyncio.Event | None = None
        self._all_decided: asyncio.Event | None = None
        self._storing = 0
        """Outcomes in the statement being written now (their jobs are still held)."""
        self._claim_outage = Outage(f"worker {self.id}: claim connection", logger=log)
        self._flush_outage = Outage(f"worker {self.id}: outcome connection", logger=log)
        self._stop_requested: asyncio.Event | None = None
        self._signals = 0
        self._isolated_due = True
        """Jobs that must run alone may be due (asked at start and every reclaim round)."""
        self._grace = self.config.shutdown_seconds
        self._stop_when: str | None = None
        if not app.registry:
            raise ConfigError("the app has no tasks registered; nothing for a worker to run")

    # --- public control ----------------------------------------------------------------

    def run(self, *, install_signals: bool = True,
            signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
        """Run until SIGTERM/SIGINT (or ``request_stop``); returns the exit code."""
        return asyncio.run(self.run_async(install_signals=install_signals, signals=signals))

    def request_stop(self) -> None:
        """Begin a graceful stop; thread-safe. A second request exits at once."""
        self._signals += 1
        if self._signals > 1:
            log.warning("second stop request: exiting now; leases will expire and be reclaimed")
            os._exit(1)
        if self._loop is not None and self._stop_requested is not None:
            self._loop.call_soon_threadsafe(self._stop_requested.set)

    def orphaned(self) -> None:
        """The supervisor died (thread-safe): stop now and hand every running job back,
        rather than run on with nobody to restart this process or renew its leases."""
        log.warning("worker %s: its supervisor is gone; stopping and handing its jobs back",
                    self.id)
        self._grace = 0.0
        if self._signals == 0:
            self.request_stop()

    async def run_async(self, *, install_signals: bool = False,
                        signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
                        stop_when: Literal["due", "done"] | None = None) -> int:
        """The worker's main coroutine. For demos and tests, ``stop_when="due"`` returns
        once nothing is running and nothing is due; ``"done"`` once no job of this
        worker's queues and tasks is active at all (waiting out retry backoffs)."""
        self._loop = asyncio.get_running_loop()
        self._stop_when = stop_when
        self._wake, self._flush_now, self._stop_requested, self._all_decided = (
            asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event())
        if install_signals:
            for sig in signals:
                self._loop.add_signal_handler(sig, self.request_stop)
        settings = self.settings
        self._pool = ThreadPool(self._loop)
        self._conn = await self._connect()
        await self._check_schema()
        self._flush_conn = await self._connect()
        heartbeat = _Heartbeat(self, connect(settings, autocommit=True))
        heartbeat.start()
        self.coordinator = self.app.coordinator
        loop = self._loop

        def on_wake(queue: str) -> None:  # called from the listener's threads
            loop.call_soon_threadsafe(self._woken, queue)

        listener = WakeupListener(self.coordinator, [q.name for q in self.config.queues], on_wake)
        if self.config.wakeups:
            listener.start()
        services = self._services()
        completer = asyncio.create_task(self._completer(), name="pgq-completer")
        log.info("worker %s started: queues=%s concurrency=%d%s", self.id,
                 ",".join(f"{q.name}={q.weight}" + (f":{q.cap}" if q.cap else "")
                          for q in self.config.queues),
                 self.config.concurrency, " strict" if self.config.strict else "")
        log.info("coordination: %s", ", ".join(
            f"{role}={mode}" for role, mode in self.coordinator.status().items()))
        try:
            await self._produce(stop_when)
            await self._drain()
        finally:
            self._stopping = True
            self._flush_now.set()
            await completer
            heartbeat.stop()
            listener.stop()
            for service in services:
                service.stop()
            await self._conn.close()
            await self._flush_conn.close()
            self._pool.shutdown()
            log.info("worker %s stopped: claimed=%d finished=%s", self.id,
                     self.stats.claimed, self.stats.finished)
        return self._exit_code

    def _services(self) -> list[Scheduler | Maintenance]:
        """The leader-only services this process campaigns for, started."""
        services: list[Scheduler | Maintenance] = []
        if self.config.maintenance:
            services.append(Maintenance(self.app, holder=self.id).start())
        if self.config.scheduler:
            services.append(Scheduler(self.app, holder=self.id).start())
        return services

    async def _check_schema(self) -> None:
        try:
            rows = await execute_async(self._conn, "schema_version", {})
        except MigrationError:
            rows = []
        current, wanted = (rows[0][0] if rows else None), SCHEMA_REVISION
        if current != wanted:
            await self._conn.close()
            raise MigrationError(f"the database's pgq schema is at {current or 'nothing'}, "
                                 f"this pgq needs {wanted}: run `pgq migrate` first")

    # --- producer ----------------------------------------------------------------------

    async def _produce(self, stop_when: str | None) -> None:
        assert self._wake is not None and self._stop_requested is not None
        loop = asyncio.get_running_loop()
        next_reclaim = loop.time()
        next_report = loop.time() + 5
        tasks = [t.name for t in self.app.registry]
        queues = [q.name for q in self.config.queues]
        rechecked = -1  # stop_when="due": jobs claimed when every queue was last re-asked
        while not self._stop_requested.is_set():
            now = loop.time()
            if now >= next_reclaim:
                await self._safely(reclaim(self._conn, self.app.registry, reclaimer=self.id,
                                           crash_budget=self.config.crash_budget,
                                           now=self.app.clock.now()))
                due = await self._safely(execute_async(self._conn, "job_isolated_due", {
                    "queues": queues, "tasks": tasks, "now": self.app.clock.now()}))
                self._isolated_due = self._isolated_due or bool(due and due[0][0])
                next_reclaim = now + self.config.reclaim_seconds
            if now >= next_report:
                await self._safely(self._report_unknown(queues, tasks))
                next_report = now + 60
            # Cleared before the claim, not after: a wake-up arriving while the claim is
            # in flight must survive it, or an idle worker sleeps a whole poll interval.
            self._wake.clear()
            if self._isolated_due and await self._claim_alone(queues, tasks):
                pass  # isolation owns this process until no isolated job is due
            elif await self._claim(tasks):
                continue  # a queue has more work: claim again at once
            if stop_when and not self._held and not self._outcomes:
                if stop_when == "due" and not self._isolated_due and not any(
                        self._hungry.get(q.name, True) for q in self.config.queues):
                    if rechecked == self.stats.claimed:
                        return  # every queue was asked since the last job was claimed
                    # A queue found empty earlier may have work due now, and with fewer
                    # slots than idle queues a round probes only some: ask each again.
                    self._hungry.update(dict.fromkeys(queues, True))
                    self._cursors.forget()  # and from their beginnings (pgq.claim_cursor)
                    rechecked = self.stats.claimed
                    continue
                if stop_when == "done" and not await self._active_jobs(queues, tasks):
                    return
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake_or_stop(), self.config.poll_seconds)

    async def _claim_alone(self, queues: list[str], tasks: list[str]) -> bool:
        """Jobs marked ``isolated`` (suspects of a worker crash, see ``pgq.reclaim``) run
        alone: claim one only when this process runs nothing else, and nothing else while
        it runs. Returns True while isolation owns the producer; False once none is due.
        A busy process stops claiming until its jobs end: the price, paid only while
        isolated jobs wait, of telling an innocent job from the one that crashes."""
        if self._held:
            return True
        rows = await self._safely(execute_async(self._conn, "job_claim_isolated", {
            "queues": queues, "tasks": tasks, "worker": self.id,
            "lease_seconds": self.config.lease_seconds, "now": self.app.clock.now()},
            binary=True))
        if rows is None:
            return True  # the database is in trouble; try again next round
        if not rows:
            self._isolated_due = False
            return False
        self.stats.claimed += 1
        self._start(rows[0])
        return True

    def _woken(self, queue: str) -> None:
        """A wake-up for ``queue`` (Redis or NOTIFY): it has work; claim now."""
        self._hungry[queue] = True
        assert self._wake is not None
        self._wake.set()

    async def _wake_or_stop(self) -> None:
        assert self._wake is not None and self._stop_requested is not None
        wake = asyncio.ensure_future(self._wake.wait())
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({wake, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            stop.cancel()

    async def _active_jobs(self, queues: list[str], tasks: list[str]) -> int:
        rows = await execute_async(self._conn, "job_count_active", {"queues": queues, "tasks": tasks})
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
        with self._held_lock:
            running: dict[str, int] = {}
            for r in self._held.values():
                if not r.decided:
                    running[r.ctx.queue] = running.get(r.ctx.queue, 0) + 1
            waiting = len(self._held) - sum(running.values())
        if waiting > self.config.concurrency:  # max-held: claimed + waiting <= 2 x concurrency
            return False  # _forget wakes the producer when the outcomes are stored
        self._round += 1
        limits = allocate(self.config.queues, self.config.concurrency, running, self._hungry,
                          strict=self.config.strict, rotation=self._round, turns=self._turns)
        wanted = {q: n for q, n in limits.items() if n > 0}
        if not wanted:
            return False
        rows = await self._safely(execute_async(self._conn, "job_claim", {
            "queues": list(wanted), "limits": list(wanted.values()), "tasks": tasks,
            "worker": self.id, "lease_seconds": self.config.lease_seconds,
            "now": self.app.clock.now(), **self._cursors.bounds(list(wanted))}, binary=True))
        if rows is None:
            return False
        # job_claim's last two columns are each job's place in its queue (claim cursors).
        self._cursors.claimed((row[1], row[9], row[10], row[0]) for row in rows)
        got: dict[str, int] = {}
        for row in rows:
            got[row[1]] = got.get(row[1], 0) + 1
            self._start(row[:9])
        self.stats.claimed += len(rows)
        full = False
        woken = self._wake is not None and self._wake.is_set()  # during the claim
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

    async def _safely(self, awaitable: Any) -> Any:
        """Database trouble in a loop step is logged and retried next round, never fatal.
        A lost or unusable server (restart, failover, a demoted primary, a cut
        connection) is an outage: reconnect with backoff, one log line each way."""
        try:
            result = await awaitable
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            # psycopg's own errors too: a step that opens a transaction itself (reclaim)
            # can be cut before pgq's error wrapping sees it.
            self._conn = await self._reconnect(self._conn, self._claim_outage, exc)
            return None
        except (PgqError, psycopg.Error) as exc:
            log.error("worker %s: %s", self.id, exc)
            if self._conn.closed or self._conn.broken:
                self._conn = await self._reconnect(self._conn, self._claim_outage, exc)
            else:
                await self._pause(min(self.config.poll_seconds, 1.0))  # back off, then retry
            return None
        self._claim_outage.recovered()
        return result

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once for a stop request."""
        assert self._stop_requested is not None
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)

    async def _report_unknown(self, queues: list[str], tasks: list[str]) -> None:
        for queue, task, count in await execute_async(
                self._conn, "job_unknown_tasks", {"queues": queues, "tasks": tasks}):
            log.warning("%d due job(s) of task %r in queue %r are waiting for a worker that "
                        "knows that task; this worker does not (rolling deploy?)",
                        count, task, queue)

    # --- executor ----------------------------------------------------------------------

    def _start(self, row: tuple[Any, ...]) -> None:
        job_id, queue, task_name, args, attempt, max_attempts, timeout, lease, _lost = row
        task = self.app.registry.get(task_name)
        assert task is not None, "the claim only takes known tasks"
        if timeout is None:  # enqueued by a producer that did not know the task
            timeout = task.timeout
        ctx = Context(job_id, task_name, queue, attempt, max_attempts, lease, self.id,
                      _transaction=self._transaction)
        running = _Running(job_id, attempt, task, ctx, time.monotonic())
        if task.lock is not None:
            try:
                running.lock_key = task.lock_key(args)
            except InvalidArgsError as exc:
                log.error("job=%s: %s", job_id, exc)
            running.lock_token = f"{self.id}:{job_id}:{attempt}"
        with self._held_lock:
            self._held[job_id] = running
        if self.lease_table is not None:
            running.slot = self.lease_table.put(job_id, attempt, timeout)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("job=%s task=%s args=%s", job_id, task_name, json.dumps(args))
        if task.is_async or running.lock_key is not None:
            running.handle = asyncio.ensure_future(self._execute(running, args, timeout))
        else:
            self._run_sync(running, args, timeout)

    async def _execute(self, running: _Running, args: dict[str, Any],
                       timeout: float | None) -> None:
        """An async task, or any task with a run-time lock to take first."""
        task, ctx = running.task, running.ctx
        if running.lock_key is not None and not await self._acquire_lock(running):
            running.lock_key = None  # not ours: nothing to renew or release
            wait = self.config.lock_wait_seconds * random.uniform(0.5, 1.5)
            self._record(running, _Outcome(running.job_id, running.attempt, "scheduled",
                                           delay=wait, refund=1))
            return
        running.lock_held = running.lock_key is not None
        if not task.is_async:
            if not running.released and not running.lost:
                self._run_sync(running, args, timeout)
            return
        call_args = (ctx,) if task.takes_context else ()
        timer = asyncio.timeout(timeout)
        try:
            async with timer:
                result = await self._call_async(task, ctx, call_args, args)
            outcome = self._outcome_or_internal_failure(
                running, lambda: self._success(running, result))
        except asyncio.CancelledError:
            if not running.released and not running.lost:
                raise
            return
        except BaseException as exc:
            if isinstance(exc, TimeoutError) and timer.expired():
                ctx.cancelled.set()
                expired: BaseException = exc
                outcome = self._outcome_or_internal_failure(
                    running, lambda: self._failure(running, expired, timed_out=timeout))
            else:
                outcome = self._raised(running, exc)
        if outcome is not None:
            self._record(running, outcome)

    def _run_sync(self, running: _Running, args: dict[str, Any], timeout: float | None) -> None:
        """A sync task on the thread pool. No asyncio task per job: the pool calls
        ``_sync_done`` on the loop, and a timer on the loop handles the timeout."""
        task, ctx = running.task, running.ctx
        fn = task.fn
        call_args = (ctx,) if task.takes_context else ()
        if self.app.middleware:
            def call() -> Any:
                with self._middleware(ctx):
                    return fn(*call_args, **args)
        else:
            call = functools.partial(fn, *call_args, **args)
        assert self._loop is not None
        timer = (self._loop.call_later(timeout, self._sync_timed_out, running, timeout)
                 if timeout is not None else None)
        self._pool.submit(call, functools.partial(self._sync_done, running, timer))

    def _sync_done(self, running: _Running, timer: asyncio.TimerHandle | None, ok: bool,
                   value: Any) -> None:
        if timer is not None:
            timer.cancel()
        if running.timed_out:
            # An abandoned thread came back (a task that heeds ctx.cancelled): it is no
            # longer stuck, and counts no more towards recycling the worker.
            self._abandoned -= 1
            log.info("job=%s task=%s: its abandoned thread returned (%d still out)",
                     running.job_id, running.task.name, self._abandoned)
        if running.timed_out or running.released or running.lost:
            return  # already decided: failed at its timeout, handed back, or not ours
        if ok:
            outcome = self._outcome_or_internal_failure(
                running, lambda: self._success(running, value))
        else:
            outcome = self._raised(running, value)
        if outcome is not None:
            self._record(running, outcome)

    def _sync_timed_out(self, running: _Running, timeout: float) -> None:
        """A sync task overran its timeout: fail the attempt now and abandon its thread
        (a thread cannot be stopped; ``ctx.cancelled`` asks it to)."""
        if running.released or running.lost:
            return
        running.timed_out = True
        running.ctx.cancelled.set()
        self._abandon_thread(running)
        outcome = self._outcome_or_internal_failure(
            running, lambda: self._failure(running, TimeoutError(), timed_out=timeout))
        if outcome is not None:
            self._record(running, outcome)

    def _raised(self, running: _Running, exc: BaseException) -> _Outcome | None:
        failure = exc
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            failure = RuntimeError(f"task raised {type(exc).__name__}")
        return self._outcome_or_internal_failure(running, lambda: self._failure(running, failure))

    async def _acquire_lock(self, running: _Running) -> bool:
        assert running.lock_key is not None
        try:
            return await asyncio.to_thread(
                self.coordinator.lock_acquire, running.lock_key, running.lock_token, self.id,
                self.config.lease_seconds)
        except PgqError as exc:  # cannot tell: wait as if taken, no attempt spent
            log.warning("job=%s: could not take run-time lock %r: %s", running.job_id,
                        running.lock_key, exc)
            return False

    def _outcome_or_internal_failure(self, running: _Running, make: Callable[[], _Outcome | None],
                                     ) -> _Outcome | None:
        try:
            return make()
        except Exception as exc:  # a bug in pgq or in a task's policy must not strand the job
            log.exception("job=%s: could not decide the outcome", running.job_id)
            return _Outcome(running.job_id, running.attempt, "failed", error=error_entry(
                running.attempt, self.id, exc, type_name="pgq.InternalError"))

    async def _call_async(self, task: Task, ctx: Context, call_args: tuple[Any, ...],
                          args: dict[str, Any]) -> Any:
        with self._middleware(ctx):
            return await task.fn(*call_args, **args)

    @contextmanager
    def _middleware(self, ctx: Context) -> Iterator[None]:
        with ExitStack() as stack:
            for middleware in self.app.middleware:
                stack.enter_context(middleware(ctx))
            yield

    def _abandon_thread(self, running: _Running) -> None:
        self._abandoned += 1
        limit = self.config.max_abandoned_threads or self.config.concurrency
        log.warning("job=%s task=%s: sync task exceeded its timeout; its thread is abandoned "
                    "(%d/%d) and told to stop via ctx.cancelled", running.job_id,
                    running.task.name, self._abandoned, limit)
        # Judged a moment later: a task that heeds ctx.cancelled returns by then.
        assert self._loop is not None
        self._loop.call_later(ABANDON_GRACE_SECONDS, self._check_abandoned)

    def _check_abandoned(self) -> None:
        limit = self.config.max_abandoned_threads or self.config.concurrency
        if self._abandoned >= limit and not self._stopping and self._exit_code != EXIT_RECYCLE:
            # Once: a second request_stop() would mean "exit now".
            log.error("worker %s: %d abandoned threads; stopping so a fresh process replaces it",
                      self.id, self._abandoned)
            self._exit_code = EXIT_RECYCLE
            self.request_stop()

    def _success(self, running: _Running, result: Any) -> _Outcome | None:
        if running.ctx.completed_in_transaction:
            self._log(running, "completed", "in its transaction")
            self._forget(running, "completed")
            return None
        if running.lost:
            # Given up while it returned (its heartbeat judged the lease gone): the result
            # is not this worker's to store; lease_lost forgets the job.
            return None
        try:
            encoded = encode_result(result)
        except InvalidArgsError as exc:
            log.warning("job=%s task=%s: %s; stored as null", running.job_id,
                        running.task.name, exc)
            encoded = None
        return _Outcome(running.job_id, running.attempt, "completed", result=encoded)

    def _failure(self, running: _Running, exc: BaseException,
                 timed_out: float | None = None) -> _Outcome | None:
        ctx, job_id, attempt = running.ctx, running.job_id, running.attempt
        if running.lost or isinstance(exc, LeaseLost):
            self._log(running, "lease-lost", "nothing written; the new owner decides")
            self._forget(running, "lease-lost")
            return None
        if isinstance(exc, Snooze):
            return _Outcome(job_id, attempt, "scheduled", delay=exc.delay, refund=1)
        if isinstance(exc, Cancel):
            return _Outcome(job_id, attempt, "cancelled",
                            error=error_entry(attempt, self.id, exc))
        if timed_out is not None:
            error = error_entry(attempt, self.id, exc, type_name="pgq.Timeout",
                                message=f"attempt exceeded its timeout of {timed_out:g}s")
        else:
            error = error_entry(attempt, self.id, exc)
        if isinstance(exc, Fail) or attempt >= ctx.max_attempts:
            return _Outcome(job_id, attempt, "failed", error=error)
        delay = exc.delay if isinstance(exc, Retry) else running.task.backoff.delay(attempt)
        return _Outcome(job_id, attempt, "retryable", delay=delay, error=error)

    # --- completer ---------------------------------------------------------------------

    def _record(self, running: _Running, outcome: _Outcome) -> None:
        running.decided = True
        self._outcomes.append(outcome)
        assert self._flush_now is not None and self._all_decided is not None
        assert self._wake is not None
        self._flush_now.set()
        self._slot_freed()
        if len(self._outcomes) + self._storing >= len(self._held):
            self._all_decided.set()

    async def _completer(self) -> None:
        """Writes outcomes in batches. A batch waits for more outcomes at most
        ``completion_window`` seconds, and not at all once every held job has its outcome
        (nothing more is coming, and the slots they hold are what the producer waits for),
        nor once ``concurrency`` outcomes wait (a batch as large as a claim: the producer,
        which may claim while one such batch is written, would wait on it)."""
        assert self._flush_now is not None and self._all_decided is not None
        while True:
            await self._flush_now.wait()
            if self._outcomes and not self._stopping and \
                    len(self._outcomes) < self.config.concurrency and \
                    len(self._outcomes) + self._storing < len(self._held):
                self._all_decided.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._all_decided.wait(),
                                           self.config.completion_window)
            self._flush_now.clear()
            batch, self._outcomes = self._outcomes, []
            if batch:
                self._storing = len(batch)
                try:
                    await self._flush(batch)
                finally:
                    self._storing = 0
            if self._stopping and not self._outcomes:
                return

    async def _flush(self, batch: list[_Outcome]) -> None:
        rows = await self._store(batch)
        stored = {row[0] for row in rows}
        for outcome in batch:
            running = self._held.get(outcome.job_id)
            if running is None:
                continue
            if outcome.job_id in stored:
                self._log(running, outcome.state, _detail(outcome))
                self._forget(running, outcome.state)
            else:
                self._log(running, "lease-lost", f"outcome {outcome.state} discarded: "
                          "the job was reclaimed by another worker")
                self._forget(running, "lease-lost")

    async def _store(self, batch: list[_Outcome]) -> list[Any]:
        """Write ``batch``; returns the rows still owned (the others were fenced out).

        A lost connection is retried until it comes back: the jobs keep their slots and
        leases meanwhile, so claiming pauses instead of leases expiring. An outcome the
        database refuses (a data error) must not poison its batch: the batch is split,
        and a row that still fails is stored as ``failed`` with the reason instead."""
        while True:
            try:
                rows = await execute_async(self._flush_conn, "job_finish_many",
                                           self._finish_params(batch), binary=True)
                self._flush_outage.recovered()
                return rows
            except DatabaseError as exc:
                if self._flush_conn.closed or self._flush_conn.broken or isinstance(
                        exc, DatabaseUnavailable):
                    conn = await self._reconnect(self._flush_conn, self._flush_outage, exc,
                                                 flush=True)
                    if conn is None:
                        log.error("worker %s: stopping without recording %d outcome(s): the "
                                  "database stayed unavailable (%s); their leases will expire "
                                  "and the jobs be reclaimed", self.id, len(batch), exc)
                        return []
                    self._flush_conn = conn
                    continue
                if len(batch) > 1:
                    return [row for one in batch for row in await self._store([one])]
                (bad,) = batch
                log.error("job=%s: the database refused its outcome %s (%s); recording it as "
                          "failed", bad.job_id, bad.state, exc)
                if bad.state == "failed" and bad.result is None and bad.error is not None \
                        and '"pgq.UnstorableOutcome"' in bad.error:
                    return []  # even the fallback failed: the lease will expire and reclaim it
                return await self._store([_Outcome(bad.job_id, bad.attempt, "failed", error=error_entry(
                    bad.attempt, self.id, exc, type_name="pgq.UnstorableOutcome",
                    message=f"outcome {bad.state} could not be stored: {exc}"))])

    def _finish_params(self, batch: list[_Outcome]) -> dict[str, Any]:
        return {
            "ids": [o.job_id for o in batch], "attempts": [o.attempt for o in batch],
            "owners": [self.id] * len(batch), "states": [o.state for o in batch],
            "delays": [o.delay for o in batch], "refunds": [o.refund for o in batch],
            "results": [o.result for o in batch], "errors": [o.error for o in batch],
            "now": self.app.clock.now(),
        }

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        """A claim or flush connection (autocommit: each statement commits at once)."""
        conn = await connect_async(self.settings, autocommit=True)
        # The hot-path statements take one array per column; psycopg dumps a list as
        # text by default, quoting element by element in Python: 150 us per claim of ten
        # queues (most of it the claim cursors' timestamps), 100 us per flush of ten
        # outcomes. Binary lists cost a third of that, and the same for any queue count.
        conn.adapters.register_dumper(list, ListBinaryDumper)
        if self.config.async_commit:
            try:
                await conn.execute("SET synchronous_commit = off")
            except psycopg.Error as exc:
                await conn.close()
                raise DatabaseUnavailable(f"could not set synchronous_commit: {exc}") from exc
        return conn

    @overload
    async def _reconnect(self, conn: psycopg.AsyncConnection[Any], outage: Outage,
                         reason: Exception) -> psycopg.AsyncConnection[Any]: ...

    @overload
    async def _reconnect(self, conn: psycopg.AsyncConnection[Any], outage: Outage,
                         reason: Exception, *, flush: Literal[True]
                         ) -> psycopg.AsyncConnection[Any] | None: ...

    async def _reconnect(self, conn: psycopg.AsyncConnection[Any], outage: Outage,
                         reason: Exception, *, flush: bool = False
                         ) -> psycopg.AsyncConnection[Any] | None:
        """Replace ``conn`` (broken, or open to a server that cannot serve pgq: a demoted
        primary, one shutting down): wait out the outage with backoff, then connect.

        The claim connection stops waiting when a stop is requested (the closed
        connection is returned; the producer is about to exit). The outcome connection
        keeps trying while the worker runs, and during a stop for the shutdown grace
        period; then it gives up (None): the leases expire and the jobs are reclaimed."""
        with suppress(Exception):
            await conn.close()
        began = time.monotonic()
        while True:
            delay = outage.failed(reason)
            if flush:
                if self._stopping and time.monotonic() - began > self.config.shutdown_seconds:
                    return None
                await asyncio.sleep(delay)
            else:
                await self._pause(delay)
                if self._stop_requested is not None and self._stop_requested.is_set():
                    return conn
            try:
                return await self._connect()
            except PgqError as exc:
                reason = exc

    def _forget(self, running: _Running, outcome: str) -> None:
        with self._held_lock:
            self._held.pop(running.job_id, None)
        if running.slot is not None and self.lease_table is not None:
            slot, running.slot = running.slot, None
            self.lease_table.clear(slot)
        if running.lock_key is not None:
            key, running.lock_key = running.lock_key, None
            threading.Thread(target=self._release_lock, args=(key, running.lock_token),
                             daemon=True).start()
        self.stats.finished[outcome] = self.stats.finished.get(outcome, 0) + 1
        self._slot_freed()

    def _slot_freed(self) -> None:
        """Claim now, if that can find anything: a queue whose last claim came back full
        (or was woken since) has more work. A queue that came back short is claimed again
        on its next wake-up or poll; claiming it at every freed slot cost two empty claims
        per job at low rates. Stopping, and the demo/test modes, always want to know."""
        if self._wake is not None and (self._stopping or self._stop_when is not None
                                       or (self._stop_requested is not None
                                       and self._stop_requested.is_set())
                                       or self._isolated_due or any(self._hungry.values())):
            self._wake.set()

    def _release_lock(self, key: str, token: str) -> None:
        try:
            self.coordinator.lock_release(key, token)
        except PgqError as exc:  # it expires with its TTL
            log.warning("could not release lock %r: %s", key, exc)

    def held_locks(self) -> list[tuple[int, str, str]]:
        with self._held_lock:
            return [(r.job_id, r.lock_key, r.lock_token) for r in self._held.values()
                    if r.lock_key is not None and r.lock_held and not r.lost]

    def _log(self, running: _Running, outcome: str, detail: str = "") -> None:
        ctx = running.ctx
        level = _LOG_LEVELS.get(outcome, logging.INFO)
        if not log.isEnabledFor(level):
            return  # the arguments cost more than the check, thousands of times a second
        # The record Logger.log would make and handle, without its search of the call
        # stack for the caller (findCaller): a fifth of the line's CPU, once per job. The
        # record names this method as its origin, as that search did.
        code = Worker._log.__code__
        log.handle(log.makeRecord(
            log.name, level, code.co_filename, code.co_firstlineno,
            "job=%s task=%s queue=%s attempt=%d/%d outcome=%s duration=%.3fs%s",
            (ctx.job_id, ctx.task, ctx.queue, ctx.attempt, ctx.max_attempts, outcome,
             time.monotonic() - running.started, f" {detail}" if detail else ""),
            None, code.co_name, {"job_id": ctx.job_id, "task": ctx.task, "queue": ctx.queue,
                                 "attempt": ctx.attempt, "outcome": outcome}))

    # --- lease loss and shutdown -------------------------------------------------------

    def lease_lost(self, job_id: int, *, judged: bool = False) -> None:
        """Called (on the loop) when a heartbeat finds the job no longer ours, or, with
        ``judged``, when the heartbeat gave it up because no renewal succeeded for most
        of the lease (it marked the job lost itself, and logged that once for all)."""
        running = self._held.get(job_id)
        if running is None or running.ctx.completed_in_transaction or (
                running.lost and not judged):
            return
        if running.decided and not judged:
            # Its outcome is being stored: a heartbeat that ran while that commit landed
            # no longer finds it running. The fenced write itself says whether it was
            # still ours (and logs lease-lost if not); calling it lost here was a false
            # alarm that also dropped a completed job from the stats.
            return
        running.lost = True
        running.ctx.cancelled.set()
        if not judged:
            log.warning("job=%s task=%s: lease lost (reclaimed or cancelled); stopping it",
                        job_id, running.task.name)
        if running.handle is not None and running.task.is_async:
            running.handle.cancel()
        self._forget(running, "lease-lost")

    async def _drain(self) -> None:
        """Graceful stop: let running jobs finish within the grace period, then hand the
        rest back as ``available`` without spending their attempt."""
        if not self._held:
            return
        log.info("worker %s stopping: waiting up to %ss for %d running job(s)", self.id,
                 self._grace, len(self._held))
        deadline = asyncio.get_running_loop().time() + self._grace
        while self._held and asyncio.get_running_loop().time() < deadline:
            assert self._wake is not None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(),
                                       deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                break
        with self._held_lock:
            leftovers = [r for r in self._held.values() if not r.released]
        for running in leftovers:
            pending = any(o.job_id == running.job_id for o in self._outcomes)
            if pending:
                continue  # finished just now; its outcome is being written
            running.released = True
            running.ctx.cancelled.set()
            if running.handle is not None:
                running.handle.cancel()
            self._record(running, _Outcome(running.job_id, running.attempt, "available",
                                           refund=1))
        if leftovers:
            log.warning("worker %s: handed %d unfinished job(s) back to their queues",
                        self.id, len(leftovers))

    # --- transactional completion -------------------------------------------------------

    @contextmanager
    def _transaction(self, ctx: Context) -> Iterator[psycopg.Connection[Any]]:
        with connect(self.settings) as conn, conn.transaction():
            yield conn
            rows = execute(conn, "job_finish_many", {
                "ids": [ctx.job_id], "attempts": [ctx.attempt], "owners": [self.id],
                "states": ["completed"], "delays": [0.0], "refunds": [0],
                "results": [ctx.encoded_result()], "errors": [None],
                "now": self.app.clock.now()})
            if not rows:
                raise LeaseLost(f"job {ctx.job_id}: lease lost before the transaction "
                                "committed; rolled back")

    def leases_renewed(self, deadlines: dict[int, Any]) -> None:
        """Heartbeat thread: publish the new lease deadlines to the tasks' contexts."""
        with self._held_lock:
            for job_id, deadline in deadlines.items():
                running = self._held.get(job_id)
                if running is not None:
                    running.ctx.lease_expires_at = deadline

    def held_snapshot(self) -> list[tuple[int, int, str | None]]:
        """The leases to renew: running jobs, not those lost or already completed by
        their own ``ctx.transaction()`` (no longer ``running``, so not ours to renew)."""
        with self._held_lock:
            return [(r.job_id, r.attempt, r.ctx.take_progress())
                    for r in self._held.values()
                    if not r.lost and not r.ctx.completed_in_transaction]


_LOG_LEVELS = {"completed": logging.DEBUG, "failed": logging.WARNING,
               "lease-lost": logging.WARNING}
"""Level of the per-job line by outcome; others (retryable, scheduled, cancelled, handed
back) are INFO. A success is DEBUG: at INFO one line per job cost 18 % of the drain rate
(bench drain_cmp_2p against drain_cmp_2p_warning), and what an operator needs about
successes is a rate, which counters give; what went wrong stays visible by default."""


def _detail(outcome: _Outcome) -> str:
    if outcome.state in ("retryable", "scheduled"):
        return f"retry_in={outcome.delay:.1f}s"
    return ""


LEASE_MARGIN_SECONDS = 2.0
"""A worker whose heartbeats keep failing gives its jobs up this long (at most a sixth
of the lease) before their leases can expire, so they stop before another worker may
reclaim them."""


class _Heartbeat(threading.Thread):
    """Renews every lease of the process, once per interval, from its own thread and
    connection, so the event loop being busy or blocked cannot stop it.

    It also judges those leases while the database cannot be reached: once renewals
    have been failing and none has succeeded for ``give_up_after`` seconds (the lease
    less a margin), a job is no longer this worker's to run: its lease ends soon and
    another worker may reclaim it. The verdict comes from a second thread
    (``pgq-lease-judge``), so a renewal stuck on a silent network cannot delay it: the
    jobs are told to stop (``ctx.cancelled``; async tasks are cancelled), stop counting
    against the concurrency, and their outcomes are never written; one WARNING says so.
    They run again once their leases expire. A heartbeat merely starved of the GIL makes
    no failed attempt, so it gives nothing up (the supervisor renews such leases)."""

    def __init__(self, worker: Worker, conn: psycopg.Connection[Any]) -> None:
        super().__init__(name="pgq-heartbeat", daemon=True)
        self.worker = worker
        self.conn = conn
        self._outage = Outage(f"worker {worker.id}: heartbeat connection", logger=log)
        self._stop_event = threading.Event()
        self._renewed = time.monotonic()
        """When the last renewal that succeeded began: the leases it renewed run until
        at least then plus the lease (the database's clock read it later)."""
        lease = worker.config.lease_seconds
        self.give_up_after = lease - min(LEASE_MARGIN_SECONDS, lease / 6)
        self._judge = threading.Thread(target=self._judge_leases, name="pgq-lease-judge",
                                       daemon=True)

    def start(self) -> None:
        super().start()
        self._judge.start()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self._judge.join(timeout=5)
        self.conn.close()

    def _judge_leases(self) -> None:
        """Give up the jobs whose leases no renewal could extend (see the class)."""
        worker = self.worker
        given_up: set[int] = set()
        while not self._stop_event.wait(min(0.25, self.give_up_after / 10)):
            if not self._outage.ongoing:
                given_up.clear()
                continue
            now = time.monotonic()
            with worker._held_lock:
                # A job claimed after the last renewal has its lease from the claim.
                overdue = [r for r in worker._held.values()
                           if not (r.lost or r.decided or r.released or r.job_id in given_up
                                   or r.ctx.completed_in_transaction)
                           and now - max(self._renewed, r.started) >= self.give_up_after]
                for running in overdue:
                    running.lost = True  # before it is told: its result must not be stored
            if not overdue:
                continue
            log.warning("worker %s: no heartbeat has renewed its leases for %.1f s (lease "
                        "%g s) and the database does not answer; giving up %d running "
                        "job(s) before their leases expire (%s): they are told to stop, "
                        "their outcomes will not be written, and they run again once the "
                        "leases expire", worker.id, now - self._renewed,
                        worker.config.lease_seconds, len(overdue),
                        ", ".join(f"job={r.job_id}" for r in overdue))
            loop = worker._loop
            for running in overdue:
                given_up.add(running.job_id)
                if loop is not None:
                    loop.call_soon_threadsafe(
                        functools.partial(worker.lease_lost, running.job_id, judged=True))
                running.ctx.cancelled.set()  # now, even if the loop is busy

    def run(self) -> None:
        worker = self.worker
        interval = worker.config.heartbeat_interval
        wait = interval
        while not self._stop_event.wait(wait):
            wait = interval
            held = worker.held_snapshot()
            if not held:
                continue
            began = time.monotonic()
            try:
                rows = execute(self.conn, "job_heartbeat_many", {
                    "ids": [h[0] for h in held], "attempts": [h[1] for h in held],
                    "progress": [h[2] for h in held], "worker": worker.id,
                    "lease_seconds": worker.config.lease_seconds, "now": worker.app.clock.now()})
            except DatabaseUnavailable as exc:
                # Retried with the outage's backoff, not a whole interval later: the
                # leases are running out. An outage that outlasts them is judged by
                # _judge_leases; fencing keeps any late write of this worker out.
                wait = min(interval, self._outage.failed(exc))
                with suppress(Exception):
                    self.conn.close()
                with suppress(PgqError):
                    self.conn = connect(worker.settings, autocommit=True)
                continue
            except PgqError as exc:
                log.error("worker %s: heartbeat failed: %s", worker.id, exc)
                continue
            self._renewed = began
            self._outage.recovered()
            alive = dict(rows)
            worker.leases_renewed(alive)
            loop = worker._loop
            for job_id, key, token in worker.held_locks():
                try:
                    kept = worker.coordinator.lock_renew(key, token, worker.id,
                                                         worker.config.lease_seconds)
                except PgqError:
                    kept = True  # cannot tell now; the next heartbeat tries again
                if not kept:
                    log.warning("job=%s: run-time lock %r lost; stopping it", job_id, key)
                    alive.pop(job_id, None)
            for job_id, _attempt, _progress in held:
                if job_id not in alive and loop is not None:
                    loop.call_soon_threadsafe(worker.lease_lost, job_id)
