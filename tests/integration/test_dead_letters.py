"""Dead letters nobody can miss (issue 14 item 7), through a real worker and database:
the per-job line names the error, ``app.on_dead_letter`` hooks run once per dead letter
after its row is stored, a raising hook is logged and the worker runs on, a blocked
hook holds up no job; and a worker warns about tasks whose queue it does not serve."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
import pytest

import pgq
from pgq.worker import WorkerConfig
from pgq.worker.process import warn_unserved_tasks
from pgq.worker.queues import parse_queues
from tests.integration.test_worker import Background, run
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

FAST = WorkerConfig(concurrency=4, poll_seconds=0.05, maintenance=False)


def states(conn: psycopg.Connection, ids: list[int]) -> list[str]:
    rows = dict(conn.execute("SELECT id, state FROM pgq_jobs WHERE id = ANY(%s)", [ids]))
    return [rows[i] for i in ids]


def test_a_failed_jobs_line_names_its_error(make_app: Callable[..., pgq.App],
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pgq.worker")
    app = make_app()

    @app.task(name="dl.parse", max_attempts=2, backoff=pgq.Backoff(steps=[0], jitter=0))
    def parse(text: str) -> None:
        raise ValueError(f"bad input: {text}\nsee the docs")

    job_id = app.enqueue("dl.parse", {"text": "x" * 300}).id
    run(app, FAST, stop_when="done")
    lines = [r for r in caplog.records if r.name == "pgq.worker" and f"job={job_id} " in
             r.getMessage()]
    assert [(r.levelno, r.getMessage().split(" outcome=")[1].split()[0]) for r in lines] == [
        (logging.INFO, "retryable"), (logging.WARNING, "failed")]
    for line in lines:
        message = line.getMessage()
        assert "error=ValueError: bad input: xxx" in message, message
        assert "\n" not in message and len(message) < 400, "one line, the message cut"
    assert "Traceback" not in caplog.text, "the traceback is DEBUG"


def test_hooks_run_once_per_dead_letter_after_its_row_is_stored(
        make_app: Callable[..., pgq.App], db_url: str) -> None:
    app = make_app()
    seen: list[tuple[pgq.DeadLetter, str]] = []

    @app.on_dead_letter
    def record(dead: pgq.DeadLetter) -> None:
        with psycopg.connect(db_url) as c:  # what another process sees now
            row = c.execute("SELECT state FROM pgq_jobs WHERE id = %s", [dead.job_id]).fetchone()
        assert row is not None
        seen.append((dead, row[0]))

    @app.task(name="dl.flaky", queue="mail", max_attempts=3,
              backoff=pgq.Backoff(steps=[0], jitter=0))
    def flaky(n: int) -> int:
        if n % 3 == 0:
            raise LookupError(f"no user {n}")
        if n % 3 == 1:
            raise pgq.Fail("gave up")
        return n

    ids = [app.enqueue("dl.flaky", {"n": n}).id for n in range(9)]
    worker = run(app, WorkerConfig(queues=tuple(parse_queues("mail")), concurrency=4,
                                   poll_seconds=0.05, maintenance=False), stop_when="done")
    assert worker.stats.finished == {"completed": 3, "retryable": 6, "failed": 6}
    assert worker.dead_letters.delivered == 6
    by_id = {dead.job_id: (dead, state) for dead, state in seen}
    assert len(seen) == 6 and sorted(by_id) == [ids[n] for n in range(9) if n % 3 != 2]
    assert {state for _, state in seen} == {"failed"}, "the hook runs after the commit"
    lookup, _ = by_id[ids[3]]
    assert (lookup.task, lookup.queue, lookup.attempt, lookup.max_attempts,
            lookup.error_type, lookup.error_message, lookup.worker_id) == (
        "dl.flaky", "mail", 3, 3, "LookupError", "no user 3", worker.id)
    assert "LookupError: no user 3" in lookup.traceback
    fail, _ = by_id[ids[1]]
    assert (fail.attempt, fail.error_type, fail.error_message) == (1, "pgq.outcomes.Fail",
                                                                   "gave up")


def test_a_raising_hook_is_logged_and_the_worker_runs_on(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection,
        caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    calls: list[int] = []

    @app.on_dead_letter
    def pager(dead: pgq.DeadLetter) -> None:
        calls.append(dead.job_id)
        raise ConnectionError("pager API down")

    @app.task(name="dl.work")
    def work(fail: bool) -> None:
        if fail:
            raise pgq.Fail("broken")

    first = app.enqueue("dl.work", {"fail": True}).id
    worker = Background(pgq.Worker(app, FAST), stop_when=None)  # type: ignore[arg-type]
    try:
        wait_until(lambda: calls == [first], 10, "the hook called for the dead letter")
        later = [app.enqueue("dl.work", {"fail": n == 0}).id for n in range(5)]
        wait_until(lambda: states(conn, later) == ["failed"] + ["completed"] * 4, 10,
                   "jobs enqueued after the hook raised")
        wait_until(lambda: len(calls) == 2, 10, "the hook called for the second dead letter")
    finally:
        worker.worker.request_stop()
        worker.join()
    assert calls == [first, later[0]], "called once per dead letter, never retried"
    errors = [r for r in caplog.records if "dead-letter hook" in r.getMessage()]
    assert len(errors) == 2 and all(r.levelno == logging.ERROR and r.exc_info for r in errors)
    assert f"pager failed for job={first}; not retried" in errors[0].getMessage()


def test_a_blocked_hook_does_not_stop_other_jobs_completing(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    app = make_app()
    entered, release = threading.Event(), threading.Event()

    @app.on_dead_letter
    def stuck(dead: pgq.DeadLetter) -> None:
        entered.set()
        release.wait(60)

    @app.task(name="dl.job")
    def job(fail: bool) -> None:
        if fail:
            raise pgq.Fail("no")

    dead = app.enqueue("dl.job", {"fail": True}).id
    worker = Background(pgq.Worker(app, FAST), stop_when=None)  # type: ignore[arg-type]
    try:
        assert entered.wait(10), "the hook was called"
        others = [app.enqueue("dl.job", {"fail": n % 10 == 0}).id for n in range(40)]
        wait_until(lambda: set(states(conn, others)) == {"completed", "failed"}, 20,
                   "every other job finished while the hook is blocked")
        assert not release.is_set() and states(conn, [dead]) == ["failed"]
    finally:
        release.set()
        worker.worker.request_stop()
        worker.join()
    assert worker.worker.dead_letters.delivered == 5


def hooked(app: pgq.App, db_url: str) -> list[tuple[pgq.DeadLetter, str]]:
    """Each dead letter the app's hook is told of, with the job's state another
    connection sees at that moment."""
    seen: list[tuple[pgq.DeadLetter, str]] = []

    @app.on_dead_letter
    def record(dead: pgq.DeadLetter) -> None:
        with psycopg.connect(db_url) as c:
            row = c.execute("SELECT state FROM pgq_jobs WHERE id = %s", [dead.job_id]).fetchone()
        seen.append((dead, row[0] if row else "gone"))

    return seen


def test_hooks_hear_of_a_job_the_reclaim_failed_when_its_crash_budget_ran_out(
        make_app: Callable[..., pgq.App], db_url: str, conn: psycopg.Connection,
        caplog: pytest.LogCaptureFixture) -> None:
    """A job whose worker vanished (lease expired) for the third time ends failed in
    another worker's reclaim: that worker's hooks are told, after the commit, with the
    dead worker as the one that ran it, and its line names the error."""
    caplog.set_level(logging.INFO, logger="pgq.reclaim")
    app = make_app()
    seen = hooked(app, db_url)
    app.task(name="dl.lost", queue="mail")(lambda: None)
    job_id = app.enqueue("dl.lost").id
    lost = ('{"attempt": %d, "type": "pgq.WorkerLost", "message": "lease expired", '
            '"traceback": "", "worker": "w0", "at": "2030-01-01T00:00:00+00:00"}')
    conn.execute("UPDATE pgq_jobs SET state = 'running', attempt = 3, lease_owner = 'gone:7', "
                 "started_at = now() - interval '1 minute', "
                 "lease_expires_at = now() - interval '1 second', errors = %s::jsonb "
                 "WHERE id = %s", [f"[{lost % 1}, {lost % 2}]", job_id])
    worker = run(app, WorkerConfig(queues=tuple(parse_queues("mail")), poll_seconds=0.05,
                                   maintenance=False, crash_budget=3), stop_when="done")
    assert states(conn, [job_id]) == ["failed"]
    assert worker.dead_letters.delivered == 1
    ((dead, state),) = seen
    assert state == "failed", "the hook runs after the commit"
    assert (dead.job_id, dead.task, dead.queue, dead.attempt, dead.worker_id,
            dead.error_type) == (job_id, "dl.lost", "mail", 3, "gone:7", "pgq.WorkerLost")
    why = ("lease expired: worker gone:7 stopped renewing it during attempt 3; lost its worker "
           "3 times (crash budget 3)")
    assert dead.error_message == why
    (line,) = [r for r in caplog.records if f"job={job_id} " in r.getMessage()]
    assert line.levelno == logging.WARNING and line.name == "pgq.reclaim"
    assert line.getMessage() == (
        f"job={job_id} task=dl.lost queue=mail attempt=3/{dead.max_attempts} outcome=failed "
        f"reclaimed_by={worker.id} error=pgq.WorkerLost: {why}")


def test_hooks_hear_of_an_outcome_the_database_refused_stored_as_failed(
        make_app: Callable[..., pgq.App], db_url: str, conn: psycopg.Connection,
        caplog: pytest.LogCaptureFixture) -> None:
    """An outcome the database refuses (here a CHECK constraint the test adds: the
    database, not pgq, says no) is stored as failed with pgq.UnstorableOutcome: that is a
    dead letter, so the hooks are told and its line is the failed job's, not completed."""
    caplog.set_level(logging.INFO, logger="pgq.worker")
    conn.execute("ALTER TABLE pgq_jobs ADD CONSTRAINT test_refuses_poison "
                 "CHECK (result IS NULL OR NOT result ? 'poison')")
    app = make_app()
    seen = hooked(app, db_url)

    @app.task(name="dl.poison")
    def poison(fine: bool) -> dict[str, bool]:
        return {"fine": True} if fine else {"poison": True}

    ids = [app.enqueue("dl.poison", {"fine": n != 1}).id for n in range(3)]
    worker = run(app, FAST, stop_when="done")
    assert states(conn, ids) == ["completed", "failed", "completed"]
    assert worker.stats.finished == {"completed": 2, "failed": 1}
    ((dead, state),) = seen
    assert (dead.job_id, state, dead.error_type) == (ids[1], "failed", "pgq.UnstorableOutcome")
    assert dead.error_message.startswith("outcome completed could not be stored: ")
    assert "test_refuses_poison" in dead.error_message
    lines = [r for r in caplog.records if f"job={ids[1]} " in r.getMessage()
             and " outcome=" in r.getMessage()]
    assert [(r.levelno, r.getMessage().split(" outcome=")[1].split()[0]) for r in lines] == [
        (logging.WARNING, "failed")], "logged as the dead letter it is, once"
    assert "error=pgq.UnstorableOutcome: outcome completed could not be stored: " in \
        lines[0].getMessage()


def test_a_worker_warns_about_tasks_whose_queue_it_does_not_serve(
        make_app: Callable[..., pgq.App], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pgq.worker")
    app = make_app()
    app.task(name="dl.mail", queue="mail")(lambda: None)
    app.task(name="dl.report", queue="reports")(lambda: None)
    app.task(name="dl.plain")(lambda: None)
    config = WorkerConfig(queues=tuple(parse_queues("default,mail")), poll_seconds=0.05,
                          maintenance=False)
    run(app, config)
    warnings = [r.getMessage() for r in caplog.records if "not among this worker's queues"
                in r.getMessage()]
    assert warnings == ["task dl.report: its default queue 'reports' is not among this "
                        "worker's queues (default,mail); its jobs enqueued without queue= "
                        "will not run here"]
    assert warn_unserved_tasks(app, WorkerConfig()) == ["dl.mail", "dl.report"]
