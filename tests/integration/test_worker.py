"""The worker in-process against real PostgreSQL: outcomes, the retry schedule under a
manual clock, timeouts, failure sanitising, unknown tasks, progress, transactional
completion, fencing, weighted queue shares and middleware.

Each test builds its own ``pgq.App`` and registers small tasks on it, then runs
``Worker.run_async(stop_when="due")`` to completion: nothing sleeps to synchronise;
where a test must wait for the database, it polls with a bounded loop."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
import pytest
from psycopg.rows import dict_row

import pgq
from pgq.core.backoff import Backoff
from pgq.store.database import execute
from pgq.worker import WorkerConfig
from pgq.worker.claim_cursor import FULL_SCAN
from pgq.worker.failure import MAX_MESSAGE_CHARS, MAX_TRACEBACK_CHARS
from pgq.worker.queues import parse_queues
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

FAST = WorkerConfig(concurrency=4, poll_seconds=0.05)
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
MARKER = re.compile(r"\n… \[(\d+) characters cut\] …\n")


def run(app: pgq.App, config: WorkerConfig = FAST,
        stop_when: Literal["due", "done"] = "due", worker: pgq.Worker | None = None) -> pgq.Worker:
    """Run a worker in-process until nothing is running or due; bounded."""
    worker = worker or pgq.Worker(app, config)
    asyncio.run(asyncio.wait_for(worker.run_async(stop_when=stop_when), 30))
    return worker


class Background:
    """A worker running in a thread, for tests that act while a job runs."""

    def __init__(self, worker: pgq.Worker, stop_when: Literal["due", "done"] = "due") -> None:
        self.worker, self.stop_when = worker, stop_when
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self.worker.run_async(stop_when=self.stop_when))
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 30) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise self.error


def job(conn: psycopg.Connection, job_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM pgq_jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return row


def at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["at"])


# --- results ----------------------------------------------------------------------------


def test_return_value_is_stored_as_result(make_app: Callable[..., pgq.App],
                                          conn: psycopg.Connection) -> None:
    app = make_app()

    @app.task(name="w.add")
    def add(a: int, b: int) -> dict[str, Any]:
        return {"sum": a + b, "parts": [a, b], "label": "ünïcode"}

    @app.task(name="w.aadd")
    async def aadd(ctx: pgq.Context, a: int) -> int:
        return a * ctx.attempt

    @app.task(name="w.nothing")
    def nothing() -> None:
        return None

    ids = [app.enqueue("w.add", {"a": 2, "b": 3}).id, app.enqueue("w.aadd", {"a": 7}).id,
           app.enqueue("w.nothing").id]
    worker = run(app)
    rows = [job(conn, i) for i in ids]
    assert [r["state"] for r in rows] == ["completed"] * 3
    assert [r["result"] for r in rows] == [
        {"sum": 5, "parts": [2, 3], "label": "ünïcode"}, 7, None]
    assert all(r["attempt"] == 1 and r["errors"] == [] and r["finished_at"] for r in rows)
    assert worker.stats.finished == {"completed": 3}


def test_result_that_is_not_json_completes_with_null(make_app: Callable[..., pgq.App],
                                                    conn: psycopg.Connection) -> None:
    app = make_app()

    @app.task(name="w.weird")
    def weird(kind: str) -> Any:
        return {"set": {1, 2}, "object": object(), "nan": float("nan"),
                "key": {(1, 2): "tuple key"}}[kind]

    ids = [app.enqueue("w.weird", {"kind": k}).id for k in ("set", "object", "nan", "key")]
    run(app)
    for job_id in ids:
        row = job(conn, job_id)
        assert (row["state"], row["result"], row["attempt"], row["errors"]) == (
            "completed", None, 1, [])


# --- the retry schedule, walked with a manual clock -------------------------------------


def test_failing_task_walks_its_whole_retry_schedule(make_app: Callable[..., pgq.App],
                                                     conn: psycopg.Connection) -> None:
    clock = pgq.ManualClock(T0)
    app = make_app(clock=clock)
    backoff = Backoff(jitter=0)
    attempts = 9  # every default step, then the last step repeated once
    calls: list[int] = []

    @app.task(name="w.flaky", max_attempts=attempts, backoff=backoff)
    def flaky(ctx: pgq.Context) -> None:
        calls.append(ctx.attempt)
        raise ValueError(f"attempt {ctx.attempt} failed")

    job_id = app.enqueue("w.flaky").id
    delays: list[float] = []
    for attempt in range(1, attempts + 1):
        run(app)
        row = job(conn, job_id)
        assert row["attempt"] == attempt
        assert len(row["errors"]) == attempt
        entry = row["errors"][-1]
        assert (entry["attempt"], entry["type"], entry["message"]) == (
            attempt, "ValueError", f"attempt {attempt} failed")
        assert at(entry) == clock.now()  # the failure is stamped by the (manual) clock
        if attempt == attempts:
            break
        assert row["state"] == "retryable"
        assert row["finished_at"] is None
        delays.append((row["run_at"] - at(entry)).total_seconds())
        assert delays[-1] == backoff.delay(attempt)
        # not a moment early: one second before run_at the job is not claimed
        clock.set(row["run_at"] - timedelta(seconds=1))
        run(app)
        assert job(conn, job_id)["attempt"] == attempt
        clock.set(row["run_at"])

    assert delays == [30, 300, 1800, 7200, 21600, 43200, 86400, 86400]
    row = job(conn, job_id)
    assert row["state"] == "failed"
    assert row["finished_at"] == clock.now()
    assert [e["attempt"] for e in row["errors"]] == list(range(1, attempts + 1))
    assert all(e["type"] == "ValueError" and "Traceback" in e["traceback"] for e in row["errors"])
    assert calls == list(range(1, attempts + 1))
    run(app)  # failed is final
    assert job(conn, job_id)["attempt"] == attempts


# --- outcomes a task raises ---------------------------------------------------------------


def test_snooze_spends_no_attempt(make_app: Callable[..., pgq.App],
                                  conn: psycopg.Connection) -> None:
    clock = pgq.ManualClock(T0)
    app = make_app(clock=clock)
    calls: list[int] = []

    @app.task(name="w.snoozy", max_attempts=1)  # a snooze is not even an attempt
    def snoozy(ctx: pgq.Context) -> str:
        calls.append(ctx.attempt)
        if len(calls) == 1:
            raise pgq.Snooze(timedelta(minutes=5))
        return "woke"

    job_id = app.enqueue("w.snoozy").id
    run(app)
    row = job(conn, job_id)
    assert (row["state"], row["attempt"], row["errors"], row["finished_at"]) == (
        "scheduled", 0, [], None)
    assert row["run_at"] == clock.now() + timedelta(minutes=5)

    run(app)  # not due yet
    assert calls == [1]
    clock.set(row["run_at"])
    run(app)
    row = job(conn, job_id)
    assert (row["state"], row["attempt"], row["result"], row["errors"]) == (
        "completed", 1, "woke", [])
    assert calls == [1, 1]  # the second run was attempt 1 again


def test_cancel_is_final_and_recorded(make_app: Callable[..., pgq.App],
                                      conn: psycopg.Connection) -> None:
    clock = pgq.ManualClock(T0)
    app = make_app(clock=clock)
    calls: list[int] = []

    @app.task(name="w.cancels", max_attempts=5)
    def cancels(ctx: pgq.Context) -> None:
        calls.append(ctx.attempt)
        raise pgq.Cancel("no longer wanted")

    job_id = app.enqueue("w.cancels").id
    run(app)
    row = job(conn, job_id)
    assert (row["state"], row["attempt"], row["finished_at"]) == ("cancelled", 1, clock.now())
    assert [(e["attempt"], e["type"], e["message"]) for e in row["errors"]] == [
        (1, "pgq.outcomes.Cancel", "no longer wanted")]
    clock.advance(timedelta(days=30))
    run(app, WorkerConfig(concurrency=4, poll_seconds=0.05, maintenance=False))  # no retention
    assert calls == [1]
    assert job(conn, job_id)["state"] == "cancelled"


def test_fail_skips_remaining_attempts(make_app: Callable[..., pgq.App],
                                       conn: psycopg.Connection) -> None:
    clock = pgq.ManualClock(T0)
    app = make_app(clock=clock)

    @app.task(name="w.fails", max_attempts=5)
    def fails() -> None:
        raise pgq.Fail("bad input")

    job_id = app.enqueue("w.fails").id
    run(app)
    row = job(conn, job_id)
    assert (row["state"], row["attempt"], row["max_attempts"], row["finished_at"]) == (
        "failed", 1, 5, clock.now())
    assert [(e["attempt"], e["type"], e["message"]) for e in row["errors"]] == [
        (1, "pgq.outcomes.Fail", "bad input")]


def test_retry_honours_its_delay_and_fails_on_the_last_attempt(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    clock = pgq.ManualClock(T0)
    app = make_app(clock=clock)
    calls: list[int] = []

    @app.task(name="w.retries", max_attempts=2, backoff=Backoff(jitter=0))  # backoff says 30 s
    def retries(ctx: pgq.Context) -> None:
        calls.append(ctx.attempt)
        raise pgq.Retry(timedelta(seconds=42))

    job_id = app.enqueue("w.retries").id
    run(app)
    row = job(conn, job_id)
    assert (row["state"], row["attempt"]) == ("retryable", 1)
    assert row["run_at"] == clock.now() + timedelta(seconds=42)
    assert [(e["attempt"], e["type"], e["message"]) for e in row["errors"]] == [
        (1, "pgq.outcomes.Retry", "retry requested in 42s")]

    clock.set(row["run_at"] - timedelta(seconds=1))
    run(app)
    assert calls == [1]
    clock.set(row["run_at"])
    run(app)  # attempt 2 of 2 asks for a retry: none left
    row = job(conn, job_id)
    assert (row["state"], row["attempt"], row["finished_at"]) == ("failed", 2, clock.now())
    assert [e["attempt"] for e in row["errors"]] == [1, 2]
    assert calls == [1, 2]


# --- timeouts ---------------------------------------------------------------------------


def test_sync_and_async_tasks_past_their_timeout_end_failed(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    app = make_app()
    sync_saw_cancel = threading.Event()
    async_ctx: list[pgq.Context] = []

    @app.task(name="w.slow_sync", timeout=0.2, max_attempts=1)
    def slow_sync(ctx: pgq.Context) -> str:
        if ctx.cancelled.wait(20):  # a well-behaved long task watches ctx.cancelled
            sync_saw_cancel.set()
        return "too late"

    @app.task(name="w.slow_async", timeout=0.2, max_attempts=1)
    async def slow_async(ctx: pgq.Context) -> str:
        async_ctx.append(ctx)
        await asyncio.sleep(20)
        return "too late"

    ids = [app.enqueue("w.slow_sync").id, app.enqueue("w.slow_async").id]
    started = time.monotonic()
    run(app)
    assert time.monotonic() - started < 10
    for job_id in ids:
        row = job(conn, job_id)
        assert (row["state"], row["attempt"], row["result"]) == ("failed", 1, None)
        assert [(e["attempt"], e["type"], e["message"]) for e in row["errors"]] == [
            (1, "pgq.Timeout", "attempt exceeded its timeout of 0.2s")]
    assert sync_saw_cancel.wait(5)
    assert async_ctx[0].cancelled.is_set()


# --- failures that are hard to record ------------------------------------------------------


def test_ten_megabyte_exception_with_nul_bytes_is_recorded(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    clock = pgq.ManualClock(T0)
    app = make_app(clock=clock)

    @app.task(name="w.huge", max_attempts=2)
    def huge() -> None:
        raise RuntimeError("head\x00" + "x\x00" * 5_000_000 + "\x00tail")

    job_id = app.enqueue("w.huge").id
    run(app)
    row = job(conn, job_id)
    assert (row["state"], row["attempt"]) == ("retryable", 1)
    (entry,) = row["errors"]
    message = entry["message"]
    marker = MARKER.search(message)
    assert marker is not None
    assert len(message) <= MAX_MESSAGE_CHARS + len(marker[0])
    assert "\x00" not in message
    assert message.startswith("head\\x00x\\x00") and message.endswith("\\x00tail")
    tb_marker = MARKER.search(entry["traceback"])
    assert tb_marker is not None
    assert len(entry["traceback"]) <= MAX_TRACEBACK_CHARS + len(tb_marker[0])

    clock.set(row["run_at"])
    run(app)
    row = job(conn, job_id)
    assert (row["state"], row["attempt"]) == ("failed", 2)
    assert [e["attempt"] for e in row["errors"]] == [1, 2]


# --- unknown tasks ----------------------------------------------------------------------


def test_a_worker_leaves_jobs_of_tasks_it_does_not_know(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    producer = make_app(strict=False)
    unknown_id = producer.enqueue("not.here", {"n": 1}, queue="default").id

    worker_app = make_app()

    @worker_app.task(name="w.known")
    def known() -> str:
        return "known"

    known_id = worker_app.enqueue("w.known").id
    run(worker_app)
    assert job(conn, known_id)["state"] == "completed"  # the worker did serve the queue
    row = job(conn, unknown_id)
    assert (row["state"], row["attempt"], row["errors"], row["lease_owner"]) == (
        "available", 0, [], None)

    other_app = make_app()

    @other_app.task(name="not.here")
    def not_here(n: int) -> str:
        return f"finally {n}"

    run(other_app)
    row = job(conn, unknown_id)
    assert (row["state"], row["attempt"], row["result"], row["errors"]) == (
        "completed", 1, "finally 1", [])


# --- progress ---------------------------------------------------------------------------


def test_progress_is_stored_by_the_heartbeat(make_app: Callable[..., pgq.App],
                                             conn: psycopg.Connection) -> None:
    app = make_app()
    release = threading.Event()

    @app.task(name="w.progress")
    def progress(ctx: pgq.Context) -> str:
        ctx.progress(percent=50, stage="halfway")
        if not release.wait(20):
            raise RuntimeError("the test never released the task")
        return "done"

    job_id = app.enqueue("w.progress").id
    worker = Background(pgq.Worker(app, WorkerConfig(
        concurrency=4, poll_seconds=0.05, lease_seconds=1, heartbeat_seconds=0.1)))
    try:
        wait_until(lambda: job(conn, job_id)["progress"] == {"percent": 50, "stage": "halfway"},
                   what="progress in the database")
        assert job(conn, job_id)["state"] == "running"
    finally:
        release.set()
        worker.join()
    row = job(conn, job_id)
    assert (row["state"], row["result"]) == ("completed", "done")
    assert row["progress"] == {"percent": 50, "stage": "halfway"}


# --- transactional completion -----------------------------------------------------------


@pytest.fixture
def side_effects(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute("CREATE TABLE side_effects (job_id bigint PRIMARY KEY, note text NOT NULL)")
    return conn


def _peek(db_url: str, job_id: int) -> tuple[str, bool]:
    """The job's state and whether its side effect exists, seen from another session."""
    with psycopg.connect(db_url, autocommit=True) as other:
        state = other.execute("SELECT state FROM pgq_jobs WHERE id = %s", [job_id]).fetchone()
        side = other.execute("SELECT 1 FROM side_effects WHERE job_id = %s", [job_id]).fetchone()
    assert state is not None
    return state[0], side is not None


def test_transaction_commits_side_effect_and_completion_together(
        make_app: Callable[..., pgq.App], side_effects: psycopg.Connection, db_url: str) -> None:
    app = make_app()
    seen: dict[str, tuple[str, bool]] = {}

    @app.task(name="w.tx")
    def tx(ctx: pgq.Context, note: str) -> str:
        ctx.result = {"note": note}
        with ctx.transaction() as c:
            c.execute("INSERT INTO side_effects VALUES (%s, %s)", [ctx.job_id, note])
            seen["inside"] = _peek(db_url, ctx.job_id)
        seen["after"] = _peek(db_url, ctx.job_id)
        return "not stored: ctx.result was"

    job_id = app.enqueue("w.tx", {"note": "paid"}).id
    worker = run(app)
    assert seen["inside"] == ("running", False)  # neither is visible before the commit
    assert seen["after"] == ("completed", True)  # both are once the block ends
    row = job(side_effects, job_id)
    assert (row["state"], row["attempt"], row["result"], row["errors"]) == (
        "completed", 1, {"note": "paid"}, [])
    # the same transaction wrote both rows
    (job_xmin,) = side_effects.execute(
        "SELECT xmin::text FROM pgq_jobs WHERE id = %s", [job_id]).fetchone()
    (side_xmin,) = side_effects.execute(
        "SELECT xmin::text FROM side_effects WHERE job_id = %s", [job_id]).fetchone()
    assert job_xmin == side_xmin
    assert worker.stats.finished == {"completed": 1}


def test_transaction_rolls_back_when_the_lease_is_lost(
        make_app: Callable[..., pgq.App], side_effects: psycopg.Connection, db_url: str) -> None:
    app = make_app()
    raised: list[BaseException] = []

    @app.task(name="w.tx_stolen")
    def tx_stolen(ctx: pgq.Context) -> None:
        ctx.result = "should not be stored"
        try:
            with ctx.transaction() as c:
                c.execute("INSERT INTO side_effects VALUES (%s, 'stolen')", [ctx.job_id])
                with psycopg.connect(db_url, autocommit=True) as other:  # the job is taken over
                    other.execute("UPDATE pgq_jobs SET lease_owner = 'someone-else' WHERE id = %s",
                                  [ctx.job_id])
        except pgq.LeaseLost as exc:
            raised.append(exc)
            raise

    job_id = app.enqueue("w.tx_stolen").id
    worker = run(app)
    assert len(raised) == 1
    assert side_effects.execute("SELECT count(*) FROM side_effects").fetchone() == (0,)
    row = job(side_effects, job_id)
    # nothing written by this worker: still the new owner's running job
    assert (row["state"], row["lease_owner"], row["result"], row["errors"], row["finished_at"],
            row["attempt"]) == ("running", "someone-else", None, [], None, 1)
    assert worker.stats.finished == {"lease-lost": 1}


def test_code_after_a_committed_transaction_is_not_cancelled(
        make_app: Callable[..., pgq.App], side_effects: psycopg.Connection) -> None:
    app = make_app()
    finished: list[int] = []

    @app.task(name="w.tx_then_more")
    async def tx_then_more(ctx: pgq.Context) -> None:
        ctx.result = "stored"
        with ctx.transaction() as c:
            c.execute("INSERT INTO side_effects VALUES (%s, 'x')", [ctx.job_id])
        await asyncio.sleep(0.5)  # more work after the commit, spanning several heartbeats
        finished.append(ctx.job_id)

    job_id = app.enqueue("w.tx_then_more").id
    worker = run(app, WorkerConfig(concurrency=4, poll_seconds=0.05, lease_seconds=1,
                                   heartbeat_seconds=0.05))
    assert job(side_effects, job_id)["state"] == "completed"
    assert finished == [job_id]
    assert worker.stats.finished == {"completed": 1}


# --- fencing, statement by statement ------------------------------------------------------


def test_finish_and_heartbeat_are_fenced_on_owner_and_attempt(
        make_app: Callable[..., pgq.App], db_url: str) -> None:
    app = make_app()

    @app.task(name="w.fenced")
    def fenced() -> None: ...

    job_id = app.enqueue("w.fenced").id
    with psycopg.connect(db_url, autocommit=True) as c:
        def claim(worker: str) -> list[Any]:
            return execute(c, "job_claim", {
                "queues": ["default"], "limits": [1], "tasks": ["w.fenced"], "worker": worker,
                "lease_seconds": 30, "now": None, **FULL_SCAN})

        def finish(owner: str, attempt: int, state: str = "completed") -> list[Any]:
            error = json.dumps({"attempt": attempt, "type": "X", "message": owner})
            return execute(c, "job_finish_many", {
                "ids": [job_id], "attempts": [attempt], "owners": [owner], "states": [state],
                "delays": [0.0], "refunds": [0], "results": [json.dumps({"by": owner})],
                "errors": [None if state == "completed" else error], "now": None})

        def heartbeat(worker: str, attempt: int) -> list[Any]:
            return execute(c, "job_heartbeat_many", {
                "ids": [job_id], "attempts": [attempt], "progress": [json.dumps({"by": worker})],
                "worker": worker, "lease_seconds": 3600, "now": None})

        def snapshot() -> dict[str, Any]:
            return job(c, job_id)

        rows = claim("A")
        assert [(r[0], r[4]) for r in rows] == [(job_id, 1)]
        before = snapshot()
        assert (before["state"], before["lease_owner"], before["attempt"]) == ("running", "A", 1)

        # another worker, or A with a stale or future attempt: 0 rows, nothing changes
        for owner, attempt in [("B", 1), ("A", 0), ("A", 2)]:
            assert heartbeat(owner, attempt) == []
            for state in ("completed", "retryable", "failed", "cancelled"):
                assert finish(owner, attempt, state) == []
        assert snapshot() == before

        # A fails legitimately; B claims attempt 2. Now A is stale twice over.
        assert [r[0] for r in finish("A", 1, "retryable")] == [job_id]
        assert [(r[0], r[4]) for r in claim("B")] == [(job_id, 2)]
        before = snapshot()
        assert (before["lease_owner"], before["attempt"], len(before["errors"])) == ("B", 2, 1)
        for owner, attempt in [("A", 1), ("A", 2), ("B", 1), ("B", 3)]:
            assert heartbeat(owner, attempt) == []
            for state in ("completed", "retryable", "failed", "cancelled"):
                assert finish(owner, attempt, state) == []
        assert snapshot() == before

        # the owner of the current attempt is heard
        assert [r[0] for r in heartbeat("B", 2)] == [job_id]
        assert snapshot()["progress"] == {"by": "B"}
        assert [r[0] for r in finish("B", 2)] == [job_id]
        done = snapshot()
        assert (done["state"], done["result"], done["attempt"]) == ("completed", {"by": "B"}, 2)
        # and a finished job is fenced against everyone, its last owner included
        assert finish("B", 2, "failed") == []
        assert heartbeat("B", 2) == []
        assert snapshot() == done


# --- weighted queues --------------------------------------------------------------------


def test_weighted_shares_under_saturation(make_app: Callable[..., pgq.App]) -> None:
    """a=3,b=1 with 8 slots and deep backlogs in both queues: a holds ~75 % of the slots.

    Slots are sampled from the worker's in-memory set of held jobs (what ``allocate``
    divides), each time a job starts. The jobs' own start counts must agree."""
    app = make_app()
    lock = threading.Lock()
    started = {"a": 0, "b": 0}
    shares: list[float] = []  # a's share of the held slots, sampled at each start
    stop_after = 360  # both queues still have a backlog then (a drains after ~530 starts)

    @app.task(name="w.saturate")
    def saturate(ctx: pgq.Context) -> None:
        held = [r.ctx.queue for r in worker.held.values()]
        with lock:
            started[ctx.queue] += 1
            shares.append(held.count("a") / len(held))
            if sum(started.values()) == stop_after:
                worker.request_stop()  # exactly once: a second request exits the process
        threading.Event().wait(0.01)  # the job's work

    worker = pgq.Worker(app, WorkerConfig(queues=tuple(parse_queues("a=3,b=1")),
                                          concurrency=8, poll_seconds=0.05))
    app.enqueue_many(pgq.JobSpec("w.saturate", queue=q) for q in ("a", "b") for _ in range(400))
    run(app, worker=worker)
    assert sum(started.values()) >= stop_after
    assert started["a"] < 400 and started["b"] < 400  # measured under saturation only
    mean_share = sum(shares) / len(shares)
    assert 0.65 <= mean_share <= 0.85, f"a held {mean_share:.0%} of the running slots"
    start_share = started["a"] / sum(started.values())
    assert 0.65 <= start_share <= 0.85, f"a got {start_share:.0%} of the starts"


def test_strict_worker_serves_the_next_queue_when_the_first_is_empty(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    app = make_app()

    @app.task(name="w.second", queue="b")
    def second() -> str:
        return "ran"

    job_id = app.enqueue("w.second").id
    run(app, WorkerConfig(queues=tuple(parse_queues("a,b")), strict=True, concurrency=4,
                          poll_seconds=0.05))
    assert job(conn, job_id)["state"] == "completed"


def test_concurrency_one_worker_claims_after_both_queues_were_empty(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    clock = pgq.ManualClock(T0)
    app = make_app(clock=clock)

    @app.task(name="w.later", queue="a")
    def later() -> str:
        return "ran"

    job_id = app.enqueue("w.later", delay=60).id
    # One worker, run twice: the state after the first run is what a continuously running
    # worker is in once it has seen both queues empty.
    worker = pgq.Worker(app, WorkerConfig(queues=tuple(parse_queues("a,b")), concurrency=1,
                                          poll_seconds=0.05))
    run(app, worker=worker)  # nothing due: both queues look empty
    clock.advance(timedelta(seconds=60))
    run(app, worker=worker)
    assert job(conn, job_id)["state"] == "completed"


def test_twenty_queues_on_ten_slots_take_turns_and_drain_like_one(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    """Issue 12, defect 1: 20 queues, 10 slots, an even backlog. Whole-number shares were
    all 0 and spare slots went by list order: the first ten queues drained while the
    others got nothing, then the rest crawled, an empty claim waiting out the poll
    interval. Now every queue starts a job before any queue runs its last, the counts
    started per queue never drift apart, and the backlog drains at the rate of the
    same backlog in one queue (measured here, with slack for a shared machine)."""
    app = make_app()
    started: list[str] = []  # the queue of each job, in start order (all on the loop)

    @app.task(name="w.turn")
    async def turn(ctx: pgq.Context) -> None:
        started.append(ctx.queue)

    per_queue = 100
    twenty = [f"q{i:02d}" for i in range(20)]

    def drain(queues: list[str], timeout: float) -> float:
        """Jobs/s over the whole backlog, first claim to last completion (database clock)."""
        n = per_queue * len(twenty)
        app.enqueue_many(pgq.JobSpec("w.turn", queue=queues[i % len(queues)]) for i in range(n))
        worker = pgq.Worker(app, WorkerConfig(queues=tuple(parse_queues(",".join(queues))),
                                              concurrency=10, maintenance=False))
        asyncio.run(asyncio.wait_for(worker.run_async(stop_when="due"), timeout))
        first, last, done = conn.execute(
            "SELECT min(started_at), max(finished_at), count(*) FILTER (WHERE state = "
            "'completed') FROM pgq_jobs WHERE queue = ANY(%s)", [queues]).fetchone()
        assert done == n
        return float(n / (last - first).total_seconds())

    start = time.monotonic()
    one = drain(["single"], 60)
    started.clear()
    # A bound that a crawl misses by far (the old code took minutes), not a timing test.
    many = drain(twenty, max(20.0, 10 * (time.monotonic() - start)))

    first = {q: started.index(q) for q in twenty}
    last = {q: len(started) - 1 - started[::-1].index(q) for q in twenty}
    assert max(first.values()) < min(last.values()), (
        f"a queue ran its last job (at start {min(last.values())}) before another queue "
        f"ran its first (at start {max(first.values())})")
    counts = dict.fromkeys(twenty, 0)
    for i, queue in enumerate(started):
        counts[queue] += 1
        if i < len(started) - len(twenty):  # the last round may end queues unevenly
            assert max(counts.values()) - min(counts.values()) <= 3, (
                f"after {i + 1} starts the queues had run {sorted(counts.values())} jobs")
    assert many >= 0.5 * one, f"20 queues drained at {many:.0f} jobs/s, one queue at {one:.0f}"


# --- middleware -------------------------------------------------------------------------


def test_middleware_wraps_every_job_and_sees_its_exception(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    app = make_app()
    events: list[tuple[Any, ...]] = []
    lock = threading.Lock()

    def note(*event: Any) -> None:
        with lock:
            events.append(event)

    @contextmanager
    def recorder(layer: str, ctx: pgq.Context) -> Iterator[None]:
        note(layer, "before", ctx.job_id, ctx.task, ctx.attempt)
        try:
            yield
        except BaseException as exc:
            note(layer, "error", ctx.job_id, type(exc).__name__, str(exc))
            raise
        note(layer, "after", ctx.job_id)

    app.add_middleware(lambda ctx: recorder("outer", ctx))
    app.add_middleware(lambda ctx: recorder("inner", ctx))

    @app.task(name="w.mw_ok")
    def mw_ok(ctx: pgq.Context) -> str:
        note("task", ctx.job_id)
        return "ok"

    @app.task(name="w.mw_aok")
    async def mw_aok(ctx: pgq.Context) -> str:
        note("task", ctx.job_id)
        return "aok"

    @app.task(name="w.mw_boom", max_attempts=1)
    def mw_boom(ctx: pgq.Context) -> None:
        note("task", ctx.job_id)
        raise ValueError("boom")

    @app.task(name="w.mw_aboom", max_attempts=1)
    async def mw_aboom(ctx: pgq.Context) -> None:
        note("task", ctx.job_id)
        raise KeyError("aboom")

    ok, aok, boom, aboom = (app.enqueue(t).id for t in (
        "w.mw_ok", "w.mw_aok", "w.mw_boom", "w.mw_aboom"))
    run(app)

    def of(job_id: int) -> list[tuple[Any, ...]]:
        return [e for e in events if e[1 if e[0] == "task" else 2] == job_id]

    for job_id, task in ((ok, "w.mw_ok"), (aok, "w.mw_aok")):
        assert of(job_id) == [("outer", "before", job_id, task, 1),
                              ("inner", "before", job_id, task, 1),
                              ("task", job_id),
                              ("inner", "after", job_id),
                              ("outer", "after", job_id)]
        assert job(conn, job_id)["state"] == "completed"
    for job_id, task, exc_type, message in ((boom, "w.mw_boom", "ValueError", "boom"),
                                            (aboom, "w.mw_aboom", "KeyError", "'aboom'")):
        assert of(job_id) == [("outer", "before", job_id, task, 1),
                              ("inner", "before", job_id, task, 1),
                              ("task", job_id),
                              ("inner", "error", job_id, exc_type, message),
                              ("outer", "error", job_id, exc_type, message)]
        row = job(conn, job_id)
        assert (row["state"], row["errors"][0]["type"]) == ("failed", exc_type)


def test_wakeup_during_an_empty_claim_is_not_lost(make_app: Callable[..., pgq.App],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A job committed while the idle worker's claim is in flight (the claim finds
    nothing): its wake-up arrives during the claim and must survive it, or the job waits
    a whole poll interval (here 30 s). Found by the pickup-latency benchmark's review."""
    import pgq.worker.producer as worker_module

    app = make_app()
    started = threading.Event()

    @app.task(name="w.probe")
    def probe() -> None:
        started.set()

    producer = make_app(strict=False)
    worker = pgq.Worker(app, WorkerConfig(poll_seconds=30, maintenance=False))
    woken = threading.Event()
    real_woken = worker.producer.woken

    def spy(queue: str) -> None:
        real_woken(queue)
        woken.set()

    monkeypatch.setattr(worker.producer, "woken", spy)
    real_execute = worker_module.execute_async
    armed = threading.Event()

    async def execute_async(conn: Any, name: str, params: Any, **options: Any) -> Any:
        rows = await real_execute(conn, name, params, **options)
        if name == "job_claim" and not rows and armed.is_set():
            armed.clear()
            producer.enqueue("w.probe")  # commits now, while this claim is "in flight"
            await asyncio.to_thread(woken.wait, 10)  # its wake-up has arrived
        return rows

    monkeypatch.setattr(worker_module, "execute_async", execute_async)
    background = Background(worker, stop_when=None)  # type: ignore[arg-type]
    try:
        wait_until(lambda: worker._loop is not None, 10, "the worker to start")
        armed.set()
        worker._loop.call_soon_threadsafe(worker.producer.wake.set)  # type: ignore[union-attr]
        assert started.wait(10), "the job waited for the poll: its wake-up was lost"
    finally:
        worker.request_stop()
        background.join()


def _spy_statements(monkeypatch: pytest.MonkeyPatch, around: Callable[..., Any] | None = None
                    ) -> list[tuple[str, int]]:
    """Every statement the producer and the completer send, as (name, outcomes in it);
    ``around(name, call)`` may wrap the call (stall it, fail it)."""
    import pgq.worker.completer
    import pgq.worker.producer

    real = pgq.worker.producer.execute_async
    seen: list[tuple[str, int]] = []

    async def execute_async(conn: Any, name: str, params: Any, **options: Any) -> Any:
        seen.append((name, len(params.get("ids") or ())))
        if around is None:
            return await real(conn, name, params, **options)
        return await around(name, lambda: real(conn, name, params, **options))

    monkeypatch.setattr(pgq.worker.producer, "execute_async", execute_async)
    monkeypatch.setattr(pgq.worker.completer, "execute_async", execute_async)
    return seen


def test_outcomes_ride_with_the_next_claim(
        make_app: Callable[..., pgq.App], monkeypatch: pytest.MonkeyPatch) -> None:
    """Instant tasks: the outcomes of one batch are stored by the statement that claims
    the next (job_finish_and_claim): one statement and one commit per cycle, where a
    claim and a flush each made their own (issue 12's drain profile)."""
    app = make_app()
    app.task(name="w.instant")(lambda: None)
    app.enqueue_many([pgq.JobSpec("w.instant") for _ in range(40)])
    seen = _spy_statements(monkeypatch)
    worker = pgq.Worker(app, WorkerConfig(concurrency=4, poll_seconds=0.05, maintenance=False))
    run(app, worker=worker)
    assert worker.stats.finished.get("completed") == 40
    rode = sum(n for name, n in seen if name == "job_finish_and_claim")
    alone = sum(n for name, n in seen if name == "job_finish_many")
    assert rode + alone == 40
    assert rode >= 20, f"only {rode} of 40 outcomes rode with a claim: {seen}"


def test_a_stalled_outcome_write_stops_the_claims_at_max_held(
        make_app: Callable[..., pgq.App], monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that does not store outcomes stops the claiming: the write that stalls
    is the claim that carries them (or the completer's, while the producer holds
    ``max_held`` jobs), so the worker never holds more than 2 x concurrency jobs."""
    app = make_app()
    app.task(name="w.instant")(lambda: None)
    config = WorkerConfig(concurrency=4, poll_seconds=0.05, maintenance=False)
    app.enqueue_many([pgq.JobSpec("w.instant") for _ in range(40)])
    worker = pgq.Worker(app, config)
    release, writing = threading.Event(), threading.Event()

    async def stall(name: str, call: Callable[[], Any]) -> Any:
        if name in ("job_finish_many", "job_finish_and_claim"):
            writing.set()
            await asyncio.to_thread(release.wait, 20)  # the database stalls on outcomes
        return await call()

    seen = _spy_statements(monkeypatch, stall)
    background = Background(worker)
    try:
        assert writing.wait(10), "no outcome write began"
        wait_until(lambda: worker.held and all(r.decided for r in worker.held.values()), 10,
                   "the worker's jobs to be decided")
        claims = sum(1 for name, _ in seen if name.endswith("claim"))
        # The producer is inside the stalled statement or refuses at max_held: no claim
        # can add to what it holds until outcomes are stored.
        assert worker.producer.claiming or len(worker.held) == config.max_held
        assert len(worker.held) <= config.max_held
        assert sum(1 for name, _ in seen if name.endswith("claim")) == claims
    finally:
        release.set()
    background.join()
    assert worker.stats.finished.get("completed") == 40


def test_outcomes_a_combined_statement_could_not_store_are_stored_alone(
        make_app: Callable[..., pgq.App], monkeypatch: pytest.MonkeyPatch) -> None:
    """A job_finish_and_claim that fails (here: once, as a data error would) hands its
    outcomes back to the completer, which stores them alone: nothing is lost and they
    do not ride (and fail) again."""
    app = make_app()
    app.task(name="w.instant")(lambda: None)
    app.enqueue_many([pgq.JobSpec("w.instant") for _ in range(12)])
    failed: list[int] = []  # where in ``seen`` the failed statement is

    async def fail_once(name: str, call: Callable[[], Any]) -> Any:
        if name == "job_finish_and_claim" and not failed:
            failed.append(len(seen) - 1)
            raise pgq.DatabaseError("injected: the combined statement failed")
        return await call()

    seen = _spy_statements(monkeypatch, fail_once)
    worker = pgq.Worker(app, WorkerConfig(concurrency=4, poll_seconds=0.05, maintenance=False))
    run(app, worker=worker)
    assert failed and worker.stats.finished.get("completed") == 12
    (at,) = failed
    handed_back = seen[at][1]
    # The next statement that stores outcomes is the completer's, alone, with at least
    # the handed-back ones: none rode with a claim again before it.
    name, n = next((name, n) for name, n in seen[at + 1:] if n)
    assert name == "job_finish_many" and n >= handed_back, seen


@pytest.mark.parametrize("async_commit", [False, True])
def test_async_commit_is_opt_in_and_applies_to_claims_and_outcomes(
        make_app: Callable[..., pgq.App], async_commit: bool) -> None:
    app = make_app()
    app.task(name="w.any")(lambda: None)
    worker = pgq.Worker(app, WorkerConfig(async_commit=async_commit))

    async def setting() -> str:
        conn = await worker.producer.link.connect()  # what the claim and flush connections are made with
        try:
            row = await (await conn.execute("SHOW synchronous_commit")).fetchone()
        finally:
            await conn.close()
        assert row is not None
        return str(row[0])

    assert asyncio.run(setting()) == ("off" if async_commit else "on")


def test_sync_tasks_that_ignore_their_timeout_recycle_the_worker_once(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    """Threads that never return pile up: past max_abandoned_threads the worker stops
    itself with EXIT_RECYCLE (a supervisor replaces it), asking to stop exactly once."""
    app = make_app()
    release = threading.Event()

    @app.task(name="w.stuck", timeout=0.05, max_attempts=1)
    def stuck() -> None:
        release.wait(30)  # ignores ctx.cancelled

    ids = [app.enqueue("w.stuck").id for _ in range(3)]
    worker = pgq.Worker(app, WorkerConfig(concurrency=3, max_abandoned_threads=2,
                                          maintenance=False, shutdown_seconds=0))
    try:
        code = asyncio.run(asyncio.wait_for(worker.run_async(), 30))
    finally:
        release.set()
    assert code == pgq.worker.EXIT_RECYCLE
    errors = [job(conn, i)["errors"] for i in ids]
    assert sum(1 for e in errors if e and e[-1]["type"] == "pgq.Timeout") >= 2


def test_sync_tasks_that_heed_cancellation_do_not_recycle_the_worker(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection) -> None:
    """A thread that returns after its timeout is no longer abandoned: many timeouts of
    a cooperative task never add up to a recycle."""
    app = make_app()

    @app.task(name="w.polite", timeout=0.05, max_attempts=1)
    def polite(ctx: pgq.Context) -> None:
        ctx.cancelled.wait(30)

    ids = [app.enqueue("w.polite").id for _ in range(8)]
    worker = pgq.Worker(app, WorkerConfig(concurrency=2, max_abandoned_threads=2,
                                          maintenance=False))
    code = asyncio.run(asyncio.wait_for(worker.run_async(stop_when="done"), 30))
    assert code == pgq.worker.EXIT_OK
    assert {job(conn, i)["state"] for i in ids} == {"failed"}
    assert all(job(conn, i)["errors"][-1]["type"] == "pgq.Timeout" for i in ids)
