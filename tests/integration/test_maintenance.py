"""Retention against the real database: only finished rows past their state's retention
go, in bounded batches, never an active row or a completed row still guarding a unique
key; fire records keep each entry's latest; workers prune by default."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import pgq
from pgq.core.settings import Settings
from pgq.scheduling.maintenance import Maintenance, prune, prune_fires
from tests.integration.test_worker import Background
from tests.support.waiting import wait_until

DAY = 86400.0
NOW = datetime(2030, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
def app(settings: Settings) -> Iterator[pgq.App]:
    with pgq.App(settings.with_changes(retain_completed=7 * DAY, retain_failed=30 * DAY,
                                       retain_cancelled=1 * DAY),
                 strict=False, clock=pgq.ManualClock(NOW)) as a:
        yield a


def add(conn: psycopg.Connection, state: str, age_days: float, **extra: Any) -> int:
    """A job in ``state`` that finished (or, if active, was created) ``age_days`` ago."""
    at = NOW - timedelta(days=age_days)
    finished = at if state in ("completed", "failed", "cancelled") else None
    cols = {"task": "t", "state": state, "created_at": at, "run_at": at,
            "finished_at": finished, **extra}
    row = conn.execute(
        f"INSERT INTO pgq_jobs ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
        "RETURNING id", list(cols.values())).fetchone()
    assert row is not None
    return int(row[0])


def ids(conn: psycopg.Connection) -> set[int]:
    return {r[0] for r in conn.execute("SELECT id FROM pgq_jobs")}


def test_prune_deletes_exactly_what_retention_says(app: pgq.App, conn: psycopg.Connection,
                                                   db_url: str) -> None:
    old_completed = add(conn, "completed", 8)
    young_completed = add(conn, "completed", 6)
    old_failed = add(conn, "failed", 31)
    young_failed = add(conn, "failed", 29)
    old_cancelled = add(conn, "cancelled", 2)
    guarding = add(conn, "completed", 8, unique_key="k1", unique_held=True,
                   unique_until=NOW + timedelta(hours=1))
    lapsed_guard = add(conn, "completed", 8, unique_key="k2", unique_held=True,
                       unique_until=NOW - timedelta(hours=1))
    active = {add(conn, s, 400) for s in ("available", "scheduled", "retryable")}
    active.add(add(conn, "running", 400, lease_owner="w", lease_expires_at=NOW, attempt=1))
    with psycopg.connect(db_url, autocommit=True) as c:
        deleted = prune(c, app.settings.retention, now=NOW)
    assert deleted == {"completed": 2, "failed": 1, "cancelled": 1}
    gone = {old_completed, old_failed, old_cancelled, lapsed_guard}
    assert ids(conn) == {young_completed, young_failed, guarding} | active
    assert not gone & ids(conn)


def test_prune_works_in_bounded_batches_and_can_stop(app: pgq.App, conn: psycopg.Connection,
                                                     db_url: str) -> None:
    conn.execute("INSERT INTO pgq_jobs (task, state, finished_at) "
                 "SELECT 't', 'completed', %s FROM generate_series(1, 95)", [NOW - timedelta(days=9)])
    calls = 0

    def between() -> bool:
        nonlocal calls
        calls += 1
        return calls < 5  # stop after the fifth batch

    with psycopg.connect(db_url, autocommit=True) as c:
        assert prune(c, {"completed": 7 * DAY}, batch=10, now=NOW, between=between) == {
            "completed": 50}
        calls = -100
        assert prune(c, {"completed": 7 * DAY}, batch=10, now=NOW, between=between) == {
            "completed": 45}
    assert calls == -100 + 4, "a pause after each full batch, none after the last"


def test_retention_none_keeps_forever(settings: Settings, conn: psycopg.Connection,
                                      db_url: str) -> None:
    add(conn, "failed", 10_000)
    with psycopg.connect(db_url, autocommit=True) as c:
        assert prune(c, {"failed": None}, now=NOW) == {}
    assert len(ids(conn)) == 1


def test_failed_jobs_are_kept_until_handled_by_default(db_url: str, conn: psycopg.Connection) -> None:
    """Dead letters are never pruned unless retention for them is asked for (issue 14 item
    7): deleting failures nobody looked at is silent dead-letter accumulation too."""
    defaults = Settings(database_url=db_url)
    assert defaults.retain_failed is None
    assert Settings.from_env({"PGQ_DATABASE_URL": db_url}).retain_failed is None
    dead = add(conn, "failed", 3650)
    add(conn, "completed", 8)
    with psycopg.connect(db_url, autocommit=True) as c:
        assert prune(c, defaults.retention, now=NOW) == {"completed": 1, "cancelled": 0}
    assert ids(conn) == {dead}
    opted_in = Settings.from_env({"PGQ_DATABASE_URL": db_url, "PGQ_RETAIN_FAILED": "90d"})
    with psycopg.connect(db_url, autocommit=True) as c:
        assert prune(c, opted_in.retention, now=NOW) == {"completed": 0, "failed": 1,
                                                          "cancelled": 0}
    assert ids(conn) == set()


def test_fire_records_keep_each_entrys_latest(app: pgq.App, conn: psycopg.Connection,
                                              db_url: str) -> None:
    for entry, ages in (("a", [30, 20, 10]), ("b", [40])):
        for age in ages:
            conn.execute("INSERT INTO pgq_cron_fires (entry, fire_at, job_id, scheduler) "
                         "VALUES (%s, %s, 0, 's')", [entry, NOW - timedelta(days=age)])
    with psycopg.connect(db_url, autocommit=True) as c:
        assert prune_fires(c, app, NOW) == 2  # a's 30 and 20 days old; b's only one stays
    left = conn.execute("SELECT entry, fire_at FROM pgq_cron_fires ORDER BY entry").fetchall()
    assert left == [("a", NOW - timedelta(days=10)), ("b", NOW - timedelta(days=40))]


def test_maintenance_prunes_only_while_leader(app: pgq.App, conn: psycopg.Connection,
                                              db_url: str) -> None:
    add(conn, "completed", 8)
    rival = app.coordinator.lead("maintenance", "someone-else", 30)
    assert rival is not None
    m = Maintenance(app, holder="me", every=0.05, ttl=2).start()
    try:
        wait_until(lambda: m._leadership is not None and m._leadership.attempts >= 2, 10,
                   "two campaigns lost to the rival")
        assert m.runs == 0 and ids(conn), "no pruning without the role"
        app.coordinator.resign("maintenance", "someone-else")
        wait_until(lambda: m.runs > 0, 10, "a maintenance pass once the role is free")
        assert ids(conn) == set()
    finally:
        m.stop()


def test_workers_prune_by_default(app: pgq.App, conn: psycopg.Connection) -> None:
    old = add(conn, "completed", 8)
    keep = add(conn, "completed", 1)
    app.task(name="t")(lambda: None)
    worker = Background(pgq.Worker(app, pgq.WorkerConfig(poll_seconds=0.05)),
                        stop_when=None)  # type: ignore[arg-type]  # run until stopped
    try:
        wait_until(lambda: old not in ids(conn), 10, "the worker's maintenance pass")
        assert keep in ids(conn)
    finally:
        worker.worker.request_stop()
        worker.join()
