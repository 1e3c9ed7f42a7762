"""The dead-letter hooks' runner (pgq.worker.deadletters) on its own, without a database:
the record a hook receives, a raising hook logged and not retried, a hook that blocks
costing dropped notifications (counted, warned) instead of a blocked caller, and a
bounded stop."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import pytest

import pgq
from pgq.worker.context import Context
from pgq.worker.deadletters import DeadLetterHooks, dead_letter
from pgq.worker.failure import error_entry
from tests.support.waiting import wait_until


def ctx(job_id: int = 7) -> Context:
    return Context(job_id, "mail.send", "mail", 3, 3, datetime.now(UTC), "w1")


def error(message: str = "bad input") -> str:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return error_entry(3, "w1", exc)


def test_the_record_names_the_job_and_its_last_error() -> None:
    record = dead_letter(ctx(), error())
    assert isinstance(record, pgq.DeadLetter)
    assert (record.job_id, record.task, record.queue, record.attempt, record.max_attempts,
            record.error_type, record.error_message, record.worker_id) == (
        7, "mail.send", "mail", 3, 3, "ValueError", "bad input", "w1")
    assert "Traceback" in record.traceback and "ValueError: bad input" in record.traceback
    bare = dead_letter(ctx(), None)
    assert (bare.error_type, bare.error_message, bare.traceback) == ("Error", "", "")


def test_a_raising_hook_is_logged_once_and_the_next_hooks_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    calls = 0

    def broken(record: pgq.DeadLetter) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("slack is down")

    async def recorder(record: pgq.DeadLetter) -> None:  # coroutine hooks are awaited
        seen.append(record.job_id)

    runner = DeadLetterHooks([broken, recorder])
    runner.start()
    runner.submit(ctx(1), error())
    runner.submit(ctx(2), error())
    runner.stop()
    assert seen == [1, 2] and calls == 2, "each hook once per dead letter, never retried"
    failures = [r for r in caplog.records if "dead-letter hook" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.ERROR] * 2
    assert "broken failed for job=1; not retried" in failures[0].getMessage()
    assert failures[0].exc_info is not None and "slack is down" in caplog.text


def test_a_blocked_hook_drops_and_counts_instead_of_blocking_the_caller(
        caplog: pytest.LogCaptureFixture) -> None:
    entered, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def slow(record: pgq.DeadLetter) -> None:
        entered.set()
        release.wait(30)
        seen.append(record.job_id)

    runner = DeadLetterHooks([slow], max_waiting=2)
    runner.start()
    runner.submit(ctx(1), error())
    assert entered.wait(10)
    began = time.monotonic()
    for job_id in range(2, 12):  # 2 and 3 wait; 4..11 are dropped
        runner.submit(ctx(job_id), error())
    assert time.monotonic() - began < 0.5, "submit never waits for the hooks"
    assert runner.dropped == 8
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropping further ones (job=4 first)" in warnings[0]
    release.set()
    wait_until(lambda: runner.delivered == 3, 10, "the waiting notifications")
    wait_until(lambda: any("8 notification(s) were dropped" in r.getMessage()
                           for r in caplog.records), 10, "the report of the drops")
    runner.stop()
    assert seen == [1, 2, 3]


def test_stop_is_bounded_when_a_hook_hangs(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    runner = DeadLetterHooks([lambda record: release.wait(30) and None], stop_seconds=0.2)
    runner.start()
    runner.submit(ctx(1), error())
    runner.submit(ctx(2), error())
    began = time.monotonic()
    runner.stop()
    assert time.monotonic() - began < 2
    assert "not delivered at stop" in caplog.text
    release.set()


def test_without_hooks_there_is_no_thread() -> None:
    runner = DeadLetterHooks([])
    runner.start()
    runner.submit(ctx(), error())  # nothing to tell, nothing queued
    assert runner._thread is None and runner._queue.empty()
    runner.stop()
