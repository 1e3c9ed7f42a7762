"""The app the benchmarks' workers run: no-op tasks, the pickup-latency probe, and the
long first attempt the crash-recovery bench interrupts."""

import asyncio
import time

import pgq

app = pgq.App.from_env()


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.anoop")
async def anoop() -> None:
    return None


@app.task(name="bench.pickup")
def pickup(t0: float) -> float:
    """Seconds from just before the enqueue call (``t0``, the enqueuer's ``time.monotonic()``)
    to the start of this task; the worker stores it as the job's result."""
    return time.monotonic() - t0


@app.task(name="bench.hold")
async def hold(ctx: pgq.Context, seconds: float) -> int:
    """Sleeps ``seconds`` in its first attempt only (the recovery bench kills its worker
    meanwhile); a later attempt returns at once. Returns the attempt that finished."""
    if ctx.attempt == 1:
        await asyncio.sleep(seconds)
    return ctx.attempt
