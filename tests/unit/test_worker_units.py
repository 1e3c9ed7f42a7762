"""The worker's pure parts, without I/O: queue specs and slot allocation, retry backoff,
failure sanitising, and the outcomes a task raises."""

from __future__ import annotations

import doctest
import json
import random
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pgq
from pgq.core.backoff import DEFAULT_STEPS, Backoff
from pgq.core.errors import ConfigError, PgqError
from pgq.core.outcomes import Cancel, Fail, JobOutcome, Retry, Snooze
from pgq.worker.failure import MAX_MESSAGE_CHARS, MAX_TRACEBACK_CHARS, clean_text, error_entry
from pgq.worker.queues import QueueSpec, Turns, allocate, parse_queues

# --- parse_queues ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("default", [QueueSpec("default", 1, None)]),
    ("critical=6,default=3,bulk=1:4",
     [QueueSpec("critical", 6), QueueSpec("default", 3), QueueSpec("bulk", 1, 4)]),
    ("bulk:4", [QueueSpec("bulk", 1, 4)]),
    (" a=2 , b ", [QueueSpec("a", 2), QueueSpec("b", 1)]),
    ("emails.send-v2_x=10:20", [QueueSpec("emails.send-v2_x", 10, 20)]),
    ("_private,0day", [QueueSpec("_private"), QueueSpec("0day")]),
    ("q" * 63, [QueueSpec("q" * 63)]),
])
def test_parse_queues_valid(text: str, expected: list[QueueSpec]) -> None:
    assert parse_queues(text) == expected


def test_parse_queues_is_public_and_documented_example_holds() -> None:
    assert pgq.parse_queues is parse_queues
    assert [(q.name, q.weight, q.cap) for q in parse_queues("critical=6,default=3,bulk=1")] == [
        ("critical", 6, None), ("default", 3, None), ("bulk", 1, None)]


@pytest.mark.parametrize("text", [
    # bad names
    "a b", "-bulk", ".bulk", "bülk", "q" * 64, "crit/ical", "a;b",
    # weight / cap below 1
    "a=0", "a:0", "a=0:3", "a=-1",
    # garbage
    "", ",", "a,", ",a", "a,,b", "=3", ":4", "a=", "a:", "a=x", "a==2", "a=1.5",
    "a=2:3:4", "a:2=3", "a=2;b=3", "a = 2",
])
def test_parse_queues_rejects_bad_specs(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_queues(text)
    assert isinstance(info.value, PgqError)


@pytest.mark.parametrize("text", ["a,b,a", "a=1,a=2", "bulk:2,critical,bulk=3:1"])
def test_parse_queues_rejects_a_queue_listed_twice(text: str) -> None:
    with pytest.raises(ConfigError, match="twice"):
        parse_queues(text)


# --- allocate -------------------------------------------------------------------------


def test_allocate_documented_examples() -> None:
    q = parse_queues("critical=6,default=3,bulk=1")
    assert allocate(q, 10, {}) == {"critical": 6, "default": 3, "bulk": 1}
    assert allocate(q, 10, {"bulk": 1}, {"critical": False, "default": False, "bulk": True}) == {
        "critical": 1, "default": 1, "bulk": 7}
    assert allocate(parse_queues("critical,bulk=1:8"), 10, {"bulk": 8}) == {
        "critical": 2, "bulk": 0}


@pytest.mark.parametrize(("spec", "concurrency", "running", "expected"), [
    ("a=3,b=1", 8, {}, {"a": 6, "b": 2}),
    ("a=3,b=1", 9, {}, {"a": 7, "b": 2}),  # the remainder is lent to the lowest load/weight
    ("a=1,b=1,c=1", 10, {}, {"a": 4, "b": 3, "c": 3}),
    ("a=3,b=1", 8, {"a": 1, "b": 1}, {"a": 5, "b": 1}),
])
def test_all_hungry_weighted_shares_fill_every_free_slot(
        spec: str, concurrency: int, running: dict[str, int], expected: dict[str, int]) -> None:
    out = allocate(parse_queues(spec), concurrency, running)
    assert out == expected
    assert sum(out.values()) == concurrency - sum(running.values())


def test_running_jobs_reduce_a_queues_share() -> None:
    q = parse_queues("a=3,b=1")
    assert allocate(q, 8, {"a": 4}) == {"a": 2, "b": 2}
    assert allocate(q, 8, {"a": 6}) == {"a": 0, "b": 2}
    assert allocate(q, 8, {"a": 6, "b": 1}) == {"a": 0, "b": 1}
    assert allocate(q, 8, {"a": 6, "b": 2}) == {"a": 0, "b": 0}
    assert allocate(q, 8, {"a": 9}) == {"a": 0, "b": 0}  # over-full: nothing, never negative
    # a queue running more than its share leaves the other queue's share intact
    assert allocate(q, 8, {"b": 5}) == {"a": 3, "b": 0}


def test_an_idle_queue_keeps_exactly_one_probe_slot() -> None:
    q = parse_queues("critical=6,default=3,bulk=1")
    idle_critical = {"critical": False, "default": True, "bulk": True}
    out = allocate(q, 10, {}, idle_critical)
    assert out["critical"] == 1
    assert out["default"] + out["bulk"] == 9  # the rest of critical's share is lent
    # however many slots are free, an idle queue is offered one, not its share
    for concurrency in (10, 20, 100):
        assert allocate(q, concurrency, {}, idle_critical)["critical"] == 1
    # every queue idle: one probe each, nothing lent
    assert allocate(q, 10, {}, dict.fromkeys(("critical", "default", "bulk"), False)) == {
        "critical": 1, "default": 1, "bulk": 1}


def test_caps_hold_when_slots_are_lent() -> None:
    q = parse_queues("a,b=1:3")
    # a is idle: b may borrow a's slots, but only up to its cap
    assert allocate(q, 10, {}, {"a": False, "b": True}) == {"a": 1, "b": 3}
    assert allocate(q, 10, {"b": 2}, {"a": False, "b": True}) == {"a": 1, "b": 1}
    assert allocate(q, 10, {"b": 3}, {"a": False, "b": True}) == {"a": 1, "b": 0}
    # a cap below a queue's weighted share wins over the share
    assert allocate(parse_queues("a=1,b=9:2"), 10, {}) == {"a": 8, "b": 2}


def test_strict_gives_everything_to_the_first_hungry_queue() -> None:
    q = parse_queues("a,b,c")
    assert allocate(q, 10, {}, strict=True) == {"a": 10, "b": 0, "c": 0}
    assert allocate(q, 10, {"a": 4}, {"a": True, "b": True}, strict=True) == {
        "a": 6, "b": 0, "c": 0}
    # a capped first queue takes what its cap allows; later queues still wait while it has work
    assert allocate(parse_queues("a:2,b,c"), 10, {}, {"a": True}, strict=True) == {
        "a": 2, "b": 0, "c": 0}
    # ... and once it has no work, it keeps one probe slot and the next queue gets the rest
    assert allocate(parse_queues("a:2,b,c"), 10, {}, {"a": False, "b": True}, strict=True) == {
        "a": 1, "b": 9, "c": 0}


def test_strict_serves_the_next_queue_when_the_first_has_no_work() -> None:
    out = allocate(parse_queues("a,b,c"), 10, {}, {"a": False, "b": True}, strict=True)
    assert out["a"] <= 1
    assert out["b"] >= 9


_ZERO_SHARE_BUG = (
    "BUG pgq/queues.py allocate: a queue whose weighted share rounds down to 0 gets no probe "
    "slot when idle (with every queue idle, possibly nothing at all is allocated), and "
    "Worker._claim only refreshes hunger for queues it asked, so that queue is never claimed "
    "from again")


@pytest.mark.parametrize(("spec", "concurrency", "idle"), [
    ("critical=6,default=3,bulk=1", 4, ["bulk"]),
    ("critical=6,default=3,bulk=1", 4, ["critical", "default", "bulk"]),
])
def test_an_idle_queue_with_a_zero_share_is_still_probed(
        spec: str, concurrency: int, idle: list[str]) -> None:
    q = parse_queues(spec)
    out = allocate(q, concurrency, {}, {s.name: s.name not in idle for s in q})
    assert all(out[name] == 1 for name in idle)


def test_some_queue_is_asked_when_every_queue_is_idle() -> None:
    # concurrency 1, two queues: both shares are 0, so nothing is ever claimed again
    assert sum(allocate(parse_queues("a,b"), 1, {}, {"a": False, "b": False}).values()) >= 1


# Property-style: any specs, running counts and hunger flags.

_queue_specs = st.lists(
    st.tuples(st.integers(1, 10), st.none() | st.integers(1, 20)), min_size=1, max_size=6,
).map(lambda items: [QueueSpec(f"q{i}", w, c) for i, (w, c) in enumerate(items)])


@st.composite
def _allocation_inputs(draw: st.DrawFn) -> tuple[Any, ...]:
    specs = draw(_queue_specs)
    concurrency = draw(st.integers(1, 64))
    running = {s.name: draw(st.integers(0, concurrency)) for s in specs
               if draw(st.booleans())}
    hungry = {s.name: draw(st.booleans()) for s in specs if draw(st.booleans())}
    return specs, concurrency, running, hungry, draw(st.booleans())


@settings(max_examples=1000, deadline=None)
@given(_allocation_inputs())
def test_allocate_invariants(inputs: tuple[Any, ...]) -> None:
    specs, concurrency, running, hungry, strict = inputs
    out = allocate(specs, concurrency, running, hungry, strict=strict)
    free = max(0, concurrency - sum(running.values()))
    assert set(out) == {s.name for s in specs}
    assert all(n >= 0 for n in out.values())
    assert sum(out.values()) <= free  # never more than concurrency - running
    for s in specs:
        if s.cap is not None:  # caps hold, lending included
            assert out[s.name] <= max(0, s.cap - running.get(s.name, 0))
        if not hungry.get(s.name, True):
            assert out[s.name] <= 1  # an idle queue is offered at most its probe slot
    if strict:
        # everything goes to one queue: the first hungry one (earlier ones are idle)
        first_hungry = next((i for i, s in enumerate(specs) if hungry.get(s.name, True)), None)
        if first_hungry is not None:
            assert all(out[s.name] == 0 for s in specs[first_hungry + 1:])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(1, 10), min_size=1, max_size=6), st.integers(1, 64), st.data())
def test_weighted_all_hungry_uncapped_fills_every_free_slot(
        weights: list[int], concurrency: int, data: st.DataObject) -> None:
    specs = [QueueSpec(f"q{i}", w) for i, w in enumerate(weights)]
    running = {s.name: data.draw(st.integers(0, 3)) for s in specs}
    out = allocate(specs, concurrency, running)
    assert sum(out.values()) == max(0, concurrency - sum(running.values()))
    if not any(running.values()):
        # each queue gets at least the floor of its weighted share
        total = sum(weights)
        for s in specs:
            assert out[s.name] >= concurrency * s.weight // total


# Many rounds: the allocator's turns carried from one claim round to the next
# (issue 12, defect 1: twenty queues on ten slots, and the last ten got nothing).


def _whole_share(specs: list[QueueSpec], concurrency: int, spec: QueueSpec) -> int:
    return concurrency * spec.weight // sum(s.weight for s in specs)


def _bound(specs: list[QueueSpec], q: QueueSpec, *, probes: bool = False) -> int:
    """The wait docs/worker.md states, in turns, for a queue whose whole share is 0."""
    return sum(-(-p.weight // q.weight) for p in specs if p is not q) + (1 if probes else 0)


def _rounds(specs: list[QueueSpec], concurrency: int, rounds: int, rnd: random.Random,
            finish: float, hungry: Callable[[int], dict[str, bool]] | None = None
            ) -> Iterator[tuple[dict[str, int], dict[str, int], dict[str, bool]]]:
    """Claim rounds of one worker: each running job finishes with probability ``finish``
    before the round; yields (running before the round, allocation, hunger flags)."""
    turns = Turns()
    running = {s.name: 0 for s in specs}
    for r in range(rounds):
        for name, n in running.items():
            running[name] = sum(1 for _ in range(n) if rnd.random() >= finish)
        flags = hungry(r) if hungry else {}
        out = allocate(specs, concurrency, running, flags, turns=turns, rotation=r)
        yield dict(running), out, flags
        for name, n in out.items():
            running[name] += n


def _turns_given(specs: list[QueueSpec], concurrency: int, running: dict[str, int],
                 out: dict[str, int], flags: dict[str, bool]) -> int:
    """Slots handed out by turn this round: beyond whole shares and non-shared probes."""
    idle = [s for s in specs if not flags.get(s.name, True)]
    free = concurrency - sum(running.values())
    scarce = bool(idle) and free <= len(idle)
    turns = sum(out[s.name] for s in idle) if scarce else 0
    total = sum(s.weight for s in specs)
    for s in specs:
        if flags.get(s.name, True):
            owed = max(0, concurrency * s.weight // total - running[s.name])
            turns += max(0, out[s.name] - owed)
    return turns


@st.composite
def _more_queues_than_slots(draw: st.DrawFn) -> tuple[list[QueueSpec], int]:
    concurrency = draw(st.integers(1, 12))
    weights = draw(st.lists(st.integers(1, 4), min_size=concurrency + 1,
                            max_size=max(concurrency + 1, 24)))
    return [QueueSpec(f"q{i}", w) for i, w in enumerate(weights)], concurrency


@settings(max_examples=150, deadline=None)
@given(_more_queues_than_slots(), st.sampled_from([0.05, 0.3, 1.0]), st.integers(0, 2**32))
def test_every_hungry_queue_gets_a_slot_within_the_stated_bound(
        queues: tuple[list[QueueSpec], int], finish: float, seed: int) -> None:
    """More queues than slots, all with work: every queue whose share is under one slot
    is served within ``sum(ceil(w_p / w_q))`` turns (a queue never served has waited
    for every turn given)."""
    specs, concurrency = queues
    bound = {s.name: _bound(specs, s) for s in specs
             if _whole_share(specs, concurrency, s) == 0}
    waited = {s.name: 0 for s in specs}
    for running, out, flags in _rounds(specs, concurrency, 200, random.Random(seed), finish):
        given_turns = _turns_given(specs, concurrency, running, out, flags)
        for name, limit in bound.items():
            waited[name] = 0 if out[name] else waited[name] + given_turns
            assert waited[name] <= limit, f"{name} waited {waited[name]} turns"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.none() | st.integers(1, 3)), min_size=2,
                max_size=24),
       st.integers(1, 12), st.sampled_from([0.05, 0.3, 1.0]), st.integers(0, 2**32))
def test_queues_waking_and_emptying_still_get_turns_within_the_bound(
        items: list[tuple[int, int | None]], concurrency: int, finish: float,
        seed: int) -> None:
    """Queues go idle and come back (probes shared while slots are scarce), caps stop
    some: over every stretch in which a queue has work, room under its cap and a whole
    share of 0, it is served within the bound plus the probes' turn."""
    specs = [QueueSpec(f"q{i}", w, c) for i, (w, c) in enumerate(items)]
    rnd = random.Random(seed)
    flags_by_round: list[dict[str, bool]] = []

    def hungry(r: int) -> dict[str, bool]:
        if not flags_by_round or rnd.random() < 0.1:
            flags_by_round.append({s.name: rnd.random() < 0.7 for s in specs})
        else:
            flags_by_round.append(flags_by_round[-1])
        return flags_by_round[-1]

    bound = {s.name: _bound(specs, s, probes=True) for s in specs
             if _whole_share(specs, concurrency, s) == 0}
    waited = {s.name: 0 for s in specs}
    for running, out, flags in _rounds(specs, concurrency, 200, rnd, finish, hungry):
        given_turns = _turns_given(specs, concurrency, running, out, flags)
        for s in specs:
            room = s.cap is None or running[s.name] < s.cap
            if out[s.name] or not flags[s.name] or not room:
                waited[s.name] = 0
            elif s.name in bound:
                waited[s.name] += given_turns
                assert waited[s.name] <= bound[s.name], f"{s.name} waited {waited[s.name]} turns"


@pytest.mark.parametrize(("spec", "concurrency"), [
    (",".join(f"q{i}" for i in range(20)), 10),  # the issue's shape
    (",".join(f"q{i}={1 + i % 2}" for i in range(20)), 10),  # half a slot and a third
    ("heavy=10," + ",".join(f"light{i}" for i in range(19)), 10),  # 3.45 slots and 0.34
    ("critical=6,default=3,bulk=1", 4),  # 2.4, 1.2 and 0.4 slots
    ("a=3,b=1", 9),  # 6.75 and 2.25 slots
    ("a=5,b=3,c=1", 7),
])
@pytest.mark.parametrize("finish", [0.1, 0.5])
def test_weights_hold_in_the_long_run(spec: str, concurrency: int, finish: float) -> None:
    """Every queue with work, jobs of random length: each queue's share of the starts
    (and of the running slots) is its weight's, fractional shares included."""
    specs = parse_queues(spec)
    total = sum(s.weight for s in specs)
    starts = {s.name: 0 for s in specs}
    held = {s.name: 0 for s in specs}
    for running, out, _ in _rounds(specs, concurrency, 6000, random.Random(7), finish):
        for name, n in out.items():
            starts[name] += n
            held[name] += running[name] + n
    for s in specs:
        expected = s.weight / total
        for what, counts in (("starts", starts), ("slots", held)):
            got = counts[s.name] / sum(counts.values())
            assert abs(got - expected) <= 0.1 * expected + 0.002, (
                f"{s.name}: {got:.3f} of the {what}, weight gives {expected:.3f}")


@settings(max_examples=300, deadline=None)
@given(_queue_specs, st.integers(1, 16), st.integers(0, 2**32))
def test_caps_and_probes_hold_over_many_rounds(
        specs: list[QueueSpec], concurrency: int, seed: int) -> None:
    rnd = random.Random(seed)
    turns = Turns()
    for r in range(60):
        running = {s.name: rnd.randint(0, concurrency) // 2 for s in specs}
        hungry = {s.name: rnd.random() < 0.6 for s in specs}
        out = allocate(specs, concurrency, running, hungry, turns=turns, rotation=r)
        assert sum(out.values()) <= max(0, concurrency - sum(running.values()))
        for s in specs:
            if s.cap is not None:
                assert running[s.name] + out[s.name] <= max(s.cap, running[s.name])
            if not hungry[s.name]:
                assert out[s.name] <= 1


def _strict_before_issue_12(specs: list[QueueSpec], concurrency: int,
                            running: dict[str, int], hungry: dict[str, bool]
                            ) -> dict[str, int]:
    """Strict allocation as it was before the turns (the oracle: it must not change)."""
    free = concurrency - sum(running.get(s.name, 0) for s in specs)
    out = {s.name: 0 for s in specs}
    if free <= 0:
        return out
    for spec in specs:
        room = free if spec.cap is None else max(0, spec.cap - running.get(spec.name, 0))
        if hungry.get(spec.name, True):
            out[spec.name] = min(free, room)
            break
        if free > 0 and room > 0:
            out[spec.name] = 1
            free -= 1
    return out


@settings(max_examples=500, deadline=None)
@given(_allocation_inputs())
def test_strict_mode_is_unchanged(inputs: tuple[Any, ...]) -> None:
    specs, concurrency, running, hungry, _ = inputs
    turns = Turns()
    expected = _strict_before_issue_12(specs, concurrency, running, hungry)
    for rotation in range(3):
        assert allocate(specs, concurrency, running, hungry, strict=True, turns=turns,
                        rotation=rotation) == expected
    assert turns == Turns()  # strict mode keeps no turns


def test_queues_module_examples() -> None:
    """The doctests of pgq.worker.queues (allocate's examples included) hold."""
    import pgq.worker.queues

    assert doctest.testmod(pgq.worker.queues).failed == 0


# --- Backoff --------------------------------------------------------------------------


def test_default_backoff_steps_without_jitter() -> None:
    b = Backoff(jitter=0)
    assert DEFAULT_STEPS == (30, 300, 1800, 7200, 21600, 43200, 86400)
    assert [b.delay(n) for n in range(1, 8)] == [30.0, 300.0, 1800.0, 7200.0, 21600.0,
                                                 43200.0, 86400.0]
    assert {b.delay(n) for n in range(8, 60)} == {86400.0}  # the last step repeats
    assert b.delay(10_000) == 86400.0
    assert b.delay(0) == b.delay(-3) == 30.0  # attempts below 1 count as the first
    assert b.schedule(9) == [30.0, 300.0, 1800.0, 7200.0, 21600.0, 43200.0, 86400.0,
                             86400.0, 86400.0]
    assert all(isinstance(d, float) for d in b.schedule(9))


def test_default_jitter_stays_within_15_percent() -> None:
    b = Backoff()
    assert b.jitter == 0.15
    rng = random.Random(1234)
    for attempt, raw in enumerate([*DEFAULT_STEPS, 86400], start=1):
        samples = [b.delay(attempt, rng) for _ in range(2000)]
        assert all(raw * 0.85 <= s <= raw * 1.15 for s in samples)
        # it really jitters, across (nearly) the whole band, centred on the step
        assert min(samples) < raw * 0.87 and max(samples) > raw * 1.13
        assert abs(sum(samples) / len(samples) - raw) < raw * 0.02
    # without an rng, the module-level random is used, within the same band
    assert all(25.5 <= b.delay(1) <= 34.5 for _ in range(1000))


def test_jitter_band_is_configurable() -> None:
    rng = random.Random(7)
    samples = [Backoff(jitter=0.5).delay(2, rng) for _ in range(2000)]
    assert all(150 <= s <= 450 for s in samples)
    assert min(samples) < 170 and max(samples) > 430


def test_base_factor_cap_form() -> None:
    b = Backoff(base=1, factor=2, cap=10, jitter=0)
    assert b.steps is None  # base replaces the steps
    assert b.schedule(6) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.delay(10_000) == 10.0  # huge attempts do not overflow
    assert Backoff(base=5, factor=1, jitter=0).schedule(4) == [5.0, 5.0, 5.0, 5.0]
    assert Backoff(base=10, factor=3, jitter=0).schedule(3) == [10.0, 30.0, 90.0]
    assert Backoff(base=0.5, factor=10, cap=86400, jitter=0).delay(99) == 86400.0
    rng = random.Random(3)
    assert all(8.5 <= Backoff(base=10, factor=2, jitter=0.15).delay(1, rng) <= 11.5
               for _ in range(500))


def test_custom_steps() -> None:
    b = Backoff(steps=(1, 2.5), jitter=0)
    assert b.schedule(4) == [1.0, 2.5, 2.5, 2.5]


@pytest.mark.parametrize("kwargs", [
    {"base": 0}, {"base": -1}, {"base": 1, "factor": 0.5}, {"base": 1, "factor": 0},
    {"jitter": -0.01}, {"jitter": 1}, {"jitter": 1.5}, {"jitter": float("nan")},
])
def test_backoff_rejects_invalid_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_backoff_rejects_empty_steps() -> None:
    with pytest.raises(ValueError):
        Backoff(steps=())


# --- failure: clean_text and error_entry ----------------------------------------------

_MARKER = re.compile(r"\n… \[(\d+) characters cut\] …\n")


def test_clean_text_replaces_nul() -> None:
    assert clean_text("a\x00b\x00", 100) == "a\\x00b\\x00"


def test_clean_text_replaces_lone_surrogates() -> None:
    out = clean_text("a\ud800b\udfffc", 100)
    assert out == "a?b?c"
    out.encode("utf-8")  # strictly valid now
    assert clean_text("emoji \U0001F600 stays", 100) == "emoji \U0001F600 stays"


def test_clean_text_keeps_short_text() -> None:
    assert clean_text("x" * 2000, 2000) == "x" * 2000


def test_clean_text_truncates_ten_megabytes_keeping_head_and_tail() -> None:
    text = "HEAD-" + "m" * 10_000_000 + "-TAIL"
    out = clean_text(text, MAX_MESSAGE_CHARS)
    marker = _MARKER.search(out)
    assert marker is not None
    assert int(marker[1]) == len(text) - MAX_MESSAGE_CHARS
    assert len(out) == MAX_MESSAGE_CHARS + len(marker[0])
    assert out.startswith("HEAD-" + "m" * 995)
    assert out.endswith("m" * 995 + "-TAIL")


def test_clean_text_nul_escapes_do_not_break_the_cap() -> None:
    """Escaping a NUL adds three characters; that must not push the text past the cap."""
    out = clean_text("x\x00y" * 3_500_000, MAX_MESSAGE_CHARS)
    assert "\x00" not in out
    marker = _MARKER.search(out)
    assert marker is not None
    assert len(out) <= MAX_MESSAGE_CHARS + len(marker[0])
    out = clean_text("\x00" * 3000, MAX_MESSAGE_CHARS)
    assert "\x00" not in out
    assert len(out) <= MAX_MESSAGE_CHARS + len(_MARKER.search(out)[0])  # type: ignore[index]


class _Broken(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class _CustomError(Exception):
    pass


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def _assert_storable(value: Any) -> None:
    """What PostgreSQL's jsonb accepts: no NUL in any string, strictly valid UTF-8."""
    if isinstance(value, str):
        assert "\x00" not in value
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_storable(k)
            _assert_storable(v)
    elif isinstance(value, list):
        for v in value:
            _assert_storable(v)


# A JSON \u0000 escape: an odd number of backslashes before "u0000" (an even number is an
# escaped backslash followed by the plain text "u0000", which jsonb accepts).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _entry(attempt: int, exc: BaseException | None = None, **kw: Any) -> dict[str, Any]:
    text = error_entry(attempt, "host:1:abc", exc, **kw)
    text.encode("utf-8")  # the JSON itself is valid UTF-8 ...
    assert not _JSON_NUL.search(text)  # ... with no NUL escape for jsonb to reject
    entry = json.loads(text)
    _assert_storable(entry)
    return entry


def test_error_entry_fields() -> None:
    entry = _entry(3, _raised(ValueError("bad value")))
    assert entry["attempt"] == 3
    assert entry["type"] == "ValueError"  # builtins. prefix dropped
    assert entry["message"] == "bad value"
    assert "Traceback" in entry["traceback"] and "ValueError: bad value" in entry["traceback"]
    assert entry["worker"] == "host:1:abc"
    assert "at" not in entry  # the database adds it
    assert _entry(1, _CustomError("x"))["type"] == f"{__name__}._CustomError"
    assert _entry(1, Cancel("stop"))["type"] == "pgq.outcomes.Cancel"


def test_error_entry_overrides_and_no_exception() -> None:
    entry = _entry(2, TimeoutError(), type_name="pgq.Timeout",
                   message="attempt exceeded its timeout of 0.2s")
    assert entry["type"] == "pgq.Timeout"
    assert entry["message"] == "attempt exceeded its timeout of 0.2s"
    entry = _entry(1, type_name="pgq.WorkerLost", message="lease expired")
    assert (entry["type"], entry["message"], entry["traceback"]) == (
        "pgq.WorkerLost", "lease expired", "")
    assert _entry(1)["type"] == "Error"


def test_error_entry_survives_nul_and_ten_megabytes() -> None:
    message = "start\x00" + "\x00big" * 2_500_000 + "\x00end"
    entry = _entry(1, _raised(RuntimeError(message)))
    msg = entry["message"]
    assert "\\x00" in msg
    marker = _MARKER.search(msg)
    assert marker is not None
    assert len(msg) <= MAX_MESSAGE_CHARS + len(marker[0])
    assert msg.startswith("start\\x00") and msg.endswith("\\x00end")
    tb_marker = _MARKER.search(entry["traceback"])
    assert tb_marker is not None
    assert len(entry["traceback"]) <= MAX_TRACEBACK_CHARS + len(tb_marker[0])


def test_error_entry_with_lone_surrogates() -> None:
    entry = _entry(1, _raised(ValueError("bad \ud800 byte \udcff")))
    assert entry["message"] == "bad ? byte ?"


def test_error_entry_with_a_broken_str_does_not_raise() -> None:
    entry = _entry(4, _raised(_Broken()))
    assert entry["attempt"] == 4
    assert entry["type"] == f"{__name__}._Broken"
    assert entry["message"] == "<unprintable _Broken>"


def test_error_entry_with_an_exception_that_was_never_raised() -> None:
    entry = _entry(1, KeyError("k"))
    assert entry["type"] == "KeyError"
    assert entry["message"] == "'k'"


_nasty_text = st.lists(
    st.characters() | st.sampled_from(["\x00", "\ud800", "\udfff", "\\", "\\u0000", '"', "\n"]),
    max_size=50,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(_nasty_text, _nasty_text, st.integers(1, 1000))
def test_error_entry_is_always_storable_json(message: str, type_name: str, attempt: int) -> None:
    entry = _entry(attempt, _raised(RuntimeError(message)))
    assert entry["attempt"] == attempt
    entry = _entry(attempt, type_name=type_name, message=message)
    assert len(entry["message"]) <= len(message) * 4


@settings(max_examples=300, deadline=None)
@given(_nasty_text, st.integers(10, 60))
def test_clean_text_property(text: str, limit: int) -> None:
    out = clean_text(text, limit)
    _assert_storable(out)
    marker = _MARKER.search(out)
    assert len(out) <= limit + (len(marker[0]) if marker else 0)


# --- outcomes -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Retry, Snooze])
def test_delay_from_seconds_or_timedelta(cls: type[Retry] | type[Snooze]) -> None:
    assert cls(5).delay == 5.0
    assert cls(0).delay == 0.0
    assert cls(2.5).delay == 2.5
    assert cls(timedelta(minutes=2)).delay == 120.0
    assert cls(timedelta(milliseconds=1500)).delay == 1.5
    assert isinstance(cls(1), JobOutcome) and isinstance(cls(1), Exception)


@pytest.mark.parametrize("cls", [Retry, Snooze])
@pytest.mark.parametrize("delay", [-1, -0.001, timedelta(seconds=-1), float("nan")])
def test_negative_delay_rejected(cls: type[Retry] | type[Snooze], delay: Any) -> None:
    with pytest.raises(ValueError, match="between 0 and"):
        cls(delay)


def test_outcome_messages() -> None:
    assert str(Retry(42)) == "retry requested in 42s"
    assert str(Retry(1, "rate limited")) == "rate limited"
    assert str(Snooze(timedelta(minutes=5))) == "snoozed for 300s"
    assert str(Cancel("no longer wanted")) == "no longer wanted"
    assert str(Fail("bad input")) == "bad input"
    for cls in (Retry, Snooze, Cancel, Fail):
        assert issubclass(cls, JobOutcome)
        assert getattr(pgq, cls.__name__) is cls


@pytest.mark.parametrize("delay", [float("inf"), 1e15, timedelta.max])
def test_unstorable_delay_rejected(delay: Any) -> None:
    with pytest.raises(ValueError):
        Retry(delay)


def test_a_heartbeat_miss_for_a_job_whose_outcome_is_being_stored_is_not_a_lost_lease() -> None:
    """The heartbeat that runs while a job's outcome commits no longer finds the job
    running; that is the outcome landing, not the lease lost (it logged "lease lost" and
    forgot completed jobs). The fenced write decides instead."""
    import time as _time

    from pgq.worker import Worker
    from pgq.worker.context import Context
    from pgq.worker.held import Running as _Running

    app = pgq.App(pgq.Settings(database_url="postgresql://localhost/x"), strict=False)
    task = app.task(name="unit.noop")(lambda: None)
    worker = Worker(app)
    ctx = Context(7, task.name, "default", 1, 25, None, worker.id, _transaction=None)
    running = _Running(7, 1, task, ctx, _time.monotonic())
    worker.held.add(running, None)
    running.decided = True
    worker.lease_lost(7)
    assert worker.held.get(7) is running and not running.lost
    running.decided = False
    worker.lease_lost(7)
    assert 7 not in worker.held and running.lost and ctx.cancelled.is_set()
