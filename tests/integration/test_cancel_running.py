"""Cancelling a running job (issue 14 item 1): ``app.jobs.cancel`` sets the row
``cancelled`` in one fenced statement and pushes a control message to the job's worker
(Redis PUBLISH, or NOTIFY pgq_control without Redis); the task sees it within a second
with the default lease (the heartbeat, every lease/3 = 4 s, would be too late);
the worker writes nothing afterwards and logs a cancellation, not a lost lease."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import psycopg
import pytest
import redis

import pgq
from pgq.core.settings import Settings
from pgq.worker import WorkerConfig
from tests.conftest import REDIS_URL
from tests.integration.test_worker import Background, job
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

CONFIG = WorkerConfig(concurrency=2, poll_seconds=0.05)  # the default lease (12 s)


def listening(conn: psycopg.Connection, app: pgq.App, with_redis: bool) -> bool:
    # the listener LISTENs on pgq_control, then on pgq_wakeup (its last statement)
    pg = conn.execute("SELECT count(*) FROM pg_stat_activity "
                      "WHERE query = 'LISTEN pgq_wakeup' AND pid <> pg_backend_pid() "
                      "AND datname = current_database()").fetchone()
    if not pg or not pg[0]:
        return False
    if not with_redis:
        return True
    client = redis.Redis.from_url(REDIS_URL)
    try:
        ((_, subscribers),) = client.pubsub_numsub(app.coordinator.control_channel())
        return bool(subscribers)
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "no-redis"])
def test_cancel_running_job_reaches_its_worker_within_a_second(
        db_url: str, conn: psycopg.Connection, caplog: pytest.LogCaptureFixture,
        kind: str, with_redis: bool) -> None:
    settings = Settings(database_url=db_url, redis_url=REDIS_URL if with_redis else None)
    app = pgq.App(settings)
    started, observed = threading.Event(), threading.Event()
    seen: list[float] = []

    @app.task(name="c.sync")
    def sync_task(ctx: pgq.Context) -> str:
        started.set()
        if ctx.cancelled.wait(20):
            seen.append(time.monotonic())
            observed.set()
        return "finished anyway"  # returned after the cancel: must not be stored

    @app.task(name="c.async")
    async def async_task(ctx: pgq.Context) -> str:
        started.set()
        try:
            await asyncio.sleep(20)
        except asyncio.CancelledError:
            seen.append(time.monotonic())
            observed.set()
            raise
        return "not cancelled"

    try:
        job_id = app.enqueue(f"c.{kind}").id
        worker = pgq.Worker(app, CONFIG)
        caplog.set_level(logging.INFO, logger="pgq.worker")
        background = Background(worker)
        assert started.wait(10)
        wait_until(lambda: listening(conn, app, with_redis), what="the worker's control listeners")

        before = time.monotonic()
        result = app.jobs.cancel(job_id, actor="alice@ops", reason="duplicate order")
        assert (result.changed, dict(result.skipped)) == (1, {})
        assert observed.wait(1.0), "the task did not see the cancel within 1 s"
        assert seen[0] - before < 1.0
        background.join()

        row = job(conn, job_id)
        assert row["state"] == "cancelled" and row["finished_at"] is not None
        assert row["result"] is None
        entry = row["errors"][-1]
        assert (entry["type"], entry["actor"], entry["message"], entry["worker"]) == (
            "pgq.Cancelled", "alice@ops", "duplicate order", worker.id)
        assert conn.execute("SELECT actor, action, reason, detail->>'from' FROM pgq_job_actions "
                            "WHERE job_id = %s", (job_id,)).fetchall() == [
            ("alice@ops", "cancel", "duplicate order", "running")]
        assert worker.stats.finished == {"cancelled": 1}
        lines = [r.getMessage() for r in caplog.records if r.name == "pgq.worker"]
        line = next(m for m in lines if f"job={job_id} " in m and "outcome=" in m)
        assert "outcome=cancelled" in line and "by alice@ops" in line and "duplicate order" in line
        assert not [m for m in lines if "lease lost" in m or "lease-lost" in m]
    finally:
        app.close()


def test_cancel_loses_to_a_completion_that_committed_first(make_app: Any,
                                                           conn: psycopg.Connection) -> None:
    """The race rule: once the worker's outcome is stored the cancel changes nothing and
    reports the job as finished."""
    app = make_app(strict=False)
    (job_id,) = [e.id for e in app.enqueue_many([pgq.JobSpec("t.x", {})])]
    conn.execute("UPDATE pgq_jobs SET state = 'completed', finished_at = now(), "
                 "result = '1' WHERE id = %s", (job_id,))
    result = app.jobs.cancel(job_id, actor="bob")
    assert (result.changed, dict(result.skipped)) == (0, {job_id: "completed"})
    assert job(conn, job_id)["result"] == 1


def test_cancel_of_a_running_row_fences_out_the_workers_write(make_app: Any,
                                                              conn: psycopg.Connection) -> None:
    """A cancel that commits first wins: the worker's fenced finish then matches nothing."""
    app = make_app(strict=False)
    (job_id,) = [e.id for e in app.enqueue_many([pgq.JobSpec("t.x", {})])]
    conn.execute("UPDATE pgq_jobs SET state = 'running', attempt = 1, lease_owner = 'w-1', "
                 "lease_expires_at = now() + interval '30 s' WHERE id = %s", (job_id,))
    assert app.jobs.cancel(job_id, actor="carol").changed == 1
    from pgq.store.database import execute
    rows = execute(conn, "job_finish_many", {
        "ids": [job_id], "attempts": [1], "owners": ["w-1"], "states": ["completed"],
        "delays": [0.0], "refunds": [0], "results": ["2"], "errors": [None], "now": None})
    assert rows == []
    row = job(conn, job_id)
    assert (row["state"], row["result"]) == ("cancelled", None)


def test_without_the_control_message_the_heartbeat_finds_the_cancel(
        db_url: str, conn: psycopg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    """The floor: a worker that hears no control message (wake-ups off here) stops the job
    at its next heartbeat, and reading the row logs it as a cancel, not a lost lease."""
    app = pgq.App(Settings(database_url=db_url))
    started, observed = threading.Event(), threading.Event()

    @app.task(name="c.sync")
    def sync_task(ctx: pgq.Context) -> None:
        started.set()
        if ctx.cancelled.wait(20):
            observed.set()

    try:
        job_id = app.enqueue("c.sync").id
        caplog.set_level(logging.INFO, logger="pgq.worker")
        background = Background(pgq.Worker(app, WorkerConfig(
            concurrency=1, poll_seconds=0.05, wakeups=False, lease_seconds=3)))
        assert started.wait(10)
        assert app.jobs.cancel(job_id, actor="dave", reason="wrong tenant").changed == 1
        assert observed.wait(5), "the heartbeat (every 1 s) did not stop the job"
        background.join()
        lines = [r.getMessage() for r in caplog.records if r.name == "pgq.worker"]
        line = next(m for m in lines if f"job={job_id} " in m and "outcome=" in m)
        assert "outcome=cancelled" in line and "by dave (reason: wrong tenant)" in line
        assert not [m for m in lines if "lease lost" in m]
        assert job(conn, job_id)["state"] == "cancelled"
    finally:
        app.close()
