"""``Worker``: one worker process, wiring its services and owning start and stop.

The services, each in its own module with the same start/stop shape:

* the **producer** (``producer``) claims batches for the free slots and hands each job
  to the **executor** (``executor``), which runs it and decides its outcome;
* the **completer** (``completer``) stores the outcomes in batches, fenced on the lease;
* the **heartbeat** (``heartbeat``), a thread with its own connection, renews the leases
  of every job the process holds, whatever the event loop is doing;
* the wake-up listener (``pgq.coordination``) and the leader-only services this process
  campaigns for (maintenance, and the cron scheduler when asked);
* the dead-letter hooks (``deadletters``), a thread that tells the app's
  ``on_dead_letter`` hooks about each job the completer stored as ``failed`` and each
  one the producer's reclaim failed (a lost worker's crash budget or last attempt spent).

They share one table, ``held.HeldJobs`` (the jobs this process holds a lease on), and
call each other through the few callables wired here; a job is forgotten, with all it
holds, in one place (``HeldJobs.forget``). The supervisor (``supervisor``) runs every
worker process and renews their jobs' leases too, so a task holding the GIL cannot lose
its lease, and it ends a child whose sync task overruns its hard timeout.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from pgq.client.app import App
from pgq.coordination import Coordinator, WakeupListener
from pgq.core.errors import ConfigError, PgqError
from pgq.observability import metrics
from pgq.scheduling.maintenance import Maintenance
from pgq.scheduling.scheduler import Scheduler
from pgq.scheduling.service import LeaderService
from pgq.scheduling.stats import StatsService
from pgq.worker import control
from pgq.worker.completer import Completer
from pgq.worker.config import EXIT_OK, EXIT_RECYCLE, WorkerConfig, new_worker_id
from pgq.worker.deadletters import DeadLetterHooks
from pgq.worker.executor import Executor
from pgq.worker.heartbeat import Heartbeat
from pgq.worker.held import HeldJobs, Stats
from pgq.worker.joblog import log
from pgq.worker.leasetable import LOOP, LeaseTable
from pgq.worker.producer import Producer

PULSE_SECONDS = 1.0
"""How often the event loop marks itself alive for the liveness probe."""


class Worker:
    def __init__(self, app: App, config: WorkerConfig | None = None, *,
                 worker_id: str | None = None, lease_table: LeaseTable | None = None) -> None:
        if not app.registry:
            raise ConfigError("the app has no tasks registered; nothing for a worker to run")
        self.app = app
        self.config = config or WorkerConfig()
        self.settings = app.settings.for_lease(self.config.lease_seconds)
        """The app's settings for this worker's own connections (claims, outcomes,
        heartbeats, ``ctx.transaction()``): a silent network fails them within a quarter
        of the lease, so a heartbeat can reconnect and try again before the lease ends."""
        self.id = worker_id or new_worker_id()
        self.coordinator: Coordinator = app.coordinator
        self.held = HeldJobs(lease_table, self._release_lock)
        self.completer = Completer(self.held, self.config, self.settings, app.clock, self.id)
        self.executor = Executor(app, self.config, self.id, self.held, self.completer.record,
                                 self.completer.transaction, self.coordinator, self._recycle)
        self.producer = Producer(app, self.config, self.settings, self.id, self.held,
                                 self.executor.run, self.completer)
        self.held.on_freed = self.producer.slot_freed
        self.completer.claim_coming = self.producer.claim_coming
        self.dead_letters = DeadLetterHooks(app.dead_letter_hooks)
        self.completer.dead_letter = self.dead_letters.submit
        self.producer.dead_letter = self.dead_letters.submit  # jobs its reclaim failed
        self._supervised = lease_table is not None
        """A supervisor's child: ``pgq worker`` gave the start-up warnings once for all."""
        self._exit_code = EXIT_OK
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        self._grace = self.config.shutdown_seconds
        self._checks: set[asyncio.Future[None]] = set()
        self._ticker: asyncio.TimerHandle | None = None

    @property
    def stats(self) -> Stats:
        return self.held.stats

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
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.producer.stop_requested.set)

    def orphaned(self) -> None:
        """The supervisor died (thread-safe): stop now and hand every running job back,
        rather than run on with nobody to restart this process or renew its leases."""
        log.warning("worker %s: its supervisor is gone; stopping and handing its jobs back",
                    self.id)
        self._grace = 0.0
        if self._signals == 0:
            self.request_stop()

    def lease_lost(self, job_id: int, *, judged: bool = False) -> None:
        """On the loop: the job is no longer this worker's (see ``Executor.lease_lost``)."""
        self.executor.lease_lost(job_id, judged=judged)

    def _lost_or_cancelled(self, job_id: int) -> None:
        """On the loop: the heartbeat found the job no longer running; read its row to
        log an operator's cancel as such (a control message usually came first)."""
        running = self.held.get(job_id)
        if running is None or running.lost:
            return

        async def check(attempt: int) -> None:
            who = await control.why_lost(self.settings, job_id, attempt)
            self.executor.lease_lost(job_id, cancelled_by=who, attempt=attempt)

        self._checks.add(task := asyncio.ensure_future(check(running.attempt)))
        task.add_done_callback(self._checks.discard)

    async def run_async(self, *, install_signals: bool = False,
                        signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
                        stop_when: Literal["due", "done"] | None = None) -> int:
        """The worker's main coroutine. For demos and tests, ``stop_when="due"`` returns
        once nothing is running and nothing is due; ``"done"`` once no job of this
        worker's queues and tasks is active at all (waiting out retry backoffs)."""
        self.producer.bind()
        self.completer.bind()
        loop = self._loop = asyncio.get_running_loop()
        self.producer.stop_when = stop_when
        if install_signals:
            for sig in signals:
                loop.add_signal_handler(sig, self.request_stop)
        self.executor.start()
        self.dead_letters.start()
        self._tick()
        await self.producer.start()
        await self.completer.start()

        def lease_lost(job_id: int, judged: bool) -> None:  # from the heartbeat's threads
            if judged:
                loop.call_soon_threadsafe(functools.partial(self.lease_lost, job_id, judged=True))
            else:  # reclaimed, or cancelled by an operator: the row says which
                loop.call_soon_threadsafe(self._lost_or_cancelled, job_id)

        heartbeat = Heartbeat(self.held, self.config, self.settings, self.app.clock, self.id,
                              self.coordinator, lease_lost, self.registration())
        heartbeat.start()

        def on_wake(queue: str) -> None:  # from the listener's threads
            loop.call_soon_threadsafe(self.producer.woken, queue)

        def on_control(payload: str) -> None:  # from the listener's threads
            cancel = control.parse(payload, self.id)
            if cancel is not None:
                job_id, attempt, who = cancel
                loop.call_soon_threadsafe(functools.partial(
                    self.executor.lease_lost, job_id, cancelled_by=who, attempt=attempt))

        listener = WakeupListener(self.coordinator, [q.name for q in self.config.queues], on_wake,
                                  on_control)
        if self.config.wakeups:
            listener.start()
        services = self._services()
        log.info("worker %s started: queues=%s concurrency=%d%s", self.id,
                 ",".join(f"{q.name}={q.weight}" + (f":{q.cap}" if q.cap else "")
                          for q in self.config.queues),
                 self.config.concurrency, " strict" if self.config.strict else "")
        log.info("coordination: %s", ", ".join(
            f"{role}={mode}" for role, mode in self.coordinator.status().items()))
        if not self._supervised:
            warn_unserved_tasks(self.app, self.config)
        try:
            await self.producer.run()
            await self._drain()
        finally:
            self.producer.stopping = True
            await self.completer.stop()
            self.dead_letters.stop()  # after the last outcomes are stored; bounded
            heartbeat.stop()
            listener.stop()
            for service in services:
                service.stop()
            await self.producer.stop()
            self.executor.stop()
            self._stop_ticking()
            log.info("worker %s stopped: claimed=%d finished=%s", self.id,
                     self.stats.claimed, self.stats.finished)
        return self._exit_code

    def _tick(self) -> None:
        """Every ``PULSE_SECONDS`` on the loop: the liveness probe's sign that the loop
        runs (a task blocking it stops the ticks; ``pgq.worker.health``), and the
        metrics the loop's services tallied, written out."""
        if self._loop is None:
            return
        if self.held.lease_table is not None:
            self.held.lease_table.beat(LOOP)
        metrics.recorder.flush()  # what the services tallied on this loop since the last tick
        self._ticker = self._loop.call_later(PULSE_SECONDS, self._tick)

    def _stop_ticking(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        metrics.recorder.flush()  # the last outcomes, stored just now

    def _services(self) -> list[LeaderService]:
        """The leader-only services this process campaigns for, started."""
        services: list[LeaderService] = []
        if self.config.maintenance:
            services.append(Maintenance(self.app, holder=self.id).start())
        if self.config.scheduler:
            services.append(Scheduler(self.app, holder=self.id).start())
        if self.config.stats:
            services.append(StatsService(self.app, holder=self.id).start())
        return services

    def registration(self) -> dict[str, Any]:
        """This process's row in the worker registry, written by the heartbeat. The
        supervisor runs no jobs and has no row: its children each have theirs."""
        try:
            pgq_version = version("pgq-jobs")
        except PackageNotFoundError:  # a checkout that was never installed
            pgq_version = "0+unknown"
        return {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
                "queues": json.dumps({q.name: q.weight for q in self.config.queues}),
                "concurrency": self.config.concurrency, "version": pgq_version,
                "tasks": json.dumps(sorted(task.name for task in self.app.registry))}

    async def _drain(self) -> None:
        """Graceful stop: let running jobs finish within the grace period, then hand the
        rest back as ``available`` without spending their attempt."""
        if not self.held:
            return
        log.info("worker %s stopping: waiting up to %ss for %d running job(s)", self.id,
                 self._grace, len(self.held))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace
        wake = self.producer.wake  # set whenever a held job frees its slot
        while self.held and loop.time() < deadline:
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), deadline - loop.time())
            except TimeoutError:
                break
        leftovers = [r for r in self.held.values() if not r.released]
        for running in leftovers:
            if self.completer.pending(running.job_id):
                continue  # finished just now; its outcome is being written
            self.executor.hand_back(running)
        if leftovers:
            log.warning("worker %s: handed %d unfinished job(s) back to their queues",
                        self.id, len(leftovers))

    def _recycle(self) -> None:
        """Too many abandoned threads: stop so the supervisor starts a fresh process."""
        if self.producer.stopping or self._exit_code == EXIT_RECYCLE:
            return
        self._exit_code = EXIT_RECYCLE
        self.request_stop()

    def _release_lock(self, key: str, token: str) -> None:
        try:
            self.coordinator.lock_release(key, token)
        except PgqError as exc:  # it expires with its TTL
            log.warning("could not release lock %r: %s", key, exc)


def warn_unserved_tasks(app: App, config: WorkerConfig) -> list[str]:
    """One WARNING per registered task whose default queue this worker does not serve:
    its jobs enqueued without ``queue=`` wait for another worker (or forever). Returns
    the tasks named."""
    served = {q.name for q in config.queues}
    unserved = [task for task in app.registry if task.queue not in served]
    for task in unserved:
        log.warning("task %s: its default queue %r is not among this worker's queues (%s); "
                    "its jobs enqueued without queue= will not run here", task.name,
                    task.queue, ",".join(sorted(served)))
    return [task.name for task in unserved]
