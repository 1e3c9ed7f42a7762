"""The stats leader: every ``every`` seconds (5 by default), the leader of the ``stats``
role computes the queue stats (``pgq.client.stats.plan_compute``: bounded statements on
partial indexes and the planner's estimates) and stores the document in Redis (TTL: a
few refreshes, so a dead leader's figures expire) and in ``pgq_stats`` (for readers
without Redis). Readers never compute them unless both copies are missing or stale.

Every worker campaigns for the role by default (``WorkerConfig.stats``), as for
maintenance, so a deployment that runs workers has its stats without another process.

The leader is also who tells the log that a queue has due work and no live worker
serving it (``unserved`` in the document): one WARNING when a queue becomes unserved,
naming it and its due jobs, and one INFO when it no longer is; nothing on the refreshes
in between, so the line is an alert, not noise. A new leader has seen no earlier
refresh, so it reports the queues unserved when it takes over once more.

Each document carries the previous one's ``history`` forward (on a new leader, the
stored document's), with a point added at each minute boundary
(``pgq.client.stats.history_after``): the dashboard's throughput chart, at no query.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg

from pgq.client.stats import (
    EVERY,
    KEY,
    encode,
    history_after,
    plan_compute,
    plan_load,
    plan_store,
    stale_after,
)
from pgq.coordination.leader import Leadership
from pgq.scheduling.service import LeaderService
from pgq.store.database import run_plan

if TYPE_CHECKING:
    from pgq.client.app import App

log = logging.getLogger("pgq.stats")

ROLE = "stats"


class StatsService(LeaderService):
    role = ROLE
    logger = log

    def __init__(self, app: App, *, holder: str, every: float = EVERY,
                 ttl: float = 30.0) -> None:
        super().__init__(app, holder=holder, ttl=ttl, poll=1.0, retry=every)
        self.every = every
        self.runs = 0
        self.last: dict[str, Any] | None = None
        """The latest document computed."""

    def run_round(self, conn: psycopg.Connection[Any], leadership: Leadership,
                  term: int) -> None:
        self.refresh(conn)

    def next_wait(self, conn: psycopg.Connection[Any]) -> float:
        return self.every

    def refresh(self, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        """Compute the stats and store them in both copies; returns the document."""
        doc: dict[str, Any] = run_plan(conn, plan_compute(self.app.clock.now()), atomic=False)
        doc["every"] = self.every
        before = self.last
        if before is None:  # a new leader: carry the stored document's history on
            loaded = run_plan(conn, plan_load(self.app.clock.now()), atomic=False)
            before = None if loaded is None else loaded[0]
        doc["history"] = history_after(before, doc)
        run_plan(conn, plan_store(doc), atomic=False)
        self.app.coordinator.cache_set(KEY, encode(doc), stale_after(self.every))
        report_unserved(self.last, doc)
        self.last = doc
        self.runs += 1
        if doc["refresh_seconds"] > self.every / 2:
            log.warning("stats: the refresh took %.2f s (every %g s)", doc["refresh_seconds"],
                        self.every)
        return doc


def report_unserved(before: dict[str, Any] | None, doc: dict[str, Any]) -> list[str]:
    """Log the queues that became unserved since ``before`` (WARNING) and those that no
    longer are (INFO); returns the newly unserved."""
    was = set(before.get("unserved", ())) if before is not None else set()
    now = doc["unserved"]
    queues = doc["queues"]
    for name in now:
        if name not in was:
            q = queues[name]
            capped = "available" in q["estimated"]  # the waiting part hit its cap
            lag = q["lag_seconds"]
            log.warning("stats: queue %r is unserved: %s%d due job(s)%s and no live worker "
                        "serves it (pgq workers; pgq stats)", name, ">=" if capped else "",
                        max(q["due"], 1), "" if lag is None else f", oldest due {lag:.0f}s ago")
    for name in sorted(was - set(now)):
        q = queues.get(name)
        why = ("nothing due" if q is None or not (q["due"] or q["lag_seconds"] is not None)
               else "paused" if q["paused"] else f"{q['live_workers']} live worker(s)")
        log.info("stats: queue %r is no longer unserved (%s)", name, why)
    return [name for name in now if name not in was]
