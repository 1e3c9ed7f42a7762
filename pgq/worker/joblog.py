"""The per-job log line, its level by outcome, and the worker's logger."""

from __future__ import annotations

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


def log_job(running: Running, outcome: str, detail: str = "") -> None:
    ctx = running.ctx
    level = LOG_LEVELS.get(outcome, logging.INFO)
    if not log.isEnabledFor(level):
        return  # the arguments cost more than the check, thousands of times a second
    # The record Logger.log would make and handle, without its search of the call stack
    # for the caller (findCaller): a fifth of the line's CPU, once per job. The record
    # names this function as its origin, as that search did.
    code = log_job.__code__
    log.handle(log.makeRecord(
        log.name, level, code.co_filename, code.co_firstlineno,
        "job=%s task=%s queue=%s attempt=%d/%d outcome=%s duration=%.3fs%s",
        (ctx.job_id, ctx.task, ctx.queue, ctx.attempt, ctx.max_attempts, outcome,
         time.monotonic() - running.started, f" {detail}" if detail else ""),
        None, code.co_name, {"job_id": ctx.job_id, "task": ctx.task, "queue": ctx.queue,
                             "attempt": ctx.attempt, "outcome": outcome}))


def detail(outcome: Outcome) -> str:
    if outcome.state in ("retryable", "scheduled"):
        return f"retry_in={outcome.delay:.1f}s"
    return ""
