"""``pgq worker``: worker processes under one supervisor, always (``--processes 1`` too).

Processes, not threads, are how CPU-bound Python tasks use more than one core. The
supervisor runs no task code; it is what keeps the workers honest when their own Python
cannot:

* it starts the children and, when one dies unexpectedly or asks to be recycled
  (``EXIT_RECYCLE``: too many abandoned sync threads), starts a replacement, backing off
  if children keep dying young;
* it reclaims a dead child's jobs at once (no waiting for leases to expire) and decides
  whom to blame (``pgq.worker.reclaim``): the one job that was running, or, when several were,
  none yet: they become suspects that run alone;
* it renews its children's leases from the table they share with it
  (``pgq.worker.leasetable``), so a task holding the GIL cannot make its job run twice at once;
  it skips a child that is stopped (SIGSTOP), so a frozen process still loses its jobs;
* it ends a child whose job is past its hard deadline (timeout plus a grace) — the only
  way to stop a sync task stuck in C — and charges the timeout to that job alone.

The children share the supervisor's process group, so ``kill -9 -<pgid>`` (a container
runtime, an OOM kill of the group) ends them all; they ignore SIGINT, so a terminal's
Ctrl-C reaches them only through the supervisor, which stops them in order. A child
whose supervisor dies (``kill -9`` of the supervisor alone) notices within a fraction of
a second and stops, handing its jobs back.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgq.client.app import App
from pgq.core.errors import ConfigError, DatabaseUnavailable, MigrationError, PgqError
from pgq.core.logs import configure_logging
from pgq.core.outage import Outage
from pgq.observability import metrics
from pgq.store.database import connect, connect_async, execute
from pgq.worker.config import EXIT_CONFIG, EXIT_OK, EXIT_RECYCLE, WorkerConfig, new_worker_id
from pgq.worker.deadletters import DeadLetterHooks
from pgq.worker.health import pulse
from pgq.worker.leasetable import LeaseTable
from pgq.worker.process import Worker
from pgq.worker.reclaim import reclaim

log = logging.getLogger("pgq.supervisor")


@dataclass
class _Child:
    slot: int
    worker_id: str
    process: Any  # multiprocessing.Process (spawn context)
    started: float
    leases: LeaseTable
    quick_deaths: int = 0
    timed_out: dict[int, float] = field(default_factory=dict)
    """Jobs (id -> timeout) whose overrun made the supervisor end this child."""


def _child_main(load: Any, app_args: tuple[Any, ...], config: WorkerConfig,
                worker_id: str, log_level: int, leases: LeaseTable,
                log_format: str = "text") -> None:
    # Ctrl-C in a terminal reaches the whole group: the supervisor alone decides, and
    # stops the children with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(log_level, log_format)  # the supervisor's format (--log-format)
    try:
        if config.metrics_port is not None:  # into the supervisor's directory (telemetry)
            metrics.enable().worker_up()
        app = load(*app_args)
        worker = Worker(app, config, worker_id=worker_id, lease_table=leases)
    except (ConfigError, MigrationError) as exc:
        log.error("worker %s cannot start: %s", worker_id, exc)
        raise SystemExit(EXIT_CONFIG) from None
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent.sentinel, worker), daemon=True,
                         name="pgq-parent-watch").start()
    try:
        code = worker.run(signals=(signal.SIGTERM,))
    except (ConfigError, MigrationError) as exc:
        log.error("worker %s cannot start: %s", worker_id, exc)
        code = EXIT_CONFIG
    raise SystemExit(code)


def _watch_parent(sentinel: int, worker: Worker) -> None:
    """The supervisor's end of a pipe closes when it dies, however it dies."""
    multiprocessing.connection.wait([sentinel])
    worker.orphaned()


def _process_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (``T`` stopped, ``Z`` zombie, ...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1].decode()
    except (OSError, ValueError):
        return "?"  # not Linux, or gone: judged by is_alive alone


class Supervisor:
    def __init__(self, app: App, load: Any, app_args: tuple[Any, ...], config: WorkerConfig,
                 processes: int, log_level: int = logging.INFO,
                 log_format: str = "text") -> None:
        self.app = app
        self.load, self.app_args = load, app_args
        self.config = config
        self._settings = app.settings.for_lease(config.lease_seconds)
        """For the connections that renew and reclaim its children's leases: a silent
        network fails them within a quarter of the lease, as it does the children's."""
        self.processes = processes
        self.log_level = log_level
        self.log_format = log_format
        self.id = new_worker_id()
        self._mp = multiprocessing.get_context("spawn")
        self._children: dict[int, _Child] = {}
        self._children_lock = threading.Lock()
        self._quick: dict[int, int] = {}  # slot -> deaths in a row within 10 s of start
        self._stopping = 0
        self._keeper_stop = threading.Event()
        self._failed = False
        self.dead_letters = DeadLetterHooks(app.dead_letter_hooks)
        """The app's hooks, for the jobs a child's death made dead letters (``_rescue``):
        the child that ran them cannot tell its own hooks any more."""

    def _spawn(self, slot: int, quick_deaths: int = 0) -> None:
        worker_id = f"{self.id}/{slot}.{int(time.time() * 1000) % 100000}"
        # Every job the child may hold (running, or its outcome waiting to be stored),
        # and a margin.
        leases = LeaseTable.create(self._mp, self.config.max_held + 4)
        process = self._mp.Process(
            target=_child_main, name=f"pgq-worker-{slot}",
            args=(self.load, self.app_args, self.config, worker_id, self.log_level, leases,
                  self.log_format))
        process.start()
        with self._children_lock:
            self._children[slot] = _Child(slot, worker_id, process, time.monotonic(), leases,
                                          quick_deaths)
        log.info("supervisor: started worker %s (pid %s)", worker_id, process.pid)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stopping += 1
        sig = signal.SIGTERM if self._stopping == 1 else signal.SIGKILL
        # A first signal is a normal shutdown (INFO); a second one kills (WARNING).
        log.log(logging.INFO if sig == signal.SIGTERM else logging.WARNING,
                "supervisor: %s: %s %d worker(s)", signal.Signals(signum).name,
                "stopping" if sig == signal.SIGTERM else "killing", len(self._children))
        for child in list(self._children.values()):
            if child.process.is_alive() and child.process.pid:
                os.kill(child.process.pid, sig)

    def run(self) -> int:
        telemetry = None
        if self.config.metrics_port is not None:
            from pgq.worker.telemetry import Telemetry

            telemetry = Telemetry(self.app, self._settings, self.config.metrics_host,
                                  self.config.metrics_port, self.liveness)
        try:
            return self._run(telemetry)
        finally:
            if telemetry is not None:
                telemetry.close()

    def liveness(self) -> dict[str, Any]:
        """``/livez``: every child's loop and heartbeat beat recently (``health``)."""
        config = self.config
        limit = config.liveness_seconds
        heartbeat_limit = max(limit, 3 * config.heartbeat_interval)
        with self._children_lock:
            children = list(self._children.values())
        processes = [{"worker": c.worker_id, "pid": c.process.pid,
                      **pulse(c.leases, c.started, limit=limit, heartbeat_limit=heartbeat_limit)}
                     for c in children if c.process.is_alive()]
        return {"ok": all(p["ok"] for p in processes), "limit_seconds": limit,
                "processes": processes}

    def _run(self, telemetry: Any) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.dead_letters.start()
        for slot in range(self.processes):
            self._spawn(slot)
        keeper = threading.Thread(target=self._keep_leases, name="pgq-lease-keeper", daemon=True)
        keeper.start()
        pending_restarts: dict[int, float] = {}
        while self._children or (pending_restarts and not self._stopping):
            now = time.monotonic()
            for slot, at in list(pending_restarts.items()):
                if at <= now and not self._stopping:
                    del pending_restarts[slot]
                    self._spawn(slot, self._quick.pop(slot, 0))
            sentinels = {c.process.sentinel: c for c in self._children.values()}
            timeout = min((at - now for at in pending_restarts.values()), default=1.0)
            ready = multiprocessing.connection.wait(list(sentinels), timeout=max(0.05, timeout))
            for sentinel in ready:
                child = sentinels[sentinel]
                child.process.join()
                with self._children_lock:
                    del self._children[child.slot]
                if telemetry is not None:
                    telemetry.child_exited(child.process.pid)
                delay = self._handle_exit(child)
                if delay is not None and not self._stopping:
                    pending_restarts[child.slot] = time.monotonic() + delay
        self._keeper_stop.set()
        keeper.join(timeout=5)
        self.dead_letters.stop()  # bounded, like a worker's
        log.info("supervisor: all workers stopped")
        return 1 if self._failed else EXIT_OK

    def _handle_exit(self, child: _Child) -> float | None:
        code = child.process.exitcode
        if code == EXIT_CONFIG:
            if not self._stopping:
                log.error("supervisor: worker %s cannot start; stopping", child.worker_id)
                self._failed = True
                self._on_signal(signal.SIGTERM, None)
            return None
        if child.timed_out:
            jobs = ", ".join(str(j) for j in child.timed_out)
            self._rescue(child, f"worker {child.worker_id} was ended: job(s) {jobs} overran "
                                "their timeout")
        elif self._stopping and code in (EXIT_OK, 1, -signal.SIGKILL):
            return None
        elif code == EXIT_OK and not self._stopping:
            log.warning("supervisor: worker %s exited; restarting it", child.worker_id)
        elif code == EXIT_RECYCLE:
            log.info("supervisor: worker %s asked to be recycled", child.worker_id)
        else:
            how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exit code {code}")
            log.error("supervisor: worker %s died (%s); reclaiming its jobs", child.worker_id, how)
            self._rescue(child, f"worker {child.worker_id} died ({how})")
        if self._stopping:
            return None
        young = time.monotonic() - child.started < 10
        quick = child.quick_deaths + 1 if young and not child.timed_out else 0
        self._quick[child.slot] = quick
        return 0.0 if quick == 0 else min(2.0 ** quick, 30.0)

    def _rescue(self, child: _Child, reason: str) -> None:
        async def go() -> int:
            conn = await connect_async(self._settings, autocommit=True)
            try:
                return await reclaim(conn, self.app.registry, reclaimer=self.id,
                                     dead_owners=[child.worker_id], reason=reason,
                                     crash_budget=self.config.crash_budget, witnessed=True,
                                     timed_out=child.timed_out,
                                     dead_letter=self.dead_letters.submit)
            finally:
                await conn.close()

        try:
            count = asyncio.run(go())
            log.warning("supervisor: reclaimed %d job(s) of %s", count, child.worker_id)
        except Exception as exc:  # leases will expire and any worker's reclaim takes over
            log.error("supervisor: could not reclaim jobs of %s now (%s); their leases "
                      "will expire and be reclaimed", child.worker_id, exc)

    # --- the lease keeper (a thread of the supervisor) -------------------------------------

    def _keep_leases(self) -> None:
        """Every heartbeat interval: renew the leases of every live, running child's jobs
        in one statement, and end a child whose job is past its hard deadline."""
        outage = Outage(f"supervisor {self.id}: lease connection", logger=log,
                         kind="lease")
        conn: psycopg.Connection[Any] | None = None
        while not self._keeper_stop.wait(self.config.heartbeat_interval):
            ids: list[int] = []
            attempts: list[int] = []
            owners: list[str] = []
            now = time.monotonic()
            with self._children_lock:
                children = list(self._children.values())
            for child in children:
                pid = child.process.pid
                if child.timed_out or pid is None or not child.process.is_alive() \
                        or _process_state(pid) in ("T", "t", "Z", "X"):
                    continue  # stopped or dying: its leases must be free to expire
                entries = child.leases.entries()
                overdue = {job_id: timeout for job_id, _a, deadline, timeout in entries
                           if deadline is not None and now > deadline}
                if overdue:
                    self._end(child, overdue)
                    continue
                for job_id, attempt, _deadline, _timeout in entries:
                    ids.append(job_id)
                    attempts.append(attempt)
                    owners.append(child.worker_id)
            if not ids:
                continue
            try:
                if conn is None or conn.closed:
                    conn = connect(self._settings, autocommit=True)
                execute(conn, "job_lease_extend_many", {
                    "ids": ids, "attempts": attempts, "owners": owners,
                    "lease_seconds": self.config.lease_seconds, "now": self.app.clock.now()})
                outage.recovered()
            except DatabaseUnavailable as exc:
                outage.failed(exc)  # the children's own heartbeats try too
                if conn is not None:
                    with suppress(Exception):
                        conn.close()
                conn = None
            except PgqError as exc:
                log.error("supervisor: renewing leases failed: %s", exc)
        if conn is not None:
            conn.close()

    def _end(self, child: _Child, overdue: dict[int, float]) -> None:
        child.timed_out = overdue
        log.error("supervisor: job(s) %s of worker %s overran their timeout and did not "
                  "return; ending the process (its other jobs are handed back)",
                  ", ".join(map(str, sorted(overdue))), child.worker_id)
        with suppress(ProcessLookupError):
            os.kill(child.process.pid, signal.SIGKILL)
