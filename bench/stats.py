"""Queue stats on a 10,000,000-row ``pgq_jobs`` (issue 14 item 3): the stats leader's
refresh, and a reader's cached read, with the plan of every statement.

Acceptance point: ``pgq stats`` served from the cache in under 100 ms; the refresh under
1 s.

Setup (scratch database ``pgq_bench_stats``, ``INSERT … SELECT generate_series``, then
``VACUUM ANALYZE``), over five queues and ten tasks:

* 9,700,000 ``completed`` jobs, finished uniformly over the last 7 days (about 14,000 of
  them in the last 15 minutes), each having run 0-2 s (started at run_at), one in ten
  after two attempts;
* 100,000 ``failed`` over the last 30 days, 50,000 ``cancelled`` over the last 7;
* 100,000 ``available`` due within the last hour, 20,000 ``scheduled`` in the next day,
  10,000 ``retryable`` (their last error within the last 15 minutes), 1,000 ``running``;
* one worker registry row per queue but the last, whose tasks are then orphaned.

Measured: ``StatsService.refresh`` (compute both copies' document and store it in
Redis and ``pgq_stats``) ``RUNS`` times after a first cold one, on one connection as
the leader does; then ``app.stats()`` from Redis, from ``pgq_stats`` (an App whose Redis
URL is dead) and computed directly (no fresh copy), each ``READS`` times. Median and
max are reported. Then ``EXPLAIN (ANALYZE, BUFFERS)`` of each ``stats_*`` statement.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

import pgq
from pgq.scheduling.stats import StatsService
from pgq.store.queries import QUERIES

DATABASE = "pgq_bench_stats"
ROWS = 10_000_000
RUNS = 5
READS = 20
DEAD_REDIS = "redis://127.0.0.1:1/0"

SEED = [
    # (rows, state, run_at, started_at, finished_at, attempt)
    (9_700_000, "completed", "now() - random() * interval '7 days'", None, None,
     "CASE WHEN i % 10 = 0 THEN 2 ELSE 1 END"),
    (100_000, "failed", "now() - random() * interval '30 days'", None, None, "25"),
    (50_000, "cancelled", "now() - random() * interval '7 days'", None, None, "1"),
    (100_000, "available", "now() - random() * interval '1 hour'", "NULL", "NULL", "0"),
    (20_000, "scheduled", "now() + random() * interval '1 day'", "NULL", "NULL", "0"),
    (10_000, "retryable", "now() + random() * interval '1 hour'", "NULL", "NULL", "1"),
    (1_000, "running", "now() - random() * interval '1 minute'", "r.run_at", "NULL", "1"),
]
STATEMENTS = ["stats_now", "stats_active_counts", "stats_estimates", "stats_finished_window",
              "stats_runtimes", "stats_lag", "stats_paused", "worker_list", "stats_store",
              "stats_load"]


@dataclass
class StatsResult:
    workload: str
    rows: int
    seed_seconds: float
    refresh: list[float] = field(default_factory=list)
    cold_refresh: float = 0.0
    reads: dict[str, list[float]] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"stats on {self.rows:,} rows (seeded in {self.seed_seconds:.0f} s); ms, "
               f"median / max of the runs"]
        out.append(f"  refresh (leader)     {_ms(self.refresh)}   cold: "
                   f"{self.cold_refresh * 1000:.0f}   target < 1000")
        for source, times in self.reads.items():
            target = "   target < 100" if source == "redis" else ""
            out.append(f"  read from {source:<10} {_ms(times)}{target}")
        for name, plan in self.plans.items():
            out.append(f"\n-- {name}\n{plan}")
        return out

    def json(self) -> list[dict[str, Any]]:
        return [{"workload": self.workload, "unit": "ms", "rows": self.rows,
                 "refresh_median": round(statistics.median(self.refresh) * 1000, 1),
                 "refresh_cold": round(self.cold_refresh * 1000, 1),
                 **{f"read_{s}_median": round(statistics.median(t) * 1000, 2)
                    for s, t in self.reads.items()}}]


def _ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:>8.1f} / {max(times) * 1000:>8.1f}"


def seed(url: str) -> float:
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        for rows, state, run_at, started_or_none, finished_or_none, attempt in SEED:
            started = started_or_none or "r.run_at"
            finished = finished_or_none or "r.run_at + random() * interval '2 seconds'"
            conn.execute(
                f"INSERT INTO pgq_jobs (queue, task, state, attempt, run_at, created_at, "
                f"started_at, finished_at, lease_owner, lease_expires_at, errors) "
                f"SELECT 'q' || (i % 5), 't' || (i % 10), '{state}', {attempt}, r.run_at, "
                f"r.run_at - interval '1 second', {started}, {finished}, "
                f"CASE WHEN '{state}' = 'running' THEN 'bench' END, "
                f"CASE WHEN '{state}' = 'running' THEN now() + interval '1 hour' END, "
                f"CASE WHEN '{state}' = 'retryable' THEN jsonb_build_array(jsonb_build_object("
                f"'at', now() - random() * interval '15 minutes', 'type', 'E')) "
                f"ELSE '[]'::jsonb END "
                f"FROM generate_series(1, {rows}) AS i, "
                # i in the lateral makes it correlated: evaluated (random()) per row
                f"LATERAL (SELECT {run_at} + 0 * i * interval '1 s' AS run_at) AS r")
        for q in range(4):
            conn.execute("INSERT INTO pgq_workers (id, host, pid, queues, concurrency, version, "
                         "tasks, lease_seconds) VALUES (%s, 'bench', %s, %s, 10, 'bench', %s, "
                         "3600)", [f"bench:{q}", q, f'{{"q{q}": 1}}',
                                   '["' + '","'.join(f"t{t}" for t in range(10)) + '"]'])
        conn.execute("VACUUM ANALYZE pgq_jobs")
    return time.perf_counter() - began


def plans(conn: psycopg.Connection[Any], now: Any) -> dict[str, str]:
    from pgq.client.stats import CAP, SAMPLE, WINDOW_CAP
    params = {"now": now, "cap": CAP, "sample": SAMPLE, "queue": None, "key": "plan",
              "data": "{}", "computed_at": now}
    out: dict[str, str] = {}
    for name in STATEMENTS:
        cap = WINDOW_CAP if name == "stats_finished_window" else CAP  # as plan_compute
        with conn.transaction():  # rolled back: stats_store writes
            rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {QUERIES[name]}",
                                {**params, "cap": cap}).fetchall()
            out[name] = "\n".join(r[0] for r in rows)
            raise psycopg.Rollback()
    return out


def run(url: str, *, runs: int = RUNS) -> StatsResult:
    with psycopg.connect(url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM pgq_jobs").fetchone() or (0,)
    seed_seconds = seed(url) if count < ROWS else 0.0
    redis_url = os.environ.get("PGQ_REDIS_URL", "redis://127.0.0.1:6379/0")
    settings = pgq.Settings(database_url=url, redis_url=redis_url)
    result = StatsResult("stats", ROWS, seed_seconds)
    with pgq.App(settings, strict=False) as app, \
            psycopg.connect(url, autocommit=True) as conn:
        service = StatsService(app, holder="bench")
        began = time.perf_counter()
        doc = service.refresh(conn)
        result.cold_refresh = time.perf_counter() - began
        for _ in range(runs):
            began = time.perf_counter()
            doc = service.refresh(conn)
            result.refresh.append(time.perf_counter() - began)
        result.reads["redis"] = _reads(app, "redis")
        with pgq.App(settings.with_changes(redis_url=DEAD_REDIS), strict=False) as cut_off:
            result.reads["postgres"] = _reads(cut_off, "postgres")
            conn.execute("DELETE FROM pgq_stats")
            result.reads["direct"] = _reads(cut_off, "direct", READS // 4)
        result.plans = plans(conn, doc["computed_at"])
    return result


def _reads(app: pgq.App, source: str, n: int = READS) -> list[float]:
    times: list[float] = []
    for _ in range(n):
        began = time.perf_counter()
        stats = app.stats()
        times.append(time.perf_counter() - began)
        assert stats.source == source, (stats.source, source)
    return times


STATS = {"stats": run}
