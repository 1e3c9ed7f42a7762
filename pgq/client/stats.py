"""Queue stats (issue 14 item 3): what they are, how they are computed, how they are read.

The stats leader (``pgq.scheduling.stats.StatsService``) runs ``plan_compute`` every few
seconds and stores the document it returns twice: in Redis (``Coordinator.cache_set``,
with a TTL of a few refreshes) and in ``pgq_stats`` (for readers without Redis). Readers
(``app.stats()``, ``pgq stats``) take the first fresh copy of: Redis, ``pgq_stats``, and
only if both are missing or stale compute it themselves; ``Stats.source`` says which
("redis", "postgres", "direct") and ``age_seconds`` how old it is.

Every statement (``stats_*`` in pgq/store/queries.sql) reads a partial index or the
catalogue and is bounded, whatever the size of ``pgq_jobs`` (docs/operations.md, "Stats",
has their plans on 10 million rows):

* jobs waiting, running and failed: exact, per queue, state and task, each part capped
  at ``CAP`` rows; a part over its cap takes the planner's estimates instead (the
  ``pgq_jobs_queue_state`` MCV statistics times the table's row estimate), listed in
  ``estimated``. Completed and cancelled counts are always estimates.
* finished in the last 1, 5 and 15 minutes: a range of the finished index per finished
  state, newest first, capped at ``WINDOW_CAP`` rows each (``finished_capped`` lists
  the windows the rows read did not cover: their figures are lower bounds).
* retried: jobs that finished in the window after more than one attempt, plus jobs now
  waiting to retry whose latest error came in the window.
* run time p50/p95 per task: the last ``SAMPLE`` jobs completed in 15 minutes.
* lag: since when the oldest due job is due (a loose index scan of the claim index).
* orphaned tasks: tasks of waiting jobs that no live worker serving their queue
  registered (from the capped exact rows: partial when the waiting part is capped).
* unserved queues: due work (``due`` jobs, or a lag) and no live worker in the registry
  serving the queue; a paused queue is never unserved (nobody is meant to serve it). The
  stats leader logs a WARNING when a queue becomes unserved (pgq.scheduling.stats).
* history: up to ``HISTORY_POINTS`` per-minute points of jobs completed and failed per
  queue, oldest first (``history_after``; ``Stats.throughput()``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pgq.coordination import Coordinator
from pgq.core.clock import Clock
from pgq.store.database import Pools, run_plan, run_plan_async
from pgq.store.plan import Exec, Plan

KEY = "queues"
"""The document's key, in Redis (under the instance prefix) and in ``pgq_stats``."""
EVERY = 5.0
"""Seconds between refreshes (``StatsService``'s default)."""
CAP = 10_000
"""Rows each counting part reads at most (about 25 ms of heap reads each on 10 million
rows, bench/README.md)."""
WINDOW_CAP = 50_000
"""Rows of each finished state the windows read at most, newest first: the 1-minute
window is exact up to about 830 jobs/s, the 5-minute one up to 160/s, the 15-minute one
up to 55/s; beyond, those windows are lower bounds, listed in ``finished_capped``."""
SAMPLE = 10_000
"""Completed jobs the run-time percentiles are taken from at most."""
WINDOWS = ("1m", "5m", "15m")
HISTORY_POINTS = 60
"""Per-minute points the document's ``history`` keeps (an hour)."""
WAITING = ("available", "scheduled", "retryable")

Source = Literal["redis", "postgres", "direct"]

ALWAYS_ESTIMATED = ("completed", "cancelled")
"""States whose counts are always the planner's estimate (they grow without bound and
are never read row by row); absent from ``counts`` until PostgreSQL has analyzed."""


def stale_after(every: float) -> float:
    """A cached document older than this is not served (its leader is gone)."""
    return max(3 * every, every + 10)


@dataclass(frozen=True)
class QueueStats:
    name: str
    paused: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    """Jobs per state; states in ``estimated`` are the planner's estimates."""
    estimated: tuple[str, ...] = ()
    lag_seconds: float | None = None
    """Age of the oldest due job (None: nothing due)."""
    finished: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per window ("1m", "5m", "15m"): completed, failed, cancelled, retried."""
    finished_capped: tuple[str, ...] = ()
    """Windows whose figures are lower bounds (more jobs finished than were read)."""
    runtimes: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per task: count, p50, p95 (seconds) over the last 15 minutes."""
    dead_letters: int = 0
    """Failed jobs now (an estimate if "failed" is in ``estimated``)."""
    dead_letter_growth: dict[str, int] = field(default_factory=dict)
    """New dead letters per window (jobs that ended failed in it)."""
    workers: tuple[str, ...] = ()
    """Live workers serving the queue (registry)."""
    orphaned_tasks: dict[str, int] = field(default_factory=dict)
    """Waiting jobs per task that no live worker of the queue registered."""
    due: int = 0
    """Waiting jobs a claim could take now (run_at reached); a lower bound when the
    waiting states are estimated (their part was capped)."""
    live_workers: int = 0
    """How many live workers serve the queue (``len(workers)``)."""
    unserved: bool = False
    """Due work and no live worker serving the queue, and not paused: an alert."""


@dataclass(frozen=True)
class ThroughputPoint:
    """One minute of ``history``: jobs completed and failed in it, in all queues and per
    queue (``{queue: {"completed": n, "failed": n}}``, queues with none left out)."""

    at: datetime
    """The minute's start."""
    completed: int
    failed: int
    per_queue: dict[str, dict[str, int]]


@dataclass(frozen=True)
class Stats:
    source: Source
    age_seconds: float
    computed_at: datetime
    refresh_seconds: float
    """How long the computation took."""
    queues: dict[str, QueueStats]
    document: dict[str, Any] = field(repr=False, compare=False)
    """The JSON document as stored (``pgq stats --json``)."""

    @property
    def unserved(self) -> list[str]:
        """The queues with due work and no live worker (sorted)."""
        return [name for name, q in self.queues.items() if q.unserved]

    def throughput(self) -> list[ThroughputPoint]:
        """Jobs finished per minute over the last hour, oldest first (empty until the
        stats leader has crossed a minute boundary; see ``history_after``)."""
        return [ThroughputPoint(datetime.fromisoformat(p["at"]),
                                sum(q["completed"] for q in p["queues"].values()),
                                sum(q["failed"] for q in p["queues"].values()), p["queues"])
                for p in self.document.get("history", ())]

    @classmethod
    def from_document(cls, doc: dict[str, Any], source: Source,
                      age_seconds: float | None = None) -> Stats:
        computed_at = datetime.fromisoformat(doc["computed_at"])
        if age_seconds is None:
            age_seconds = max(0.0, time.time() - computed_at.timestamp())
        queues = {name: QueueStats(
            name=name, paused=q["paused"], counts=q["counts"],
            estimated=tuple(q["estimated"]), lag_seconds=q["lag_seconds"],
            finished=q["finished"], finished_capped=tuple(q["finished_capped"]),
            runtimes=q["runtimes"], dead_letters=q["dead_letters"],
            dead_letter_growth=q["dead_letter_growth"], workers=tuple(q["workers"]),
            orphaned_tasks=q["orphaned_tasks"], due=q.get("due", 0),
            live_workers=q.get("live_workers", len(q["workers"])),
            # A document an older leader stored has no flag: the same rule from its lag.
            unserved=q.get("unserved", not q["paused"] and not q["workers"]
                           and q["lag_seconds"] is not None))
            for name, q in doc["queues"].items()}
        return cls(source, age_seconds, computed_at, doc["refresh_seconds"], queues, doc)


def _queue(doc: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in doc:
        doc[name] = {"paused": False, "counts": {}, "estimated": [], "lag_seconds": None,
                     "finished": {w: {"completed": 0, "failed": 0, "cancelled": 0,
                                      "retried": 0} for w in WINDOWS},
                     "finished_capped": [], "runtimes": {}, "dead_letters": 0,
                     "dead_letter_growth": {w: 0 for w in WINDOWS}, "workers": [],
                     "orphaned_tasks": {}, "due": 0, "live_workers": 0, "unserved": False}
    q: dict[str, Any] = doc[name]
    return q


def plan_compute(now: datetime | None = None, *, cap: int = CAP, window_cap: int = WINDOW_CAP,
                 sample: int = SAMPLE) -> Plan:
    """The stats document (a JSON-ready dict), from the ``stats_*`` statements."""
    began = time.perf_counter()
    ((now, _reltuples),) = yield Exec("stats_now", {"now": now})
    queues: dict[str, Any] = {}
    active = yield Exec("stats_active_counts", {"now": now, "cap": cap})
    part_rows: dict[str, int] = {}
    waiting_tasks: dict[tuple[str, str], int] = {}
    for part, queue, state, task, n, r1, r5, r15, due in active:
        part_rows[part] = part_rows.get(part, 0) + n
        q = _queue(queues, queue)
        q["counts"][state] = q["counts"].get(state, 0) + n
        q["due"] += due
        if part == "waiting":
            waiting_tasks[queue, task] = waiting_tasks.get((queue, task), 0) + n
        for w, r in zip(WINDOWS, (r1, r5, r15), strict=True):
            q["finished"][w]["retried"] += r
    capped = {p for p, n in part_rows.items() if n >= cap}
    estimated_states = set(ALWAYS_ESTIMATED) | {
        s for p in capped for s in ({"waiting": WAITING, "running": ("running",),
                                     "failed": ("failed",)}[p])}
    for queue, state, n in (yield Exec("stats_estimates", {})):
        if state in estimated_states:
            q = _queue(queues, queue)
            q["counts"][state] = n
    for q in queues.values():
        q["estimated"] = sorted(s for s in estimated_states if s in q["counts"])
    per_state: dict[str, tuple[int, datetime]] = {}
    for queue, state, f1, f5, f15, t1, t5, t15, oldest in (
            yield Exec("stats_finished_window", {"now": now, "cap": window_cap})):
        q = _queue(queues, queue)
        n, was = per_state.get(state, (0, oldest))
        per_state[state] = (n + f15, min(was, oldest))
        for w, n, t in zip(WINDOWS, (f1, f5, f15), (t1, t5, t15), strict=True):
            q["finished"][w][state] += n
            q["finished"][w]["retried"] += t
            if state == "failed":
                q["dead_letter_growth"][w] += n
    reached = min((oldest for n, oldest in per_state.values() if n >= window_cap), default=None)
    capped_windows = [] if reached is None else [
        w for w, minutes in zip(WINDOWS, (1, 5, 15), strict=True)
        if reached > now - timedelta(minutes=minutes)]
    for q in queues.values():
        q["finished_capped"] = capped_windows
    for queue, task, n, p50, p95 in (yield Exec("stats_runtimes", {"now": now, "sample": sample})):
        _queue(queues, queue)["runtimes"][task] = {"count": n, "p50": p50, "p95": p95}
    for queue, due_since in (yield Exec("stats_lag", {"now": now})):
        if due_since is not None:
            _queue(queues, queue)["lag_seconds"] = max(0.0, (now - due_since).total_seconds())
    for name, paused in (yield Exec("stats_paused", {})):
        _queue(queues, name)["paused"] = paused
    live_tasks: dict[str, set[str]] = {}
    for row in (yield Exec("worker_list", {"queue": None, "now": now})):
        worker_id, serves, tasks, alive = row[0], row[3], row[9], row[11]
        if not alive:
            continue
        for queue in serves:
            _queue(queues, queue)["workers"].append(worker_id)
            live_tasks.setdefault(queue, set()).update(tasks)
    for (queue, task), n in waiting_tasks.items():
        if task not in live_tasks.get(queue, set()):
            queues[queue]["orphaned_tasks"][task] = n
    for q in queues.values():
        q["dead_letters"] = q["counts"].get("failed", 0)
        q["live_workers"] = len(q["workers"])
        # The lag (a probe of the whole claim index) proves due work even where the
        # capped rows held none of it.
        q["unserved"] = (not q["paused"] and not q["workers"]
                         and (q["due"] > 0 or q["lag_seconds"] is not None))
    return {"computed_at": now.isoformat(), "refresh_seconds": time.perf_counter() - began,
            "queues": dict(sorted(queues.items())),
            "unserved": sorted(name for name, q in queues.items() if q["unserved"])}


def _minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def history_after(before: dict[str, Any] | None, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``doc``'s ``history``: ``before``'s (the previous document: the leader's last, or
    the stored one on a new leader), plus, when ``doc`` is the first refresh of a new
    minute, a point for the minute that just ended, less points over an hour old.

    An approximation that costs no query: the point's figures are ``doc``'s "1m" window
    (the 60 s before this refresh, up to ``every`` seconds into the new minute), not the
    exact minute; a minute without a refresh in its first seconds (no leader) gets no
    point, and the points of consecutive minutes may overlap by those seconds."""
    history: list[dict[str, Any]] = list(before.get("history", ())) if before else []
    now = _minute(datetime.fromisoformat(doc["computed_at"]))
    ended = now - timedelta(minutes=1)
    if (before is not None and _minute(datetime.fromisoformat(before["computed_at"])) < now
            and all(datetime.fromisoformat(p["at"]) < ended for p in history)):
        history.append({"at": ended.isoformat(), "queues": {
            name: {"completed": q["finished"]["1m"]["completed"],
                   "failed": q["finished"]["1m"]["failed"]}
            for name, q in doc["queues"].items()
            if q["finished"]["1m"]["completed"] or q["finished"]["1m"]["failed"]}})
    cutoff = now - timedelta(minutes=HISTORY_POINTS)
    return [p for p in history if datetime.fromisoformat(p["at"]) >= cutoff][-HISTORY_POINTS:]


def encode(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def plan_store(doc: dict[str, Any]) -> Plan:
    yield Exec("stats_store", {"key": KEY, "data": encode(doc),
                               "computed_at": doc["computed_at"]})


def plan_load(now: datetime | None = None) -> Plan:
    """The ``pgq_stats`` copy and its age, or None."""
    rows = yield Exec("stats_load", {"key": KEY, "now": now})
    if not rows:
        return None
    text, age = rows[0]
    return json.loads(text), float(age)


def _cached(coordinator: Coordinator, every: float) -> Stats | None:
    text = coordinator.cache_get(KEY)
    if text is None:
        return None
    stats = Stats.from_document(json.loads(text), "redis")
    return stats if stats.age_seconds <= stale_after(stats.document.get("every", every)) else None


def _from_table(loaded: tuple[dict[str, Any], float] | None, every: float) -> Stats | None:
    if loaded is None or loaded[1] > stale_after(loaded[0].get("every", every)):
        return None
    return Stats.from_document(loaded[0], "postgres", loaded[1])


def read(coordinator: Coordinator, pools: Pools, now: datetime | None = None, *,
         every: float = EVERY) -> Stats:
    """The freshest stats: Redis, else ``pgq_stats``, else computed here (flagged)."""
    found = _cached(coordinator, every)
    if found is not None:
        return found
    with pools.connection() as conn:
        found = _from_table(run_plan(conn, plan_load(now), atomic=False), every)
        if found is not None:
            return found
        doc = run_plan(conn, plan_compute(now), atomic=False)
    return Stats.from_document(doc, "direct", 0.0)


async def aread(coordinator: Coordinator, pools: Pools, now: datetime | None = None, *,
                every: float = EVERY) -> Stats:
    """``read`` for async code (the Redis read runs in a thread)."""
    found = await asyncio.to_thread(_cached, coordinator, every)
    if found is not None:
        return found
    async with pools.async_connection() as conn:
        found = _from_table(await run_plan_async(conn, plan_load(now), atomic=False), every)
        if found is not None:
            return found
        doc = await run_plan_async(conn, plan_compute(now), atomic=False)
    return Stats.from_document(doc, "direct", 0.0)


def read_cached(coordinator: Coordinator, pools: Pools,
                now: datetime | None = None) -> Stats | None:
    """The document the stats leader stored last, however old (None if none): never
    computed here. For the metrics exporter, scraped every few seconds: a stale document
    is served with its age, which is what an alert on a dead stats leader reads."""
    text = coordinator.cache_get(KEY)
    if text is not None:
        return Stats.from_document(json.loads(text), "redis")
    with pools.connection() as conn:
        loaded = run_plan(conn, plan_load(now), atomic=False)
    return None if loaded is None else Stats.from_document(loaded[0], "postgres", loaded[1])


class StatsReads:
    """``App``'s stats calls (a base class, so ``App`` stays within its size)."""

    _pools: Pools
    clock: Clock

    @property
    def coordinator(self) -> Coordinator:
        raise NotImplementedError

    def stats(self) -> Stats:
        """Queue stats as the stats leader cached them (Redis, else ``pgq_stats``), or
        computed now if neither is fresh; ``source`` and ``age_seconds`` say which."""
        return read(self.coordinator, self._pools, self.clock.now())

    def cached_stats(self) -> Stats | None:
        """The stats leader's last document, however old, or None: never computed (see
        ``read_cached``; the metrics exporter's read)."""
        return read_cached(self.coordinator, self._pools, self.clock.now())

    async def astats(self) -> Stats:
        """``stats()`` for async code."""
        return await aread(self.coordinator, self._pools, self.clock.now())
