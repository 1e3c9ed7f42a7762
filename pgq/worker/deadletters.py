"""``DeadLetterHooks``: runs the app's ``on_dead_letter`` hooks, off the job path.

Whoever has just committed a job as ``failed`` hands it over (``submit``: one
``put_nowait``, nothing decoded): the completer for the outcomes it stored (a task's
failure, or the ``pgq.UnstorableOutcome`` it stored instead of an outcome the database
refused), and the reclaim for jobs whose lost worker spent their crash budget or last
attempt, in a worker's producer or in the supervisor that saw its child die. A daemon
thread of this process builds the ``pgq.DeadLetter`` record and calls every hook in
turn. The queue is bounded
(``MAX_WAITING``): while the hooks are that far behind, further notifications are
dropped and counted, with a WARNING at the first drop and one saying how many once the
hooks catch up, so a slow or hung hook (a pager API timing out) never holds a slot, a
lease or the event loop. The jobs themselves are stored either way: ``pgq jobs list
--state failed`` and the ``pgq_dead_letters`` view see every one. A hook that raises is
logged with its traceback and not called again for that job. At stop, notifications
still waiting get up to ``stop_seconds``; the thread is a daemon, so a hook stuck past
that does not keep the process alive.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import queue
import threading
import time
from contextlib import suppress
from typing import Any, Protocol

from pgq.client.hooks import DeadLetter, DeadLetterHook

log = logging.getLogger("pgq.worker")

MAX_WAITING = 1_000
"""Dead letters waiting for the hooks before further ones are dropped (and counted)."""


class FailedJob(Protocol):
    """What a dead letter is made of besides its ``errors`` entry: a running job's
    ``Context``, or what the reclaim read of a lost one (``reclaim.LostJob``)."""

    @property
    def job_id(self) -> int: ...
    @property
    def task(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def worker_id(self) -> str:
        """The worker process that ran the failed attempt."""
        ...


class DeadLetterHooks:
    def __init__(self, hooks: list[DeadLetterHook], *, max_waiting: int = MAX_WAITING,
                 stop_seconds: float = 5.0) -> None:
        self.hooks = hooks
        self.stop_seconds = stop_seconds
        self.dropped = 0
        """Notifications dropped since the last report (the queue was full)."""
        self.delivered = 0
        """Dead letters every hook was called for (raising or not)."""
        self._queue: queue.Queue[tuple[FailedJob, str | None] | None] = queue.Queue(max_waiting)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread if the app has hooks (without, ``submit`` does nothing)."""
        if self.hooks and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pgq-dead-letter-hooks",
                                            daemon=True)
            self._thread.start()

    def submit(self, ctx: FailedJob, error: str | None) -> None:
        """A job was just stored as ``failed`` with the ``errors`` entry ``error`` (its
        JSON); never blocks, so it may be called on an event loop. Thread-safe."""
        if self._thread is None:
            return
        try:
            self._queue.put_nowait((ctx, error))
        except queue.Full:
            with self._lock:
                self.dropped += 1
                first = self.dropped == 1
            if first:
                log.warning("dead-letter hooks are %d notifications behind: dropping further "
                            "ones (job=%s first) until they catch up; the jobs are stored as "
                            "failed all the same", self._queue.maxsize, ctx.job_id)

    def stop(self) -> None:
        """Let waiting notifications run for up to ``stop_seconds``, then leave."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        deadline = time.monotonic() + self.stop_seconds
        with suppress(queue.Full):  # then the join below gives up too
            self._queue.put(None, timeout=self.stop_seconds)
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("dead-letter hooks: %d notification(s) not delivered at stop (a hook "
                        "is still running after %gs)", self._queue.qsize(), self.stop_seconds)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            ctx, error = item
            record = dead_letter(ctx, error)
            for hook in self.hooks:
                try:
                    result = hook(record)
                    if inspect.isawaitable(result):
                        asyncio.run(_wait(result))
                except Exception:
                    log.exception("dead-letter hook %s failed for job=%s; not retried",
                                  getattr(hook, "__qualname__", repr(hook)), ctx.job_id)
            self.delivered += 1
            if not self._queue.empty():
                continue  # still behind: one report once caught up
            with self._lock:
                dropped, self.dropped = self.dropped, 0
            if dropped:
                log.warning("dead-letter hooks: %d notification(s) were dropped while they "
                            "were behind (see pgq jobs list --state failed)", dropped)


async def _wait(awaitable: Any) -> None:
    await awaitable


def dead_letter(ctx: FailedJob, error: str | None) -> DeadLetter:
    """The record a hook receives, from the job's context and its last ``errors`` entry."""
    try:
        entry = json.loads(error) if error else {}
    except ValueError:
        entry = {"message": error}
    if not isinstance(entry, dict):
        entry = {}
    return DeadLetter(ctx.job_id, ctx.task, ctx.queue, ctx.attempt, ctx.max_attempts,
                      str(entry.get("type") or "Error"), str(entry.get("message") or ""),
                      str(entry.get("traceback") or ""), ctx.worker_id)
