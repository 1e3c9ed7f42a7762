"""The cron page (``cron_status``): each declared entry (``app.schedules``) with its next
fire instants, computed here from its expression, and its latest fires as the
schedulers recorded them (``pgq_cron_fires``), each with the state of the job it made.
One statement reads the fires of every entry (``cron_recent_fires``); entries no longer
declared are left out, whatever fire records they left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING

from pgq.core.cron import CronEntry
from pgq.core.errors import InvalidOptionError
from pgq.store.database import run_plan, run_plan_async
from pgq.store.plan import Exec, Plan

if TYPE_CHECKING:
    from pgq.client.app import App

MAX_COUNT = 100
"""The most next or last fires per entry one call returns."""


@dataclass(frozen=True)
class CronFire:
    """One recorded fire of an entry: the tick, the job it made, when and by which
    scheduler; ``job_state`` is that job's state now (None once the job is pruned)."""

    fire_at: datetime
    job_id: int
    enqueued_at: datetime
    scheduler: str
    job_state: str | None


@dataclass(frozen=True)
class CronStatus:
    """A declared cron entry: its schedule, the next ``next_fires`` instants (aware, UTC)
    and the latest fires, newest first."""

    name: str
    schedule: str
    timezone: str
    task: str
    next_fires: list[datetime]
    last_fires: list[CronFire]


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        raise InvalidOptionError(f"{what} must be an integer from 0 to {MAX_COUNT}, got {value!r}")
    return value


def plan_cron_status(entries: list[CronEntry], now: datetime | None, next_count: int,
                     last_count: int) -> Plan:
    _count(next_count, "next_count")
    _count(last_count, "last_count")
    if now is None:
        ((now,),) = yield Exec("clock_now", {"now": None})
    elif not isinstance(now, datetime) or now.tzinfo is None:
        raise InvalidOptionError(f"now must be a timezone-aware datetime, got {now!r}")
    fires: dict[str, list[CronFire]] = {e.name: [] for e in entries}
    if entries and last_count:
        rows = yield Exec("cron_recent_fires", {"entries": list(fires), "per_entry": last_count})
        for name, fire_at, job_id, enqueued_at, scheduler, state in rows:
            fires[name].append(CronFire(fire_at, job_id, enqueued_at, scheduler, state))
    assert now is not None
    return [CronStatus(e.name, e.expression, e.timezone, e.task,
                       list(islice(e.fires_after(now), next_count)), fires[e.name])
            for e in sorted(entries, key=lambda e: e.name)]


def cron_status(app: App, *, now: datetime | None = None, next_count: int = 5,
                last_count: int = 5) -> list[CronStatus]:
    """Every entry of ``app.schedules`` by name: its next ``next_count`` fire instants
    after ``now`` (default: the App's clock, else the database's) and its latest
    ``last_count`` recorded fires."""
    plan = plan_cron_status(list(app.schedules.values()), now or app.clock.now(),
                            next_count, last_count)
    with app._pools.connection() as conn:
        result: list[CronStatus] = run_plan(conn, plan, atomic=False)
    return result


async def acron_status(app: App, *, now: datetime | None = None, next_count: int = 5,
                       last_count: int = 5) -> list[CronStatus]:
    """``cron_status`` for async code."""
    plan = plan_cron_status(list(app.schedules.values()), now or app.clock.now(),
                            next_count, last_count)
    async with app._pools.async_connection() as conn:
        result: list[CronStatus] = await run_plan_async(conn, plan, atomic=False)
    return result
