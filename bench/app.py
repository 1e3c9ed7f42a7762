"""The app the benchmarks' workers run: no-op tasks, and the pickup-latency probe."""

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
