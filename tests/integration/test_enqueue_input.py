"""Bulk enqueue at scale, and bad input: a typed error before any SQL, nothing written."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import pgq
from pgq.core.validation import MAX_JSON_DEPTH, encode_result


@pytest.fixture
def app(settings: pgq.Settings) -> Iterator[pgq.App]:
    with pgq.App(settings.with_changes(max_payload_bytes=64 * 1024)) as a:

        @a.task(name="email.send", queue="critical", priority=-10, max_attempts=5, timeout=30)
        def send(ctx: object, to: str, subject: str = "") -> None:
            """A registered task, for signature checks."""

        yield a


def test_options_and_defaults_are_stored(app: pgq.App, conn: psycopg.Connection) -> None:
    default = app.enqueue("email.send", {"to": "a@example.com"})
    custom = app.enqueue(
        "email.send", {"to": "b@example.com"}, queue="bulk", priority=50, delay=3600,
        max_attempts=2, timeout=timedelta(minutes=2), unique_key="mail:b", tags=["t1", "t2"],
        meta={"tenant": "acme"},
    )
    at = datetime(2030, 1, 1, tzinfo=UTC)
    explicit = app.enqueue("email.send", {"to": "c@example.com"}, run_at=at)
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, queue, priority, max_attempts, timeout_seconds, state, unique_key, tags, "
        "meta, run_at - created_at, run_at FROM pgq_jobs")}
    assert rows[default.id][:6] == ("critical", -10, 5, 30.0, "available", None)
    assert rows[default.id][8] == timedelta(0)
    assert rows[custom.id][:8] == ("bulk", 50, 2, 120.0, "scheduled", "mail:b", ["t1", "t2"],
                                   {"tenant": "acme"})
    assert rows[custom.id][8] == timedelta(hours=1)
    assert rows[explicit.id][4] == "scheduled" and rows[explicit.id][9] == at


def test_past_run_at_is_available(app: pgq.App, conn: psycopg.Connection) -> None:
    job = app.enqueue("email.send", {"to": "x"}, run_at=datetime(2000, 1, 1, tzinfo=UTC))
    assert conn.execute("SELECT state FROM pgq_jobs WHERE id = %s", [job.id]).fetchone() == ("available",)


def test_bulk_100k_in_one_call(app: pgq.App, conn: psycopg.Connection) -> None:
    specs = [pgq.JobSpec("email.send", {"to": f"u{i}@example.com"}, delay=(3600 if i % 10 == 0 else None))
             for i in range(100_000)]
    results = app.enqueue_many(specs)
    assert len(results) == 100_000
    assert len({r.id for r in results}) == 100_000
    counts = dict(conn.execute("SELECT state, count(*) FROM pgq_jobs GROUP BY state").fetchall())
    assert counts == {"available": 90_000, "scheduled": 10_000}
    # results are in input order: spot-check that ids map to their own args
    for i in (0, 1, 12_345, 99_999):
        args = conn.execute("SELECT args FROM pgq_jobs WHERE id = %s", [results[i].id]).fetchone()[0]
        assert args == {"to": f"u{i}@example.com"}


AWKWARD = [
    {"to": "back\\slash \\N \\t", "subject": "tab\there\nnewline\r\ncrlf"},
    {"to": "ünïcödé \u2028 \U0001f600", "subject": "\"quoted\" {braces} [a,b] NULL"},
    {"to": "\\\\double", "subject": "\x01\x1f control"},
]
AWKWARD_TAGS = ["plain", "with space", "com,ma", "{brace}", 'q"uote', "back\\slash", "NULL",
                "tab\tin", "line\nbreak", "\\N"]


@pytest.mark.parametrize("bulk", [True, False], ids=["enqueue_many", "enqueue"])
def test_awkward_values_are_stored_exactly(app: pgq.App, conn: psycopg.Connection,
                                           bulk: bool) -> None:
    """enqueue_many writes COPY's text format itself: every character that format or a
    text[] literal treats specially must arrive unchanged, as it does through enqueue."""
    specs = [pgq.JobSpec("email.send", args, tags=AWKWARD_TAGS, meta={"note": args["subject"]},
                         timeout=0.1 + i, delay=i * 1.5)
             for i, args in enumerate(AWKWARD)]
    if bulk:
        ids = [r.id for r in app.enqueue_many(specs)]
    else:
        ids = [app.enqueue(s.task, s.args, tags=s.tags, meta=s.meta, timeout=s.timeout,
                           delay=s.delay).id for s in specs]
    stored = conn.execute(
        "SELECT args, tags, meta, timeout_seconds, run_at - created_at FROM pgq_jobs "
        "WHERE id = ANY(%s) ORDER BY id", [ids]).fetchall()
    assert stored == [(s.args, AWKWARD_TAGS, s.meta, s.timeout, timedelta(seconds=i * 1.5))
                      for i, s in enumerate(specs)]


PLAIN_COLUMNS = ("queue, task, state, priority, attempt, max_attempts, args, timeout_seconds, "
                 "tags, meta, errors, unique_key, unique_held, isolated, notify_done")


def test_plain_bulk_rows_equal_single_enqueues(app: pgq.App, conn: psycopg.Connection) -> None:
    """A batch of jobs due now, untagged and without meta goes in by the short COPY
    (``job_copy_now``, columns left to the table's defaults): every column must be what
    ``enqueue`` stores for the same job, awkward characters included, and run_at and
    created_at the transaction's now() (in the caller's transaction, its start)."""
    @app.task(name="other.task", timeout=None)
    def other(ctx: object, n: int) -> None:
        """No timeout: the short COPY writes NULL."""

    specs = [pgq.JobSpec("email.send", args) for args in AWKWARD] + [
        pgq.JobSpec("other.task", {"n": i}) for i in range(3)]
    with psycopg.connect(conn.info.dsn) as tx:
        started = tx.execute("SELECT now()").fetchone()[0]
        bulk = [r.id for r in app.enqueue_many(specs, conn=tx)]
        tx.commit()
    single = [app.enqueue(s.task, s.args).id for s in specs]
    query = f"SELECT {PLAIN_COLUMNS} FROM pgq_jobs WHERE id = ANY(%s) ORDER BY id"
    stored = conn.execute(query, [bulk]).fetchall()
    assert stored == conn.execute(query, [single]).fetchall()
    assert [r[:6] for r in stored[:3]] == [("critical", "email.send", "available", -10, 0, 5)] * 3
    assert {r[7] for r in stored} == {30.0, None}  # the registered task's timeout, or none
    times = conn.execute("SELECT DISTINCT run_at, created_at FROM pgq_jobs WHERE id = ANY(%s)",
                         [bulk]).fetchall()
    assert times == [(started, started)]


def nested(levels: int) -> list[Any]:
    root: list[Any] = []
    for _ in range(levels):
        root = [root]
    return root


# Each bad input, the error it must raise, and nothing else may happen.
BAD: list[tuple[str, Callable[[pgq.App, Any], Any], type[pgq.PgqError]]] = [
    ("unknown task", lambda a, c: a.enqueue("email.sned", {"to": "x"}, conn=c), pgq.UnknownTaskError),
    ("bad task name", lambda a, c: a.enqueue("email send; drop", conn=c), pgq.InvalidIdentifierError),
    ("bad queue", lambda a, c: a.enqueue("email.send", {"to": "x"}, queue="a,b", conn=c),
     pgq.InvalidIdentifierError),
    ("long queue", lambda a, c: a.enqueue("email.send", {"to": "x"}, queue="q" * 64, conn=c),
     pgq.InvalidIdentifierError),
    ("tuple arg", lambda a, c: a.enqueue("email.send", {"to": ("x",)}, conn=c), pgq.InvalidArgsError),
    ("int key", lambda a, c: a.enqueue("email.send", {"to": "x", "subject": {1: 2}}, conn=c),
     pgq.InvalidArgsError),
    ("nan", lambda a, c: a.enqueue("email.send", {"to": float("nan")}, conn=c), pgq.InvalidArgsError),
    ("nul", lambda a, c: a.enqueue("email.send", {"to": "a\x00b"}, conn=c), pgq.InvalidArgsError),
    ("bytes", lambda a, c: a.enqueue("email.send", {"to": b"x"}, conn=c), pgq.InvalidArgsError),
    ("signature", lambda a, c: a.enqueue("email.send", {"too": "x"}, conn=c), pgq.InvalidArgsError),
    ("oversized", lambda a, c: a.enqueue("email.send", {"to": "x" * 70_000}, conn=c),
     pgq.PayloadTooLargeError),
    ("oversized meta", lambda a, c: a.enqueue("email.send", {"to": "x"}, meta={"m": "x" * 70_000},
                                              conn=c), pgq.PayloadTooLargeError),
    ("priority", lambda a, c: a.enqueue("email.send", {"to": "x"}, priority=101, conn=c),
     pgq.InvalidOptionError),
    ("naive run_at", lambda a, c: a.enqueue("email.send", {"to": "x"}, run_at=datetime(2030, 1, 1),
                                            conn=c), pgq.InvalidOptionError),
    ("bad unique key", lambda a, c: a.enqueue("email.send", {"to": "x"}, unique_key="", conn=c),
     pgq.InvalidIdentifierError),
    ("negative zero", lambda a, c: a.enqueue("email.send", {"to": "x", "subject": -0.0}, conn=c),
     pgq.InvalidArgsError),
    ("negative zero in meta", lambda a, c: a.enqueue("email.send", {"to": "x"},
                                                     meta={"m": [-0.0]}, conn=c),
     pgq.InvalidArgsError),
    ("too deep", lambda a, c: a.enqueue("email.send", {"to": "x", "subject": nested(300)}, conn=c),
     pgq.InvalidArgsError),
    ("bulk with one bad", lambda a, c: a.enqueue_many(
        [pgq.JobSpec("email.send", {"to": "ok"})] * 10 + [pgq.JobSpec("email.send", {"to": {1}})],
        conn=c), pgq.InvalidArgsError),
]


@pytest.mark.parametrize(("case", "call", "error"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_before_any_sql(
    case: str, call: Callable[[pgq.App, Any], Any], error: type[pgq.PgqError],
    app: pgq.App, db_url: str, conn: psycopg.Connection,
) -> None:
    with psycopg.connect(db_url) as c:
        with pytest.raises(error) as excinfo:
            call(app, c)
        # psycopg begins a transaction on the first statement; still idle means pgq sent nothing.
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert str(excinfo.value), "the error must say what is wrong"
    assert conn.execute("SELECT count(*) FROM pgq_jobs").fetchone()[0] == 0
    # and on pgq's own connection too
    with pytest.raises(error):
        call(app, None)
    assert conn.execute("SELECT count(*) FROM pgq_jobs").fetchone()[0] == 0


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_bad_spec_after_streamed_chunks_writes_nothing(app: pgq.App, db_url: str,
                                                       conn: psycopg.Connection,
                                                       use_async: bool) -> None:
    """On pgq's own connection enqueue_many validates while COPY streams, so a bad spec
    near the end is found after several chunks were sent: the COPY is aborted and its
    transaction rolled back. The same error as in the caller's transaction (validated
    first), nothing written, and the pooled connection is usable afterwards."""
    specs = [pgq.JobSpec("email.send", {"to": f"u{i}"}) for i in range(10_000)]
    specs.append(pgq.JobSpec("email.send", {"to": "x", "subject": {1: 2}}))
    with psycopg.connect(db_url) as c, pytest.raises(pgq.InvalidArgsError) as first:
        app.enqueue_many(specs, conn=c)
    with pytest.raises(pgq.InvalidArgsError) as streamed:
        if use_async:
            asyncio.run(app.enqueue_many_async(specs))
        else:
            app.enqueue_many(specs)
    assert str(streamed.value) == str(first.value)
    assert conn.execute("SELECT count(*) FROM pgq_jobs").fetchone()[0] == 0
    done = (asyncio.run(app.enqueue_many_async(specs[:3])) if use_async
            else app.enqueue_many(specs[:3]))
    assert conn.execute("SELECT count(*) FROM pgq_jobs").fetchone()[0] == len(done) == 3


def test_missing_schema_is_a_clear_error(empty_db_url: str) -> None:
    with pgq.App(pgq.Settings(database_url=empty_db_url), strict=False) as app, pytest.raises(
        pgq.MigrationError, match="pgq migrate"
    ):
        app.enqueue("a.task")


def test_unreachable_database_is_a_clear_error() -> None:
    settings = pgq.Settings(database_url="postgresql://u:s3cret@127.0.0.1:1/x", connect_timeout=1)
    with pgq.App(settings, strict=False) as app, pytest.raises(pgq.DatabaseUnavailable) as excinfo:
        app.enqueue("a.task")
    assert "s3cret" not in str(excinfo.value)
    assert "127.0.0.1:1" in str(excinfo.value)


def test_args_round_trip_unchanged(app: pgq.App, conn: psycopg.Connection) -> None:
    args = {"to": "ü→✓ \u2028", "subject": json.dumps({"nested": [1, 2.5, None, True]})}
    job = app.enqueue("email.send", args)
    assert conn.execute("SELECT args FROM pgq_jobs WHERE id = %s", [job.id]).fetchone()[0] == args


# Floats from 1e16 up, which Python writes with an exponent: PostgreSQL prints a jsonb
# number without one, and 1e+16 came back as the int 10000000000000000 (issue 12, defect 11).
EXPONENT_FLOATS = {"f": 1e16, "neg": -1.5e300, "max": 1.7976931348623157e308,
                   "odd": 1.2345678901234567e16, "small": 5e-324, "tiny": -2.5e-8,
                   "list": [2e22, {"in": 3.5e40}], "text": "1e+16 stays text"}


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value)


@pytest.mark.parametrize("how", ["enqueue", "enqueue_many", "enqueue_many_keyed"])
def test_floats_come_back_from_jsonb_as_the_same_floats(settings: pgq.Settings,
                                                        conn: psycopg.Connection, how: str) -> None:
    meta = {"m": 1e16}
    with pgq.App(settings, strict=False) as app:
        if how == "enqueue":
            job = app.enqueue("any.task", EXPONENT_FLOATS, meta=meta)
        else:
            key = "k" if how == "enqueue_many_keyed" else None  # INSERT … ON CONFLICT, not COPY
            (job,) = app.enqueue_many([pgq.JobSpec("any.task", EXPONENT_FLOATS, meta=meta,
                                                   unique_key=key)])
    args, stored_meta = conn.execute("SELECT args, meta FROM pgq_jobs WHERE id = %s",
                                     [job.id]).fetchone()
    assert args == EXPONENT_FLOATS and _types(args) == _types(EXPONENT_FLOATS)
    assert type(stored_meta["m"]) is float


def test_results_with_big_floats_come_back_as_floats(conn: psycopg.Connection) -> None:
    result = {"total": 2.5e20, "items": [1e16, 0.1]}
    stored = conn.execute("SELECT %s::jsonb", [encode_result(result)]).fetchone()[0]
    assert stored == result and _types(stored) == _types(result)


def test_a_task_gets_its_float_and_the_deepest_args_pgq_accepts(
        settings: pgq.Settings, conn: psycopg.Connection) -> None:
    """What a worker decodes: floats stay floats, and args at the nesting limit decode in
    the claim (args ~990 levels deep were accepted and crashed every worker that claimed
    them)."""
    seen: list[Any] = []
    with pgq.App(settings) as app:

        @app.task(name="floats.take")
        def take(f: float, tree: list[Any]) -> None:
            seen.append((f, type(f), tree == deepest))

        deepest = nested(MAX_JSON_DEPTH - 2)  # inside the args object and its list
        job = app.enqueue("floats.take", {"f": 1e16, "tree": deepest})
        worker = pgq.Worker(app, pgq.WorkerConfig(concurrency=2, poll_seconds=0.05))
        asyncio.run(asyncio.wait_for(worker.run_async(stop_when="due"), 30))
    assert seen == [(1e16, float, True)]
    assert conn.execute("SELECT state FROM pgq_jobs WHERE id = %s", [job.id]).fetchone() == (
        "completed",)
