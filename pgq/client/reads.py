"""Read-only plans of the operations API that the CLI (and the coming dashboard) need
besides ``get`` and ``list``: what an action would touch before it runs (a count and a
sample, for ``--dry-run``, a progress bar and a confirmation), the operator actions on
one job (``pgq_job_actions``), and the worker registry (``pgq_workers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pgq.client.jobfilter import JobFilter, check_ids
from pgq.core.errors import InvalidOptionError
from pgq.store.plan import Exec, Plan


@dataclass(frozen=True)
class ActionRecord:
    """One ``pgq_job_actions`` row: who did what to a job, when and why. ``detail`` holds
    the action's parameters and ``from``, the job's state before it."""

    id: int
    job_id: int
    at: datetime
    actor: str
    action: str
    reason: str | None
    detail: Mapping[str, Any] | None


@dataclass(frozen=True)
class WorkerInfo:
    """One ``pgq_workers`` row: a worker process as its latest heartbeat described it."""

    id: str
    host: str
    pid: int
    queues: Mapping[str, Any]
    concurrency: int
    version: str
    started_at: datetime
    last_seen: datetime
    running: int
    tasks: tuple[str, ...]
    """The tasks it registered."""
    lease_seconds: float
    alive: bool
    """Its latest heartbeat is younger than its lease (it beats every third of one);
    maintenance prunes a row 3 leases old."""


@dataclass(frozen=True)
class Preview:
    """What an action would change if run now: ``count`` jobs (those the target names
    that are in one of the action's source states), ``sample`` some of their ids. A
    worker's claim or another operator may change the figure before the action runs."""

    action: str
    count: int
    sample: tuple[int, ...]


def narrowed(where: JobFilter, sources: tuple[str, ...]) -> JobFilter | None:
    """``where`` restricted to the states an action takes jobs from, or None if the
    filter's states and the sources have nothing in common."""
    states = where.params()["states"]
    kept = [s for s in sources if states is None or s in states]
    return replace(where, state=kept) if kept else None


def plan_count(where: JobFilter) -> Plan:
    ((count,),) = yield Exec("job_count", where.params())
    return int(count)


def plan_preview(action: str, sources: tuple[str, ...], target: int | Iterable[int] | JobFilter,
                 sample: int) -> Plan:
    if not isinstance(sample, int) or isinstance(sample, bool) or not 0 <= sample <= 1000:
        raise InvalidOptionError(f"sample must be an integer from 0 to 1000, got {sample!r}")
    if isinstance(target, JobFilter):
        where = narrowed(target, sources)
        if where is None:
            return Preview(action, 0, ())
        ((count,),) = yield Exec("job_count", where.params())
        ids: list[int] = []
        if sample and count:
            rows = yield Exec("job_list", {**where.params(), "ids": None, "limit": sample,
                                           "before": None})
            ids = [r[0] for r in rows]
        return Preview(action, int(count), tuple(ids))
    wanted = check_ids(target)
    if not wanted:
        raise InvalidOptionError(f"{action}: no job ids given")
    found = yield Exec("job_states_of", {"ids": wanted})
    takeable = sorted(job_id for job_id, state in found if state in sources)
    return Preview(action, len(takeable), tuple(takeable[:sample]))


def plan_job_actions(job_id: int) -> Plan:
    (checked,) = check_ids(job_id)
    rows = yield Exec("job_actions_of", {"id": checked})
    return [ActionRecord(*r) for r in rows]


def plan_workers(queue: str | None = None, now: datetime | None = None) -> Plan:
    rows = yield Exec("worker_list", {"queue": queue, "now": now})
    return [WorkerInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], tuple(r[9]),
                       r[10], r[11]) for r in rows]

