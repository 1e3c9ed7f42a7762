"""A pgq app for worker tests, importable by worker subprocesses as
``tests.support.jobs:app``. Tasks write an execution ledger (tests.support.ledger) on
their own autocommit connection, so a test can prove what ran, where, and how often."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import time

import pgq
from tests.support import ledger

app = pgq.App.from_env()
FAST = pgq.Backoff(base=0.05, factor=1, jitter=0)


@app.task(name="ledger.noop", backoff=FAST)
def noop(ctx: pgq.Context) -> None:
    ledger.record_start(ctx)


@app.task(name="ledger.anoop", backoff=FAST)
async def anoop(ctx: pgq.Context) -> None:
    ledger.record_start(ctx)


@app.task(name="ledger.sleep", backoff=FAST)
def sleep(ctx: pgq.Context, seconds: float, retry_seconds: float | None = None) -> str:
    """Sleeps ``seconds`` (``retry_seconds`` on later attempts); returns who ran it."""
    ledger.record_start(ctx)
    if ctx.attempt > 1 and retry_seconds is not None:
        seconds = retry_seconds
    ctx.cancelled.wait(seconds)  # sleeps, but wakes if cancelled
    ledger.record_end(ctx)
    return ctx.worker_id


@app.task(name="ledger.asleep", backoff=FAST)
async def asleep(ctx: pgq.Context, seconds: float) -> None:
    ledger.record_start(ctx)
    await asyncio.sleep(seconds)
    ledger.record_end(ctx)


@app.task(name="ledger.segfault", backoff=FAST, max_attempts=10)
def segfault(ctx: pgq.Context) -> None:
    ledger.record_start(ctx)
    time.sleep(0.2)  # let the process's other jobs get going first
    os.kill(os.getpid(), signal.SIGSEGV)


@app.task(name="ledger.tagged", backoff=FAST)
async def tagged(ctx: pgq.Context, batch: int, keep: bool) -> None:
    """Records its start. ``batch`` and ``keep`` say which enqueuing transaction made it
    and whether that transaction was meant to commit (rolled-back ids are never seen)."""
    ledger.record_start(ctx)


@app.task(name="ledger.locked", backoff=FAST, lock="shared:{key}")
async def locked(ctx: pgq.Context, key: str, seconds: float = 0.03) -> None:
    """Holds the run-time lock ``shared:{key}`` while it runs: records start, sleeps
    ``seconds``, records end, so overlapping [started_at, ended_at] intervals of one key
    would prove two holders at once."""
    ledger.record_start(ctx)
    await asyncio.sleep(seconds)
    ledger.record_end(ctx)


@app.task(name="ledger.gil", backoff=FAST)
def gil(ctx: pgq.Context, seconds: int) -> None:
    """Holds the GIL for ``seconds`` inside one C call (libc ``sleep`` through
    ``ctypes.PyDLL``, which keeps the GIL): no other thread of the process runs meanwhile,
    the heartbeat thread included."""
    ledger.record_start(ctx)
    ctypes.PyDLL(None).sleep(seconds)
    ledger.record_end(ctx)


@app.task(name="ledger.gil_timeout", backoff=FAST, timeout=1)
def gil_timeout(ctx: pgq.Context, seconds: int) -> None:
    """Like ``ledger.gil`` with a 1 s timeout it cannot heed: only ending the process
    stops it."""
    ledger.record_start(ctx)
    ctypes.PyDLL(None).sleep(seconds)
    ledger.record_end(ctx)


@app.task(name="ledger.stuck", backoff=FAST, timeout=0.3, max_attempts=1)
def stuck(ctx: pgq.Context, seconds: float) -> None:
    """Overruns its timeout without heeding ``ctx.cancelled`` (its thread is abandoned)."""
    ledger.record_start(ctx)
    time.sleep(seconds)


def cannot_load(*_args: object) -> pgq.App:
    """A loader for ``Supervisor`` whose children cannot start (a bad deploy)."""
    raise pgq.ConfigError("this app cannot be loaded here")
