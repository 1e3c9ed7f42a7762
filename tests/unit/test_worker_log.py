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

import pytest

import pgq
from pgq.worker import Worker
from pgq.worker.context import Context
from pgq.worker.held import Running as _Running
from pgq.worker.joblog import log_job

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
