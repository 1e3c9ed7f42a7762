"""The per-job log line, its level by outcome, and the worker's logger.

A job that did not succeed says why on its line: ``retryable`` and ``failed`` jobs (a
timeout is one of them, ``error=pgq.Timeout: ...``) end with ``error=TYPE: MESSAGE``, the
message cut to ``ERROR_CHARS`` characters and kept on one line; the traceback follows at
DEBUG. Only those outcomes decode their ``errors`` entry, and only when their line is
enabled: a success, DEBUG, costs one level check.

The record carries the line's fields as attributes too (``pgq.core.logs.JOB_FIELDS``;
``error_type`` and ``error_message`` None without an error), for handlers
that route or format them (``pgq.core.logs.JsonFormatter``, ``--log-format json``); the
error in them is the stored entry's, so it is redacted as the entry is.
"""

from __future__ import annotations

import json
import logging
import time

from pgq.worker.held import Outcome, Running

log = logging.getLogger("pgq.worker")
"""Every service of the worker logs here: one name to configure, as before the split."""

LOG_LEVELS = {"completed": logging.DEBUG, "failed": logging.WARNING,
              "lease-lost": logging.WARNING}
"""Level of the per-job line by outcome; others (retryable, scheduled, cancelled, handed
back) are INFO. A success is DEBUG: at INFO one line per job cost 18 % of the drain rate
(bench drain_cmp_2p against drain_cmp_2p_warning), and what an operator needs about
successes is a rate, which counters give; what went wrong stays visible by default."""


def log_job(running: Running, outcome: str, detail: str = "",
            error: dict[str, object] | None = None) -> None:
    """The job's line; ``error``: its decoded ``errors`` entry, if it has one."""
    ctx = running.ctx
    level = LOG_LEVELS.get(outcome, logging.INFO)
    if not log.isEnabledFor(level):
        return  # the arguments cost more than the check, thousands of times a second
    duration = time.monotonic() - running.started
    # The record Logger.log would make and handle, without its search of the call stack
    # for the caller (findCaller): a fifth of the line's CPU, once per job. The record
    # names this function as its origin, as that search did.
    code = log_job.__code__
    record = log.makeRecord(
        log.name, level, code.co_filename, code.co_firstlineno,
        "job=%s task=%s queue=%s attempt=%d/%d outcome=%s duration=%.3fs%s",
        (ctx.job_id, ctx.task, ctx.queue, ctx.attempt, ctx.max_attempts, outcome,
         duration, f" {detail}" if detail else ""), None, code.co_name)
    # The fields as attributes, set as makeRecord's ``extra`` would, without its check of
    # each name against the record's own (none of these is one): a fifth of the line.
    record.__dict__.update(
        job_id=ctx.job_id, task=ctx.task, queue=ctx.queue, attempt=ctx.attempt,
        max_attempts=ctx.max_attempts, outcome=outcome, duration=duration,
        error_type=None if error is None else str(error.get("type") or "Error"),
        error_message=None if error is None else str(error.get("message") or ""),
        # the attempt's trace (pgq.client.tracing), for --log-format json's trace_id
        pgq_trace_id=None if running.span is None else running.span.trace_id)
    log.handle(record)


ERROR_CHARS = 200
"""Characters of the error message on the per-job line (the stored entry keeps 2,000)."""


def log_outcome(running: Running, outcome: Outcome) -> None:
    """The line of a stored outcome, with its error when it has one."""
    if not log.isEnabledFor(LOG_LEVELS.get(outcome.state, logging.INFO)):
        return  # the cheap path: most outcomes are successes, and DEBUG is off
    entry = None if outcome.error is None else _entry(outcome.error)
    log_job(running, outcome.state, detail(outcome, entry), entry)
    if entry is not None and log.isEnabledFor(logging.DEBUG):
        trace = entry.get("traceback")
        if trace:
            log.debug("job=%s attempt=%d traceback:\n%s", outcome.job_id, outcome.attempt,
                      str(trace).rstrip(), extra={"job_id": outcome.job_id,
                                                  "attempt": outcome.attempt})


def detail(outcome: Outcome, entry: dict[str, object] | None = None) -> str:
    parts = []
    if outcome.state in ("retryable", "scheduled"):
        parts.append(f"retry_in={outcome.delay:.1f}s")
    if outcome.error is not None and outcome.state in ("retryable", "failed"):
        parts.append(error_text(outcome.error if entry is None else entry))
    return " ".join(parts)


def error_text(error: str | dict[str, object]) -> str:
    """``error=TYPE: MESSAGE`` from an ``errors`` entry (its JSON, or decoded): one line,
    the message cut to ``ERROR_CHARS``."""
    entry = _entry(error) if isinstance(error, str) else error
    message = str(entry.get("message") or "")
    if len(message) > ERROR_CHARS:
        message = message[:ERROR_CHARS] + "…"
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    kind = str(entry.get("type") or "Error")
    return f"error={kind}: {message}" if message else f"error={kind}"


def _entry(error: str) -> dict[str, object]:
    try:
        entry = json.loads(error)
    except ValueError:
        return {"message": error}
    return entry if isinstance(entry, dict) else {"message": error}
