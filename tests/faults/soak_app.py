"""The soak's app: the ledger tasks of ``tests.support.jobs`` plus tasks that retry, time
out and fail, and a cron entry. Each task's expected number of attempts is fixed, so the
soak can tell a justified extra attempt (a fault) from an unjustified one."""

from __future__ import annotations

import time
from datetime import timedelta

import pgq
from tests.support import ledger
from tests.support.jobs import FAST, app

EXPECTED_ATTEMPTS = {"ledger.noop": 1, "ledger.anoop": 1, "soak.flaky": 3, "soak.slow": 2,
                     "soak.broken": 2, "soak.tick": 1}


@app.task(name="soak.flaky", backoff=FAST, max_attempts=5)
def flaky(ctx: pgq.Context) -> None:
    """Fails its first two attempts, succeeds on the third."""
    ledger.record_start(ctx)
    if ctx.attempt < 3:
        raise RuntimeError(f"flaky: attempt {ctx.attempt} fails on purpose")


@app.task(name="soak.slow", backoff=FAST, max_attempts=2, timeout=0.2)
def slow(ctx: pgq.Context) -> None:
    """Overruns its 0.2 s timeout every time: failed after 2 attempts."""
    ledger.record_start(ctx)
    ctx.cancelled.wait(1.0)


@app.task(name="soak.broken", backoff=FAST, max_attempts=2)
def broken(ctx: pgq.Context) -> None:
    """Always raises: failed after 2 attempts (the dead letter)."""
    ledger.record_start(ctx)
    raise ValueError("broken on purpose")


@app.task(name="soak.tick", backoff=FAST)
def tick(ctx: pgq.Context) -> None:
    ledger.record_start(ctx)
    time.sleep(0.001)


app.cron("* * * * *", "soak.tick", name="soak-minutely", catch_up="backfill",
         backfill_window=timedelta(minutes=10))
