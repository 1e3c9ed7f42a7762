"""Claim cursors (pgq.worker.claim_cursor): where each queue's next claim starts, and when a
claim walks every queue from its beginning again. No I/O: an injected clock."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta

import pytest

import pgq.worker.claim_cursor
from pgq.worker.claim_cursor import FULL_SCAN, ClaimCursors

T0 = datetime(2026, 12, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def claim(cursors: ClaimCursors, clock: Clock, queues: list[str], took: float,
          jobs: list[tuple[str, int, datetime, int]]) -> dict[str, object]:
    """One claim of ``queues`` lasting ``took`` seconds that took ``jobs``; its bounds."""
    bounds = cursors.bounds(queues)
    clock.now += took
    cursors.claimed(jobs)
    return bounds


def test_doctests() -> None:
    assert doctest.testmod(pgq.worker.claim_cursor).failed == 0


def test_first_claim_scans_in_full_then_starts_at_the_smallest_key_taken() -> None:
    clock = Clock()
    c = ClaimCursors(clock=clock)
    assert claim(c, clock, ["a", "b"], 0.01, [
        ("a", 0, T0, 9), ("a", -5, T0 + timedelta(seconds=1), 30), ("b", 0, T0, 4),
        ("a", 0, T0, 7)]) is FULL_SCAN
    # Smallest by (priority, run_at, id): priority first, whatever the id.
    assert c.start("a") == (-5, T0 + timedelta(seconds=1), 30)
    assert c.start("b") == (0, T0, 4)
    bounds = claim(c, clock, ["b", "a", "c"], 0.001, [])
    assert bounds == {"start_priorities": [0, -5, None],
                      "start_run_ats": [T0, T0 + timedelta(seconds=1), None],
                      "start_ids": [4, 30, None]}


def test_a_queue_that_got_nothing_keeps_its_start() -> None:
    clock = Clock()
    c = ClaimCursors(clock=clock)
    claim(c, clock, ["a"], 0.01, [("a", 0, T0, 5)])
    claim(c, clock, ["a"], 0.001, [])
    assert c.start("a") == (0, T0, 5)
    claim(c, clock, ["a"], 0.001, [("a", 0, T0, 8)])
    assert c.start("a") == (0, T0, 8)


def test_full_scans_are_spaced_by_their_own_cost() -> None:
    """A full scan that took d seconds is followed by bounded claims until d / share has
    passed since it began; cheap full scans come often, costly ones rarely."""
    clock = Clock()
    c = ClaimCursors(share=0.05, clock=clock)
    claim(c, clock, ["a"], 0.002, [("a", 0, T0, 1)])  # full, 2 ms: next full 40 ms after
    kinds = []
    for _ in range(10):  # claims every 5 ms
        kinds.append(claim(c, clock, ["a"], 0.001, [("a", 0, T0, 2)]) is FULL_SCAN)
        clock.now += 0.004
    assert kinds == [False] * 8 + [True, False]
    # A costly full scan (0.5 s: a head of dead entries) spaces the next one 10 s out.
    clock = Clock()
    c = ClaimCursors(share=0.05, clock=clock)
    claim(c, clock, ["a"], 0.5, [("a", 0, T0, 1)])
    clock.now += 9.4
    assert claim(c, clock, ["a"], 0.001, []) is not FULL_SCAN
    clock.now += 0.1
    assert claim(c, clock, ["a"], 0.5, []) is FULL_SCAN


def test_a_full_scan_moves_a_start_back() -> None:
    """A job that appeared before a queue's start (a higher priority, an older
    transaction) is found by the next full scan, and the start moves back to it."""
    clock = Clock()
    c = ClaimCursors(clock=clock)
    claim(c, clock, ["a"], 0.001, [("a", 0, T0, 50)])
    clock.now += 1
    assert claim(c, clock, ["a"], 0.001, [("a", -10, T0 + timedelta(hours=1), 99)]) is FULL_SCAN
    assert c.start("a") == (-10, T0 + timedelta(hours=1), 99)


def test_only_unknown_queues_means_a_full_scan() -> None:
    clock = Clock()
    c = ClaimCursors(clock=clock)
    claim(c, clock, ["a"], 0.001, [("a", 0, T0, 1)])
    assert claim(c, clock, ["b"], 0.001, []) is FULL_SCAN


def test_a_failed_claim_reports_nothing() -> None:
    """A claim that failed (no claimed() call) leaves the starts as they were."""
    clock = Clock()
    c = ClaimCursors(clock=clock)
    claim(c, clock, ["a"], 0.001, [("a", 0, T0, 3)])
    c.bounds(["a"])  # the statement failed: no claimed()
    assert c.start("a") == (0, T0, 3)
    assert c.bounds(["a"])["start_ids"] == [3]


@pytest.mark.parametrize("share", [0, -0.1, 1.5])
def test_share_must_be_a_fraction(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        ClaimCursors(share=share)


def test_forget_walks_every_queue_from_its_beginning_until_it_takes_jobs() -> None:
    clock = Clock()
    c = ClaimCursors(clock=clock)
    claim(c, clock, ["a", "b"], 0.001, [("a", 0, T0, 3), ("b", 0, T0, 4)])
    c.forget()
    assert claim(c, clock, ["a", "b"], 0.001, [("b", 0, T0, 9)]) is FULL_SCAN
    assert c.start("a") is None and c.start("b") == (0, T0, 9)
