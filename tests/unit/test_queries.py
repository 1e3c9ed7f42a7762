"""The SQL catalogue and the enqueue plans, without a database.

A plan is a generator of ``Exec`` / ``Copy`` steps; here it is driven by hand with the
rows a database would send back, so each branch of the algorithm is reached on purpose.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgq.client import plans as enqueue
from pgq.client.enqueue import Enqueued, JobRow, JobSpec, prepare
from pgq.client.plans import plan_enqueue_many, plan_enqueue_one, plan_notify
from pgq.core.errors import DatabaseError
from pgq.core.tasks import TaskRegistry
from pgq.store.plan import Copy, Exec, Step
from pgq.store.queries import QUERIES, parse

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
PLACEHOLDER = re.compile(r"%\((\w+)\)s")

Respond = Callable[[Step], Any]


def drive(plan: Generator[Step, Any, Any], respond: Respond, limit: int = 1000) -> tuple[list[Step], Any]:
    """Run ``plan`` to the end, answering each step with ``respond(step)``, the way
    ``pgq.store.database.run_plan`` does; return the steps it took and its result."""
    steps: list[Step] = []
    reply: Any = None
    for _ in range(limit):
        try:
            step = plan.send(reply)
        except StopIteration as done:
            return steps, done.value
        steps.append(step)
        reply = respond(step)
    raise AssertionError(f"plan did not finish within {limit} steps")


def script(*replies: Any) -> Respond:
    """Answer steps with ``replies`` in order; running out is a test failure."""
    queue = list(replies)

    def respond(step: Step) -> Any:
        assert queue, f"unexpected extra step {step.name}"
        return queue.pop(0)

    return respond


def names(steps: Sequence[Step]) -> list[str]:
    return [s.name for s in steps]


def make_row(key: str | None = None, *, task: str = "reports.build", **options: Any) -> JobRow:
    return prepare(JobSpec(task, {"n": 1}, unique_key=key, **options), TaskRegistry(), strict=False,
                   max_payload_bytes=1024 * 1024)


# --- parse ----------------------------------------------------------------------------

def test_parse_splits_at_name_markers() -> None:
    source = (
        "-- file header, not a statement\n"
        "\n"
        "-- name: first_one\n"
        "-- why it is shaped this way\n"
        "SELECT 1;\n"
        "\n"
        "-- name: second_2\n"
        "SELECT %(x)s\n"
        "FROM t;  \n"
    )
    statements = parse(source)
    assert list(statements) == ["first_one", "second_2"]
    assert statements["first_one"] == "-- why it is shaped this way\nSELECT 1"
    assert statements["second_2"] == "SELECT %(x)s\nFROM t"


def test_parse_rejects_a_duplicate_name() -> None:
    source = "-- name: twice\nSELECT 1;\n-- name: other\nSELECT 2;\n-- name: twice\nSELECT 3;\n"
    with pytest.raises(ValueError, match=r"queries\.sql defines 'twice' twice"):
        parse(source)


def test_parse_needs_the_marker_at_the_start_of_a_line() -> None:
    assert parse("SELECT 1; -- name: inline\n") == {}
    assert list(parse("-- name: a\nSELECT 1;\n  -- name: indented\nSELECT 2;\n")) == ["a"]


def test_queries_catalogue() -> None:
    assert len(QUERIES) >= 7
    for name, sql in QUERIES.items():
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name)
        assert sql and not sql.endswith(";"), name
        assert re.search(r"^(SELECT|INSERT|UPDATE|DELETE|WITH|COPY|LISTEN)\b", sql, re.MULTILINE), name
    with pytest.raises(TypeError):
        QUERIES["x"] = "SELECT 1"  # type: ignore[index]


# --- the plans only name statements that exist ----------------------------------------

STEP_IN_SOURCE = re.compile(r"\b(Exec|Copy)\(\s*\"([^\"]+)\"")


def statements_named_in_enqueue() -> set[tuple[str, str]]:
    return set(STEP_IN_SOURCE.findall(inspect.getsource(enqueue)))


def test_every_statement_enqueue_yields_exists() -> None:
    named = statements_named_in_enqueue()
    assert len(named) >= 6  # the grep itself works
    missing = sorted(name for _, name in named if name not in QUERIES)
    assert missing == []


def test_copy_steps_name_copy_statements_and_exec_steps_do_not() -> None:
    for kind, name in statements_named_in_enqueue():
        is_copy = re.search(r"^COPY\b.*FROM STDIN$", QUERIES[name], re.MULTILINE | re.DOTALL) is not None
        assert is_copy == (kind == "Copy"), name


class FakeDatabase:
    """Just enough of pgq_jobs to answer the enqueue statements: held unique keys."""

    def __init__(self, held: dict[tuple[str, str], int] | None = None,
                 vanish: set[tuple[str, str]] | None = None) -> None:
        self.held = dict(held or {})
        self.vanish = set(vanish or ())  # holders that roll back right after the batch insert
        self.next_id = 1000
        self.copied: list[Sequence[Any]] = []
        self.copies: list[tuple[str, list[Sequence[Any]]]] = []

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def __call__(self, step: Step) -> Any:
        if isinstance(step, Copy):
            rows = list(step.rows)
            self.copied.extend(rows)
            self.copies.append((step.name, rows))
            return None
        p = step.params
        match step.name:
            case "clock_now_and_ids":
                return [(p["now"], [self.new_id() for _ in range(p["n"])])]
            case "job_unique_release_lapsed_many":
                return []
            case "job_insert_unique_many":
                inserted = []
                for task, key in zip(p["task"], p["unique_key"], strict=True):
                    if (task, key) not in self.held:
                        self.held[task, key] = self.new_id()
                        inserted.append((self.held[task, key], task, key))
                for gone in self.vanish:
                    self.held.pop(gone, None)
                return inserted[::-1]  # RETURNING order is not input order
            case "job_unique_holders_many":
                return [(t, k, self.held[t, k]) for t, k in zip(p["tasks"], p["unique_keys"], strict=True)
                        if (t, k) in self.held]
            case "job_insert":
                if (p["task"], p["unique_key"]) in self.held:
                    return []
                job_id = self.new_id()
                if p["unique_key"] is not None:
                    self.held[p["task"], p["unique_key"]] = job_id
                return [(job_id,)]
            case "job_unique_holder_release":
                holder = self.held.get((p["task"], p["unique_key"]))
                return [] if holder is None else [(holder, False)]
            case "queue_notify":
                return [(None,) for _ in p["queues"]]
        raise AssertionError(f"unknown statement {step.name}")


def test_plans_send_every_parameter_their_statements_take() -> None:
    rows = [make_row(), make_row("k1"), make_row("k1"), make_row("k2"), make_row("k3"),
            make_row(delay=30)]
    db = FakeDatabase(held={("reports.build", "k2"): 7, ("reports.build", "k3"): 8},
                      vanish={("reports.build", "k3")})
    steps, _ = drive(plan_enqueue_many(rows, NOW), db)
    steps += drive(plan_enqueue_one(make_row("k2"), NOW), db)[0]
    steps += drive(plan_notify(plan_enqueue_one(make_row(), NOW), ["default"]), db)[0]
    steps += drive(plan_enqueue_many([make_row()], None), db)[0]  # job_copy_now: database clock
    taken = {s.name for s in steps}
    assert taken == {name for _, name in statements_named_in_enqueue()}  # every statement was reached
    for step in steps:
        if isinstance(step, Exec):
            needed = set(PLACEHOLDER.findall(QUERIES[step.name]))
            assert needed <= set(step.params), (step.name, needed - set(step.params))
        else:
            columns = re.search(r"COPY \w+ \(([^)]*)\)", QUERIES[step.name])
            assert columns is not None
            width = len(columns.group(1).split(","))
            copied = [rows for name, rows in db.copies if name == step.name]
            assert copied and all(len(r) == width for rows in copied for r in rows)


# --- plan_enqueue_one -----------------------------------------------------------------

def test_one_inserted() -> None:
    row = make_row("daily:42")
    steps, result = drive(plan_enqueue_one(row, NOW), script([(42,)]))
    assert result == Enqueued(42, duplicate=False)
    assert names(steps) == ["job_insert"]
    assert isinstance(steps[0], Exec)
    assert steps[0].params == {**row._asdict(), "now": NOW, "notify": False}


def test_one_with_its_wakeup_is_one_statement() -> None:
    steps, result = drive(plan_enqueue_one(make_row(), NOW, notify=True), script([(42, None)]))
    assert result == Enqueued(42)
    assert names(steps) == ["job_insert"] and steps[0].params["notify"] is True  # type: ignore[union-attr]


def test_one_keyless_inserted() -> None:
    steps, result = drive(plan_enqueue_one(make_row(), None), script([(5,)]))
    assert (result, names(steps)) == (Enqueued(5), ["job_insert"])


def test_one_conflict_with_an_active_holder_is_a_duplicate() -> None:
    row = make_row("daily:42")
    steps, result = drive(plan_enqueue_one(row, NOW), script([], [(7, False)]))
    assert result == Enqueued(7, duplicate=True)
    assert names(steps) == ["job_insert", "job_unique_holder_release"]
    assert isinstance(steps[1], Exec)
    assert steps[1].params == {"task": "reports.build", "unique_key": "daily:42", "now": NOW}


def test_one_conflict_with_a_released_holder_inserts_again() -> None:
    steps, result = drive(plan_enqueue_one(make_row("daily:42"), NOW), script([], [(7, True)], [(43,)]))
    assert result == Enqueued(43, duplicate=False)
    assert names(steps) == ["job_insert", "job_unique_holder_release", "job_insert"]


def test_one_conflict_with_a_vanished_holder_inserts_again() -> None:
    steps, result = drive(plan_enqueue_one(make_row("daily:42"), NOW), script([], [], [(44,)]))
    assert result == Enqueued(44, duplicate=False)
    assert names(steps) == ["job_insert", "job_unique_holder_release", "job_insert"]


def test_one_holder_released_then_taken_again_is_a_duplicate_of_the_new_holder() -> None:
    replies = script([], [(7, True)], [], [(9, False)])
    steps, result = drive(plan_enqueue_one(make_row("daily:42"), NOW), replies)
    assert result == Enqueued(9, duplicate=True)
    assert len(steps) == 4


def churn(step: Step) -> Any:
    """Every insert conflicts, and every holder turns out to be released."""
    return [] if step.name == "job_insert" else [(7, True)]


def test_one_endless_churn_is_a_database_error() -> None:
    steps: list[Step] = []

    def respond(step: Step) -> Any:
        steps.append(step)
        return churn(step)

    with pytest.raises(DatabaseError) as exc:
        drive(plan_enqueue_one(make_row("daily:42"), NOW), respond)
    assert str(exc.value) == (
        f"unique key 'daily:42' of task 'reports.build' changed hands {enqueue._UNIQUE_RETRIES} "
        "times during one enqueue"
    )
    assert names(steps).count("job_insert") == enqueue._UNIQUE_RETRIES
    assert 2 <= enqueue._UNIQUE_RETRIES <= 100
    assert len(steps) == 2 * enqueue._UNIQUE_RETRIES


def test_one_churn_that_stops_at_the_last_retry_succeeds() -> None:
    inserts = 0

    def respond(step: Step) -> Any:
        nonlocal inserts
        if step.name == "job_insert":
            inserts += 1
            if inserts == enqueue._UNIQUE_RETRIES:
                return [(99,)]
        return churn(step)

    _, result = drive(plan_enqueue_one(make_row("daily:42"), NOW), respond)
    assert result == Enqueued(99)


# --- plan_enqueue_many ----------------------------------------------------------------

def test_many_empty_batch_sends_nothing() -> None:
    steps, result = drive(plan_enqueue_many([], NOW), script())
    assert (steps, result) == ([], [])


def test_many_keyless_go_in_by_copy_in_input_order() -> None:
    at = datetime(2031, 1, 1, tzinfo=UTC)
    past = datetime(2000, 1, 1, tzinfo=UTC)
    rows = [make_row(), make_row(delay=60, tags=["a", "b"]), make_row(run_at=at), make_row(run_at=past)]
    steps, result = drive(plan_enqueue_many(rows, None), script([(NOW, [11, 12, 13, 14])], None))
    assert names(steps) == ["clock_now_and_ids", "job_copy"]
    assert isinstance(steps[0], Exec) and steps[0].params == {"now": None, "n": 4}
    assert result == [Enqueued(11), Enqueued(12), Enqueued(13), Enqueued(14)]
    copy = steps[1]
    assert isinstance(copy, Copy)
    copied = list(copy.rows)
    iso = datetime.isoformat
    assert [(r[0], r[3], r[7], r[8]) for r in copied] == [
        ("11", "available", iso(NOW), iso(NOW)),
        ("12", "scheduled", iso(NOW + timedelta(seconds=60)), iso(NOW)),
        ("13", "scheduled", iso(at), iso(NOW)),
        ("14", "available", iso(past), iso(NOW)),
    ]
    first = copied[1]
    r = rows[1]
    assert tuple(first) == ("12", r.queue, r.task, "scheduled", str(r.priority),
                            str(r.max_attempts), r.args, iso(NOW + timedelta(seconds=60)),
                            iso(NOW), "\\N" if r.timeout_seconds is None else repr(r.timeout_seconds),
                            '{"a","b"}', r.meta)


def test_many_mixed_batch_results_in_input_order() -> None:
    rows = [
        make_row(),              # 0 keyless
        make_row("k1"),          # 1 inserted
        make_row(),              # 2 keyless
        make_row("k1"),          # 3 same key as 1, in the same batch
        make_row("k2"),          # 4 held by an existing job
        make_row("k3"),          # 5 inserted
        make_row("k1", task="other.task"),  # 6 same key, other task: not a duplicate
        make_row(delay=5),       # 7 keyless
    ]
    db = FakeDatabase(held={("reports.build", "k2"): 500})
    steps, result = drive(plan_enqueue_many(rows, NOW), db)
    assert names(steps) == ["clock_now_and_ids", "job_copy", "job_unique_release_lapsed_many",
                            "job_insert_unique_many", "job_unique_holders_many"]
    keyless_ids = [int(r[0]) for r in db.copied]
    k1 = db.held["reports.build", "k1"]
    assert result == [
        Enqueued(keyless_ids[0]),
        Enqueued(k1),
        Enqueued(keyless_ids[1]),
        Enqueued(k1, duplicate=True),
        Enqueued(500, duplicate=True),
        Enqueued(db.held["reports.build", "k3"]),
        Enqueued(db.held["other.task", "k1"]),
        Enqueued(keyless_ids[2]),
    ]
    assert len({r.id for r in result}) == 7


def test_many_in_batch_duplicates_map_to_the_first_rows_id() -> None:
    rows = [make_row("same", priority=1), make_row("same", priority=2), make_row("same", priority=3)]
    respond = script([], [(77, "reports.build", "same")])
    steps, result = drive(plan_enqueue_many(rows, NOW), respond)
    assert result == [Enqueued(77), Enqueued(77, duplicate=True), Enqueued(77, duplicate=True)]
    assert names(steps) == ["job_unique_release_lapsed_many", "job_insert_unique_many"]
    insert = steps[1]
    assert isinstance(insert, Exec)
    assert insert.params["priority"] == [1, 2, 3]  # all rows go to the database, in input order
    assert insert.params["ord"] == [0, 1, 2]


def test_many_keyed_columns_line_up() -> None:
    rows = [make_row("a", tags=["x"], unique_for=timedelta(hours=1)), make_row("b", timeout=3)]
    steps, _ = drive(plan_enqueue_many(rows, NOW),
                     script([], [(1, "reports.build", "a"), (2, "reports.build", "b")]))
    release, insert = steps
    assert isinstance(release, Exec) and isinstance(insert, Exec)
    assert release.params == {"tasks": ["reports.build"] * 2, "unique_keys": ["a", "b"], "now": NOW}
    p = insert.params
    assert (p["unique_key"], p["unique_for"], p["timeout_seconds"]) == (
        ["a", "b"], [timedelta(hours=1), None], [None, 3.0])
    assert p["tags"] == ['["x"]', "[]"]  # JSON text: a text[] of text[] cannot be ragged
    assert p["now"] == NOW
    columns = [k for k in p if k != "now"]
    assert all(len(p[k]) == 2 for k in columns)


def test_many_key_whose_holder_vanished_falls_back_to_one_by_one() -> None:
    rows = [make_row("k1"), make_row("gone"), make_row()]
    db = FakeDatabase(held={("reports.build", "gone"): 300}, vanish={("reports.build", "gone")})
    steps, result = drive(plan_enqueue_many(rows, NOW), db)
    assert names(steps) == ["clock_now_and_ids", "job_copy", "job_unique_release_lapsed_many",
                            "job_insert_unique_many", "job_unique_holders_many", "job_insert"]
    fallback = steps[-1]
    assert isinstance(fallback, Exec)
    assert fallback.params == {**rows[1]._asdict(), "now": NOW, "notify": False}
    gone_id = db.held["reports.build", "gone"]
    assert gone_id != 300
    assert result == [Enqueued(db.held["reports.build", "k1"]), Enqueued(gone_id),
                      Enqueued(int(db.copied[0][0]))]


def test_many_two_rows_whose_holder_vanished_become_one_job() -> None:
    rows = [make_row("gone"), make_row("gone")]
    db = FakeDatabase(held={("reports.build", "gone"): 300}, vanish={("reports.build", "gone")})
    steps, result = drive(plan_enqueue_many(rows, NOW), db)
    new = db.held["reports.build", "gone"]
    assert result == [Enqueued(new), Enqueued(new, duplicate=True)]
    assert names(steps)[-3:] == ["job_insert", "job_insert", "job_unique_holder_release"]


def test_many_all_keys_free_needs_no_holder_lookup() -> None:
    rows = [make_row("a"), make_row("b")]
    steps, result = drive(plan_enqueue_many(rows, NOW), FakeDatabase())
    assert "job_unique_holders_many" not in names(steps)
    assert [r.duplicate for r in result] == [False, False]
    assert result[0].id != result[1].id


def _code(sql: str) -> str:
    """The statement without comment lines, whitespace collapsed."""
    return " ".join(" ".join(line for line in sql.splitlines()
                             if not line.lstrip().startswith("--")).split())


def test_finish_and_claim_is_the_two_statements_word_for_word() -> None:
    """job_finish_and_claim must do exactly what job_finish_many then job_claim do: its
    finished CTE is the former, its WITH head and claimed CTE the latter."""
    combined = _code(QUERIES["job_finish_and_claim"])
    finish = _code(QUERIES["job_finish_many"])
    head, update = _code(QUERIES["job_claim"]).split(" UPDATE pgq_jobs AS j ", 1)
    assert combined.startswith(head + ", finished AS ( " + finish + " ), claimed AS ( "
                               + "UPDATE pgq_jobs AS j " + update + " ) SELECT ")
