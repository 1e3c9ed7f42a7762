"""The operations API: ``app.jobs`` (inspect, list, retry, cancel, delete, reschedule,
reprioritise) and ``app.queues`` (pause, resume, list). docs/operations.md is the guide.

Each operation is written once, as a plan (``pgq.store.plan``), and each has a sync
method and an async one with an ``a`` prefix (``get`` / ``aget``), both driving the same
plan on one of the App's pooled (autocommit) connections. An action on many jobs runs
in batches of ``BATCH`` jobs, one statement and one commit each, ``PAUSE`` seconds
apart, so workers' claims keep flowing meanwhile and an interrupted run can simply be
run again. Each statement writes the change and its ``pgq_job_actions`` rows together
(``pgq/store/queries.sql``, ``job_retry_many`` explains the shape).
"""

from __future__ import annotations

import asyncio
import builtins
import getpass
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from pgq.client.deadgroups import DeadLetterGroups
from pgq.client.jobfilter import (
    NO_FILTER,
    ActionResult,
    JobFilter,
    JobRecord,
    Page,
    check_actor,
    check_ids,
    check_limit,
    decode_cursor,
    encode_cursor,
)
from pgq.client.reads import (
    ActionRecord,
    Preview,
    plan_count,
    plan_job_actions,
    plan_preview,
)
from pgq.client.results import await_result, wait_result
from pgq.coordination import Coordinator
from pgq.core.clock import Clock
from pgq.core.errors import InvalidOptionError
from pgq.core.settings import Settings
from pgq.core.validation import check_priority
from pgq.store.database import Pools, run_plan, run_plan_async
from pgq.store.plan import Exec, Pause, Plan

BATCH = 200
"""Jobs per statement (and per transaction) of a bulk action. Each changed job writes
about 4 KB of WAL (its new row version, index entries, the action row, full-page images
after a checkpoint), and every other session's commit must flush whatever WAL was
written before it: 1,000-job batches (4 MB, the size of the default ``wal_buffers``)
back to back raised the claim latency p99 of workers on other queues 1.5-3.7x
(bench/README.md, ``bulk_retry``); 200 keep a batch's WAL under 1 MB."""

PAUSE = 0.02
"""Seconds between two batches of a bulk action (no transaction open): workers' commits
then often find no action WAL ahead of theirs. With ``BATCH``, the retry of 100,000
dead letters took about 20 s here (4,400-4,900 jobs/s; 7-14 s back to back), its
statement active in a quarter of the samples instead of half or more."""

Target = int | Iterable[int] | JobFilter
"""What an action applies to: one job id, several, or every job a filter matches."""

Progress = Callable[[int], None]
"""Called after each committed batch of an action with the number of jobs it changed."""

# The states each action takes jobs from (the statements fence on the same lists).
SOURCES = {
    "retry": ("failed", "cancelled", "retryable", "scheduled"),
    "cancel": ("available", "scheduled", "retryable", "running"),
    "delete": ("completed", "failed", "cancelled"),
    "reschedule": ("available", "scheduled", "retryable"),
    "set_priority": ("available", "scheduled", "retryable"),
}


def default_actor() -> str:
    """The OS user running this process: who acted, unless the caller says."""
    try:
        return getpass.getuser()
    except Exception:  # no login name, no USER variable (some containers)
        return "unknown"


# --- plans ---------------------------------------------------------------------------------

def plan_get(job_id: int) -> Plan:
    (checked,) = check_ids(job_id)
    rows = yield Exec("job_get", {"id": checked})
    return JobRecord.from_row(rows[0]) if rows else None


def plan_list(where: JobFilter, limit: int, after: str | None) -> Plan:
    params = {**where.params(), "ids": None, "limit": check_limit(limit) + 1,
              "before": decode_cursor(after)}
    rows = yield Exec("job_list", params)
    jobs = tuple(JobRecord.from_row(r) for r in rows[:limit])
    return Page(jobs, encode_cursor(jobs[-1].id) if len(rows) > limit else None)


def plan_action(action: str, target: Target, params: dict[str, Any], batch: int = BATCH,
                progress: Progress | None = None, controls: list[str] | None = None,
                pause: float = PAUSE) -> Plan:
    """Apply ``action`` in batches: an id list ``batch`` ids per statement, a filter by
    keyset (id order) until a batch comes back short; ``pause`` seconds between two
    batches. Wakes the queues of changed jobs that became claimable, once at the end.
    ``progress(n)`` follows each batch's commit. A cancel's control messages for the
    workers of running jobs go to ``controls``."""
    controls = [] if controls is None else controls
    statement = f"job_{action}_many"
    changed: list[int] = []
    queues: set[str] = set()
    skipped: dict[int, str] = {}
    if isinstance(target, JobFilter):
        base = {**target.params(), "ids": None, **params, "batch": batch}
        after = 0
        while True:
            ((picked, last, ids, qs, *more),) = yield Exec(statement, {**base, "after": after})
            changed += ids
            controls += more[0] if more else ()
            queues.update(qs)
            if progress is not None:
                progress(len(ids))
            if picked < batch or last is None:
                break
            after = last
            yield Pause(pause)
    else:
        all_ids = check_ids(target)
        if not all_ids:
            raise InvalidOptionError(f"{action}: no job ids given")
        for n, chunk in enumerate(_chunks(all_ids, batch)):
            if n:
                yield Pause(pause)
            ((_picked, _last, ids, qs, *more),) = yield Exec(
                statement, {**NO_FILTER, **params, "ids": chunk, "after": 0, "batch": len(chunk)})
            changed += ids
            controls += more[0] if more else ()
            queues.update(qs)
            if progress is not None:
                progress(len(ids))
            missed = sorted(set(chunk) - set(ids))
            if missed:
                found = dict((yield Exec("job_states_of", {"ids": missed})))
                for job_id in missed:
                    state = found.get(job_id)
                    skipped[job_id] = ("not found" if state is None
                                       else f"{state}, locked by another transaction"
                                       if state in SOURCES[action] else state)
    if queues and action in ("retry", "reschedule"):
        # Workers listen to NOTIFY whatever Redis's state (docs/coordination.md).
        yield Exec("queue_notify", {"queues": sorted(queues)})
    return ActionResult(action, len(changed), skipped)


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- the objects on App --------------------------------------------------------------------

class _Runner:
    def __init__(self, pools: Pools, clock: Clock,
                 coordinator: Callable[[], Coordinator] | None = None) -> None:
        self._pools, self._clock = pools, clock
        self._coordinator = coordinator
        """The App's coordinator, made on first use (cancels push control messages)."""

    def _run(self, plan: Plan) -> Any:
        with self._pools.connection() as conn:
            return run_plan(conn, plan, atomic=False)

    async def _arun(self, plan: Plan) -> Any:
        async with self._pools.async_connection() as conn:
            return await run_plan_async(conn, plan, atomic=False)


class Jobs(DeadLetterGroups, _Runner):
    """``app.jobs``. Actions take one id, a list of ids, or a ``JobFilter``; ``actor``
    (default: the OS user) and ``reason`` are recorded in ``pgq_job_actions``."""

    def __init__(self, pools: Pools, clock: Clock,
                 coordinator: Callable[[], Coordinator] | None = None,
                 settings: Settings | None = None) -> None:
        super().__init__(pools, clock, coordinator)
        self._settings = settings

    def result(self, job_id: int, *, timeout: float = 30.0) -> Any:
        """Wait for the job's final state, woken by its finish (no polling): its stored
        result (decoded JSON), or ``JobFailed`` / ``JobCancelled`` (with the last error
        entry), ``JobNotFound``, ``ResultTimeout`` (a ``TimeoutError``)."""
        assert self._settings is not None, "result() needs the App's settings"
        return wait_result(self._settings, job_id, timeout)

    async def aresult(self, job_id: int, *, timeout: float = 30.0) -> Any:
        assert self._settings is not None, "aresult() needs the App's settings"
        return await await_result(self._settings, job_id, timeout)

    def _action(self, action: str, target: Target, actor: str | None, reason: str | None,
                progress: Progress | None = None, controls: list[str] | None = None,
                **extra: Any) -> Plan:
        who, why = check_actor(default_actor() if actor is None else actor, reason)
        return plan_action(action, target, {"actor": who, "reason": why,
                                            "now": self._clock.now(), **extra},
                           progress=progress, controls=controls)

    def _cancel(self, target: Target, actor: str | None, reason: str | None,
                progress: Progress | None, controls: list[str]) -> Plan:
        """A cancel; without Redis its statement sends the control NOTIFYs itself."""
        notify = self._coordinator is None or self._coordinator().wake_in_transaction()
        return self._action("cancel", target, actor, reason, progress, controls, notify=notify)

    def _send(self, controls: list[str]) -> None:
        if controls and self._coordinator is not None:
            self._coordinator().send_control(controls)

    @staticmethod
    def _retry_options(run_at: datetime | None, extra_attempts: int | None) -> dict[str, Any]:
        if run_at is not None and (not isinstance(run_at, datetime) or run_at.tzinfo is None):
            raise InvalidOptionError(f"run_at must be a timezone-aware datetime, got {run_at!r}")
        if extra_attempts is not None and (not isinstance(extra_attempts, int)
                                           or isinstance(extra_attempts, bool)
                                           or not 1 <= extra_attempts <= 1000):
            raise InvalidOptionError(f"extra_attempts must be an integer from 1 to 1000, "
                                     f"got {extra_attempts!r}")
        return {"run_at": run_at, "extra_attempts": extra_attempts}

    @staticmethod
    def _when(run_at: datetime) -> dict[str, Any]:
        if not isinstance(run_at, datetime) or run_at.tzinfo is None:
            raise InvalidOptionError(f"run_at must be a timezone-aware datetime, got {run_at!r}")
        return {"run_at": run_at}

    # sync

    def get(self, job_id: int) -> JobRecord | None:
        """Every column of one job, or None if there is no such job."""
        result: JobRecord | None = self._run(plan_get(job_id))
        return result

    def list(self, where: JobFilter | None = None, *, limit: int = 100, after: str | None = None,
             **filters: Any) -> Page:
        """One page, newest first: ``list(state="failed", queue="mail", limit=50)``, then
        ``list(..., after=page.next_cursor)``. Filters are ``JobFilter``'s fields."""
        result: Page = self._run(plan_list(_filter(where, filters), limit, after))
        return result

    def retry(self, target: Target, *, run_at: datetime | None = None,
              extra_attempts: int | None = None, actor: str | None = None,
              reason: str | None = None, progress: Progress | None = None) -> ActionResult:
        """Failed, cancelled, retryable or scheduled jobs run again, now or at ``run_at``."""
        opts = self._retry_options(run_at, extra_attempts)
        result: ActionResult = self._run(self._action("retry", target, actor, reason, progress, **opts))
        return result

    def cancel(self, target: Target, *, actor: str | None = None,
               reason: str | None = None, progress: Progress | None = None) -> ActionResult:
        """Cancel waiting and running jobs; a running job's worker is told at once and
        stops it (docs/operations.md: the race with its completion)."""
        controls: list[str] = []
        try:
            result: ActionResult = self._run(self._cancel(target, actor, reason, progress,
                                                          controls))
        finally:  # what committed is pushed, even if a later batch failed
            self._send(controls)
        return result

    def delete(self, target: Target, *, actor: str | None = None,
               reason: str | None = None, progress: Progress | None = None) -> ActionResult:
        """Delete finished jobs (completed, failed, cancelled)."""
        result: ActionResult = self._run(self._action("delete", target, actor, reason, progress))
        return result

    def reschedule(self, target: Target, run_at: datetime, *, actor: str | None = None,
                   reason: str | None = None, progress: Progress | None = None) -> ActionResult:
        """Waiting jobs run at ``run_at`` instead."""
        result: ActionResult = self._run(
            self._action("reschedule", target, actor, reason, progress, **self._when(run_at)))
        return result

    def set_priority(self, target: Target, priority: int, *, actor: str | None = None,
                     reason: str | None = None, progress: Progress | None = None) -> ActionResult:
        """Waiting jobs get ``priority`` (-100..100, lower first)."""
        result: ActionResult = self._run(self._action(
            "set_priority", target, actor, reason, progress, priority=check_priority(priority)))
        return result

    def count(self, where: JobFilter | None = None, **filters: Any) -> int:
        """How many jobs match (a scan of what the filter selects: an operator's call)."""
        result: int = self._run(plan_count(_filter(where, filters)))
        return result

    def preview(self, action: str, target: Target, *, sample: int = 10) -> Preview:
        """What ``action`` (retry, cancel, ...) would change on ``target`` if run now: the
        count of those jobs in its source states and a sample of their ids."""
        result: Preview = self._run(plan_preview(action, _sources(action), target, sample))
        return result

    def actions(self, job_id: int) -> builtins.list[ActionRecord]:
        """The operator actions on one job, oldest first (they outlive a deleted job)."""
        result: builtins.list[ActionRecord] = self._run(plan_job_actions(job_id))
        return result

    # async

    async def acount(self, where: JobFilter | None = None, **filters: Any) -> int:
        result: int = await self._arun(plan_count(_filter(where, filters)))
        return result

    async def apreview(self, action: str, target: Target, *, sample: int = 10) -> Preview:
        result: Preview = await self._arun(plan_preview(action, _sources(action), target, sample))
        return result

    async def aactions(self, job_id: int) -> builtins.list[ActionRecord]:
        result: builtins.list[ActionRecord] = await self._arun(plan_job_actions(job_id))
        return result

    async def aget(self, job_id: int) -> JobRecord | None:
        result: JobRecord | None = await self._arun(plan_get(job_id))
        return result

    async def alist(self, where: JobFilter | None = None, *, limit: int = 100,
                    after: str | None = None, **filters: Any) -> Page:
        result: Page = await self._arun(plan_list(_filter(where, filters), limit, after))
        return result

    async def aretry(self, target: Target, *, run_at: datetime | None = None,
                     extra_attempts: int | None = None, actor: str | None = None,
                     reason: str | None = None, progress: Progress | None = None) -> ActionResult:
        opts = self._retry_options(run_at, extra_attempts)
        result: ActionResult = await self._arun(
            self._action("retry", target, actor, reason, progress, **opts))
        return result

    async def acancel(self, target: Target, *, actor: str | None = None,
                      reason: str | None = None, progress: Progress | None = None) -> ActionResult:
        controls: list[str] = []
        try:
            result: ActionResult = await self._arun(self._cancel(target, actor, reason, progress,
                                                                 controls))
        finally:
            await asyncio.to_thread(self._send, controls)
        return result

    async def adelete(self, target: Target, *, actor: str | None = None,
                      reason: str | None = None, progress: Progress | None = None) -> ActionResult:
        result: ActionResult = await self._arun(self._action("delete", target, actor, reason, progress))
        return result

    async def areschedule(self, target: Target, run_at: datetime, *, actor: str | None = None,
                          reason: str | None = None, progress: Progress | None = None) -> ActionResult:
        result: ActionResult = await self._arun(
            self._action("reschedule", target, actor, reason, progress, **self._when(run_at)))
        return result

    async def aset_priority(self, target: Target, priority: int, *, actor: str | None = None,
                            reason: str | None = None, progress: Progress | None = None) -> ActionResult:
        result: ActionResult = await self._arun(self._action(
            "set_priority", target, actor, reason, progress, priority=check_priority(priority)))
        return result


def _sources(action: str) -> tuple[str, ...]:
    if action not in SOURCES:
        raise InvalidOptionError(f"unknown action {action!r} (one of: {', '.join(SOURCES)})")
    return SOURCES[action]


def _filter(where: JobFilter | None, filters: dict[str, Any]) -> JobFilter:
    if where is not None and filters:
        raise InvalidOptionError("pass a JobFilter or filter keywords, not both")
    if where is not None:
        return where
    try:
        return JobFilter(**filters)
    except TypeError:
        known = ", ".join(JobFilter.__dataclass_fields__)
        raise InvalidOptionError(f"unknown filter in {sorted(filters)} (known: {known})") from None


