"""Where "now" comes from.

Anything that decides who owns a job, or when it may run, uses the *database* clock:
statements take an optional ``now`` parameter and evaluate ``coalesce(%(now)s, now())``.
``DatabaseClock`` (the default) passes ``None``, so PostgreSQL's ``now()`` decides.
Tests inject a ``ManualClock`` to move time without sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime | None:
        """The time statements should use, or ``None`` for the database's ``now()``."""
        ...


class DatabaseClock:
    """The production clock: defer to PostgreSQL's ``now()``."""

    def now(self) -> datetime | None:
        return None


class ManualClock:
    """A clock that stands still until moved; for tests of windows, delays and leases."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime.now(UTC)
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now

    def set(self, moment: datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = moment
