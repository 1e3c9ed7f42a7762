"""``pgq worker --processes N``: N worker processes under one supervisor.

Processes, not threads, are how CPU-bound Python tasks use more than one core. The
supervisor runs no task code. It starts the children (each in its own process group,
so a terminal's Ctrl-C reaches only the supervisor, which then stops them in order),
and when a child dies unexpectedly it reclaims that child's jobs at once (no waiting for
leases to expire), counting the lost attempt against each job's crash budget, then
starts a replacement, backing off if children keep dying young.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from pgq.app import App
from pgq.database import connect_async
from pgq.reclaim import reclaim
from pgq.worker import EXIT_OK, EXIT_RECYCLE, Worker, WorkerConfig, new_worker_id

log = logging.getLogger("pgq.supervisor")


@dataclass
class _Child:
    slot: int
    worker_id: str
    process: Any  # multiprocessing.Process (spawn context)
    started: float
    quick_deaths: int = 0


def _child_main(load: Any, app_args: tuple[Any, ...], config: WorkerConfig,
                worker_id: str, log_level: int) -> None:
    os.setpgrp()  # terminal signals go to the supervisor, which stops children itself
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = load(*app_args)
    raise SystemExit(Worker(app, config, worker_id=worker_id).run())


class Supervisor:
    def __init__(self, app: App, load: Any, app_args: tuple[Any, ...], config: WorkerConfig,
                 processes: int, log_level: int = logging.INFO) -> None:
        self.app = app
        self.load, self.app_args = load, app_args
        self.config = config
        self.processes = processes
        self.log_level = log_level
        self.id = new_worker_id()
        self._mp = multiprocessing.get_context("spawn")
        self._children: dict[int, _Child] = {}
        self._quick: dict[int, int] = {}  # slot -> deaths in a row within 10 s of start
        self._stopping = 0

    def _spawn(self, slot: int, quick_deaths: int = 0) -> None:
        worker_id = f"{self.id}/{slot}.{int(time.time() * 1000) % 100000}"
        process = self._mp.Process(
            target=_child_main, name=f"pgq-worker-{slot}",
            args=(self.load, self.app_args, self.config, worker_id, self.log_level))
        process.start()
        self._children[slot] = _Child(slot, worker_id, process, time.monotonic(), quick_deaths)
        log.info("supervisor: started worker %s (pid %s)", worker_id, process.pid)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stopping += 1
        sig = signal.SIGTERM if self._stopping == 1 else signal.SIGKILL
        # A first signal is a normal shutdown (INFO); a second one kills (WARNING).
        log.log(logging.INFO if sig == signal.SIGTERM else logging.WARNING,
                "supervisor: %s: %s %d worker(s)", signal.Signals(signum).name,
                "stopping" if sig == signal.SIGTERM else "killing", len(self._children))
        for child in self._children.values():
            if child.process.is_alive() and child.process.pid:
                os.kill(child.process.pid, sig)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for slot in range(self.processes):
            self._spawn(slot)
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
                del self._children[child.slot]
                delay = self._handle_exit(child)
                if delay is not None and not self._stopping:
                    pending_restarts[child.slot] = time.monotonic() + delay
        log.info("supervisor: all workers stopped")
        return EXIT_OK

    def _handle_exit(self, child: _Child) -> float | None:
        code = child.process.exitcode
        if self._stopping and code in (EXIT_OK, 1, -signal.SIGKILL):
            return None
        if code == EXIT_OK and not self._stopping:
            log.warning("supervisor: worker %s exited; restarting it", child.worker_id)
        elif code == EXIT_RECYCLE:
            log.info("supervisor: worker %s asked to be recycled", child.worker_id)
        else:
            how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exit code {code}")
            log.error("supervisor: worker %s died (%s); reclaiming its jobs", child.worker_id, how)
            self._rescue(child.worker_id, f"worker {child.worker_id} died ({how})")
        young = time.monotonic() - child.started < 10
        quick = child.quick_deaths + 1 if young else 0
        self._quick[child.slot] = quick
        return 0.0 if quick == 0 else min(2.0 ** quick, 30.0)

    def _rescue(self, worker_id: str, reason: str) -> None:
        async def go() -> int:
            conn = await connect_async(self.app.settings, autocommit=True)
            try:
                return await reclaim(conn, self.app.registry, reclaimer=self.id,
                                     dead_owners=[worker_id], reason=reason,
                                     crash_budget=self.config.crash_budget)
            finally:
                await conn.close()

        try:
            count = asyncio.run(go())
            log.warning("supervisor: reclaimed %d job(s) of %s", count, worker_id)
        except Exception as exc:  # leases will expire and any worker's reclaim takes over
            log.error("supervisor: could not reclaim jobs of %s now (%s); their leases "
                      "will expire and be reclaimed", worker_id, exc)
