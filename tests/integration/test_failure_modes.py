"""Thundering herd: jobs that fail together must not retry together."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg

import pgq


def test_jobs_failing_together_retry_spread_out(settings: pgq.Settings,
                                                conn: psycopg.Connection) -> None:
    clock = pgq.ManualClock()
    app = pgq.App(settings, clock=clock)

    @app.task(name="api.call")
    def call() -> None:
        raise ConnectionError("dependency is down")

    app.enqueue_many([pgq.JobSpec("api.call") for _ in range(200)])
    worker = pgq.Worker(app, pgq.WorkerConfig(concurrency=50, poll_seconds=0.01))
    asyncio.run(worker.run_async(stop_when="due"))
    app.close()

    delays = [r[0].total_seconds() for r in conn.execute(
        "SELECT run_at - %s FROM pgq_jobs WHERE state = 'retryable'", [clock.now()])]
    assert len(delays) == 200, "every job failed its first attempt at the same instant"
    # default first step 30 s, jitter ±15 %: spread across [25.5, 34.5], not stacked
    assert min(delays) >= 25.5 and max(delays) <= 34.5
    assert max(delays) - min(delays) > 6, "retries must be spread over the jitter window"
    assert len({round(d, 3) for d in delays}) > 190
    # and none comes back before the backoff: nothing is due at the failure instant
    clock.advance(timedelta(seconds=25))
    due = conn.execute("SELECT count(*) FROM pgq_jobs WHERE run_at <= %s", [clock.now()]).fetchone()[0]
    assert due == 0
