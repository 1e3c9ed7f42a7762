"""The worker's one log line per job: what an operator's handler receives.

``log_job`` (pgq.worker.joblog) makes its record itself (no search of the call stack for the caller, a
fifth of the line's cost): these tests pin that the record is the one ``Logger.log``
made before, level, message, origin, extra fields, and that logger filters and levels
still apply."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import pgq
from pgq.worker import Worker, joblog
from pgq.worker.context import Context
from pgq.worker.failure import error_entry
from pgq.worker.held import Outcome
from pgq.worker.held import Running as _Running
from pgq.worker.joblog import ERROR_CHARS, log_job, log_outcome

LOGGER = "pgq.worker"


@pytest.fixture
def worker() -> Iterator[Worker]:
    app = pgq.App(pgq.Settings(database_url="postgresql://nobody@127.0.0.1:1/none"), strict=False)

    @app.task(name="t.job")
    def job() -> None:
        return None

    yield Worker(app, worker_id="w1")
    app.close()


def _running(worker: Worker) -> _Running:
    task = worker.app.registry.get("t.job")
    assert task is not None
    ctx = Context(7, "t.job", "mail", 2, 5, datetime.now(UTC), "w1")
    return _Running(7, 2, task, ctx, time.monotonic() - 0.25)


def test_a_completed_job_is_one_debug_record_as_logger_log_made_it(
        worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log_job(_running(worker), "completed")
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.DEBUG
    assert re.fullmatch(r"job=7 task=t\.job queue=mail attempt=2/5 outcome=completed "
                        r"duration=0\.2\d\ds", record.getMessage())
    assert (record.job_id, record.task, record.queue, record.attempt, record.outcome) == (  # type: ignore[attr-defined]
        7, "t.job", "mail", 2, "completed")
    # Where Logger.log's stack search pointed: the method that logs.
    assert record.funcName == "log_job"
    assert record.pathname.endswith("pgq/worker/joblog.py")
    first = log_job.__code__.co_firstlineno
    assert first <= record.lineno < first + 20
    assert record.exc_info is None


def test_failures_are_warnings_with_their_detail(
        worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log_job(_running(worker), "lease-lost", "outcome completed discarded")
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    assert record.getMessage().endswith("s outcome completed discarded")


def test_levels_and_filters_still_apply(worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log_job(_running(worker), "completed")
    assert not [r for r in caplog.records if r.name == LOGGER], "a success is DEBUG"
    log_job(_running(worker), "retryable", "retry_in=30.0s")
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.INFO]
    caplog.clear()

    caplog.set_level(logging.DEBUG, logger=LOGGER)
    logger = logging.getLogger(LOGGER)
    drop = logging.Filter("somebody.else")
    logger.addFilter(drop)
    try:
        log_job(_running(worker), "completed")
    finally:
        logger.removeFilter(drop)
    assert not [r for r in caplog.records if r.name == LOGGER]


# --- the error on the line (issue 14 item 7) ---------------------------------------------


def _outcome(state: str, exc: BaseException, **kw: Any) -> Outcome:
    try:
        raise exc
    except BaseException as raised:
        return Outcome(7, 2, state, error=error_entry(2, "w1", raised, **kw),
                       delay=30.0 if state == "retryable" else 0.0)


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def test_retryable_and_failed_lines_name_the_error_type_and_message(
        worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log_outcome(_running(worker), _outcome("retryable", ValueError("bad input")))
    log_outcome(_running(worker), _outcome("failed", KeyError("user 7")))
    retry, failed = _lines(caplog)
    assert retry.levelno == logging.INFO and failed.levelno == logging.WARNING
    assert re.search(r" outcome=retryable duration=0\.2\d\ds retry_in=30\.0s "
                     r"error=ValueError: bad input$", retry.getMessage()), retry.getMessage()
    assert re.search(r" outcome=failed duration=0\.2\d\ds error=KeyError: 'user 7'$",
                     failed.getMessage()), failed.getMessage()
    assert "Traceback" not in caplog.text, "the traceback is DEBUG only"


def test_a_timeout_names_pgq_timeout_and_its_limit(
        worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log_outcome(_running(worker), _outcome(
        "failed", TimeoutError(), type_name="pgq.Timeout",
        message="attempt exceeded its timeout of 2s"))
    (line,) = _lines(caplog)
    assert line.getMessage().endswith(" error=pgq.Timeout: attempt exceeded its timeout of 2s")


def test_the_message_is_cut_and_kept_on_one_line(
        worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log_outcome(_running(worker), _outcome("failed", RuntimeError("first\nsecond\r\n" + "x" * 5000)))
    (line,) = _lines(caplog)
    message = line.getMessage()
    assert "\n" not in message and "\r" not in message
    assert "error=RuntimeError: first\\nsecond\\r\\nxxx" in message
    tail = message.split("error=RuntimeError: ", 1)[1]
    assert tail.endswith("…") and len(tail) <= ERROR_CHARS + 10


def test_the_traceback_follows_at_debug(worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log_outcome(_running(worker), _outcome("failed", ValueError("bad input")))
    line, trace = _lines(caplog)
    assert "error=ValueError: bad input" in line.getMessage()
    assert trace.levelno == logging.DEBUG
    assert trace.getMessage().startswith("job=7 attempt=2 traceback:\nTraceback (most recent")
    assert "ValueError: bad input" in trace.getMessage()


def test_a_success_decodes_nothing(worker: Worker, caplog: pytest.LogCaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """At INFO a completed outcome costs a level check: no detail, no JSON decoding."""
    def boom(*_: object) -> str:
        raise AssertionError("decoded on the success path")

    monkeypatch.setattr(joblog, "detail", boom)
    monkeypatch.setattr(joblog.json, "loads", boom)
    caplog.set_level(logging.INFO, logger=LOGGER)
    log_outcome(_running(worker), Outcome(7, 2, "completed", result="1"))
    assert _lines(caplog) == []
