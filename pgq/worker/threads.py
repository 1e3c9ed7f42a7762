"""Threads for sync tasks: reused, grown on demand, and never blocked by a hung task.

A thread per job costs a thread start (tens of microseconds) and a wake-up of the event
loop per result; at thousands of jobs a second that is most of a worker's time. Here
threads wait for work and take the next job when done, and results reach the loop in
batches: a thread that finishes a job wakes the loop only if no earlier result is still
waiting to be read, so one wake-up delivers every result that arrived meanwhile.

A task that overruns its timeout cannot be stopped, only abandoned: the pool is not
sized, it starts a thread whenever none is idle, so an abandoned thread never holds a
slot another job needs. When it finally returns it goes back to being idle. The worker
bounds how many it tolerates (``max_abandoned_threads``) and recycles itself beyond that.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pgq.worker")

Done = Callable[[bool, Any], None]
"""Called on the event loop with (True, return value) or (False, exception)."""


class ThreadPool:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "pgq-task") -> None:
        self._loop = loop
        self._name = name
        self._work: queue.SimpleQueue[tuple[Callable[[], Any], Done] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads: list[threading.Thread] = []
        self._results: list[tuple[Done, bool, Any]] = []

    @property
    def size(self) -> int:
        return len(self._threads)

    def submit(self, fn: Callable[[], Any], done: Done) -> None:
        """Run ``fn`` in a pool thread; ``done`` gets its outcome on the loop. Call from
        the loop's thread."""
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        if spawn:
            # Daemon threads: one abandoned at its timeout must not keep the process alive.
            thread = threading.Thread(target=self._serve, daemon=True,
                                      name=f"{self._name}-{len(self._threads)}")
            self._threads.append(thread)
            thread.start()
        self._work.put((fn, done))

    def shutdown(self) -> None:
        """Let idle threads exit; busy ones exit when their task returns."""
        for _ in self._threads:
            self._work.put(None)

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            fn, done = item
            try:
                result: tuple[Done, bool, Any] = (done, True, fn())
            except BaseException as exc:  # delivered to the loop, which decides
                result = (done, False, exc)
            del item, fn, done  # do not keep the job's objects alive while idle
            with self._lock:
                first = not self._results
                self._results.append(result)
                self._idle += 1
            del result
            if first:
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop closed: the worker is gone
                    return

    def _deliver(self) -> None:
        with self._lock:
            results, self._results = self._results, []
        for done, ok, value in results:
            try:
                done(ok, value)
            except Exception:  # one job's bookkeeping must not lose the others' results
                log.exception("delivering a task's result failed")
