"""Unique keys are enforced by the database: correct under concurrent transactions and
rollbacks, returned as a value (duplicate=True), and optionally held for a window."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest

import pgq
from pgq.store import migrate
from tests.support.pgcluster import PgCluster


@pytest.fixture
def app(settings: pgq.Settings) -> Iterator[pgq.App]:
    with pgq.App(settings, strict=False) as a:
        yield a


def finish(conn: psycopg.Connection, job_id: int, state: str) -> None:
    """What a worker does when a job ends (the worker arrives with a later issue)."""
    conn.execute(
        "UPDATE pgq_jobs SET state = %s, finished_at = now() WHERE id = %s", [state, job_id]
    )


def test_duplicate_returns_existing_id(app: pgq.App, conn: psycopg.Connection) -> None:
    first = app.enqueue("email.receipt", {"order": 7}, unique_key="receipt:7")
    again = app.enqueue("email.receipt", {"order": 7}, unique_key="receipt:7")
    other_task = app.enqueue("email.other", {"order": 7}, unique_key="receipt:7")
    assert not first.duplicate
    assert again == pgq.Enqueued(first.id, duplicate=True)
    assert not other_task.duplicate, "keys are scoped per task"
    assert conn.execute("SELECT count(*) FROM pgq_jobs").fetchone()[0] == 2


@pytest.mark.parametrize("state", ["completed", "failed", "cancelled"])
def test_finished_job_without_window_releases_its_key(
    state: str, app: pgq.App, conn: psycopg.Connection
) -> None:
    first = app.enqueue("sync.tenant", unique_key="t1")
    finish(conn, first.id, state)
    second = app.enqueue("sync.tenant", unique_key="t1")
    assert not second.duplicate and second.id != first.id
    held = conn.execute("SELECT id FROM pgq_jobs WHERE unique_held ORDER BY id").fetchall()
    assert held == [(second.id,)]
    # the finished row keeps its key for audits
    assert conn.execute("SELECT unique_key FROM pgq_jobs WHERE id = %s", [first.id]).fetchone() == ("t1",)


def test_windowed_key_counts_completed_jobs_inside_the_window(
    settings: pgq.Settings, conn: psycopg.Connection
) -> None:
    clock = pgq.ManualClock()
    with pgq.App(settings, strict=False, clock=clock) as app:
        first = app.enqueue("report.daily", {"user": 1}, unique_key="report:1",
                            unique_for=timedelta(hours=24))
        finish(conn, first.id, "completed")

        clock.advance(timedelta(hours=23, minutes=59))
        inside = app.enqueue("report.daily", {"user": 1}, unique_key="report:1",
                             unique_for=timedelta(hours=24))
        assert inside == pgq.Enqueued(first.id, duplicate=True)
        # bulk enqueue honours the same window
        assert app.enqueue_many([pgq.JobSpec("report.daily", unique_key="report:1",
                                             unique_for=timedelta(hours=24))]) == [inside]

        clock.advance(timedelta(minutes=2))
        after = app.enqueue("report.daily", {"user": 1}, unique_key="report:1",
                            unique_for=timedelta(hours=24))
        assert not after.duplicate and after.id != first.id
    created, until = conn.execute(
        "SELECT created_at, unique_until FROM pgq_jobs WHERE id = %s", [first.id]).fetchone()
    assert until - created == timedelta(hours=24)


def test_windowed_key_does_not_hold_after_failure(settings: pgq.Settings,
                                                  conn: psycopg.Connection) -> None:
    with pgq.App(settings, strict=False) as app:
        first = app.enqueue("report.daily", unique_key="r", unique_for=timedelta(days=1))
        finish(conn, first.id, "failed")
        assert not app.enqueue("report.daily", unique_key="r", unique_for=timedelta(days=1)).duplicate


def test_bulk_unique_keys(app: pgq.App, conn: psycopg.Connection) -> None:
    existing = app.enqueue("img.resize", unique_key="img:1")
    lapsed = app.enqueue("img.resize", unique_key="img:2")
    finish(conn, lapsed.id, "completed")
    results = app.enqueue_many([
        pgq.JobSpec("img.resize", unique_key="img:1"),   # held by an active job
        pgq.JobSpec("img.resize", unique_key="img:2"),   # holder completed: new job
        pgq.JobSpec("img.resize", unique_key="img:3"),   # new
        pgq.JobSpec("img.resize", unique_key="img:3"),   # duplicate of the row above
        pgq.JobSpec("img.resize"),                       # no key
    ])
    assert results[0] == pgq.Enqueued(existing.id, duplicate=True)
    assert not results[1].duplicate and results[1].id not in (existing.id, lapsed.id)
    assert not results[2].duplicate
    assert results[3] == pgq.Enqueued(results[2].id, duplicate=True)
    assert not results[4].duplicate
    assert conn.execute("SELECT count(*) FROM pgq_jobs").fetchone()[0] == 5


@pytest.fixture(scope="module")
def big_cluster() -> Iterator[PgCluster]:
    """Its own server: 200 concurrent transactions need more than the shared server's
    100 connections, and the shared server must not be reconfigured."""
    cluster = PgCluster(max_connections=260).start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_200_concurrent_transactions_half_rolled_back(big_cluster: PgCluster) -> None:
    url = big_cluster.url_for("uniq")
    with psycopg.connect(big_cluster.url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS uniq")
        admin.execute("CREATE DATABASE uniq")
    migrate.upgrade(pgq.Settings(database_url=url))
    rng = random.Random(20261124)

    for round_ in range(3):
        key = f"contended:{round_}"
        commits = [i % 2 == 0 for i in range(200)]
        if round_ == 1:
            commits = [False] * 200  # nobody commits: no job may exist
        rng.shuffle(commits)
        outcomes = asyncio.run(_race(url, key, commits, rng))

        with psycopg.connect(url) as c:
            active = c.execute(
                "SELECT id FROM pgq_jobs WHERE unique_key = %s AND state = 'available'", [key]
            ).fetchall()
        assert len(active) == (1 if any(commits) else 0)
        new_ids = {job.id for job, committed in outcomes if not job.duplicate and committed}
        for job, _committed in outcomes:
            assert isinstance(job.id, int)
        if any(commits):
            (winner,) = active
            assert new_ids == {winner[0]}, "exactly one committed caller created the job"
            committed_dupes = [job for job, committed in outcomes if job.duplicate and committed]
            assert all(job.id == winner[0] for job in committed_dupes)


async def _race(url: str, key: str, commits: list[bool],
                rng: random.Random) -> list[tuple[pgq.Enqueued, bool]]:
    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    conns = [await psycopg.AsyncConnection.connect(url) for _ in commits]
    start = asyncio.Event()

    async def one(c: psycopg.AsyncConnection, commit: bool, jitter: float) -> tuple[pgq.Enqueued, bool]:
        await start.wait()
        await c.execute("SELECT 1")  # begin the transaction before racing
        job = await app.enqueue_async("contended.task", {"k": key}, conn=c, unique_key=key)
        await asyncio.sleep(jitter)  # hold the transaction open so others pile up behind it
        await (c.commit() if commit else c.rollback())
        return job, commit

    tasks = [asyncio.create_task(one(c, commit, rng.random() / 100))
             for c, commit in zip(conns, commits, strict=True)]
    start.set()
    try:
        return await asyncio.gather(*tasks)
    finally:
        for c in conns:
            await c.close()
        await app.aclose()


# --- a holder that just ended, and eight producers at once ------------------------------

RACERS = 8
RACE_ROUNDS = 12
HOLDER_ENDINGS = ["completed", "failed", "cancelled", "window_lapsed"]
ENQUEUE_PATHS = ["enqueue", "enqueue_conn", "enqueue_many", "mixed", "enqueue_async",
                 "enqueue_many_async"]
"""``enqueue_conn``: each racer's own autocommit connection (the plan in a transaction);
``mixed``: half the racers enqueue one job, half a batch."""


def end_holder(conn: psycopg.Connection, job_id: int, ending: str) -> None:
    """End the key's holder the way ``ending`` says; ``window_lapsed``: completed, with
    its unique window over a moment ago."""
    if ending == "window_lapsed":
        conn.execute("UPDATE pgq_jobs SET state = 'completed', finished_at = now(), "
                     "unique_until = now() - interval '1 millisecond' WHERE id = %s", [job_id])
    else:
        finish(conn, job_id, ending)


def check_race(conn: psycopg.Connection, key: str, holder: int,
               results: list[pgq.Enqueued]) -> None:
    """One of the racers created the key's new active job; every other one names it."""
    active = conn.execute(
        "SELECT id FROM pgq_jobs WHERE unique_key = %s AND unique_held AND state = 'available'",
        [key]).fetchall()
    assert len(active) == 1, f"{key}: one active holder expected, got {active}"
    (new_id,) = active[0]
    assert new_id != holder
    assert [r for r in results if not r.duplicate] == [pgq.Enqueued(new_id)], key
    assert results.count(pgq.Enqueued(new_id, duplicate=True)) == RACERS - 1, (
        f"{key}: every duplicate must name the new job {new_id}, not the ended {holder}: "
        f"{results}")


@pytest.mark.parametrize("path", ENQUEUE_PATHS)
def test_concurrent_enqueues_after_the_holder_ended_name_the_new_job(
    path: str, settings: pgq.Settings, conn: psycopg.Connection
) -> None:
    """Eight producers released together by a barrier, right after the key's holder
    ended (each way a hold can lapse): whoever did not insert the new job must be told
    its id, never the ended one's (they would believe their work already done)."""
    settings = replace(settings, pool_max_size=RACERS)
    spec_window = {"unique_for": timedelta(hours=1)}
    with pgq.App(settings, strict=False) as app:
        if path in ("enqueue_async", "enqueue_many_async"):
            asyncio.run(_race_async(app, conn, path, spec_window))
            return
        barrier = threading.Barrier(RACERS)
        own = [psycopg.connect(settings.database_url, autocommit=True) for _ in range(RACERS)]

        def one(n: int, key: str, window: dict[str, timedelta]) -> pgq.Enqueued:
            barrier.wait(timeout=30)
            if path == "enqueue" or (path == "mixed" and n % 2):
                return app.enqueue("uniq.task", unique_key=key, **window)
            if path == "enqueue_conn":
                return app.enqueue("uniq.task", unique_key=key, conn=own[n], **window)
            (job,) = app.enqueue_many([pgq.JobSpec("uniq.task", unique_key=key, **window)])
            return job

        try:
            with ThreadPoolExecutor(RACERS) as pool:
                for round_ in range(RACE_ROUNDS):
                    for ending in HOLDER_ENDINGS:
                        key = f"{path}:{ending}:{round_}"
                        window = spec_window if ending == "window_lapsed" else {}
                        holder = app.enqueue("uniq.task", unique_key=key, **window).id
                        end_holder(conn, holder, ending)
                        results = list(pool.map(one, range(RACERS), [key] * RACERS,
                                                [window] * RACERS))
                        check_race(conn, key, holder, results)
        finally:
            for c in own:
                c.close()


async def _race_async(app: pgq.App, conn: psycopg.Connection, path: str,
                      spec_window: dict[str, timedelta]) -> None:
    async def one(go: asyncio.Event, key: str, window: dict[str, timedelta]) -> pgq.Enqueued:
        await go.wait()
        if path == "enqueue_async":
            return await app.enqueue_async("uniq.task", unique_key=key, **window)
        (job,) = await app.enqueue_many_async(
            [pgq.JobSpec("uniq.task", unique_key=key, **window)])
        return job

    try:
        for round_ in range(RACE_ROUNDS):
            for ending in HOLDER_ENDINGS:
                key = f"{path}:{ending}:{round_}"
                window = spec_window if ending == "window_lapsed" else {}
                holder = (await app.enqueue_async("uniq.task", unique_key=key, **window)).id
                end_holder(conn, holder, ending)
                go = asyncio.Event()
                racers = [asyncio.create_task(one(go, key, window)) for _ in range(RACERS)]
                await asyncio.sleep(0)  # every racer is waiting on the event
                go.set()
                check_race(conn, key, holder, list(await asyncio.gather(*racers)))
    finally:
        await app.aclose()
