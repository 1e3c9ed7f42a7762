"""Outcomes a task raises on purpose. They are not errors of pgq or of the task: each
tells the worker what to do with the job instead of the default (return → completed,
any other exception → retry with backoff, then failed).

    JobOutcome
    ├── Retry(delay)      run again after ``delay`` seconds; spends an attempt
    ├── Snooze(delay)     run again after ``delay`` seconds; spends no attempt
    ├── Cancel(reason)    stop now and never retry → cancelled
    └── Fail(reason)      fail now without retrying → failed (the dead letter)
"""

from __future__ import annotations

from datetime import timedelta

MAX_DELAY_SECONDS = 10 * 365 * 86400.0
"""Ten years: longer delays are almost certainly unit mistakes, and PostgreSQL's
timestamps would overflow on some."""


def _seconds(delay: float | timedelta) -> float:
    try:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    except OverflowError:
        seconds = float("inf")
    if not 0 <= seconds <= MAX_DELAY_SECONDS:
        raise ValueError(f"delay must be between 0 and {MAX_DELAY_SECONDS:g} seconds, got {delay!r}")
    return seconds


class JobOutcome(Exception):
    """Base class of the outcomes a task may raise."""


class Retry(JobOutcome):
    """Retry after ``delay`` (seconds or timedelta) instead of the task's backoff. Spends
    an attempt: with none left, the job fails."""

    def __init__(self, delay: float | timedelta, reason: str = "") -> None:
        self.delay = _seconds(delay)
        super().__init__(reason or f"retry requested in {self.delay:g}s")


class Snooze(JobOutcome):
    """Run again after ``delay`` without spending an attempt (waiting on something that
    is not an error: a rate limit window, an upstream batch)."""

    def __init__(self, delay: float | timedelta) -> None:
        self.delay = _seconds(delay)
        super().__init__(f"snoozed for {self.delay:g}s")


class Cancel(JobOutcome):
    """Stop the job for good: state ``cancelled``, never retried."""


class Fail(JobOutcome):
    """Fail the job now, skipping remaining attempts: state ``failed``."""
