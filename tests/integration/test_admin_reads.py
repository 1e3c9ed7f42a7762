"""What the operations API gained for the CLI: app.jobs.count / preview / actions,
app.queues.workers, and the per-batch progress callback of every action (with an
interrupted bulk retry run again: only what is left is changed, nothing twice), and
the pause between a bulk action's batches."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest

import pgq
from pgq.client.admin import BATCH, plan_action
from pgq.client.jobfilter import JobFilter
from pgq.store.database import run_plan, run_plan_async

MakeApp = Callable[..., pgq.App]
T = TypeVar("T")


@pytest.fixture
def app(make_app: MakeApp) -> pgq.App:
    return make_app(strict=False)


def run_async(app: pgq.App, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """One async call on the App's async pool, closed in the same event loop."""
    async def main() -> T:
        try:
            return await call()
        finally:
            await app.aclose()
    return asyncio.run(main())


def enqueue(app: pgq.App, n: int, **options: object) -> list[int]:
    return [e.id for e in app.enqueue_many([pgq.JobSpec("t.work", {"i": i}, **options)  # type: ignore[arg-type]
                                            for i in range(n)])]


def fail(conn: psycopg.Connection, ids: list[int]) -> None:
    conn.execute("UPDATE pgq_jobs SET state = 'failed', finished_at = now(), attempt = max_attempts "
                 "WHERE id = ANY(%s)", (ids,))


def test_count_and_preview_narrow_to_the_action_sources(app: pgq.App, conn: psycopg.Connection) -> None:
    mail = enqueue(app, 6, queue="mail", meta={"tenant": "c7"})
    enqueue(app, 4, queue="bulk")
    fail(conn, mail[:4])
    assert app.jobs.count(queue="mail") == 6
    assert app.jobs.count(JobFilter(queue="mail", meta={"tenant": "c7"}, state="failed")) == 4
    assert app.jobs.count(since=datetime.now(UTC) + timedelta(hours=1)) == 0

    retry = app.jobs.preview("retry", JobFilter(queue="mail"), sample=3)
    assert (retry.action, retry.count, retry.sample) == ("retry", 4, tuple(sorted(mail[:4])[::-1][:3]))
    cancel = app.jobs.preview("cancel", JobFilter(queue="mail"))
    assert (cancel.count, set(cancel.sample)) == (2, set(mail[4:]))
    # a filter state outside the action's sources: nothing, without a query's surprise
    assert app.jobs.preview("delete", JobFilter(state="available")).count == 0
    by_ids = app.jobs.preview("retry", [mail[0], mail[5], 10**9])
    assert (by_ids.count, by_ids.sample) == (1, (mail[0],))
    assert app.jobs.count() == 10  # the previews changed nothing
    with pytest.raises(pgq.InvalidOptionError, match="unknown action 'explode'"):
        app.jobs.preview("explode", 1)
    with pytest.raises(pgq.InvalidOptionError, match="sample must be"):
        app.jobs.preview("retry", 1, sample=-1)


def test_actions_of_a_job_outlive_it(app: pgq.App, conn: psycopg.Connection) -> None:
    (job_id,) = enqueue(app, 1)
    app.jobs.cancel(job_id, actor="alice", reason="dup")
    app.jobs.delete(job_id, actor="bob")
    got = app.jobs.actions(job_id)
    assert [(a.job_id, a.actor, a.action, a.reason, (a.detail or {}).get("from")) for a in got] == [
        (job_id, "alice", "cancel", "dup", "available"), (job_id, "bob", "delete", None, "cancelled")]
    assert app.jobs.get(job_id) is None
    assert app.jobs.actions(job_id + 1) == []
    assert run_async(app, lambda: app.jobs.aactions(job_id)) == got


def test_workers_lists_the_registry(app: pgq.App, conn: psycopg.Connection) -> None:
    assert app.queues.workers() == []
    conn.execute("INSERT INTO pgq_workers (id, host, pid, queues, concurrency, version, running) "
                 "VALUES ('h1:42:x', 'h1', 42, '{\"mail\": 3}', 10, '0.1.0', 2)")
    (w,) = app.queues.workers()
    assert (w.id, w.host, w.pid, dict(w.queues), w.concurrency, w.running) == (
        "h1:42:x", "h1", 42, {"mail": 3}, 10, 2)
    assert run_async(app, app.queues.aworkers) == [w]


def test_progress_per_batch_and_an_interrupted_retry_rerun(app: pgq.App,
                                                           conn: psycopg.Connection) -> None:
    ids = enqueue(app, BATCH * 2 + BATCH // 2, queue="dead")
    fail(conn, ids)
    seen: list[int] = []

    def stop_after_first_batch(n: int) -> None:
        seen.append(n)
        raise KeyboardInterrupt  # the operator's Ctrl-C, between two batches

    with pytest.raises(KeyboardInterrupt):
        app.jobs.retry(JobFilter(queue="dead"), actor="ops", progress=stop_after_first_batch)
    assert seen == [BATCH]
    assert app.jobs.count(queue="dead", state="available") == BATCH  # the batch committed

    seen.clear()
    again = app.jobs.retry(JobFilter(queue="dead"), actor="ops", progress=seen.append)
    assert again.changed == BATCH + BATCH // 2 and seen == [BATCH, BATCH // 2]
    (recorded, distinct) = conn.execute(
        "SELECT count(*), count(DISTINCT job_id) FROM pgq_job_actions WHERE action = 'retry'").fetchone()
    assert recorded == distinct == len(ids)  # each job retried once, never twice

    progress: list[int] = []
    result = run_async(app, lambda: app.jobs.acancel(ids[:3], progress=progress.append))
    assert result.changed == 3 and progress == [3]


def test_bulk_actions_pause_between_batches_sync_and_async(app: pgq.App, db_url: str) -> None:
    """``pause`` seconds between two batches (a bulk action's back-to-back batches slowed
    other sessions' commits: bench bulk_retry), none before the first or after the last;
    the async driver waits without blocking its event loop."""
    ids = enqueue(app, BATCH * 2 + 1, queue="bulk")
    params = {"actor": "ops", "reason": None, "now": None, "priority": 5}
    stamps: list[float] = []
    for target in (JobFilter(queue="bulk"), ids):
        stamps[:] = [time.monotonic()]
        plan = plan_action("set_priority", target, params, pause=0.2,
                           progress=lambda _: stamps.append(time.monotonic()))
        with psycopg.connect(db_url, autocommit=True) as own:
            assert run_plan(own, plan, atomic=False).changed == len(ids)
        stamps.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert len(gaps) == 4 and min(gaps[1:3]) >= 0.2, gaps  # between the 3 batches
        assert gaps[0] < 0.2 and gaps[3] < 0.2, gaps  # none before the first or after the last

    ticks: list[float] = []

    async def main() -> float:
        async def tick() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        began = time.monotonic()
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as own:
            await run_plan_async(own, plan_action("set_priority", JobFilter(queue="bulk"),
                                                  params, pause=0.2), atomic=False)
        ticker.cancel()
        return time.monotonic() - began

    assert asyncio.run(main()) >= 0.4
    assert len(ticks) >= 20  # the loop ran on through both pauses
