"""Tasks for the network-partition fault (tests/faults/test_partition.py), importable by
worker subprocesses as ``tests.faults.partition_app:app``.

They keep their ledger in a file (``PARTITION_LEDGER``, one JSON line per event), not in
a database: a worker cut off from its database must still be able to say what it did,
and when (wall clock, the same for every namespace of the machine)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pgq

app = pgq.App.from_env()


def record(event: str, ctx: pgq.Context, **extra: Any) -> None:
    line = json.dumps({"event": event, "job": ctx.job_id, "attempt": ctx.attempt,
                       "worker": ctx.worker_id, "at": time.time(), **extra})
    with open(os.environ["PARTITION_LEDGER"], "a") as ledger:
        ledger.write(line + "\n")  # one short O_APPEND write: lines never interleave


@app.task(name="partition.hold", backoff=pgq.Backoff(base=0.05, factor=1, jitter=0))
def hold(ctx: pgq.Context, seconds: float) -> str:
    """The first attempt runs until told to stop (or ``seconds``); later ones return at
    once. Either way it returns who ran it, as a task that ignores being told to stop
    would: a worker that gave the job up must not store that result."""
    record("start", ctx)
    if ctx.attempt == 1:
        told = ctx.cancelled.wait(seconds)
        record("told to stop" if told else "ran out", ctx)
    else:
        record("end", ctx)
    return ctx.worker_id


@app.task(name="partition.noop")
def noop(ctx: pgq.Context) -> None:
    record("start", ctx)
