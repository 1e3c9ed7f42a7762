"""The audit views of migration 0007 (docs/audit.md, "Views"): each documented example
runs on seeded data and returns what the seed implies; the views the migration creates
are the ones pgq.store.schema creates."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

import pgq
from pgq.core.settings import sqlalchemy_url
from pgq.store.schema import metadata
from pgq.store.views import VIEWS

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
ROOT = Path(__file__).resolve().parents[2]


def examples() -> dict[str, str]:
    """The example of each "View: name" section (```sql or ```psql)."""
    found = re.findall(r"^## View: (\w+)\n.*?^```(?:sql|psql)\n(.*?)^```", DOC.read_text(), re.M | re.S)
    return dict(found)


def run(conn: psycopg.Connection, view: str, **params: Any) -> list[tuple[Any, ...]]:
    text = re.sub(r":'(\w+)'", lambda m: sql.Literal(str(params[m.group(1)])).as_string(conn),
                  examples()[view])
    return conn.execute(text).fetchall()


def test_every_view_is_documented_with_an_example() -> None:
    assert sorted(examples()) == sorted(VIEWS)


def test_the_views_on_seeded_data(make_app: Any, conn: psycopg.Connection) -> None:
    app: pgq.App = make_app(strict=False)
    dead, lost, waiting, stuck, other = (
        e.id for e in app.enqueue_many([pgq.JobSpec("billing.charge", queue="billing")
                                        for _ in range(4)] + [pgq.JobSpec("mail.send", queue="mail")]))
    conn.execute("""UPDATE pgq_jobs SET state = 'failed', attempt = 2, finished_at = now(),
        errors = '[{"attempt": 1, "at": "2030-01-01T00:00:00+00:00", "type": "E1", "message": "first",
                    "traceback": "", "worker": "w1"},
                   {"attempt": 2, "at": "2030-01-01T00:05:00+00:00", "type": "E2", "message": "last",
                    "traceback": "", "worker": "w2"}]' WHERE id = %s""", (dead,))
    conn.execute("""UPDATE pgq_jobs SET state = 'retryable', attempt = 1, errors = '[{"attempt": 1,
        "type": "pgq.WorkerLost", "message": "", "traceback": "", "worker": "w3", "charged": false}]'
        WHERE id = %s""", (lost,))
    conn.execute("UPDATE pgq_jobs SET state = 'running', attempt = 1, lease_owner = 'w9', "
                 "started_at = now() - interval '10 minutes', "
                 "lease_expires_at = now() - interval '1 minute' WHERE id = %s", (stuck,))
    conn.execute("UPDATE pgq_jobs SET run_at = now() - interval '1 hour' WHERE id = %s", (waiting,))
    app.jobs.cancel(other, actor="ann", reason="spam")
    app.jobs.retry(other, actor="bob", reason="not spam after all")
    app.queues.pause("mail", actor="ann", reason="smtp down")
    app.queues.pause("empty", actor="ann")

    assert run(conn, "pgq_dead_letters", task="billing.charge") == [
        (dead, "billing", "billing.charge", 2, conn.execute(
            "SELECT finished_at FROM pgq_jobs WHERE id = %s", (dead,)).fetchone()[0], "E2", "last")]

    assert [r[:8] for r in run(conn, "pgq_attempts", job_id=dead)] == [
        (1, 1, datetime(2030, 1, 1, tzinfo=UTC), "E1", "first", "w1", None, True),
        (2, 2, datetime(2030, 1, 1, 0, 5, tzinfo=UTC), "E2", "last", "w2", None, True)]
    assert [r[3] + ":" + str(r[7]) for r in run(conn, "pgq_attempts", job_id=lost)] == [
        "pgq.WorkerLost:False"]
    assert [(r[3], r[4], r[6]) for r in run(conn, "pgq_attempts", job_id=other)] == [
        ("pgq.Cancelled", "spam", "ann")]

    overview = {r[0]: r for r in run(conn, "pgq_queue_overview")}
    assert sorted(overview) == ["billing", "empty", "mail"]
    assert overview["billing"][1:8] == (1, 0, 1, 1, 0, 1, 0)
    assert overview["billing"][8].total_seconds() >= 3600  # the job due an hour ago
    assert overview["billing"][9:] == (False, None, None)
    assert overview["mail"][1] == 1 and overview["mail"][9:] == (True, "ann", "smtp down")
    assert overview["empty"][1:9] == (0, 0, 0, 0, 0, 0, 0, None) and overview["empty"][9]

    ((job_id, queue, task, attempt, owner, _expires, overdue, running_for),) = run(conn, "pgq_stuck_jobs")
    assert (job_id, queue, task, attempt, owner) == (stuck, "billing", "billing.charge", 1, "w9")
    assert overdue.total_seconds() >= 60 and running_for.total_seconds() >= 600

    assert [(r[1], r[2], r[3], r[4]["from"], r[5]) for r in run(conn, "pgq_operator_actions",
                                                                job_id=other)] == [
        ("ann", "cancel", "spam", "available", "available"),
        ("bob", "retry", "not spam after all", "cancelled", "available")]


def test_the_schema_module_creates_the_migrations_views(empty_db_url: str, db_url: str) -> None:
    engine = create_engine(sqlalchemy_url(empty_db_url), poolclass=NullPool)
    metadata.create_all(engine)
    engine.dispose()

    def views(url: str) -> list[tuple[str, str]]:
        with psycopg.connect(url) as c:
            return c.execute("SELECT viewname, definition FROM pg_views "
                             "WHERE viewname LIKE 'pgq%' ORDER BY 1").fetchall()

    assert [v[0] for v in views(db_url)] == sorted(VIEWS)
    assert views(empty_db_url) == views(db_url)
    migration = (ROOT / "migrations/versions/0007_operations.py").read_text()
    for body in VIEWS.values():
        assert body in migration  # the migration writes the same text out
