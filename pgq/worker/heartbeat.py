"""The heartbeat: renews every lease of the process, once per interval, from its own
thread and connection, so the event loop being busy or blocked cannot stop it.

It also judges those leases while the database cannot be reached: once renewals have
been failing and none has succeeded for ``give_up_after`` seconds (the lease less a
margin), a job is no longer this worker's to run: its lease ends soon and another worker
may reclaim it. The verdict comes from a second thread (``pgq-lease-judge``), so a
renewal stuck on a silent network cannot delay it: the jobs are told to stop
(``ctx.cancelled``; async tasks are cancelled), stop counting against the concurrency,
and their outcomes are never written; one WARNING says so. They run again once their
leases expire. A heartbeat merely starved of the GIL makes no failed attempt, so it gives
nothing up (the supervisor renews such leases).

It also keeps the process's row in the worker registry (``pgq_workers``) fresh: made at
start, refreshed once per interval with the number of jobs held (one more statement per
interval on this connection, none per job; ``registration`` holds the row's fixed
columns), and deleted on a clean stop. Rows of processes that died are pruned by
maintenance once 3 leases old.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import psycopg

from pgq.coordination import Coordinator
from pgq.core.clock import Clock
from pgq.core.errors import DatabaseUnavailable, PgqError
from pgq.core.outage import Outage
from pgq.core.settings import Settings
from pgq.observability import metrics
from pgq.store.database import connect, execute
from pgq.worker.config import WorkerConfig
from pgq.worker.held import HeldJobs
from pgq.worker.joblog import log
from pgq.worker.leasetable import HEARTBEAT

LEASE_MARGIN_SECONDS = 2.0
"""A worker whose heartbeats keep failing gives its jobs up this long (at most a sixth
of the lease) before their leases can expire, so they stop before another worker may
reclaim them."""

LeaseLostCallback = Callable[[int, bool], None]
"""(job id, judged): thread-safe; the worker hands it to the executor on its loop."""


class Heartbeat(threading.Thread):
    def __init__(self, held: HeldJobs, config: WorkerConfig, settings: Settings, clock: Clock,
                 worker_id: str, coordinator: Coordinator, lease_lost: LeaseLostCallback,
                 registration: dict[str, Any] | None = None) -> None:
        super().__init__(name="pgq-heartbeat", daemon=True)
        self.held = held
        self.config = config
        self.settings = settings
        self.clock = clock
        self.worker_id = worker_id
        self.coordinator = coordinator
        self.lease_lost = lease_lost
        self.conn: psycopg.Connection[Any] | None = None
        self._outage = Outage(f"worker {worker_id}: heartbeat connection", logger=log,
                               kind="heartbeat")
        self._stop_event = threading.Event()
        self._renewed = time.monotonic()
        """When the last renewal that succeeded began: the leases it renewed run until
        at least then plus the lease (the database's clock read it later)."""
        lease = config.lease_seconds
        self.give_up_after = lease - min(LEASE_MARGIN_SECONDS, lease / 6)
        self.registration = registration
        """``worker_seen``'s fixed parameters, or None to stay out of the registry."""
        self._started_at: Any = None
        self._judge = threading.Thread(target=self._judge_leases, name="pgq-lease-judge",
                                       daemon=True)

    def start(self) -> None:
        self.conn = connect(self.settings, autocommit=True)
        self._register(0)
        super().start()
        self._judge.start()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self._judge.join(timeout=5)
        if self.conn is not None:
            if self.registration is not None:
                with suppress(PgqError):  # else maintenance prunes it
                    execute(self.conn, "worker_gone", {"id": self.registration["id"]})
            self.conn.close()

    def _register(self, running: int) -> None:
        """Make or refresh this process's registry row (see the module)."""
        if self.registration is None:
            return
        assert self.conn is not None
        ((self._started_at,),) = execute(self.conn, "worker_seen", {
            **self.registration, "running": running, "started_at": self._started_at,
            "lease_seconds": self.config.lease_seconds, "now": self.clock.now()})

    def _reconnect(self, exc: DatabaseUnavailable) -> float:
        """After a failed statement: the outage's next wait, on a fresh connection."""
        wait = self._outage.failed(exc)
        assert self.conn is not None
        with suppress(Exception):
            self.conn.close()
        with suppress(PgqError):
            self.conn = connect(self.settings, autocommit=True)
        return wait

    def _pulse(self) -> None:
        """Each round: the liveness probe's sign of this thread (even when the database
        is down: a restart would not bring it back; readiness says so), and the
        coordination mode for the metrics."""
        if self.held.lease_table is not None:
            self.held.lease_table.beat(HEARTBEAT)
        # Only where Redis is configured: without it every role is on PostgreSQL by
        # design, not in a fallback, and a 0 would keep PgqRedisFallback firing.
        if metrics.recorder.on and self.coordinator.redis_configured:
            metrics.recorder.coordination(self.coordinator.redis_ok())

    def _judge_leases(self) -> None:
        """Give up the jobs whose leases no renewal could extend (see the module)."""
        given_up: set[int] = set()
        while not self._stop_event.wait(min(0.25, self.give_up_after / 10)):
            if not self._outage.ongoing:
                given_up.clear()
                continue
            now = time.monotonic()
            overdue = self.held.give_up_overdue(now, self._renewed, self.give_up_after, given_up)
            if not overdue:
                continue
            log.warning("worker %s: no heartbeat has renewed its leases for %.1f s (lease "
                        "%g s) and the database does not answer; giving up %d running "
                        "job(s) before their leases expire (%s): they are told to stop, "
                        "their outcomes will not be written, and they run again once the "
                        "leases expire", self.worker_id, now - self._renewed,
                        self.config.lease_seconds, len(overdue),
                        ", ".join(f"job={r.job_id}" for r in overdue))
            for running in overdue:
                given_up.add(running.job_id)
                self.lease_lost(running.job_id, True)
                running.ctx.cancelled.set()  # now, even if the loop is busy

    def run(self) -> None:
        interval = self.config.heartbeat_interval
        wait = interval
        self._pulse()
        while not self._stop_event.wait(wait):
            wait = interval
            self._pulse()
            held = self.held.to_renew()
            began = time.monotonic()
            try:
                self._register(len(held))
            except DatabaseUnavailable as exc:
                wait = min(interval, self._reconnect(exc))
                continue
            except PgqError as exc:
                log.error("worker %s: registry heartbeat failed: %s", self.worker_id, exc)
            if not held:
                self._outage.recovered()
                continue
            assert self.conn is not None
            try:
                rows = execute(self.conn, "job_heartbeat_many", {
                    "ids": [h[0] for h in held], "attempts": [h[1] for h in held],
                    "progress": [h[2] for h in held], "worker": self.worker_id,
                    "lease_seconds": self.config.lease_seconds, "now": self.clock.now()})
            except DatabaseUnavailable as exc:
                # Retried with the outage's backoff, not a whole interval later: the
                # leases are running out. An outage that outlasts them is judged by
                # _judge_leases; fencing keeps any late write of this worker out.
                wait = min(interval, self._reconnect(exc))
                continue
            except PgqError as exc:
                log.error("worker %s: heartbeat failed: %s", self.worker_id, exc)
                continue
            self._renewed = began
            self._outage.recovered()
            alive = dict(rows)
            self.held.renewed(alive)
            for job_id, key, token in self.held.locks():
                try:
                    kept = self.coordinator.lock_renew(key, token, self.worker_id,
                                                       self.config.lease_seconds)
                except PgqError:
                    kept = True  # cannot tell now; the next heartbeat tries again
                if not kept:
                    log.warning("job=%s: run-time lock %r lost; stopping it", job_id, key)
                    alive.pop(job_id, None)
            for job_id, _attempt, _progress in held:
                if job_id not in alive:
                    self.lease_lost(job_id, False)
