"""Log formats of pgq's processes: the human line (the default) and JSON, one object per
line (``--log-format json``), both plain ``logging`` formatters on the root logger.

pgq's per-job records carry their fields as attributes (``JOB_FIELDS``, set by
``pgq.worker.joblog``); ``JsonFormatter`` writes them beside time, level, logger and
message, so an application that configures logging itself can use it on any handler:
``handler.setFormatter(pgq.JsonFormatter())``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
"""The default line, as it has always been."""

JOB_FIELDS = ("job_id", "task", "queue", "attempt", "max_attempts", "outcome", "duration",
              "error_type", "error_message")
"""Attributes of a job's records, written when present and not None."""

TRACE_ATTRIBUTE = "pgq_trace_id"
"""The record attribute holding the OpenTelemetry trace id of a job's attempt, if any;
written as ``trace_id``."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (ISO 8601, UTC, milliseconds),
    ``level``, ``logger``, ``message``, the job fields present on the record, ``trace_id``
    when the record has one, ``exception`` (the formatted traceback) when it has one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in JOB_FIELDS:
            value = fields.get(name)
            if value is not None:
                doc[name] = round(value, 6) if name == "duration" else value
        trace = fields.get(TRACE_ATTRIBUTE)
        if trace:
            doc["trace_id"] = trace
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        # default=str: an application's odd attribute must not cost its line
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure_logging(level: int, log_format: str = "text") -> None:
    """The root logger of a pgq process (``pgq worker``, its children, ``pgq
    scheduler``): to stderr, in the human format or JSON. Like ``logging.basicConfig``,
    it leaves a root logger that already has handlers alone."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    if log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format=HUMAN_FORMAT)
