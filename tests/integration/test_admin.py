"""The operations API (issue 14): app.jobs and app.queues, sync and async, on ids and on
filters; every action recorded in pgq_job_actions; bad input refused in one line; and
the race rules of docs/operations.md against workers' fenced statements."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import pgq
from pgq.client.admin import plan_action
from pgq.client.jobfilter import JobFilter, encode_cursor
from pgq.store.database import execute, run_plan

MakeApp = Callable[..., pgq.App]


def enqueue(app: pgq.App, n: int, **options: Any) -> list[int]:
    return [e.id for e in app.enqueue_many([pgq.JobSpec("t.work", {"i": i}, **options)
                                            for i in range(n)])]


def set_state(conn: psycopg.Connection, ids: list[int], state: str) -> None:
    finished = "now()" if state in ("completed", "failed", "cancelled") else "NULL"
    conn.execute(f"UPDATE pgq_jobs SET state = %s, finished_at = {finished}, "
                 "attempt = CASE WHEN %s = 'failed' THEN max_attempts ELSE attempt END "
                 "WHERE id = ANY(%s)", (state, state, ids))


def states(conn: psycopg.Connection, ids: list[int]) -> dict[int, str]:
    return dict(conn.execute("SELECT id, state FROM pgq_jobs WHERE id = ANY(%s)", (ids,)).fetchall())


def actions(conn: psycopg.Connection, job_id: int) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT actor, action, reason, detail->>'from' FROM pgq_job_actions "
                        "WHERE job_id = %s ORDER BY at, id", (job_id,)).fetchall()


@pytest.fixture
def app(make_app: MakeApp) -> pgq.App:
    return make_app(strict=False)


# --- get and list ----------------------------------------------------------------------

def test_get_returns_every_column_and_decodes_attempts(app: pgq.App, conn: psycopg.Connection) -> None:
    (job_id,) = enqueue(app, 1, queue="mail", tags=["a"], meta={"tenant": "acme"})
    conn.execute("""UPDATE pgq_jobs SET state = 'failed', attempt = 2, errors = '[
        {"attempt": 1, "at": "2030-01-01T00:00:00+00:00", "type": "E", "message": "m1",
         "traceback": "tb", "worker": "w1"},
        {"attempt": 2, "at": "2030-01-01T00:01:00+00:00", "type": "pgq.WorkerLost",
         "message": "m2", "traceback": "", "worker": "w2", "charged": false}]' WHERE id = %s""",
                 (job_id,))
    job = app.jobs.get(job_id)
    assert job is not None
    columns = [r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'pgq_jobs'")]
    assert set(columns) <= set(job.__dataclass_fields__)
    assert (job.queue, job.state, job.tags, job.meta) == ("mail", pgq.JobState.FAILED, ("a",),
                                                          {"tenant": "acme"})
    assert [(a.attempt, a.type, a.worker, a.charged) for a in job.attempts] == [
        (1, "E", "w1", True), (2, "pgq.WorkerLost", "w2", False)]
    assert job.attempts[0].at == datetime(2030, 1, 1, tzinfo=UTC)
    assert app.jobs.get(job_id + 1000) is None


def test_list_filters_and_keyset_pages(app: pgq.App, conn: psycopg.Connection) -> None:
    mail = enqueue(app, 7, queue="mail", tags=["x"], meta={"tenant": "acme"})
    other = enqueue(app, 3, queue="other", meta={"tenant": "zeta"})
    set_state(conn, mail[:2], "failed")
    assert [j.id for j in app.jobs.list(queue="mail", state="failed").jobs] == sorted(mail[:2])[::-1]
    assert [j.id for j in app.jobs.list(meta={"tenant": "zeta"}).jobs] == other[::-1]
    assert len(app.jobs.list(tag="x", state=["available", "failed"]).jobs) == 7
    assert app.jobs.list(task="nope").jobs == ()
    assert len(app.jobs.list(since=datetime.now(UTC) - timedelta(hours=1)).jobs) == 10
    assert app.jobs.list(until=datetime.now(UTC) - timedelta(hours=1)).jobs == ()

    seen: list[int] = []
    page = app.jobs.list(queue="mail", limit=3)
    while True:
        seen += [j.id for j in page.jobs]
        # concurrent inserts (larger ids) never shift the pages that follow
        enqueue(app, 2, queue="mail")
        if page.next_cursor is None:
            break
        page = app.jobs.list(queue="mail", limit=3, after=page.next_cursor)
    assert seen == sorted(mail, reverse=True)


def test_async_twins(app: pgq.App, conn: psycopg.Connection) -> None:
    ids = enqueue(app, 3)

    async def main() -> None:
        job = await app.jobs.aget(ids[0])
        assert job is not None and job.state == "available"
        assert len((await app.jobs.alist(limit=2)).jobs) == 2
        assert (await app.jobs.acancel(ids[0], actor="ann")).changed == 1
        assert (await app.jobs.aretry(ids[0], actor="ann")).changed == 1
        assert (await app.jobs.aset_priority(ids, 7)).changed == 3
        later = datetime.now(UTC) + timedelta(hours=1)
        assert (await app.jobs.areschedule(ids[1], later)).changed == 1
        assert (await app.jobs.acancel(JobFilter(state="available"))).changed == 2
        assert (await app.jobs.adelete(JobFilter(state="cancelled"))).changed == 2
        assert (await app.queues.apause("default")).paused
        assert [q.paused for q in await app.queues.alist()] == [True]
        assert not (await app.queues.aresume("default")).paused
        await app.aclose()

    asyncio.run(main())
    assert states(conn, ids) == {ids[1]: "scheduled"}
    assert [a[1] for a in actions(conn, ids[0])] == ["cancel", "retry", "set_priority",
                                                      "cancel", "delete"]


# --- actions ---------------------------------------------------------------------------

def test_retry_keeps_history_grants_an_attempt_and_records_who(app: pgq.App,
                                                               conn: psycopg.Connection) -> None:
    ids = enqueue(app, 3, max_attempts=2)
    set_state(conn, ids, "failed")
    conn.execute("UPDATE pgq_jobs SET errors = '[{\"type\": \"E\"}]'")
    result = app.jobs.retry(ids[:2], actor="ops-bob", reason="fixed the bug")
    assert (result.changed, result.skipped) == (2, {})
    job = app.jobs.get(ids[0])
    assert job is not None
    assert (job.state, job.finished_at, job.max_attempts, len(job.attempts)) == ("available", None, 3, 1)
    assert actions(conn, ids[0]) == [("ops-bob", "retry", "fixed the bug", "failed")]
    later = datetime.now(UTC) + timedelta(days=1)
    assert app.jobs.retry(ids[2], run_at=later, extra_attempts=5).changed == 1
    job = app.jobs.get(ids[2])
    assert job is not None and (job.state, job.run_at, job.max_attempts) == ("scheduled", later, 7)
    # the default actor is the OS user
    assert actions(conn, ids[2])[0][0] == pgq.client.admin.default_actor()


def test_cancel_takes_waiting_and_running_jobs_skips_finished_and_says_why(
        app: pgq.App, conn: psycopg.Connection) -> None:
    ids = enqueue(app, 4)
    set_state(conn, [ids[1]], "running")
    set_state(conn, [ids[2]], "completed")
    result = app.jobs.cancel([*ids, 999_999], actor="ann", reason="duplicate order")
    assert result.changed == 3
    assert result.skipped == {ids[2]: "completed", 999_999: "not found"}
    job = app.jobs.get(ids[0])
    assert job is not None and job.state == "cancelled" and job.finished_at is not None
    (entry,) = job.attempts
    assert (entry.type, entry.message, entry.actor) == ("pgq.Cancelled", "duplicate order", "ann")
    assert states(conn, [ids[1], ids[2]]) == {ids[1]: "cancelled", ids[2]: "completed"}


def test_delete_only_finished_reschedule_and_priority_only_waiting(app: pgq.App,
                                                                   conn: psycopg.Connection) -> None:
    ids = enqueue(app, 4)
    set_state(conn, ids[:2], "completed")
    assert app.jobs.delete(ids, reason="cleanup").changed == 2
    assert set(states(conn, ids)) == set(ids[2:])
    assert conn.execute("SELECT detail->>'task' FROM pgq_job_actions WHERE job_id = %s",
                        (ids[0],)).fetchone() == ("t.work",)  # the record outlives the job
    set_state(conn, [ids[3]], "running")
    when = datetime.now(UTC) + timedelta(minutes=5)
    assert app.jobs.reschedule(ids[2:], when).skipped == {ids[3]: "running"}
    assert app.jobs.set_priority(ids[2:], -50).changed == 1
    row = conn.execute("SELECT state, run_at, priority FROM pgq_jobs WHERE id = %s", (ids[2],)).fetchone()
    assert row == ("scheduled", when, -50)


def test_filter_actions_run_in_batches_each_committed(app: pgq.App, db_url: str,
                                                     conn: psycopg.Connection) -> None:
    ids = enqueue(app, 25, queue="bulk")
    enqueue(app, 5, queue="keep")
    plan = plan_action("cancel", JobFilter(queue="bulk"),
                       {"actor": "a", "reason": None, "now": None, "notify": True}, batch=10)
    with psycopg.connect(db_url, autocommit=True) as own:
        result = run_plan(own, plan, atomic=False)
    assert result.changed == 25
    # three statements, three transactions: the actions carry three distinct xmin
    assert conn.execute("SELECT count(DISTINCT xmin::text) FROM pgq_job_actions").fetchone() == (3,)
    assert set(states(conn, ids).values()) == {"cancelled"}
    assert len(app.jobs.list(queue="keep", state="available").jobs) == 5


def test_a_batch_skips_rows_another_transaction_holds(app: pgq.App, db_url: str) -> None:
    ids = enqueue(app, 3)
    with psycopg.connect(db_url) as holder:
        holder.execute("SELECT 1 FROM pgq_jobs WHERE id = %s FOR UPDATE", (ids[0],))
        result = app.jobs.cancel(ids)  # does not wait for the holder
        holder.rollback()
    assert result.changed == 2
    assert result.skipped == {ids[0]: "available, locked by another transaction"}


def test_queues_pause_resume_and_the_claim_honours_it(app: pgq.App, conn: psycopg.Connection) -> None:
    enqueue(app, 2, queue="mail")
    enqueue(app, 1, queue="other")
    info = app.queues.pause("mail", actor="ann", reason="smtp down")
    assert (info.paused, info.paused_by, info.pause_reason) == (True, "ann", "smtp down")
    assert [(q.name, q.paused) for q in app.queues.list()] == [("mail", True), ("other", False)]

    def claim() -> list[str]:
        rows = execute(conn, "job_claim", {
            "queues": ["mail", "other"], "limits": [10, 10], "start_priorities": None,
            "start_run_ats": None, "start_ids": None, "now": None, "tasks": ["t.work"],
            "worker": "w", "lease_seconds": 60})
        return sorted(r[1] for r in rows)

    assert claim() == ["other"]
    assert not app.queues.resume("mail").paused
    assert claim() == ["mail", "mail"]


def test_bad_input_is_one_clear_line(app: pgq.App) -> None:
    bad: list[tuple[Callable[[], Any], str]] = [
        (lambda: app.jobs.list(state="dead"), "unknown job state 'dead'"),
        (lambda: app.jobs.list(limit=-1), "limit must be an integer from 1"),
        (lambda: app.jobs.list(limit=0), "limit must be an integer from 1"),
        (lambda: app.jobs.list(after="garbage"), "bad cursor 'garbage'"),
        (lambda: app.jobs.list(after=encode_cursor(5)[:-2] + "!!"), "bad cursor"),
        (lambda: app.jobs.list(colour="red"), "unknown filter in ['colour']"),
        (lambda: app.jobs.list(since=datetime(2030, 1, 1)), "since must be timezone-aware"),
        (lambda: app.jobs.list(since=datetime(2030, 1, 2, tzinfo=UTC),
                               until=datetime(2030, 1, 1, tzinfo=UTC)), "must be after since"),
        (lambda: app.jobs.list(queue="bad queue!"), "queue"),
        (lambda: app.jobs.cancel([]), "cancel: no job ids given"),
        (lambda: app.jobs.cancel([1, -3]), "job ids are positive integers, got -3"),
        (lambda: app.jobs.retry(1, extra_attempts=0), "extra_attempts must be an integer"),
        (lambda: app.jobs.retry(1, actor=""), "actor must be a non-empty string"),
        (lambda: app.jobs.reschedule(1, datetime(2030, 1, 1)), "run_at must be a timezone-aware"),
        (lambda: app.jobs.set_priority(1, 500), "priority must be between"),
        (lambda: app.queues.pause(""), "queue"),
    ]
    for call, message in bad:
        with pytest.raises(pgq.InvalidJobError) as err:
            call()
        assert message in str(err.value), (message, str(err.value))
        assert "\n" not in str(err.value)


# --- races -----------------------------------------------------------------------------

def test_cancel_retry_and_completion_race_to_one_consistent_end(app: pgq.App, db_url: str,
                                                                conn: psycopg.Connection) -> None:
    """1,000 jobs, half running (claimed by a worker 'w'), half waiting or failed. Three
    connections at once: an operator cancelling all, one retrying all, a worker
    completing its running ones with job_finish_many. Whoever commits first wins each
    row (a running job's completion or its cancel); nothing is lost, and no completed
    job's result is overwritten."""
    ids = enqueue(app, 1000)
    running, failed = ids[:500], ids[500:700]
    conn.execute("UPDATE pgq_jobs SET state = 'running', attempt = 1, lease_owner = 'w', "
                 "started_at = now(), lease_expires_at = now() + interval '1 hour' "
                 "WHERE id = ANY(%s)", (running,))
    set_state(conn, failed, "failed")
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def operator(action: str) -> None:
        try:
            with pgq.App(database_url=db_url, strict=False) as own:
                start.wait()
                for chunk in range(0, 1000, 100):
                    getattr(own.jobs, action)(ids[chunk:chunk + 100], actor=action)
        except BaseException as exc:
            errors.append(exc)

    def worker() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                start.wait()
                for chunk in range(0, 500, 50):
                    part = running[chunk:chunk + 50]
                    n = len(part)
                    execute(c, "job_finish_many", {
                        "ids": part, "attempts": [1] * n, "owners": ["w"] * n,
                        "states": ["completed"] * n, "delays": [0.0] * n, "refunds": [0] * n,
                        "results": ['{"done": true}'] * n, "errors": [None] * n, "now": None})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=operator, args=("cancel",)),
               threading.Thread(target=operator, args=("retry",)), threading.Thread(target=worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = conn.execute("SELECT id, state, result, finished_at IS NOT NULL FROM pgq_jobs").fetchall()
    assert sorted(r[0] for r in rows) == ids  # none lost
    by_id = {r[0]: r[1:] for r in rows}
    for job_id in running:  # the worker's outcome stands, or the cancel came first
        state, result, finished = by_id[job_id]
        assert (state, result, finished) == ("completed", {"done": True}, True) or (
            result is None and (state, finished) in {("cancelled", True), ("available", False)})
    for job_id in ids[500:]:
        state, result, finished = by_id[job_id]
        assert result is None
        assert state in ("available", "cancelled")
        assert finished == (state == "cancelled")
    # every change has its record, and each record describes a change that happened
    for job_id, action, was in conn.execute(
            "SELECT job_id, action, detail->>'from' FROM pgq_job_actions ORDER BY id"):
        if job_id in running:
            assert (action, was) in {("cancel", "running"), ("retry", "cancelled")}
            continue
        assert job_id in ids[500:]
        assert (action, was) in {("cancel", "available"), ("retry", "failed"),
                                 ("retry", "cancelled")}
