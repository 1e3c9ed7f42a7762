"""Dead letters grouped (``app.jobs.dead_letter_groups``): the failed jobs of a recent
window by task and the type of their last error, biggest group first, for a failures
page that shows "what broke" rather than a list of jobs. Each group is also a
``JobFilter`` (``task`` and ``error_type``), so ``app.jobs.retry`` or ``delete`` acts on
exactly one group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pgq.client.jobfilter import JobFilter
from pgq.core.errors import InvalidOptionError
from pgq.store.plan import Exec, Plan

MAX_GROUPS = 1000
"""The most groups one call returns."""


@dataclass(frozen=True)
class DeadLetterGroup:
    """Failed jobs of one task whose last error had one type. ``error_type`` is "" for
    jobs without an errors entry; ``sample_id`` is the group's newest job and
    ``message`` its last error's message."""

    task: str
    error_type: str
    count: int
    latest_at: datetime
    """When the group's latest job failed (its largest ``finished_at``)."""
    sample_id: int
    message: str

    def filter(self) -> JobFilter:
        """The group's failed jobs, whenever they failed (for retry, delete, count)."""
        return JobFilter(state="failed", task=self.task, error_type=self.error_type)


def plan_dead_letter_groups(within: timedelta, limit: int, now: datetime | None) -> Plan:
    if not isinstance(within, timedelta) or within <= timedelta(0):
        raise InvalidOptionError(f"within must be a positive timedelta, got {within!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_GROUPS:
        raise InvalidOptionError(f"limit must be an integer from 1 to {MAX_GROUPS}, got {limit!r}")
    rows = yield Exec("job_dead_letter_groups", {"within": within, "limit": limit, "now": now})
    return [DeadLetterGroup(task, error_type, int(n), latest, sample, message)
            for task, error_type, n, latest, sample, message in rows]


class DeadLetterGroups:
    """``app.jobs``' grouped dead letters (a base of ``Jobs``, kept apart for its size)."""

    _run: Callable[[Plan], Any]
    _arun: Callable[[Plan], Any]
    _clock: Any

    def dead_letter_groups(self, *, within: timedelta = timedelta(days=7),
                           limit: int = 50) -> list[DeadLetterGroup]:
        """Jobs that failed in the last ``within``, grouped by task and the type of their
        last error, most jobs first (``limit`` groups). Reads one range of the finished
        index: the cost is the window's failures, not the table's."""
        result: list[DeadLetterGroup] = self._run(
            plan_dead_letter_groups(within, limit, self._clock.now()))
        return result

    async def adead_letter_groups(self, *, within: timedelta = timedelta(days=7),
                                  limit: int = 50) -> list[DeadLetterGroup]:
        """``dead_letter_groups`` for async code."""
        result: list[DeadLetterGroup] = await self._arun(
            plan_dead_letter_groups(within, limit, self._clock.now()))
        return result
