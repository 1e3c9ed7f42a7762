"""The scheduler against the real database with an injected clock: a tick fires once
however many schedulers try, catch-up after downtime follows each policy exactly, and
DST transition days fire daily entries once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import pgq
from pgq.core.settings import Settings
from pgq.scheduling.scheduler import Scheduler

T0 = datetime(2030, 1, 7, 9, 0, 30, tzinfo=UTC)  # 30 s after an hourly tick


@pytest.fixture
def make_app(settings: Settings) -> Iterator[Callable[..., pgq.App]]:
    apps: list[pgq.App] = []

    def make(clock: pgq.ManualClock) -> pgq.App:
        app = pgq.App(settings, clock=clock)
        apps.append(app)

        @app.task(name="cron.report")
        def report(kind: str = "x") -> None: ...

        return app

    yield make
    for app in apps:
        app.close()


def fires(conn: psycopg.Connection) -> list[tuple[str, datetime]]:
    return [(e, f) for e, f in conn.execute(
        "SELECT entry, fire_at FROM pgq_cron_fires ORDER BY fire_at, entry").fetchall()]


def cron_jobs(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT j.id, j.task, j.args, j.queue, j.meta->>'cron_entry', j.meta->>'cron_tick', "
        "f.fire_at FROM pgq_jobs j JOIN pgq_cron_fires f ON f.job_id = j.id "
        "ORDER BY f.fire_at").fetchall()


def test_a_tick_fires_once_and_its_job_carries_the_fire(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection, db_url: str) -> None:
    clock = pgq.ManualClock(T0)
    app = make_app(clock)
    app.cron("0 * * * *", "cron.report", {"kind": "hourly"}, name="hourly", queue="reports")
    scheduler = Scheduler(app, holder="s1")
    with psycopg.connect(db_url, autocommit=True) as c:
        fired, upcoming = scheduler.run_once(c)
        assert [(f.entry, f.fire_at) for f in fired] == [("hourly", T0.replace(second=0))]
        assert upcoming == T0.replace(second=0) + timedelta(hours=1)
        assert scheduler.run_once(c)[0] == [], "the same tick again: nothing"
    (job,) = cron_jobs(conn)
    assert job[1:] == ("cron.report", {"kind": "hourly"}, "reports", "hourly",
                       T0.replace(second=0).isoformat(), T0.replace(second=0))
    state, created = conn.execute("SELECT state, created_at FROM pgq_jobs").fetchone()  # type: ignore[misc]
    assert (state, created) == ("available", T0), "timestamps from the (injected) clock"


def test_many_schedulers_racing_fire_each_tick_once(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection, db_url: str) -> None:
    """No leadership here at all: eight schedulers run every pass concurrently, as if
    all believed they led (split brain). The fire record alone keeps ticks single."""
    clock = pgq.ManualClock(T0)
    apps = [make_app(clock) for _ in range(8)]
    for app in apps:
        app.cron("*/5 * * * *", "cron.report", name="five", catch_up="backfill")
    schedulers = [Scheduler(app, holder=f"s{i}") for i, app in enumerate(apps)]
    for _ in range(12):  # an hour in five-minute steps
        clock.advance(timedelta(minutes=5))
        barrier = threading.Barrier(len(schedulers))
        errors: list[BaseException] = []

        def one(s: Scheduler, barrier: threading.Barrier = barrier,
                errors: list[BaseException] = errors) -> None:
            try:
                with psycopg.connect(db_url, autocommit=True) as c:
                    barrier.wait()
                    s.run_once(c)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(s,)) for s in schedulers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
    ticks = [f for _, f in fires(conn)]
    assert len(ticks) == len(set(ticks)) == 12
    assert len(cron_jobs(conn)) == 12
    assert conn.execute("SELECT count(*) FROM pgq_jobs").fetchone() == (12,)
    assert sum(s.fired for s in schedulers) == 12


@pytest.mark.parametrize(("policy", "expected"), [
    ("skip", []),
    ("latest", [datetime(2030, 1, 7, 14, 0, tzinfo=UTC)]),
    ("backfill", [datetime(2030, 1, 7, h, 0, tzinfo=UTC) for h in range(10, 15)]),
])
def test_catch_up_after_downtime(make_app: Callable[..., pgq.App], conn: psycopg.Connection,
                                 db_url: str, policy: str, expected: list[datetime]) -> None:
    clock = pgq.ManualClock(T0)
    app = make_app(clock)
    app.cron("0 * * * *", "cron.report", name="hourly", catch_up=policy)
    scheduler = Scheduler(app, holder="s1")
    with psycopg.connect(db_url, autocommit=True) as c:
        scheduler.run_once(c)  # fires 09:00
        clock.advance(timedelta(hours=5, minutes=20))  # down from 09:00:30 to 14:20:30
        fired, _ = scheduler.run_once(c)
        assert [f.fire_at for f in fired] == expected
        clock.advance(timedelta(minutes=40))  # 15:00:30: back to normal, on time
        fired, _ = scheduler.run_once(c)
        assert [f.fire_at for f in fired] == [datetime(2030, 1, 7, 15, 0, tzinfo=UTC)]
    assert len(fires(conn)) == 1 + len(expected) + 1


def test_backfill_is_bounded_by_its_window(make_app: Callable[..., pgq.App],
                                           conn: psycopg.Connection, db_url: str) -> None:
    clock = pgq.ManualClock(T0)
    app = make_app(clock)
    app.cron("0 * * * *", "cron.report", name="hourly", catch_up="backfill",
             backfill_window=timedelta(hours=3))
    scheduler = Scheduler(app, holder="s1")
    with psycopg.connect(db_url, autocommit=True) as c:
        scheduler.run_once(c)
        clock.advance(timedelta(days=2))
        fired, _ = scheduler.run_once(c)
    assert [f.fire_at for f in fired] == [T0.replace(second=0) + timedelta(days=2, hours=h)
                                          for h in (-2, -1, 0)]


def test_a_new_entry_does_not_fire_its_past(make_app: Callable[..., pgq.App],
                                            db_url: str) -> None:
    """Deploying a daily 02:00 entry at 09:00 must not fire this morning's tick."""
    clock = pgq.ManualClock(T0)
    app = make_app(clock)
    app.cron("0 2 * * *", "cron.report", name="daily")
    with psycopg.connect(db_url, autocommit=True) as c:
        fired, upcoming = Scheduler(app, holder="s1").run_once(c)
    assert fired == []
    assert upcoming == datetime(2030, 1, 8, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(("zone", "start", "expected_utc"), [
    # spring forward: 02:30 does not exist; fires once, when the clocks jump
    ("Europe/Berlin", datetime(2030, 3, 30, 12, tzinfo=UTC), ["2030-03-31T01:00:00+00:00"]),
    # fall back: 02:30 exists twice; fires once, at the first
    ("Europe/Berlin", datetime(2030, 10, 26, 12, tzinfo=UTC), ["2030-10-27T00:30:00+00:00"]),
    ("America/New_York", datetime(2030, 3, 9, 12, tzinfo=UTC), ["2030-03-10T07:00:00+00:00"]),
    ("America/New_York", datetime(2030, 11, 2, 12, tzinfo=UTC), ["2030-11-03T07:30:00+00:00"]),
])
def test_daily_entry_on_dst_days_fires_once(make_app: Callable[..., pgq.App], db_url: str,
                                           zone: str, start: datetime,
                                           expected_utc: list[str]) -> None:
    clock = pgq.ManualClock(start)
    app = make_app(clock)
    app.cron("30 2 * * *", "cron.report", name="daily", timezone=zone)
    scheduler = Scheduler(app, holder="s1")
    fired_at: list[str] = []
    with psycopg.connect(db_url, autocommit=True) as c:
        for _ in range(24 * 4):  # a day in 15-minute passes
            clock.advance(timedelta(minutes=15))
            fired_at += [f.fire_at.isoformat() for f in scheduler.run_once(c)[0]]
    assert fired_at == expected_utc
