"""Queue stats and the worker registry (issue 14 items 3 and 4), on real PostgreSQL and
Redis: the figures on a small seeded table; served from Redis, from pgq_stats when Redis
is unreachable, computed directly (and flagged) when neither copy is fresh; the stats
leader's thread; a heartbeat's registry row appearing, refreshed and gone; maintenance
pruning dead rows."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner

import pgq
from pgq.cli.commands import cli
from pgq.client.stats import plan_compute
from pgq.coordination import Coordinator
from pgq.core.settings import Settings
from pgq.scheduling.maintenance import Maintenance
from pgq.scheduling.stats import StatsService
from pgq.store.database import run_plan
from pgq.worker.config import WorkerConfig
from pgq.worker.heartbeat import Heartbeat
from pgq.worker.held import HeldJobs
from tests.support.waiting import wait_until

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens there; the real Redis runs on


def seed(conn: psycopg.Connection) -> None:
    """mail: 3 available (1 due for a minute), 2 scheduled, 1 retryable (error 2 min
    ago), 2 running, completed 4 in the last minute (run 1 s .. 4 s, one after 2
    attempts) and 1 an hour ago, 2 failed (one 3 min ago), 1 cancelled 10 min ago.
    sms: 1 available of a task nobody registered."""
    ins = ("INSERT INTO pgq_jobs (queue, task, state, attempt, run_at, started_at, "
           "finished_at, lease_owner, lease_expires_at, errors) VALUES "
           "(%s, %s, %s, %s, now() + %s::interval, now() + %s::interval, now() + %s::interval, "
           "%s, now() + interval '1 minute', %s::jsonb)")
    rows = [
        ("mail", "m.send", "available", 0, "-60 s", None, None, None, "[]"),
        ("mail", "m.send", "available", 0, "-10 s", None, None, None, "[]"),
        ("mail", "m.other", "available", 0, "-5 s", None, None, None, "[]"),
        ("mail", "m.send", "scheduled", 0, "1 hour", None, None, None, "[]"),
        ("mail", "m.send", "scheduled", 0, "2 hours", None, None, None, "[]"),
        ("mail", "m.send", "retryable", 1, "1 minute", None, None, None, "[]"),
        ("mail", "m.send", "running", 1, "-1 s", "-1 s", None, "w", "[]"),
        ("mail", "m.send", "running", 1, "-1 s", "-1 s", None, "w", "[]"),
        ("mail", "m.send", "completed", 1, "-30 s", "-30 s", "-29 s", None, "[]"),
        ("mail", "m.send", "completed", 1, "-30 s", "-30 s", "-28 s", None, "[]"),
        ("mail", "m.send", "completed", 1, "-30 s", "-30 s", "-27 s", None, "[]"),
        ("mail", "m.send", "completed", 2, "-30 s", "-30 s", "-26 s", None, "[]"),
        ("mail", "m.send", "completed", 1, "-2 hours", "-2 hours", "-1 hour", None, "[]"),
        ("mail", "m.send", "failed", 3, "-3 min", "-3 min", "-3 min", None, "[]"),
        ("mail", "m.send", "failed", 3, "-3 days", "-3 days", "-3 days", None, "[]"),
        ("mail", "m.send", "cancelled", 0, "-10 min", None, "-10 min", None, "[]"),
        ("sms", "s.ghost", "available", 0, "-1 s", None, None, None, "[]"),
    ]
    for queue, task, state, attempt, run, started, finished, owner, errors in rows:
        conn.execute(ins, [queue, task, state, attempt, run, started or "0 s", finished or "0 s",
                           owner, errors])
    conn.execute("UPDATE pgq_jobs SET started_at = NULL WHERE state IN ('available', 'scheduled')")
    conn.execute("UPDATE pgq_jobs SET finished_at = NULL "
                 "WHERE state NOT IN ('completed', 'failed', 'cancelled')")
    conn.execute("UPDATE pgq_jobs SET errors = jsonb_build_array(jsonb_build_object("
                 "'at', now() - interval '2 minutes', 'type', 'E', 'message', 'x')) "
                 "WHERE state = 'retryable'")
    conn.execute("INSERT INTO pgq_workers (id, host, pid, concurrency, version, queues, tasks) "
                 "VALUES ('h:1:a', 'h', 1, 4, 't', '{\"mail\": 1}', '[\"m.send\", \"m.other\"]')")
    conn.execute("INSERT INTO pgq_queues (name, paused) VALUES ('sms', true)")
    conn.execute("ANALYZE pgq_jobs")


def astats(app: pgq.App) -> str:
    """``app.astats()``'s source, in a loop of its own that closes the async pool."""
    async def main() -> str:
        try:
            return (await app.astats()).source
        finally:
            await app.aclose()
    return asyncio.run(main())


@pytest.fixture
def app(settings: Settings) -> Iterator[pgq.App]:
    with pgq.App(settings, strict=False) as a:
        yield a


@pytest.fixture
def stored(app: pgq.App, conn: psycopg.Connection) -> Iterator[StatsService]:
    """The stats computed once and stored in both copies (no leadership needed)."""
    seed(conn)
    service = StatsService(app, holder="test")
    with psycopg.connect(app.settings.database_url, autocommit=True) as c:
        service.refresh(c)
    yield service


def test_the_figures_on_a_seeded_table_served_from_redis(app: pgq.App,
                                                         stored: StatsService) -> None:
    stats = app.stats()
    assert stats.source == "redis" and stats.age_seconds < 5
    mail, sms = stats.queues["mail"], stats.queues["sms"]
    assert {s: mail.counts[s] for s in ("available", "scheduled", "retryable", "running",
                                        "failed")} == {
        "available": 3, "scheduled": 2, "retryable": 1, "running": 2, "failed": 2}
    assert mail.estimated == ("cancelled", "completed")  # always estimates
    assert mail.counts["completed"] == 5 and mail.counts["cancelled"] == 1  # ANALYZE saw all
    assert mail.lag_seconds is not None and 59 < mail.lag_seconds < 70
    assert mail.finished["1m"] == {"completed": 4, "failed": 0, "cancelled": 0, "retried": 1}
    assert mail.finished["5m"] == {"completed": 4, "failed": 1, "cancelled": 0, "retried": 3}
    assert mail.finished["15m"] == {"completed": 4, "failed": 1, "cancelled": 1, "retried": 3}
    assert mail.dead_letters == 2 and mail.dead_letter_growth == {"1m": 0, "5m": 1, "15m": 1}
    run = mail.runtimes["m.send"]
    assert run["count"] == 4 and run["p50"] == pytest.approx(2.5) and 3.5 < run["p95"] <= 4
    assert mail.workers == ("h:1:a",) and mail.orphaned_tasks == {} and not mail.paused
    assert sms.paused and sms.workers == () and sms.orphaned_tasks == {"s.ghost": 1}
    assert astats(app) == "redis"


def test_served_from_pgq_stats_when_redis_is_unreachable(settings: Settings,
                                                         stored: StatsService) -> None:
    with pgq.App(settings.with_changes(redis_url=DEAD_REDIS), strict=False) as cut_off:
        stats = cut_off.stats()
        assert stats.source == "postgres" and stats.age_seconds < 5
        assert stats.queues["mail"].counts["available"] == 3
        assert astats(cut_off) == "postgres"


def test_computed_directly_when_no_copy_is_fresh(settings: Settings, conn: psycopg.Connection,
                                                stored: StatsService) -> None:
    conn.execute("UPDATE pgq_stats SET computed_at = now() - interval '1 hour'")
    with pgq.App(settings.with_changes(redis_url=DEAD_REDIS), strict=False) as cut_off:
        stats = cut_off.stats()
        assert stats.source == "direct" and stats.age_seconds == 0
        assert stats.queues["mail"].counts["available"] == 3
    conn.execute("DELETE FROM pgq_stats")
    with pgq.App(settings.with_changes(redis_url=None), strict=False) as no_redis:
        assert astats(no_redis) == "direct"


def test_the_stats_leader_refreshes_both_copies(app: pgq.App, conn: psycopg.Connection) -> None:
    seed(conn)
    service = StatsService(app, holder="leader", every=0.2).start()
    try:
        wait_until(lambda: service.runs >= 2, what="two stats rounds")
        assert conn.execute("SELECT count(*) FROM pgq_stats").fetchone() == (1,)
        assert app.stats().source == "redis"
    finally:
        service.stop()


def registry(conn: psycopg.Connection) -> list[tuple[str, int]]:
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT id, running FROM pgq_workers ORDER BY id").fetchall()]


def test_the_heartbeat_registers_refreshes_and_unregisters(app: pgq.App,
                                                           conn: psycopg.Connection) -> None:
    app.task(name="reg.t")(lambda: None)
    held = HeldJobs(None, release_lock=lambda key, token: None)
    registration = {"id": "h:2:b", "host": "h", "pid": 2, "queues": '{"mail": 2}',
                    "concurrency": 3, "version": "v", "tasks": '["reg.t"]'}
    coordinator = Coordinator(app.settings)
    beat = Heartbeat(held, WorkerConfig(heartbeat_seconds=0.05), app.settings, app.clock,
                     "h:2:b", coordinator, lambda job_id, judged: None, registration)
    try:
        beat.start()
        assert registry(conn) == [("h:2:b", 0)]  # made before start() returns
        (first,) = conn.execute("SELECT last_seen FROM pgq_workers").fetchone()
        wait_until(lambda: conn.execute("SELECT last_seen > %s FROM pgq_workers",
                                         [first]).fetchone() == (True,), what="a refresh")
        (w,) = app.queues.workers(queue="mail")
        assert (w.id, w.queues, w.tasks, w.concurrency, w.alive) == (
            "h:2:b", {"mail": 2}, ("reg.t",), 3, True)
        assert app.queues.workers(queue="other") == []
    finally:
        beat.stop()
        coordinator.close()
    assert registry(conn) == []  # a clean stop takes the row out


def test_maintenance_prunes_dead_registry_rows(app: pgq.App, conn: psycopg.Connection) -> None:
    for worker_id, seen in (("dead", "-40 s"), ("late", "-20 s"), ("live", "0 s")):
        conn.execute("INSERT INTO pgq_workers (id, host, pid, concurrency, version, "
                     "lease_seconds, last_seen) VALUES (%s, 'h', 1, 1, 'v', 12, "
                     "now() + %s::interval)", [worker_id, seen])
    assert [w.alive for w in app.queues.workers()] == [False, False, True]
    with psycopg.connect(app.settings.database_url, autocommit=True) as c:
        Maintenance(app, holder="m").run_once(c)
    assert [r[0] for r in registry(conn)] == ["late", "live"]  # 3 leases: 36 s


def test_pgq_stats_prints_and_emits_json(settings: Settings, stored: StatsService) -> None:
    env = {"PGQ_DATABASE_URL": settings.database_url, "PGQ_REDIS_URL": settings.redis_url or ""}
    out = CliRunner().invoke(cli, ["stats", "--json"], env=env)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["source"] == "redis" and doc["queues"]["mail"]["counts"]["available"] == 3
    out = CliRunner().invoke(cli, ["stats"], env={**env, "PGQ_REDIS_URL": DEAD_REDIS})
    assert out.exit_code == 0, out.output
    assert out.output.startswith("stats from postgres")
    assert "s.ghost=1" in out.output and "m.send" in out.output


def test_unserved_queues_are_flagged_shown_and_logged_once_per_transition(
        app: pgq.App, conn: psycopg.Connection, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    """A queue with due work and no live worker is unserved: flagged in the figures,
    first in pgq stats, and one WARNING from the leader when it becomes so. A paused
    queue (sms) and one with only future jobs (later) are not; mail has a worker."""
    seed(conn)
    conn.execute("INSERT INTO pgq_jobs (queue, task, run_at) VALUES "
                 "('reports', 'r.build', now() - interval '2 minutes'), "
                 "('reports', 'r.build', now()), ('later', 'l.run', now() + interval '1 hour')")
    conn.execute("UPDATE pgq_jobs SET state = 'scheduled' WHERE queue = 'later'")
    caplog.set_level(logging.INFO, logger="pgq.stats")
    service = StatsService(app, holder="test")

    def refresh() -> list[str]:
        caplog.clear()
        with psycopg.connect(app.settings.database_url, autocommit=True) as c:
            service.refresh(c)
        return [f"{r.levelname} {r.getMessage()}" for r in caplog.records
                if "unserved" in r.getMessage()]

    (line,) = refresh()
    assert re.fullmatch(r"WARNING stats: queue 'reports' is unserved: 2 due job\(s\), oldest "
                        r"due 12\ds ago and no live worker serves it \(pgq workers; pgq stats\)",
                        line), line
    stats = app.stats()
    assert stats.unserved == ["reports"] and stats.document["unserved"] == ["reports"]
    reports, sms, later, mail = (stats.queues[n] for n in ("reports", "sms", "later", "mail"))
    assert (reports.unserved, reports.due, reports.live_workers) == (True, 2, 0)
    assert (sms.unserved, sms.due, sms.paused) == (False, 1, True), "paused: not unserved"
    assert (later.unserved, later.due, later.lag_seconds) == (False, 0, None)
    assert (mail.unserved, mail.due, mail.live_workers) == (False, 3, 1)
    assert refresh() == [], "still unserved: no new line"

    env = {"PGQ_DATABASE_URL": settings.database_url, "PGQ_REDIS_URL": settings.redis_url or ""}
    out = CliRunner().invoke(cli, ["stats"], env=env)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[1].startswith("UNSERVED: queue reports has 2 due job(s), oldest due 12")
    assert lines[1].endswith("s ago and no live worker serves it") and len(lines) > 2
    assert [line.split()[-3:] for line in lines if line.startswith("reports ")] == [
        ["0", "UNSERVED", "r.build=2"]]  # WORKERS, then ORPHANED: nobody registered r.build
    doc = json.loads(CliRunner().invoke(cli, ["stats", "--json"], env=env).output)
    assert doc["unserved"] == ["reports"]
    assert {k: doc["queues"]["reports"][k] for k in ("unserved", "due", "live_workers")} == {
        "unserved": True, "due": 2, "live_workers": 0}

    conn.execute("INSERT INTO pgq_workers (id, host, pid, concurrency, version, queues) "
                 "VALUES ('h:3:r', 'h', 3, 1, 't', '{\"reports\": 1}')")
    assert refresh() == ["INFO stats: queue 'reports' is no longer unserved (1 live worker(s))"]
    assert app.stats().unserved == []
    conn.execute("DELETE FROM pgq_workers WHERE id = 'h:3:r'")
    assert [line.split(":")[0] for line in refresh()] == ["WARNING stats"], "unserved again"


def test_capped_parts_fall_back_to_estimates_and_flag_lower_bounds(
        conn: psycopg.Connection) -> None:
    seed(conn)
    doc = run_plan(conn, plan_compute(cap=2, window_cap=2), atomic=False)
    mail = doc["queues"]["mail"]
    # the waiting, running and failed parts hit their cap of 2 rows: estimates instead
    assert mail["estimated"] == ["available", "cancelled", "completed", "failed", "retryable",
                                 "running", "scheduled"]
    assert mail["counts"]["available"] == 3  # ANALYZE saw every row of the small table
    # the 2 newest completions (26 and 27 s ago) do not reach back over any window
    assert mail["finished_capped"] == ["1m", "5m", "15m"]
    assert mail["finished"]["1m"]["completed"] == 2
    full = run_plan(conn, plan_compute(), atomic=False)["queues"]["mail"]
    assert full["estimated"] == ["cancelled", "completed"] and full["finished_capped"] == []


def test_a_worker_process_is_in_the_registry_while_it_runs(app: pgq.App,
                                                          conn: psycopg.Connection) -> None:
    db = app.settings.database_url

    @app.task(name="reg.look", queue="mail")
    def look() -> list[object]:  # what the registry says while this worker runs
        with psycopg.connect(db) as c:
            return list(c.execute("SELECT id, queues, tasks, concurrency, pid FROM pgq_workers")
                        .fetchone() or [])

    job = app.enqueue("reg.look")
    worker = pgq.Worker(app, WorkerConfig(queues=(pgq.QueueSpec("mail", 2),), concurrency=3,
                                          maintenance=False, stats=False))
    asyncio.run(asyncio.wait_for(worker.run_async(stop_when="done"), 60))
    (result,) = conn.execute("SELECT result FROM pgq_jobs WHERE id = %s", [job.id]).fetchone()
    assert result == [worker.id, {"mail": 2}, ["reg.look"], 3, os.getpid()]
    assert registry(conn) == []  # gone with the clean stop
