"""A pgq app for ``pgq worker --metrics-port`` subprocesses
(``tests.support.metrics_app:app``): one task per outcome the metrics count, each with a
known number of attempts, so a test knows every counter's value after a run.

* ``m.ok``: completes (1 attempt); ``m.flaky``: retried once, then completes (2);
* ``m.fail``: retried once, then failed (2, ``max_attempts=2``);
* ``m.cancel``: cancels itself (1); ``m.snooze``: snoozes once, then completes (2
  starts, 1 attempt; the ``snoozed`` table remembers it across processes);
* ``m.spawn``: enqueues one ``m.ok`` (counted as enqueued by the worker's process);
* ``m.block``: blocks the event loop (``time.sleep`` in ``async def``) for ``seconds``.
"""

from __future__ import annotations

import os
import time

import psycopg

import pgq

app = pgq.App.from_env()

DDL = "CREATE TABLE IF NOT EXISTS snoozed (job_id bigint PRIMARY KEY)"


@app.task(name="m.ok")
async def ok() -> None:
    return None


@app.task(name="m.flaky")
async def flaky(ctx: pgq.Context) -> None:
    if ctx.attempt == 1:
        raise pgq.Retry(0)


@app.task(name="m.fail", max_attempts=2)
async def fail() -> None:
    raise pgq.Retry(0, "always")


@app.task(name="m.cancel")
async def cancel() -> None:
    raise pgq.Cancel("not wanted")


@app.task(name="m.snooze")
def snooze(ctx: pgq.Context) -> None:
    with psycopg.connect(os.environ["PGQ_DATABASE_URL"], autocommit=True) as conn:
        first = conn.execute("INSERT INTO snoozed VALUES (%s) ON CONFLICT DO NOTHING "
                             "RETURNING job_id", [ctx.job_id]).fetchone()
    if first:
        raise pgq.Snooze(0)


@app.task(name="m.spawn")
async def spawn() -> None:
    await app.enqueue_async("m.ok")


@app.task(name="m.block")
async def block(seconds: float) -> None:
    time.sleep(seconds)  # deliberately blocks the loop: what liveness must catch
