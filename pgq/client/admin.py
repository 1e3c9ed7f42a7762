"""The operations API: ``app.jobs`` (inspect, list, retry, cancel, delete, reschedule,
reprioritise) and ``app.queues`` (pause, resume, list). docs/operations.md is the guide.

Each operation is written once, as a plan (``pgq.store.plan``), and each has a sync
method and an async one with an ``a`` prefix (``get`` / ``aget``), both driving the same
plan on one of the App's pooled (autocommit) connections. An action on many jobs runs
in batches of ``BATCH`` jobs, one statement and one commit each, so workers' claims
keep flowing meanwhile and an interrupted run can simply be run again. Each statement
writes the change and its ``pgq_job_actions`` rows together (``pgq/store/queries.sql``,
``job_retry_many`` explains the shape).
"""

from __future__ import annotations

import builtins
import getpass
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from pgq.client.jobfilter import (
    NO_FILTER,
    ActionResult,
    JobFilter,
    JobRecord,
    Page,
    QueueInfo,
    check_actor,
    check_ids,
    check_limit,
    decode_cursor,
    encode_cursor,
)
from pgq.client.reads import (
    ActionRecord,
    Preview,
    WorkerInfo,
    plan_count,
    plan_job_actions,
    plan_preview,
    plan_workers,
)
from pgq.core.clock import Clock
from pgq.core.errors import InvalidOptionError
from pgq.core.validation import check_priority, check_queue
from pgq.store.database import Pools, run_plan, run_plan_async
from pgq.store.plan import Exec, Plan

BATCH = 1000
"""Jobs per statement (and per transaction) of a bulk action."""

Target = int | Iterable[int] | JobFilter
"""What an action applies to: one job id, several, or every job a filter matches."""

Progress = Callable[[int], None]
"""Called after each committed batch of an action with the number of jobs it changed."""

# The states each action takes jobs from (the statements fence on the same lists).
SOURCES = {
    "retry": ("failed", "cancelled", "retryable", "scheduled"),
    "cancel": ("available", "scheduled", "retryable"),
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
                progress: Progress | None = None) -> Plan:
    """Apply ``action`` in batches: an id list ``batch`` ids per statement, a filter by
    keyset (id order) until a batch comes back short. Wakes the queues of changed jobs
    that became claimable, once at the end. ``progress(n)`` follows each batch's commit."""
    statement = f"job_{action}_many"
    changed: list[int] = []
    queues: set[str] = set()
    skipped: dict[int, str] = {}
    if isinstance(target, JobFilter):
        base = {**target.params(), "ids": None, **params, "batch": batch}
        after = 0
        while True:
            ((picked, last, ids, qs),) = yield Exec(statement, {**base, "after": after})
            changed += ids
            queues.update(qs)
            if progress is not None:
                progress(len(ids))
            if picked < batch or last is None:
                break
            after = last
    else:
        all_ids = check_ids(target)
        if not all_ids:
            raise InvalidOptionError(f"{action}: no job ids given")
        for chunk in _chunks(all_ids, batch):
            ((_picked, _last, ids, qs),) = yield Exec(
                statement, {**NO_FILTER, **params, "ids": chunk, "after": 0, "batch": len(chunk)})
            changed += ids
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


def plan_queue(statement: str, name: str, actor: str, reason: str | None,
               now: datetime | None) -> Plan:
    actor, reason = check_actor(actor, reason)
    rows = yield Exec(statement, {"name": check_queue(name), "actor": actor,
                                  "reason": reason, "now": now})
    if statement == "queue_resume":
        yield Exec("queue_notify", {"queues": [name]})
    return QueueInfo(*rows[0])


def plan_queue_list() -> Plan:
    rows = yield Exec("queue_list", {})
    return [QueueInfo(*r) for r in rows]


# --- the objects on App --------------------------------------------------------------------

class _Runner:
    def __init__(self, pools: Pools, clock: Clock) -> None:
        self._pools, self._clock = pools, clock

    def _run(self, plan: Plan) -> Any:
        with self._pools.connection() as conn:
            return run_plan(conn, plan, atomic=False)

    async def _arun(self, plan: Plan) -> Any:
        async with self._pools.async_connection() as conn:
            return await run_plan_async(conn, plan, atomic=False)


class Jobs(_Runner):
    """``app.jobs``. Actions take one id, a list of ids, or a ``JobFilter``; ``actor``
    (default: the OS user) and ``reason`` are recorded in ``pgq_job_actions``."""

    def _action(self, action: str, target: Target, actor: str | None, reason: str | None,
                progress: Progress | None = None, **extra: Any) -> Plan:
        who, why = check_actor(default_actor() if actor is None else actor, reason)
        return plan_action(action, target, {"actor": who, "reason": why,
                                            "now": self._clock.now(), **extra},
                           progress=progress)

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
        """Cancel jobs that are not running (running ones are reported in ``skipped``)."""
        result: ActionResult = self._run(self._action("cancel", target, actor, reason, progress))
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
        result: ActionResult = await self._arun(self._action("cancel", target, actor, reason, progress))
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


class Queues(_Runner):
    """``app.queues``: pause, resume and list queues."""

    def pause(self, name: str, *, actor: str | None = None, reason: str | None = None) -> QueueInfo:
        """Stop claims of the queue's jobs (within a poll interval); running ones finish."""
        result: QueueInfo = self._run(plan_queue("queue_pause", name, actor or default_actor(),
                                                 reason, self._clock.now()))
        return result

    def resume(self, name: str, *, actor: str | None = None) -> QueueInfo:
        """Claim the queue's jobs again; its workers are woken at once."""
        result: QueueInfo = self._run(plan_queue("queue_resume", name, actor or default_actor(),
                                                 None, self._clock.now()))
        return result

    def list(self) -> builtins.list[QueueInfo]:
        """Every queue that has jobs or settings, by name."""
        result: builtins.list[QueueInfo] = self._run(plan_queue_list())
        return result

    async def apause(self, name: str, *, actor: str | None = None,
                     reason: str | None = None) -> QueueInfo:
        result: QueueInfo = await self._arun(plan_queue(
            "queue_pause", name, actor or default_actor(), reason, self._clock.now()))
        return result

    async def aresume(self, name: str, *, actor: str | None = None) -> QueueInfo:
        result: QueueInfo = await self._arun(plan_queue(
            "queue_resume", name, actor or default_actor(), None, self._clock.now()))
        return result

    async def alist(self) -> builtins.list[QueueInfo]:
        result: builtins.list[QueueInfo] = await self._arun(plan_queue_list())
        return result

    def workers(self) -> builtins.list[WorkerInfo]:
        """The worker registry (``pgq_workers``): which processes serve which queues."""
        result: builtins.list[WorkerInfo] = self._run(plan_workers())
        return result

    async def aworkers(self) -> builtins.list[WorkerInfo]:
        result: builtins.list[WorkerInfo] = await self._arun(plan_workers())
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


