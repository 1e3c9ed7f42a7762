"""Structured logs (issue 15 item 4) without a database: a job's records carry its
fields as attributes, ``JsonFormatter`` writes them one object per line beside time,
level, logger and message (and the trace id when a record has one), and the human line
is unchanged."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import pgq
from pgq.core.logs import HUMAN_FORMAT, JOB_FIELDS, JsonFormatter
from pgq.core.redaction import MASK
from pgq.worker.context import Context
from pgq.worker.failure import error_entry
from pgq.worker.held import Outcome, Running
from pgq.worker.joblog import log_job, log_outcome

LOGGER = "pgq.worker"
CARD = "4111 1111 1111 1111"


@pytest.fixture
def running() -> Iterator[Running]:
    app = pgq.App(pgq.Settings(database_url="postgresql://nobody@127.0.0.1:1/none"), strict=False)

    @app.task(name="pay.charge")
    def charge() -> None: ...

    ctx = Context(7, "pay.charge", "mail", 2, 5, datetime.now(UTC), "w1")
    yield Running(7, 2, charge, ctx, time.monotonic() - 0.25)
    app.close()


def _failed(exc: BaseException, state: str = "failed") -> Outcome:
    try:
        raise exc
    except BaseException as raised:
        return Outcome(7, 2, state, error=error_entry(2, "w1", raised), delay=30.0)


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def test_a_failed_jobs_record_and_its_json_line(running: Running,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log_outcome(running, _failed(ConnectionError(f"refused token=tok_9 card {CARD}")))
    (record,) = _records(caplog)
    fields = {name: getattr(record, name) for name in JOB_FIELDS}
    assert 0.25 <= fields.pop("duration") < 5
    assert fields == {"job_id": 7, "task": "pay.charge", "queue": "mail", "attempt": 2,
                      "max_attempts": 5, "outcome": "failed", "error_type": "ConnectionError",
                      "error_message": f"refused token={MASK} card {MASK}"}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc.pop("message") == record.getMessage()
    assert record.getMessage().endswith(f" error=ConnectionError: refused token={MASK} card {MASK}")
    stamp = datetime.fromisoformat(doc.pop("time"))
    assert stamp.utcoffset() == timedelta(0)
    assert abs(stamp.timestamp() - record.created) < 0.001
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", json.loads(line)["time"])
    assert 0.25 <= doc.pop("duration") < 5
    assert doc == {"level": "WARNING", "logger": LOGGER, "job_id": 7, "task": "pay.charge",
                   "queue": "mail", "attempt": 2, "max_attempts": 5, "outcome": "failed",
                   "error_type": "ConnectionError",
                   "error_message": f"refused token={MASK} card {MASK}"}
    assert "tok_9" not in line and "1111" not in line


def test_a_success_has_no_error_fields_and_the_trace_id_when_present(
        running: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log_outcome(running, Outcome(7, 2, "completed", result="1"))
    (record,) = _records(caplog)
    assert (record.outcome, record.error_type, record.error_message) == (  # type: ignore[attr-defined]
        "completed", None, None)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["outcome"] == "completed" and doc["level"] == "DEBUG"
    assert not {"error_type", "error_message", "trace_id"} & doc.keys()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    record.pgq_trace_id = trace_id  # as the tracing puts it
    assert json.loads(JsonFormatter().format(record))["trace_id"] == trace_id


def test_retry_and_traceback_records(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log_outcome(running, _failed(ValueError("password=hunter2"), "retryable"))
    line, trace = (json.loads(JsonFormatter().format(r)) for r in _records(caplog))
    assert (line["outcome"], line["level"], line["error_message"]) == (
        "retryable", "INFO", f"password={MASK}")
    assert line["message"].endswith(f"retry_in=30.0s error=ValueError: password={MASK}")
    assert (trace["job_id"], trace["attempt"], trace["level"]) == (7, 2, "DEBUG")
    assert trace["message"].startswith("job=7 attempt=2 traceback:\nTraceback")
    assert "hunter2" not in trace["message"]


def test_other_records_and_exceptions(running: Running) -> None:
    logger = logging.getLogger("pgq.test")
    try:
        raise KeyError("k")
    except KeyError:
        record = logger.makeRecord("pgq.test", logging.ERROR, __file__, 1, "a %s b", ("x",),
                                   sys.exc_info())
    doc = json.loads(JsonFormatter().format(record))
    assert doc.pop("exception").startswith("Traceback (most recent call last)")
    assert doc.pop("time")
    assert doc == {"level": "ERROR", "logger": "pgq.test", "message": "a x b"}
    odd: dict[str, Any] = {"job_id": object()}  # an application's attribute of its own
    record = logger.makeRecord("app", logging.INFO, __file__, 1, "m", (), None, extra=odd)
    assert json.loads(JsonFormatter().format(record))["job_id"].startswith("<object")


def test_a_job_line_outside_log_outcome_has_the_fields(running: Running,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log_job(running, "lease-lost", "nothing written")
    doc = json.loads(JsonFormatter().format(_records(caplog)[0]))
    assert (doc["outcome"], doc["job_id"], doc["level"]) == ("lease-lost", 7, "WARNING")
    assert "error_type" not in doc


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_configure_logging_in_a_fresh_process(log_format: str) -> None:
    """The root logger a pgq process sets up (worker, its children, scheduler)."""
    code = ("import logging; from pgq.core.logs import configure_logging; "
            f"configure_logging(logging.INFO, {log_format!r}); "
            "logging.getLogger('pgq.worker').info('job=%s done', 3)")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stderr
    if log_format == "json":
        doc = json.loads(err)
        assert (doc["level"], doc["logger"], doc["message"]) == ("INFO", "pgq.worker", "job=3 done")
    else:
        assert HUMAN_FORMAT == "%(asctime)s %(levelname)s %(name)s %(message)s", "as before"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO pgq.worker job=3 done\n",
                            err), err
