"""The operations the dashboard and HTTP API call (issue 16): dead letters grouped (and
acted on one group by filter), the cron page's status, API keys, idempotent enqueue, the
stats document's per-minute history, and "run now" (reschedule) on waiting jobs."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest

import pgq
from pgq.client.cronreads import acron_status, cron_status
from pgq.client.idempotent import aenqueue_idempotent, enqueue_idempotent
from pgq.client.jobfilter import JobFilter
from pgq.client.stats import Stats
from pgq.core.errors import IdempotencyConflict
from pgq.scheduling.maintenance import prune_idempotency_keys
from pgq.scheduling.stats import StatsService

T = TypeVar("T")


def run(app: pgq.App, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run an async call of ``app`` on a loop of its own, closing the async pool it opened
    before that loop ends: a pool left open hangs asyncio.run's shutdown if it is
    reconnecting then (seen under load: "too many clients", then a 300 s timeout)."""
    async def main() -> T:
        try:
            return await coroutine
        finally:
            await app.arelease()
    return asyncio.run(main())


MakeApp = Callable[..., pgq.App]
T0 = datetime.now(UTC).replace(second=50, microsecond=0) - timedelta(hours=3)


@pytest.fixture
def clock() -> pgq.ManualClock:
    return pgq.ManualClock(T0)


@pytest.fixture
def app(make_app: MakeApp, clock: pgq.ManualClock) -> pgq.App:
    return make_app(strict=False, clock=clock)


def enqueue(app: pgq.App, n: int, **options: Any) -> list[int]:
    return [e.id for e in app.enqueue_many([pgq.JobSpec("t.work", {"i": i}, **options)
                                            for i in range(n)])]


def fail(conn: psycopg.Connection, ids: list[int], error_type: str | None, at: datetime,
         message: str = "boom") -> None:
    errors = [] if error_type is None else [
        {"type": "Earlier", "message": "first"}, {"type": error_type, "message": message}]
    conn.execute("UPDATE pgq_jobs SET state = 'failed', finished_at = %s, errors = %s "
                 "WHERE id = ANY(%s)", (at, json.dumps(errors), ids))


# --- 1. dead letters grouped ---------------------------------------------------------

def test_dead_letter_groups_and_acting_on_one_group(app: pgq.App, conn: psycopg.Connection,
                                                    clock: pgq.ManualClock) -> None:
    timeouts, refused, bare, old = (enqueue(app, n) for n in (3, 2, 1, 1))
    fail(conn, timeouts[:2], "TimeoutError", T0 - timedelta(hours=2))
    fail(conn, timeouts[2:], "TimeoutError", T0 - timedelta(hours=1), "late")
    fail(conn, refused, "ConnectionRefused", T0 - timedelta(minutes=5))
    fail(conn, bare, None, T0 - timedelta(minutes=1))
    fail(conn, old, "TimeoutError", T0 - timedelta(days=8))  # outside the window
    groups = app.jobs.dead_letter_groups()
    assert [(g.task, g.error_type, g.count) for g in groups] == [
        ("t.work", "TimeoutError", 3), ("t.work", "ConnectionRefused", 2), ("t.work", "", 1)]
    first = groups[0]
    assert (first.sample_id, first.message, first.latest_at) == (
        timeouts[2], "late", T0 - timedelta(hours=1))
    assert app.jobs.dead_letter_groups(limit=1) == groups[:1]
    assert run(app, app.jobs.adead_letter_groups(within=timedelta(minutes=10))) == groups[1:]

    group = JobFilter(state="failed", task="t.work", error_type="TimeoutError")
    assert app.jobs.count(group) == 4  # every such failure, not only the window's
    assert app.jobs.preview("retry", first.filter()).count == 4
    assert app.jobs.retry(group).changed == 4
    assert app.jobs.count(state="failed") == 3
    assert app.jobs.count(state="failed", error_type="ConnectionRefused") == 2
    assert {j.id for j in app.jobs.list(error_type="").jobs} == set(bare)
    assert app.jobs.delete(JobFilter(state="failed", error_type="")).changed == 1
    assert app.jobs.dead_letter_groups() == [groups[1]]


@pytest.mark.parametrize(("call", "message"), [
    (lambda a: a.jobs.dead_letter_groups(within=timedelta(0)), "within must be a positive"),
    (lambda a: a.jobs.dead_letter_groups(limit=0), "limit must be an integer from 1"),
    (lambda a: a.jobs.count(error_type=5), "error_type must be a string"),
])
def test_dead_letter_groups_bad_input(app: pgq.App, call: Callable[[pgq.App], Any],
                                      message: str) -> None:
    with pytest.raises(pgq.InvalidOptionError, match=message):
        call(app)


# --- 2. cron status ------------------------------------------------------------------

def test_cron_status_next_and_last_fires(app: pgq.App, conn: psycopg.Connection) -> None:
    app.cron("*/5 * * * *", "t.work", name="five")
    app.cron("0 3 * * *", "t.work", name="nightly", timezone="Europe/Paris")
    ids = enqueue(app, 6)
    conn.execute("DELETE FROM pgq_jobs WHERE id = %s", (ids[0],))  # pruned since
    conn.execute("UPDATE pgq_jobs SET state = 'completed' WHERE id = %s", (ids[1],))
    base = datetime(2030, 1, 1, tzinfo=UTC)
    conn.execute(
        "INSERT INTO pgq_cron_fires (entry, fire_at, job_id, enqueued_at, scheduler) "
        "SELECT e, %s + n * interval '5 minutes', j, now(), 's1' "
        "FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS t(e, n, j)",
        (base, ["five"] * 6 + ["gone"], [0, 1, 2, 3, 4, 5, 0], [*ids, ids[2]]))
    now = datetime(2030, 6, 1, 10, 2, tzinfo=UTC)
    five, nightly = cron_status(app, now=now, next_count=2, last_count=5)
    assert (five.name, five.schedule, five.task, five.timezone) == ("five", "*/5 * * * *",
                                                                    "t.work", "UTC")
    assert five.next_fires == [now.replace(minute=5), now.replace(minute=10)]
    assert [f.fire_at for f in five.last_fires] == [base + timedelta(minutes=5 * n)
                                                    for n in (5, 4, 3, 2, 1)]
    assert [f.job_id for f in five.last_fires] == ids[5:0:-1]
    assert [f.job_state for f in five.last_fires] == ["available"] * 4 + ["completed"]
    assert five.last_fires[0].scheduler == "s1"
    assert nightly.last_fires == [] and nightly.next_fires[0] == datetime(2030, 6, 2, 1,
                                                                          tzinfo=UTC)  # 03:00 CEST
    (again, _) = run(app, acron_status(app, now=now, last_count=6))
    assert again.last_fires[-1].job_state is None  # its job was pruned
    assert len(cron_status(app)[0].next_fires) == 5  # the App's clock
    with pytest.raises(pgq.InvalidOptionError, match="last_count must be an integer"):
        cron_status(app, last_count=-1)


# --- 3. API keys ---------------------------------------------------------------------

def test_api_keys_create_verify_revoke(app: pgq.App, conn: psycopg.Connection,
                                       clock: pgq.ManualClock) -> None:
    key, secret = app.api_keys.create("deploy bot", ["read", "enqueue"], actor="ana")
    assert secret.startswith("pgq_") and len(secret) > 40
    assert (key.name, key.scopes, key.created_by, key.last_used_at) == (
        "deploy bot", ("enqueue", "read"), "ana", None)
    stored = conn.execute("SELECT key_hash FROM pgq_api_keys").fetchone()
    assert stored is not None and secret not in stored[0] and len(stored[0]) == 64
    seen = app.api_keys.verify(secret)
    assert seen is not None and seen.last_used_at == T0
    clock.advance(timedelta(seconds=30))  # within the minute: no write
    assert run(app, app.api_keys.averify(secret)).last_used_at == T0  # type: ignore[union-attr]
    clock.advance(timedelta(seconds=31))
    assert app.api_keys.verify(secret).last_used_at == clock.now()  # type: ignore[union-attr]
    assert app.api_keys.verify(secret + "x") is None
    assert app.api_keys.verify("nonsense") is None
    app.api_keys.create("other", "operate")
    assert [k.name for k in run(app, app.api_keys.alist())] == ["deploy bot", "other"]
    revoked = app.api_keys.revoke("deploy bot", actor="bo")
    assert revoked.revoked_at == clock.now()
    assert app.api_keys.verify(secret) is None
    assert [k.revoked_at is not None for k in app.api_keys.list()] == [True, False]


@pytest.mark.parametrize(("call", "message"), [
    (lambda a: a.api_keys.create("k", ["admin"]), "unknown scope 'admin'"),
    (lambda a: a.api_keys.create("k", []), "scopes must be a non-empty list"),
    (lambda a: a.api_keys.create("", ["read"]), "api key name must be 1 to 100"),
    (lambda a: a.api_keys.create("x" * 101, ["read"]), "api key name must be 1 to 100"),
    (lambda a: a.api_keys.create("a\nb", ["read"]), "api key name must be 1 to 100"),
    (lambda a: a.api_keys.revoke("nobody"), "no api key named 'nobody'"),
])
def test_api_keys_bad_input(app: pgq.App, call: Callable[[pgq.App], Any], message: str) -> None:
    with pytest.raises(pgq.InvalidOptionError, match=message):
        call(app)


def test_api_key_names_are_unique(app: pgq.App) -> None:
    app.api_keys.create("k", ["read"])
    with pytest.raises(pgq.InvalidOptionError, match="api key 'k' exists already"):
        app.api_keys.create("k", ["enqueue"])


# --- 4. idempotent enqueue -----------------------------------------------------------

def test_idempotent_enqueue_one_job_per_key(app: pgq.App, conn: psycopg.Connection) -> None:
    start = threading.Barrier(2)
    results: list[tuple[pgq.Enqueued, bool]] = []

    def request() -> None:
        start.wait()
        results.append(enqueue_idempotent(app, "req-1", "fp", "t.work", {"n": 1}))

    threads = [threading.Thread(target=request) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(replayed for _, replayed in results) == [False, True]
    assert len({e.id for e, _ in results}) == 1
    assert conn.execute("SELECT count(*) FROM pgq_jobs").fetchone() == (1,)
    first = results[0][0].id
    again, replayed = run(app, aenqueue_idempotent(app, "req-1", "fp", "t.work", {"n": 1}))
    assert (again.id, again.duplicate, replayed) == (first, True, True)
    with pytest.raises(IdempotencyConflict, match="'req-1' was used for a different request"):
        enqueue_idempotent(app, "req-1", "other", "t.work", {"n": 2})

    conn.execute("UPDATE pgq_idempotency_keys SET created_at = created_at - interval '25 hours'")
    fresh, replayed = enqueue_idempotent(app, "req-1", "other", "t.work", {"n": 2})
    assert not replayed and not fresh.duplicate and fresh.id != first


def test_a_refused_enqueue_releases_the_key_and_expired_keys_are_pruned(
        make_app: MakeApp, conn: psycopg.Connection) -> None:
    strict = make_app()
    with pytest.raises(pgq.UnknownTaskError):
        enqueue_idempotent(strict, "k", "fp", "no.such.task")
    with pytest.raises(pgq.InvalidOptionError, match="idempotency key must be a string"):
        enqueue_idempotent(strict, "", "fp", "no.such.task")
    done, replayed = enqueue_idempotent(make_app(strict=False), "k", "fp", "t.any")
    assert not replayed
    assert conn.execute("SELECT job_id FROM pgq_idempotency_keys").fetchone() == (done.id,)
    conn.execute("INSERT INTO pgq_idempotency_keys (key, fingerprint, created_at) "
                 "SELECT 'old' || n, 'f', now() - interval '25 hours' FROM generate_series(1, 5) n")
    now = datetime.now(UTC)
    assert prune_idempotency_keys(conn, now, 2, lambda: True) == 5
    assert conn.execute("SELECT key FROM pgq_idempotency_keys").fetchall() == [("k",)]


# --- 5. throughput history -----------------------------------------------------------

def test_the_stats_history_gains_a_point_per_minute(app: pgq.App, conn: psycopg.Connection,
                                                    clock: pgq.ManualClock) -> None:
    def refresh(service: StatsService) -> list[Any]:
        with psycopg.connect(app.settings.database_url, autocommit=True) as c:
            return Stats.from_document(service.refresh(c), "direct").throughput()

    service = StatsService(app, holder="test")
    assert refresh(service) == []  # 12:00:50 (hh:mm), no minute crossed yet
    done, failed = enqueue(app, 3, queue="mail"), enqueue(app, 1, queue="mail")
    conn.execute("UPDATE pgq_jobs SET state = 'completed', finished_at = %s WHERE id = ANY(%s)",
                 (T0 - timedelta(seconds=20), done))
    fail(conn, failed, "E", T0)
    clock.advance(timedelta(seconds=15))  # the next minute
    (point,) = refresh(service)
    minute = T0.replace(second=0)
    assert (point.at, point.completed, point.failed) == (minute, 3, 1)
    assert point.per_queue == {"mail": {"completed": 3, "failed": 1}}
    assert len(refresh(service)) == 1  # same minute: no new point

    clock.advance(timedelta(minutes=1))
    successor = StatsService(app, holder="next")  # carries the stored history on
    assert [p.at for p in refresh(successor)] == [minute, minute + timedelta(minutes=1)]
    clock.advance(timedelta(hours=2))
    assert [p.at for p in refresh(successor)] == [minute + timedelta(minutes=121)]


# --- 6. run now ----------------------------------------------------------------------

def test_reschedule_to_now_runs_any_waiting_job(app: pgq.App, conn: psycopg.Connection,
                                                clock: pgq.ManualClock) -> None:
    available, scheduled, retryable = enqueue(app, 3, delay=timedelta(hours=1))
    conn.execute("UPDATE pgq_jobs SET state = 'available' WHERE id = %s", (available,))
    conn.execute("UPDATE pgq_jobs SET state = 'retryable' WHERE id = %s", (retryable,))
    result = app.jobs.reschedule([available, scheduled, retryable], clock.now())
    assert (result.changed, result.skipped) == (3, {})
    rows: dict[int, str] = dict(conn.execute("SELECT id, state FROM pgq_jobs WHERE run_at = %s",
                             (clock.now(),)).fetchall())
    assert rows == {available: "available", scheduled: "available", retryable: "retryable"}
