"""The cron scheduler: enqueues each (entry, tick) exactly once, cluster-wide.

Run as many schedulers as you like (``pgq scheduler``, or ``pgq worker --scheduler``).
Two layers keep a tick from firing twice:

1. **Leadership** (``pgq.coordination.leader``): only the leader of the ``scheduler`` role looks at the
   schedule, so normally one process does the work.
2. **The fire record**: a tick's job is written in the same transaction as its
   ``pgq_cron_fires`` row, whose primary key is (entry, tick). Two leaders at once (a
   partition, a paused ex-leader waking up, a skewed clock) race on that key, and the
   loser's transaction writes nothing.

Ticks are computed from the database clock (``SELECT now()``), never the scheduler's.
After downtime, each entry's ``catch_up`` policy decides which missed ticks fire
(``pgq.core.cron.CatchUp``); a fire is never repeated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from pgq.client.enqueue import JobRow, JobSpec
from pgq.client.plans import job_copy_row
from pgq.coordination.leader import Leadership
from pgq.core.cron import CronEntry
from pgq.core.errors import PgqError
from pgq.scheduling.service import LeaderService
from pgq.store.database import execute, run_plan
from pgq.store.plan import Copy, Exec, Step

if TYPE_CHECKING:
    from pgq.client.app import App

log = logging.getLogger("pgq.scheduler")

ROLE = "scheduler"
ON_TIME = timedelta(seconds=60)
"""A tick fired within this long after it passed is on time, not "missed"."""


@dataclass(frozen=True, slots=True)
class Fire:
    entry: str
    fire_at: datetime
    job_id: int


class Scheduler(LeaderService):
    """The leader of the ``scheduler`` role fires due ticks, then sleeps until the next
    (``tick`` seconds at most); the rest only campaign."""

    role = ROLE
    logger = log

    def __init__(self, app: App, *, holder: str, ttl: float = 15.0, tick: float = 1.0,
                 on_time: timedelta = ON_TIME) -> None:
        super().__init__(app, holder=holder, ttl=ttl, poll=tick, retry=tick)
        self.tick = tick
        self.on_time = on_time
        self.entries: list[CronEntry] = list(app.schedules.values())
        # Validated (and encoded) once: a fire only copies these rows.
        self._rows: dict[str, JobRow] = {
            e.name: app._prepare(JobSpec(e.task, dict(e.args), **e.options))
            for e in self.entries}
        self.fired = 0
        self._upcoming: datetime | None = None

    # --- one pass (tests call it directly) ------------------------------------------------

    def run_once(self, conn: psycopg.Connection[Any], term: int | None = None
                 ) -> tuple[list[Fire], datetime | None]:
        """Fire what is due now; return the fires and the next tick of any entry."""
        if not self.entries:
            return [], None
        ((now,),) = execute(conn, "clock_now", {"now": self.app.clock.now()})
        last = dict(execute(conn, "cron_last_fires",
                            {"entries": [e.name for e in self.entries]}))
        due = [(e.name, tick) for e in self.entries
               for tick in e.due(last.get(e.name), now, self.on_time)]
        fires = self._fire(conn, due, term) if due else []
        upcoming = [t for e in self.entries if (t := e.next_after(now)) is not None]
        return fires, min(upcoming, default=None)

    def _fire(self, conn: psycopg.Connection[Any], due: Sequence[tuple[str, datetime]],
              term: int | None) -> list[Fire]:
        coordinator = self.app.coordinator
        notify = coordinator.wake_in_transaction()
        fires: list[Fire] = run_plan(conn, self._plan(due, term, notify))
        if fires and not notify:
            coordinator.publish({self._rows[f.entry].queue for f in fires})
        for f in fires:
            log.info("cron %s: fired tick %s as job %d", f.entry, f.fire_at.isoformat(), f.job_id)
        self.fired += len(fires)
        return fires

    def _plan(self, due: Sequence[tuple[str, datetime]], term: int | None, notify: bool
              ) -> Generator[Step, Any, list[Fire]]:
        claimed = yield Exec("cron_fire_claim", {
            "entries": [name for name, _ in due], "fire_ats": [tick for _, tick in due],
            "scheduler": self.holder, "term": term, "now": self.app.clock.now()})
        if not claimed:
            return []  # another scheduler fired all of them
        rows = []
        for name, fire_at, job_id, db_now in claimed:
            r = self._rows[name]
            meta = {**json.loads(r.meta), "cron_entry": name, "cron_tick": fire_at.isoformat()}
            at = db_now.isoformat()
            rows.append(job_copy_row(job_id, r, "available", at, at, json.dumps(meta)))
        yield Copy("job_copy", rows)
        if notify:
            yield Exec("queue_notify", {"queues": sorted({r[1] for r in rows})})
        return [Fire(name, fire_at, job_id) for name, fire_at, job_id, _ in claimed]

    # --- the service ----------------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"scheduler {self.holder}"

    def run(self) -> None:
        """Campaign for the scheduler role and fire ticks while leader, until ``stop()``."""
        log.info("scheduler %s: %d cron entries: %s", self.holder, len(self.entries),
                 ", ".join(f"{e.name}={e.expression!r} {e.timezone}" for e in self.entries))
        super().run()

    def run_round(self, conn: psycopg.Connection[Any], leadership: Leadership,
                  term: int) -> None:
        _, self._upcoming = self.run_once(conn, term)

    def next_wait(self, conn: psycopg.Connection[Any]) -> float:
        return self._until(conn, self._upcoming)

    def _until(self, conn: psycopg.Connection[Any], upcoming: datetime | None) -> float:
        """Sleep until the next tick, but at most ``tick`` seconds (leadership can change,
        and an injected test clock moves on its own)."""
        if upcoming is None:
            return self.tick
        try:
            ((now,),) = execute(conn, "clock_now", {"now": self.app.clock.now()})
        except PgqError:
            return self.tick
        return max(0.0, min(self.tick, float((upcoming - now).total_seconds())))
