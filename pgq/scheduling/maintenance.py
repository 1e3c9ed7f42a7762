"""Maintenance, done by one process at a time (the leader of the ``maintenance`` role):
retention of finished jobs and of old cron fire records, the worker registry's dead
rows (processes not seen for ``WORKER_STALE_LEASES`` of their leases), and expired
idempotency keys (``pgq.client.idempotent``).

Every worker campaigns for the role (``pgq worker --no-maintenance`` opts out), so a
deployment that runs workers prunes without a separate process. Expired leases are not
reclaimed here: every worker already does that on its own claim path, with SKIP LOCKED.
Delayed jobs and retry backoffs need no promotion either: the claim takes ``scheduled``
and ``retryable`` rows as soon as ``run_at`` passes.

Retention deletes in bounded batches (``batch`` rows per statement, oldest first, via a
partial index on finished rows), pausing between batches, so a backlog of a million rows
drains without long locks, bloat spikes or a slower claim path. The defaults (``BATCH``
rows, ``PAUSE`` seconds) come from ``python -m bench prune`` (bench/README.md): each
batch costs the claim path a burst of CPU and of WAL to flush, and 1,000 rows every
0.05 s raised the claim's p99 by 27-40 %; 500 every 0.1 s by 4-12 %, still deleting
about 4,600 rows/s (a million in under four minutes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from pgq.client.idempotent import TTL as IDEMPOTENCY_TTL
from pgq.coordination.leader import Leadership
from pgq.scheduling.service import LeaderService
from pgq.store.database import execute

if TYPE_CHECKING:
    from pgq.client.app import App

log = logging.getLogger("pgq.maintenance")

ROLE = "maintenance"
BATCH = 500
"""Rows per retention statement."""
PAUSE = 0.1
"""Seconds between retention statements."""
WORKER_STALE_LEASES = 3.0
"""A registry row whose heartbeat is this many of its leases old is pruned: its process
died or was cut off (one that comes back registers again at its next heartbeat)."""
FIRE_RECORDS_KEPT = timedelta(days=7)
"""Cron fire records are kept this long beyond the longest backfill window (each entry's
latest is always kept: catch-up starts from it)."""


def prune(conn: psycopg.Connection[Any], retention: dict[str, float | None], *,
          batch: int = BATCH, now: datetime | None = None,
          between: Callable[[], bool] | None = None) -> dict[str, int]:
    """Delete finished jobs older than their state's retention, ``batch`` rows per
    statement. ``between()`` runs between batches (pause there); False stops early.
    Returns the rows deleted per state."""
    deleted: dict[str, int] = {}
    for state, keep in retention.items():
        if keep is None:
            continue
        total = 0
        while True:
            ((count,),) = execute(conn, "job_prune", {"state": state, "keep": keep,
                                                      "batch": batch, "now": now})
            total += count
            if count < batch or (between is not None and not between()):
                break
        deleted[state] = total
        if between is not None and count == batch:
            break  # stopped early
    return deleted


def prune_fires(conn: psycopg.Connection[Any], app: App, now: datetime) -> int:
    longest = max((e.backfill_window for e in app.schedules.values()), default=timedelta(0))
    return len(execute(conn, "cron_fires_prune", {"before": now - longest - FIRE_RECORDS_KEPT}))


def prune_idempotency_keys(conn: psycopg.Connection[Any], now: datetime, batch: int,
                           between: Callable[[], bool]) -> int:
    """Delete expired idempotency keys, ``batch`` per statement (a reuse would replace
    them anyway: this keeps the table to about a day of keys)."""
    total = 0
    while True:
        count = len(execute(conn, "idempotency_prune", {
            "now": now, "ttl": IDEMPOTENCY_TTL.total_seconds(), "batch": batch}))
        total += count
        if count < batch or not between():
            return total


class Maintenance(LeaderService):
    """The leader of the ``maintenance`` role prunes every ``every`` seconds (and, after a
    failed pass, retries after as long); the rest only campaign."""

    role = ROLE
    logger = log

    def __init__(self, app: App, *, holder: str, every: float = 60.0, ttl: float = 30.0,
                 batch: int = BATCH, pause: float = PAUSE) -> None:
        super().__init__(app, holder=holder, ttl=ttl, poll=1.0, retry=every)
        self.every = every
        self.batch = batch
        self.pause = pause
        self.runs = 0

    def run_round(self, conn: psycopg.Connection[Any], leadership: Leadership,
                  term: int) -> None:
        self.run_once(conn, leadership)

    def next_wait(self, conn: psycopg.Connection[Any]) -> float:
        return self.every

    def run_once(self, conn: psycopg.Connection[Any],
                 leadership: Leadership | None = None) -> dict[str, int]:
        def between() -> bool:  # pause between batches; stop on losing the role
            return (not self._stop.wait(self.pause)
                    and (leadership is None or leadership.is_leader()))

        deleted = prune(conn, self.app.settings.retention, batch=self.batch,
                        now=self.app.clock.now(), between=between)
        ((now,),) = execute(conn, "clock_now", {"now": self.app.clock.now()})
        fires = prune_fires(conn, self.app, now)
        gone = execute(conn, "worker_prune", {"factor": WORKER_STALE_LEASES, "now": now})
        keys = prune_idempotency_keys(conn, now, self.batch, between)
        self.runs += 1
        if any(deleted.values()) or fires or gone or keys:
            log.info("maintenance: pruned %s finished jobs, %d cron fire records, %d dead "
                     "workers' registry rows, %d expired idempotency keys",
                     ", ".join(f"{n} {s}" for s, n in deleted.items() if n) or "no", fires,
                     len(gone), keys)
        return deleted
