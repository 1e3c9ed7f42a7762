"""The completer alone against a real database, with a fake producer and executor: a
held job's outcome is stored, fenced on its lease, and the job forgotten (issue 13:
every worker service testable on its own)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg

import pgq
from pgq.worker.completer import Completer
from pgq.worker.config import WorkerConfig
from pgq.worker.context import Context
from pgq.worker.held import HeldJobs, Outcome, Running


def _running_job(conn: psycopg.Connection, app: pgq.App, owner: str) -> Running:
    """A job claimed by ``owner`` as the producer would have: running, leased."""
    job_id = app.enqueue("svc.job").id
    conn.execute("UPDATE pgq_jobs SET state = 'running', attempt = 1, lease_owner = %s, "
                 "lease_expires_at = now() + interval '1 minute', started_at = now() "
                 "WHERE id = %s", [owner, job_id])
    task = app.registry.get("svc.job")
    assert task is not None
    ctx = Context(job_id, "svc.job", "default", 1, 3, datetime.now(UTC), owner)
    return Running(job_id, 1, task, ctx, time.monotonic())


def test_the_completer_stores_fenced_outcomes_and_forgets_the_jobs(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    app = make_app(strict=False)
    app.task(name="svc.job")(lambda: None)
    ours = _running_job(conn, app, "w1")
    stolen = _running_job(conn, app, "w1")
    conn.execute("UPDATE pgq_jobs SET lease_owner = 'w2' WHERE id = %s", [stolen.job_id])
    held = HeldJobs(None, release_lock=lambda key, token: None)
    freed: list[int] = []
    held.on_freed = lambda: freed.append(len(held))  # the fake producer

    async def scenario() -> None:
        completer = Completer(held, WorkerConfig(), app.settings, app.clock, "w1")
        completer.bind()
        await completer.start()
        try:
            for running in (ours, stolen):  # the fake executor
                held.add(running, None)
                completer.record(running, Outcome(running.job_id, 1, "completed", result="7"))
        finally:
            await completer.stop()  # stores what was recorded, then closes

    asyncio.run(scenario())
    rows = dict(conn.execute("SELECT id, state FROM pgq_jobs").fetchall())
    assert rows == {ours.job_id: "completed", stolen.job_id: "running"}
    assert conn.execute("SELECT result FROM pgq_jobs WHERE id = %s", [ours.job_id]).fetchone() == (7,)
    assert len(held) == 0 and freed  # both forgotten; the producer was told of the slots
    assert held.stats.finished == {"completed": 1, "lease-lost": 1}
