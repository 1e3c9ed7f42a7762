"""Every bad enqueue input is rejected by ``prepare`` with its typed error and a message
that says what is wrong and where; good input comes out as the ``JobRow`` the SQL takes.
No I/O: ``prepare`` never touches a database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from pgq.client.enqueue import JobRow, JobSpec, prepare
from pgq.core.errors import (
    InvalidArgsError,
    InvalidIdentifierError,
    InvalidJobError,
    InvalidOptionError,
    PayloadTooLargeError,
    UnknownTaskError,
)
from pgq.core.tasks import TaskRegistry
from pgq.core.validation import MAX_JSON_DEPTH, encode_result, parse_json

MiB = 1024 * 1024


def send_email(ctx: object, to: str, subject: str = "") -> None:
    """A task that takes its run-time context first."""


def add(a: int, b: int) -> int:
    return a + b


@pytest.fixture
def registry() -> TaskRegistry:
    reg = TaskRegistry()
    reg.register(send_email, name="email.send", queue="critical", priority=-10, max_attempts=5,
                 timeout=30)
    reg.register(add, name="math.add")
    return reg


def run(registry: TaskRegistry, task: Any = "math.add", args: Any = None, *, strict: bool = True,
        cap: int = MiB, **options: Any) -> JobRow:
    spec = JobSpec(task, {"a": 1, "b": 2} if args is None else args, **options)
    return prepare(spec, registry, strict=strict, max_payload_bytes=cap)


def nested_lists(depth: int) -> list[Any]:
    root: list[Any] = []
    cur = root
    for _ in range(depth):
        child: list[Any] = []
        cur.append(child)
        cur = child
    return root


# --- task names -----------------------------------------------------------------------

def test_unknown_task_with_strict_registry(registry: TaskRegistry) -> None:
    with pytest.raises(UnknownTaskError) as exc:
        run(registry, "billing.charge", {})
    message = str(exc.value)
    assert "'billing.charge'" in message
    assert "email.send, math.add" in message  # says what *is* registered
    assert "strict=False" in message  # and how to enqueue for another service


def test_unknown_task_in_empty_strict_registry_says_none() -> None:
    with pytest.raises(UnknownTaskError, match=r"registered: none"):
        prepare(JobSpec("billing.charge"), TaskRegistry(), strict=True, max_payload_bytes=MiB)


def test_unknown_task_accepted_when_not_strict(registry: TaskRegistry) -> None:
    row = run(registry, "billing.charge", {"anything": [1, 2]}, strict=False)
    assert row.task == "billing.charge"
    assert (row.queue, row.priority, row.max_attempts, row.timeout_seconds) == ("default", 0, 25, None)
    assert json.loads(row.args) == {"anything": [1, 2]}


def test_task_object_is_used_directly(registry: TaskRegistry) -> None:
    task = registry.get("email.send")
    assert task is not None
    row = prepare(JobSpec(task, {"to": "a@example.com"}), TaskRegistry(), strict=True,
                  max_payload_bytes=MiB)
    assert (row.task, row.queue) == ("email.send", "critical")


# --- identifiers ----------------------------------------------------------------------

BAD_QUEUES = ["", "has space", "a,b", "a=b", "a:b", "emails/high", "-lead", ".lead", "q\x00",
              "caf\u00e9", "q\n", "x" * 64]
BAD_TASK_NAMES = ["", "1starts.with.digit", "-x", "has space", "a/b", "a,b", "t\u00e2che", "t\x00",
                  "a" * 129]


@pytest.mark.parametrize("queue", BAD_QUEUES)
def test_invalid_queue_name(registry: TaskRegistry, queue: str) -> None:
    with pytest.raises(InvalidIdentifierError) as exc:
        run(registry, queue=queue)
    message = str(exc.value)
    assert message.startswith("invalid queue name ")
    assert repr(queue) in message
    assert "1-63" in message


@pytest.mark.parametrize("name", BAD_TASK_NAMES)
@pytest.mark.parametrize("strict", [True, False])
def test_invalid_task_name(registry: TaskRegistry, name: str, strict: bool) -> None:
    with pytest.raises(InvalidIdentifierError) as exc:
        run(registry, name, {}, strict=strict)
    message = str(exc.value)
    assert message.startswith("invalid task name ")
    assert repr(name if len(name) <= 80 else name[:77] + "...") in message
    assert "1-128" in message


def test_long_identifier_is_shortened_in_the_message(registry: TaskRegistry) -> None:
    with pytest.raises(InvalidIdentifierError) as exc:
        run(registry, queue="q" * 500)
    assert "q" * 77 + "..." in str(exc.value)
    assert "q" * 78 not in str(exc.value)


@pytest.mark.parametrize("value", [5, b"default", ["default"]])
def test_non_str_queue(registry: TaskRegistry, value: object) -> None:
    expected = f"queue name must be a string, got {type(value).__name__}"
    with pytest.raises(InvalidIdentifierError, match=expected):
        run(registry, queue=value)


@pytest.mark.parametrize("value", [5, b"math.add", None])
def test_non_str_task_name(registry: TaskRegistry, value: object) -> None:
    expected = f"task name must be a string, got {type(value).__name__}"
    with pytest.raises(InvalidIdentifierError, match=expected):
        run(registry, value, {}, strict=False)


def test_identifiers_at_their_length_limits_are_accepted(registry: TaskRegistry) -> None:
    name = "t" + "_.:-" * 31 + "abc"
    assert len(name) == 128
    row = run(registry, name, {}, strict=False, queue="Q_." + "9" * 59 + "-")
    assert row.task == name
    assert len(row.queue) == 63


def test_identifier_punctuation_that_is_allowed(registry: TaskRegistry) -> None:
    row = run(registry, "_email:receipt.v2-b", {}, strict=False, queue="0_tenant-a.jobs")
    assert (row.task, row.queue) == ("_email:receipt.v2-b", "0_tenant-a.jobs")


# --- args and meta --------------------------------------------------------------------

@pytest.mark.parametrize("args", [[1, 2], "a=1", None, 42, (("a", 1),)])
def test_args_must_be_a_dict(registry: TaskRegistry, args: object) -> None:
    spec = JobSpec("math.add", args)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgsError, match=f"args must be a dict .*got {type(args).__name__}$"):
        prepare(spec, registry, strict=True, max_payload_bytes=MiB)


def test_meta_must_be_a_dict(registry: TaskRegistry) -> None:
    with pytest.raises(InvalidArgsError, match=r"meta must be a dict .*got list"):
        run(registry, meta=["tenant"])


UNFAITHFUL = [
    pytest.param({"point": (1, 2)}, "args['point'] is a tuple; it would come back as a list", id="tuple"),
    pytest.param({"by_id": {1: "a"}}, "args['by_id'] has a int key 1; JSON object keys must be strings",
                 id="int-key"),
    pytest.param({7: "x"}, "args has a int key 7", id="int-key-top-level"),
    pytest.param({"x": float("nan")}, "args['x'] is nan, which JSON cannot represent", id="nan"),
    pytest.param({"x": [0.5, float("inf")]}, "args['x'][1] is inf, which JSON cannot represent", id="inf"),
    pytest.param({"x": -float("inf")}, "args['x'] is -inf", id="-inf"),
    pytest.param({"ids": {1, 2}}, "args['ids'] is a set; job args are JSON only", id="set"),
    pytest.param({"blob": b"\x00\x01"}, "args['blob'] is a bytes; job args are JSON only", id="bytes"),
    pytest.param({"when": datetime(2030, 1, 1, tzinfo=UTC)}, "args['when'] is a datetime", id="datetime"),
    pytest.param({"amount": Decimal("1.10")}, "args['amount'] is a Decimal", id="decimal"),
    pytest.param({"s": "a\x00b"}, "args['s'] contains a NUL character, which PostgreSQL jsonb rejects",
                 id="nul"),
    pytest.param({"deep": {"s": ["ok", "\ud800"]}},
                 "args['deep']['s'][1] is not valid Unicode (lone surrogate)", id="lone-surrogate"),
    # jsonb has no negative zero: -0.0 == 0.0 passed the round-trip comparison and the
    # task got 0.0 (issue 12, defect 11).
    pytest.param({"x": -0.0}, "args['x'] is -0.0; PostgreSQL jsonb has no negative zero and "
                 "would give back 0.0 (pass 0.0)", id="negative-zero"),
    pytest.param({"a": [1.5, {"b": -0.0}], "c": "-0.0"}, "args['a'][1]['b'] is -0.0",
                 id="negative-zero-nested"),
    pytest.param({"n": [10**5000]}, "args['n'][0] is an integer of more than 4300 digits",
                 id="int-too-long-for-text"),
]


@pytest.mark.parametrize(("args", "message"), UNFAITHFUL)
def test_args_json_cannot_carry_faithfully(registry: TaskRegistry, args: dict[Any, Any],
                                           message: str) -> None:
    with pytest.raises(InvalidArgsError) as exc:
        run(registry, "any.task", args, strict=False)
    assert type(exc.value) is InvalidArgsError
    assert message in str(exc.value)


@pytest.mark.parametrize(("meta", "message"), UNFAITHFUL)
def test_meta_json_cannot_carry_faithfully(registry: TaskRegistry, meta: dict[Any, Any],
                                           message: str) -> None:
    with pytest.raises(InvalidArgsError) as exc:
        run(registry, meta=meta)
    assert message.replace("args", "meta", 1) in str(exc.value)


def test_deeply_nested_args_are_rejected_clearly(registry: TaskRegistry) -> None:
    with pytest.raises(InvalidArgsError, match=r"^args nests too deeply to encode as JSON$"):
        run(registry, "any.task", {"tree": nested_lists(10_000)}, strict=False)


def test_self_referencing_args_are_rejected_clearly(registry: TaskRegistry) -> None:
    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(InvalidArgsError, match=r"^args nests too deeply to encode as JSON$"):
        run(registry, "any.task", {"loop": loop}, strict=False)


def test_moderately_nested_args_are_accepted(registry: TaskRegistry) -> None:
    row = run(registry, "any.task", {"tree": nested_lists(200)}, strict=False)
    assert row.args.startswith('{"tree":[[[')


def test_unfaithful_value_next_to_good_ones_is_the_one_named(registry: TaskRegistry) -> None:
    args = {"a": [1, "two", {"three": 3.0}], "b": {"c": [None, True, ("x",)]}, "z": "fine"}
    with pytest.raises(InvalidArgsError, match=r"^args\['b'\]\['c'\]\[2\] is a tuple"):
        run(registry, "any.task", args, strict=False)


def test_backslash_u0000_text_is_not_a_nul(registry: TaskRegistry) -> None:
    args = {"path": "C:\\u0000\\file"}
    row = run(registry, "any.task", args, strict=False)
    assert json.loads(row.args) == args


def test_negative_zero_in_text_or_a_negative_number_is_accepted(registry: TaskRegistry) -> None:
    args = {"s": "-0.0", "k": {"-0.0": [-0.01, 0.0, -0, "x -0.0"]}}
    assert json.loads(run(registry, "any.task", args, strict=False).args) == args


# PostgreSQL prints a jsonb number without exponent: 1e+16 (how Python writes floats from
# 1e16 up) came back as 10000000000000000, which decodes as an int (issue 12, defect 11).
# tests/integration/test_enqueue_input.py checks the same values through PostgreSQL.
BIG_FLOATS = {"f": 1e16, "neg": -1.5e300, "max": 1.7976931348623157e308,
              "odd": 1.2345678901234567e16, "small": 5e-324, "list": [2e22, {"in": 3.5e40}],
              "text": "1e+16 stays text", "1e+16": 1}


def test_floats_with_exponents_are_written_out_so_they_stay_floats(registry: TaskRegistry) -> None:
    row = run(registry, "any.task", BIG_FLOATS, strict=False, meta={"m": 1e16})
    assert '"f":10000000000000000.0' in row.args
    assert '"text":"1e+16 stays text","1e+16":1' in row.args
    assert "e+" not in row.args.replace("1e+16", "")
    decoded = json.loads(row.args)
    assert decoded == BIG_FLOATS
    assert type(decoded["f"]) is float and type(decoded["list"][0]) is float
    assert row.meta == '{"m":10000000000000000.0}'


MAX_DEPTH_ARGS = {"tree": nested_lists(MAX_JSON_DEPTH - 2)}  # the object, its list, 254 lists


def test_nesting_is_bounded_where_a_worker_can_still_decode_it(registry: TaskRegistry) -> None:
    """Args ~990 levels deep encoded fine and then crashed every worker that claimed
    the job (its decoder runs deeper in the stack than the enqueue's): the limit leaves
    headroom."""
    assert json.loads(run(registry, "any.task", MAX_DEPTH_ARGS, strict=False).args) == MAX_DEPTH_ARGS
    for levels in (MAX_JSON_DEPTH - 1, 600):
        with pytest.raises(InvalidArgsError,
                           match=r"^args nests deeper than 256 levels of objects and arrays$"):
            run(registry, "any.task", {"tree": nested_lists(levels)}, strict=False)
    with pytest.raises(InvalidArgsError, match=r"^meta nests deeper than 256 levels"):
        run(registry, meta={"tree": nested_lists(MAX_JSON_DEPTH)})
    # brackets inside strings are text, not nesting
    text = {"s": "[" * 1000, "t": ["{" * 1000, "]" * 1000]}
    assert json.loads(run(registry, "any.task", text, strict=False).args) == text


# --- results ------------------------------------------------------------------------------

def test_result_floats_are_written_out_and_nesting_bounded() -> None:
    assert encode_result({"f": 1e16, "s": "2e+20"}) == '{"f":10000000000000000.0,"s":"2e+20"}'
    assert encode_result(2e22) == "20000000000000000000000.0"
    assert encode_result(nested_lists(MAX_JSON_DEPTH - 1)) is not None
    with pytest.raises(InvalidArgsError, match=r"^result nests deeper than 256 levels"):
        encode_result(nested_lists(MAX_JSON_DEPTH))


def test_result_negative_zero_is_stored_as_jsonb_makes_it() -> None:
    """A result is not held to the round trip (a tuple is stored as a list), and refusing
    one would store null after the work is done: -0.0 goes in, jsonb keeps 0.0."""
    assert encode_result({"x": -0.0}) == '{"x":-0.0}'


# --- JSON text from the command line ------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    pytest.param("{not json", "--args is not valid JSON: Expecting property name enclosed in "
                 "double quotes: line 1 column 2 (char 1)", id="syntax"),
    pytest.param('{"n": ' + "9" * 5000 + "}",
                 "--args has an integer of 5000 digits; at most 4300 can be converted from text",
                 id="5000-digit-int"),
    pytest.param('{"n": -' + "9" * 4301 + "}", "--args has an integer of 4301 digits",
                 id="4301-digit-negative-int"),
    pytest.param('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}",
                 "--args nests too deeply to decode as JSON", id="deep"),
    pytest.param('{"x": 1e400}', "--args has the number 1e400, too large for a float (it would be inf)",
                 id="1e400"),
    pytest.param('{"x": -' + "1" * 400 + ".5}", "--args has the number -1111111111111111111…11111111.5 "
                 "(403 characters), too large for a float (it would be -inf)", id="long-float"),
    pytest.param('{"x": [NaN]}', "--args has NaN, which is not JSON", id="nan"),
    pytest.param('{"x": Infinity}', "--args has Infinity, which is not JSON", id="infinity"),
    pytest.param('{"x": -Infinity}', "--args has -Infinity, which is not JSON", id="-infinity"),
    pytest.param('{"a": 1, "b": {"k": 1, "k": 2}}', "--args has the key 'k' twice in one object",
                 id="duplicate-key"),
])
def test_json_text_that_cannot_be_job_args_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(InvalidArgsError) as exc:
        parse_json(text, "--args")
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_json_text_decodes_as_json_does() -> None:
    text = '{"a": [1, -2.5, 1e16, "\\u00e9", null, true], "b": {"c": 4300}, "n": ' + "9" * 4300 + "}"
    assert parse_json(text, "--args") == json.loads(text)
    assert parse_json("[1, 2]", "--args") == [1, 2]  # the shape is encode_json_object's to judge


# --- payload size ---------------------------------------------------------------------

def test_payload_exactly_at_the_cap_is_accepted(registry: TaskRegistry) -> None:
    # '{"s":"' + n + '"}' is n + 8 bytes, and meta '{}' is 2 more.
    row = run(registry, "any.task", {"s": "x" * 1014}, strict=False, cap=1024)
    assert len(row.args.encode()) + len(row.meta.encode()) == 1024


def test_payload_one_byte_over_the_cap(registry: TaskRegistry) -> None:
    with pytest.raises(PayloadTooLargeError) as exc:
        run(registry, "any.task", {"s": "x" * 1015}, strict=False, cap=1024)
    message = str(exc.value)
    assert "is 1025 bytes; the limit is 1024" in message
    assert "PGQ_MAX_PAYLOAD_BYTES" in message
    assert isinstance(exc.value, InvalidArgsError)


def test_payload_cap_counts_utf8_bytes_not_characters(registry: TaskRegistry) -> None:
    run(registry, "any.task", {"s": "\u00e9" * 507}, strict=False, cap=1024)  # 1014 + 10 bytes
    with pytest.raises(PayloadTooLargeError, match="is 1026 bytes"):
        run(registry, "any.task", {"s": "\u00e9" * 508}, strict=False, cap=1024)


def test_payload_cap_counts_meta_too(registry: TaskRegistry) -> None:
    args = {"s": "x" * 500}  # 508 bytes
    meta = {"m": "y" * 509}  # 517 bytes: 1025 in all
    run(registry, "any.task", args, strict=False, cap=1025, meta=meta)
    with pytest.raises(PayloadTooLargeError, match="is 1025 bytes; the limit is 1024"):
        run(registry, "any.task", args, strict=False, cap=1024, meta=meta)


# --- options --------------------------------------------------------------------------

@pytest.mark.parametrize("priority", [-101, 101, -(10**9), 10**9])
def test_priority_out_of_range(registry: TaskRegistry, priority: int) -> None:
    expected = rf"priority must be between -100 \(runs first\) and 100, got {priority}$"
    with pytest.raises(InvalidOptionError, match=expected):
        run(registry, priority=priority)


@pytest.mark.parametrize("priority", [True, False, 1.0, "5", [1]])
def test_priority_must_be_an_int(registry: TaskRegistry, priority: object) -> None:
    with pytest.raises(InvalidOptionError, match=f"priority must be an int, got {type(priority).__name__}$"):
        run(registry, priority=priority)


@pytest.mark.parametrize("priority", [-100, 100, 0])
def test_priority_range_is_inclusive(registry: TaskRegistry, priority: int) -> None:
    assert run(registry, priority=priority).priority == priority


@pytest.mark.parametrize(("value", "message"), [
    (0, "must be between 1 and 1000, got 0"), (1001, "must be between 1 and 1000, got 1001"),
    (True, "must be an int, got bool"), (2.0, "must be an int, got float"),
])
def test_max_attempts_out_of_range(registry: TaskRegistry, value: object, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=f"max_attempts {message}"):
        run(registry, max_attempts=value)


def test_naive_run_at(registry: TaskRegistry) -> None:
    with pytest.raises(InvalidOptionError, match="run_at is a naive datetime; pass an aware one"):
        run(registry, run_at=datetime(2030, 1, 1, 12, 0))


@pytest.mark.parametrize("run_at", ["2030-01-01T00:00:00Z", 1893456000, timedelta(hours=1)])
def test_run_at_must_be_a_datetime(registry: TaskRegistry, run_at: object) -> None:
    with pytest.raises(InvalidOptionError, match=f"run_at must be a datetime, got {type(run_at).__name__}"):
        run(registry, run_at=run_at)


def test_aware_run_at_is_kept(registry: TaskRegistry) -> None:
    at = datetime(2030, 1, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    row = run(registry, run_at=at)
    assert row.run_at == at
    assert row.run_at.utcoffset() == timedelta(hours=2)
    assert row.delay == timedelta(0)


def test_delay_and_run_at_together(registry: TaskRegistry) -> None:
    with pytest.raises(InvalidOptionError, match="either delay or run_at, not both"):
        run(registry, delay=60, run_at=datetime(2030, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("delay", [-1, -0.001, timedelta(seconds=-1)])
def test_negative_delay(registry: TaskRegistry, delay: object) -> None:
    with pytest.raises(InvalidOptionError, match="delay must not be negative"):
        run(registry, delay=delay)


@pytest.mark.parametrize(("delay", "message"), [
    (True, "delay must be a timedelta or seconds, got True"),
    ("60", "delay must be a timedelta or seconds, got '60'"),
    (float("nan"), "delay is out of range: nan"),
    (float("inf"), "delay is out of range: inf"),
    (1e20, "delay is out of range: 1e+20"),
])
def test_bad_delay(registry: TaskRegistry, delay: object, message: str) -> None:
    with pytest.raises(InvalidOptionError) as exc:
        run(registry, delay=delay)
    assert str(exc.value) == message


def test_unique_for_without_unique_key(registry: TaskRegistry) -> None:
    with pytest.raises(InvalidOptionError, match="unique_for needs a unique_key"):
        run(registry, unique_for=timedelta(days=1))


@pytest.mark.parametrize("unique_for", [timedelta(0), timedelta(seconds=-5), 0, -1.5])
def test_unique_for_must_be_positive(registry: TaskRegistry, unique_for: Any) -> None:
    with pytest.raises(InvalidOptionError, match="unique_for must be positive"):
        run(registry, unique_key="report:42", unique_for=unique_for)


@pytest.mark.parametrize("timeout", [0, -1, 0.0, -0.5, float("nan"), float("inf"), timedelta(0),
                                     timedelta(seconds=-3)])
def test_timeout_must_be_positive_and_finite(registry: TaskRegistry, timeout: object) -> None:
    with pytest.raises(InvalidOptionError, match="timeout must be a positive number of seconds"):
        run(registry, timeout=timeout)


@pytest.mark.parametrize("timeout", [True, "30", [30]])
def test_timeout_must_be_a_number(registry: TaskRegistry, timeout: object) -> None:
    with pytest.raises(InvalidOptionError, match=r"timeout must be seconds \(int or float\)"):
        run(registry, timeout=timeout)


@pytest.mark.parametrize(("tags", "message"), [
    ("urgent", "tags must be a list of strings, got 'urgent'"),
    (["ok", "a\x00b"], "tag must not contain NUL characters"),
    (["ok", ""], "tag must not be empty"),
    (["ok", 5], "tag must be a string, got int"),
    (["x" * 65], "tag is 65 bytes; the limit is 64"),
    (["\u00e9" * 33], "tag is 66 bytes; the limit is 64"),
    (["\ud800"], "tag is not valid Unicode (lone surrogate)"),
    ([f"t{i}" for i in range(33)], "a job may carry at most 32 tags, got 33"),
])
def test_bad_tags(registry: TaskRegistry, tags: Any, message: str) -> None:
    with pytest.raises(InvalidIdentifierError) as exc:
        run(registry, tags=tags)
    assert str(exc.value) == message


def test_tags_at_their_limits_are_accepted(registry: TaskRegistry) -> None:
    tags = (*(f"t{i:02}" for i in range(31)), "x" * 64)
    row = run(registry, tags=tags)
    assert row.tags == list(tags)
    assert isinstance(row.tags, list)


@pytest.mark.parametrize(("key", "message"), [
    ("", "unique_key must not be empty"),
    ("a\x00b", "unique_key must not contain NUL characters"),
    ("k" * 513, "unique_key is 513 bytes; the limit is 512"),
    ("\u00e9" * 257, "unique_key is 514 bytes; the limit is 512"),
    ("\udfff", "unique_key is not valid Unicode (lone surrogate)"),
    (42, "unique_key must be a string, got int"),
])
def test_bad_unique_key(registry: TaskRegistry, key: Any, message: str) -> None:
    with pytest.raises(InvalidIdentifierError) as exc:
        run(registry, unique_key=key)
    assert str(exc.value) == message


def test_unique_key_at_the_limit_and_window(registry: TaskRegistry) -> None:
    key = "\u00e9" * 256  # 512 bytes
    row = run(registry, unique_key=key, unique_for=timedelta(hours=1))
    assert (row.unique_key, row.unique_for) == (key, timedelta(hours=1))
    row = run(registry, unique_key="k", unique_for=90)
    assert row.unique_for == timedelta(seconds=90)


def test_no_unique_key_by_default(registry: TaskRegistry) -> None:
    row = run(registry)
    assert (row.unique_key, row.unique_for) == (None, None)


# --- args against the task's signature ------------------------------------------------

def test_missing_required_arg(registry: TaskRegistry) -> None:
    with pytest.raises(InvalidArgsError) as exc:
        run(registry, args={"a": 1})
    message = str(exc.value)
    assert message.startswith("args do not fit task 'math.add'(a: ")  # the name, then the signature
    assert "missing a required argument: 'b'" in message


def test_unexpected_kwarg(registry: TaskRegistry) -> None:
    with pytest.raises(InvalidArgsError, match="unexpected keyword argument 'c'"):
        run(registry, args={"a": 1, "b": 2, "c": 3})


def test_ctx_task_accepts_args_without_ctx(registry: TaskRegistry) -> None:
    row = run(registry, "email.send", {"to": "a@example.com"})
    assert json.loads(row.args) == {"to": "a@example.com"}
    run(registry, "email.send", {"to": "a@example.com", "subject": "hi"})


def test_ctx_task_still_checks_its_other_args(registry: TaskRegistry) -> None:
    expected = r"args do not fit task 'email\.send'.*missing a required argument: 'to'"
    with pytest.raises(InvalidArgsError, match=expected):
        run(registry, "email.send", {"subject": "hi"})


def test_ctx_cannot_be_passed_in_args(registry: TaskRegistry) -> None:
    with pytest.raises(InvalidArgsError, match="multiple values for argument 'ctx'"):
        run(registry, "email.send", {"ctx": {}, "to": "a@example.com"})


def test_signature_is_checked_for_a_task_object_too(registry: TaskRegistry) -> None:
    task = registry.get("math.add")
    assert task is not None
    with pytest.raises(InvalidArgsError, match="missing a required argument: 'a'"):
        prepare(JobSpec(task, {"b": 1}), registry, strict=True, max_payload_bytes=MiB)


def test_every_rejection_is_an_invalid_job_error(registry: TaskRegistry) -> None:
    bad: list[dict[str, Any]] = [
        {"task": "nope"}, {"queue": ""}, {"args": {"x": (1,)}}, {"priority": 500}, {"tags": "t"},
        {"cap": 1024, "args": {"a": "x" * 2000, "b": 0}},
    ]
    for kwargs in bad:
        with pytest.raises(InvalidJobError):
            run(registry, **kwargs)


# --- defaults and accepted values -----------------------------------------------------

def test_task_defaults_apply_when_unset(registry: TaskRegistry) -> None:
    row = run(registry, "email.send", {"to": "a@example.com"})
    assert (row.queue, row.priority, row.max_attempts, row.timeout_seconds) == ("critical", -10, 5, 30.0)
    assert (row.run_at, row.delay, row.tags, row.meta) == (None, timedelta(0), [], "{}")


def test_global_defaults_for_a_task_without_its_own(registry: TaskRegistry) -> None:
    row = run(registry)
    assert (row.task, row.queue, row.priority, row.max_attempts, row.timeout_seconds) == (
        "math.add", "default", 0, 25, 1800.0)


def test_spec_overrides_task_defaults(registry: TaskRegistry) -> None:
    row = run(registry, "email.send", {"to": "a@example.com"}, queue="bulk", priority=50,
              max_attempts=2, timeout=timedelta(minutes=2))
    assert (row.queue, row.priority, row.max_attempts, row.timeout_seconds) == ("bulk", 50, 2, 120.0)
    assert run(registry, "email.send", {"to": "x"}, timeout=7.5).timeout_seconds == 7.5
    assert run(registry, "email.send", {"to": "x"}, timeout=3).timeout_seconds == 3.0
    assert run(registry, "email.send", {"to": "x"}, priority=0).priority == 0  # 0 is not "unset"


@pytest.mark.parametrize(("delay", "expected"), [
    (1.5, timedelta(seconds=1.5)),
    (3600, timedelta(hours=1)),
    (0, timedelta(0)),
    (timedelta(minutes=5), timedelta(minutes=5)),
    (None, timedelta(0)),
])
def test_delay_as_seconds_or_timedelta(registry: TaskRegistry, delay: Any, expected: timedelta) -> None:
    row = run(registry, delay=delay)
    assert row.delay == expected
    assert isinstance(row.delay, timedelta)
    assert row.run_at is None


def test_json_native_values_round_trip_unchanged(registry: TaskRegistry) -> None:
    args = {
        "none": None, "yes": True, "no": False, "int": -3, "big": 2**70, "float": 1.5, "zero": 0.0,
        "text": "h\u00e9llo \u2603 \U0001f600 \"quoted\" back\\slash\nnew line \u2028",
        "list": [1, [2, {"k": "v"}], []],
        "dict": {"inner": {"x": [], "y": {}}, "": ""},
        "\u00fcnicode key": 1,
    }
    meta = {"tenant": "acme", "request": [1, 2]}
    row = run(registry, "any.task", args, strict=False, meta=meta)
    decoded = json.loads(row.args)
    assert decoded == args
    assert [type(v) for v in decoded.values()] == [type(v) for v in args.values()]
    assert json.loads(row.meta) == meta
    assert "\\u00e9" not in row.args  # UTF-8 text, not ASCII escapes: the byte cap counts what is stored


def test_nesting_up_to_a_hundred_levels_is_accepted(registry: TaskRegistry) -> None:
    args = {"tree": nested_lists(99)}
    row = run(registry, "any.task", args, strict=False)
    assert json.loads(row.args) == args
