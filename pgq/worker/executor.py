"""The executor: runs claimed jobs and decides each attempt's outcome.

Async tasks run as asyncio tasks on the loop; sync tasks on a pool of reused daemon
threads (``threads.ThreadPool``) with no asyncio task of their own. Timeouts cancel
async tasks and abandon (and signal, through ``ctx.cancelled``) sync threads; past
``max_abandoned_threads`` stuck threads the worker recycles itself. A job with a
run-time lock takes it first, or waits without spending an attempt. Every decided
outcome goes to the completer (``record``); nothing here writes to the database.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from pgq.client.app import App
from pgq.client.tracing import Attempt, attempt_span
from pgq.coordination import Coordinator
from pgq.core.errors import InvalidArgsError, LeaseLost, PgqError
from pgq.core.outcomes import Cancel, Fail, Retry, Snooze
from pgq.core.redaction import redact_args
from pgq.core.tasks import Task
from pgq.core.validation import encode_result
from pgq.observability import metrics
from pgq.worker.config import WorkerConfig
from pgq.worker.context import Context
from pgq.worker.failure import error_entry
from pgq.worker.held import HeldJobs, Outcome, Running
from pgq.worker.joblog import log, log_job
from pgq.worker.threads import ThreadPool

ABANDON_GRACE_SECONDS = 1.0
"""How long a timed-out sync task has to return (heeding ``ctx.cancelled``) before its
thread counts as stuck towards ``max_abandoned_threads``."""

Record = Callable[[Running, Outcome], None]


class Executor:
    def __init__(self, app: App, config: WorkerConfig, worker_id: str, held: HeldJobs,
                 record: Record, transaction: Callable[[Context], Any],
                 coordinator: Coordinator, recycle: Callable[[], None]) -> None:
        self.app = app
        self.config = config
        self.worker_id = worker_id
        self.held = held
        self.record = record
        """Where decided outcomes go (the completer)."""
        self.transaction = transaction
        """``ctx.transaction()`` for the tasks (the completer's)."""
        self.coordinator = coordinator
        self.recycle = recycle
        """Asks the worker to stop so a fresh process replaces it (stuck threads)."""
        self.abandoned = 0
        self._recycling = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPool | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pool = ThreadPool(self._loop)

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    # --- starting a job ----------------------------------------------------------------

    def run(self, row: tuple[Any, ...], trace: Any = None) -> None:
        """Start a claimed job (a ``job_claim`` row, its first nine columns; ``trace``:
        its last, the enqueue's trace context, for the attempt's span)."""
        job_id, queue, task_name, args, attempt, max_attempts, timeout, lease, _lost = row
        task = self.app.registry.get(task_name)
        assert task is not None, "the claim only takes known tasks"
        if timeout is None:  # enqueued by a producer that did not know the task
            timeout = task.timeout
        ctx = Context(job_id, task_name, queue, attempt, max_attempts, lease, self.worker_id,
                      _transaction=self.transaction)
        running = Running(job_id, attempt, task, ctx, time.monotonic())
        metrics.recorder.job_started(queue, task_name)
        if task.lock is not None:
            try:
                running.lock_key = task.lock_key(args)
            except InvalidArgsError as exc:
                log.error("job=%s: %s", job_id, exc)
            running.lock_token = f"{self.worker_id}:{job_id}:{attempt}"
        self.held.add(running, timeout)
        running.span = attempt_span(trace, job_id, queue, task, attempt)  # None: untraced
        if log.isEnabledFor(logging.DEBUG):
            log.debug("job=%s task=%s args=%s", job_id, task_name,
                      json.dumps(redact_args(task, args)))  # args, redacted: only here
        if task.is_async or running.lock_key is not None:
            running.handle = asyncio.ensure_future(self._execute(running, args, timeout))
        else:
            self._run_sync(running, args, timeout)

    async def _execute(self, running: Running, args: dict[str, Any],
                       timeout: float | None) -> None:
        """An async task, or any task with a run-time lock to take first."""
        task, ctx = running.task, running.ctx
        if running.lock_key is not None and not await self._acquire_lock(running):
            running.lock_key = None  # not ours: nothing to renew or release
            wait = self.config.lock_wait_seconds * random.uniform(0.5, 1.5)
            self.record(running, Outcome(running.job_id, running.attempt, "scheduled",
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
                result = await self._call_async(task, ctx, call_args, args, running.span)
            outcome = self._decide(running, lambda: self._success(running, result))
        except asyncio.CancelledError:
            if not running.released and not running.lost:
                raise
            return
        except BaseException as exc:
            if isinstance(exc, TimeoutError) and timer.expired():
                ctx.cancelled.set()
                expired: BaseException = exc
                outcome = self._decide(
                    running, lambda: self._failure(running, expired, timed_out=timeout))
            else:
                outcome = self._raised(running, exc)
        if outcome is not None:
            self.record(running, outcome)

    def _run_sync(self, running: Running, args: dict[str, Any], timeout: float | None) -> None:
        """A sync task on the thread pool. No asyncio task per job: the pool calls
        ``_sync_done`` on the loop, and a timer on the loop handles the timeout."""
        task, ctx = running.task, running.ctx
        fn = task.fn
        call_args = (ctx,) if task.takes_context else ()
        if self.app.middleware or running.span is not None:
            def call() -> Any:
                with self._middleware(ctx, running.span):
                    return fn(*call_args, **args)
        else:
            call = functools.partial(fn, *call_args, **args)
        assert self._loop is not None and self._pool is not None
        timer = (self._loop.call_later(timeout, self._sync_timed_out, running, timeout)
                 if timeout is not None else None)
        self._pool.submit(call, functools.partial(self._sync_done, running, timer))

    def _sync_done(self, running: Running, timer: asyncio.TimerHandle | None, ok: bool,
                   value: Any) -> None:
        if timer is not None:
            timer.cancel()
        if running.timed_out:
            # An abandoned thread came back (a task that heeds ctx.cancelled): it is no
            # longer stuck, and counts no more towards recycling the worker.
            self.abandoned -= 1
            log.info("job=%s task=%s: its abandoned thread returned (%d still out)",
                     running.job_id, running.task.name, self.abandoned)
        if running.timed_out or running.released or running.lost:
            return  # already decided: failed at its timeout, handed back, or not ours
        if ok:
            outcome = self._decide(running, lambda: self._success(running, value))
        else:
            outcome = self._raised(running, value)
        if outcome is not None:
            self.record(running, outcome)

    def _sync_timed_out(self, running: Running, timeout: float) -> None:
        """A sync task overran its timeout: fail the attempt now and abandon its thread
        (a thread cannot be stopped; ``ctx.cancelled`` asks it to)."""
        if running.released or running.lost:
            return
        running.timed_out = True
        if running.span is not None:
            # Before the thread is told: told first, it may raise at once, and its span
            # would record that exception instead of the timeout.
            running.span.timed_out(timeout)
        running.ctx.cancelled.set()
        self._abandon_thread(running)
        outcome = self._decide(
            running, lambda: self._failure(running, TimeoutError(), timed_out=timeout))
        if outcome is not None:
            self.record(running, outcome)

    async def _acquire_lock(self, running: Running) -> bool:
        assert running.lock_key is not None
        try:
            return await asyncio.to_thread(
                self.coordinator.lock_acquire, running.lock_key, running.lock_token,
                self.worker_id, self.config.lease_seconds)
        except PgqError as exc:  # cannot tell: wait as if taken, no attempt spent
            log.warning("job=%s: could not take run-time lock %r: %s", running.job_id,
                        running.lock_key, exc)
            return False

    async def _call_async(self, task: Task, ctx: Context, call_args: tuple[Any, ...],
                          args: dict[str, Any], span: Attempt | None) -> Any:
        with self._middleware(ctx, span):
            return await task.fn(*call_args, **args)

    @contextmanager
    def _middleware(self, ctx: Context, span: Attempt | None = None) -> Iterator[None]:
        with ExitStack() as stack:
            if span is not None:  # outermost: the app's middleware runs inside the span
                stack.enter_context(span.activate())
            for middleware in self.app.middleware:
                stack.enter_context(middleware(ctx))
            yield

    def _abandon_thread(self, running: Running) -> None:
        self.abandoned += 1
        log.warning("job=%s task=%s: sync task exceeded its timeout; its thread is abandoned "
                    "(%d/%d) and told to stop via ctx.cancelled", running.job_id,
                    running.task.name, self.abandoned, self.config.abandoned_limit)
        # Judged a moment later: a task that heeds ctx.cancelled returns by then.
        assert self._loop is not None
        self._loop.call_later(ABANDON_GRACE_SECONDS, self._check_abandoned)

    def _check_abandoned(self) -> None:
        if self.abandoned >= self.config.abandoned_limit and not self._recycling:
            self._recycling = True  # once: a second stop request would mean "exit now"
            log.error("worker %s: %d abandoned threads; stopping so a fresh process replaces it",
                      self.worker_id, self.abandoned)
            self.recycle()

    # --- deciding the outcome ----------------------------------------------------------

    def _decide(self, running: Running, make: Callable[[], Outcome | None]) -> Outcome | None:
        try:
            return make()
        except Exception as exc:  # a bug in pgq or in a task's policy must not strand the job
            log.exception("job=%s: could not decide the outcome", running.job_id)
            return Outcome(running.job_id, running.attempt, "failed", error=error_entry(
                running.attempt, self.worker_id, exc, type_name="pgq.InternalError",
                redact=running.task.redact))

    def _raised(self, running: Running, exc: BaseException) -> Outcome | None:
        failure = exc
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            failure = RuntimeError(f"task raised {type(exc).__name__}")
        return self._decide(running, lambda: self._failure(running, failure))

    def _success(self, running: Running, result: Any) -> Outcome | None:
        if running.ctx.completed_in_transaction:
            log_job(running, "completed", "in its transaction")
            self.held.forget(running, "completed")
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
        return Outcome(running.job_id, running.attempt, "completed", result=encoded)

    def _failure(self, running: Running, exc: BaseException,
                 timed_out: float | None = None) -> Outcome | None:
        ctx, job_id, attempt = running.ctx, running.job_id, running.attempt
        redact = running.task.redact  # what its errors entry keeps, and every log shows
        if running.lost or isinstance(exc, LeaseLost):
            log_job(running, "lease-lost", "nothing written; the new owner decides")
            self.held.forget(running, "lease-lost")
            return None
        if isinstance(exc, Snooze):
            return Outcome(job_id, attempt, "scheduled", delay=exc.delay, refund=1)
        if isinstance(exc, Cancel):
            return Outcome(job_id, attempt, "cancelled",
                           error=error_entry(attempt, self.worker_id, exc, redact=redact))
        if timed_out is not None:
            error = error_entry(attempt, self.worker_id, exc, type_name="pgq.Timeout",
                                message=f"attempt exceeded its timeout of {timed_out:g}s",
                                redact=redact)
            if running.span is not None:
                running.span.timed_out(timed_out)
        else:
            error = error_entry(attempt, self.worker_id, exc, redact=redact)
        if isinstance(exc, Fail) or attempt >= ctx.max_attempts:
            return Outcome(job_id, attempt, "failed", error=error)
        delay = exc.delay if isinstance(exc, Retry) else running.task.backoff.delay(attempt)
        return Outcome(job_id, attempt, "retryable", delay=delay, error=error)

    # --- stopping jobs -----------------------------------------------------------------

    def lease_lost(self, job_id: int, *, judged: bool = False, cancelled_by: str | None = None,
                   attempt: int | None = None) -> None:
        """Called (on the loop) when a heartbeat finds the job no longer ours, or, with
        ``judged``, when the heartbeat gave it up because no renewal succeeded for most
        of the lease (it marked the job lost itself, and logged that once for all), or,
        with ``cancelled_by`` (who and why), when an operator cancelled it (its row is
        already ``cancelled``: a control message, or the heartbeat read the row)."""
        running = self.held.get(job_id)
        if running is None or running.ctx.completed_in_transaction or (
                running.lost and not judged) or attempt not in (None, running.attempt):
            return
        if cancelled_by is not None:
            running.cancelled_by = cancelled_by
            if not running.decided:
                running.lost = True
                running.ctx.cancelled.set()
                log_job(running, "cancelled", f"{cancelled_by}; nothing written")
                if running.handle is not None and running.task.is_async:
                    running.handle.cancel()
                self.held.forget(running, "cancelled")
            return  # decided: the completer's fenced write finds it cancelled and says so
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
        self.held.forget(running, "lease-lost")

    def hand_back(self, running: Running) -> None:
        """Shutdown: stop the job and give it back to its queue without spending its
        attempt (its thread, if sync, is told through ``ctx.cancelled``)."""
        running.released = True
        running.ctx.cancelled.set()
        if running.handle is not None:
            running.handle.cancel()
        self.record(running, Outcome(running.job_id, running.attempt, "available", refund=1))
