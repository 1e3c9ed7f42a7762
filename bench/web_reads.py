"""The dashboard's reads on a 10,000,000-row ``pgq_jobs`` (issue 16): the overview
(``app.stats()``, the cached read) and the first page (50 jobs) of the job list under
each filter the dashboard offers, p50/p95, with the plan of every list.

Acceptance point: each answers in under 150 ms p95.

Database: ``PGQ_BENCH_WEB_DB`` (default ``pgq_bench_web``) on PGQ_DATABASE_URL's server.
Unlike the other workloads it is *kept*: seeding 10 million rows takes minutes, so a run
migrates the database it finds (a new index migration is then built on the full table,
the way an operator would meet it) and seeds only when it holds fewer than ``ROWS`` jobs.
``PGQ_BENCH_WEB_RESEED=1`` drops it first.

Seed (one ``INSERT ... SELECT generate_series`` per part, the secondary indexes dropped
for the load and rebuilt after it, then ``VACUUM ANALYZE``): ids in creation order,
``created_at`` spread evenly over 30 days; 20 queues (uniform), 50 tasks (skewed: ``t0``
is about 14 % of the jobs, ``t49`` 0.3 %):

* 9,900,000 finished: 97 % ``completed``, 2 % ``failed`` (two errors, the last one's
  ``type`` one of five), 1 % ``cancelled``;
* 99,000 waiting created in the last 2 hours (ids above the history's): a third each
  ``available``, ``scheduled`` (due within a day), ``retryable`` (one error); 1,000
  ``running``;
* on every part: tags on 10 % (one of ``tag0``..``tag19``), ``meta`` ``{"tenant": ...}``
  on 30 % (200 tenants), a ``unique_key`` on 5 % (held by the waiting ones);
* ``rare.task`` in queue ``quiet``: 20 jobs, all 29 days old (the newest-first scan meets
  them last), the dashboard's page of a quiet task or queue.

Measured, ``READS`` rounds after ``WARMUP`` rounds, every query once per round (so drift
on the shared machine meets all alike), through one ``App`` as the web process holds it
(its pooled connection; psycopg prepares a statement after five runs, so the plan the
server caches is the one measured). Baseline in the same rounds: ``app.jobs.get(id)``
(a primary-key read through the same path) and a bare ``SELECT 1`` round trip.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

import pgq
from pgq.scheduling.stats import StatsService
from pgq.store import migrate
from pgq.store.queries import QUERIES

DATABASE = os.environ.get("PGQ_BENCH_WEB_DB", "pgq_bench_web")
ROWS = 10_000_000
WARMUP = 3
READS = 40
LIMIT = 50

_TAGS = "CASE WHEN random() < 0.10 THEN ARRAY['tag' || floor(random() * 20)::int] ELSE '{}' END"
_META = ("CASE WHEN random() < 0.30 THEN jsonb_build_object('tenant', 'tenant-' || "
         "floor(random() * 200)::int) ELSE '{}'::jsonb END")
_TYPES = "(ARRAY['TimeoutError','ValueError','KeyError','ConnectionError','HTTPError'])"
_ERROR = ("jsonb_build_object('attempt', {n}, 'at', r.t, 'type', "
          f"{_TYPES}[1 + floor(random() * 5)::int], 'message', 'boom', 'traceback', '')")
# (rows, state SQL, created_at SQL, run_at SQL, started SQL, finished SQL, errors SQL,
#  unique_held SQL); in each, i is the row number and r.t the created_at.
_FINISHED = ("CASE WHEN i % 100 < 2 THEN 'failed' WHEN i % 100 = 2 THEN 'cancelled' "
             "ELSE 'completed' END")
SEED = [
    (9_900_000, _FINISHED,
     "now() - interval '30 days' + i * (interval '30 days' - interval '2 hours') / 9900000",
     "r.t", "r.t + random() * interval '1 second'", "r.t + random() * interval '3 seconds'",
     "CASE WHEN i % 100 < 2 THEN jsonb_build_array(" + _ERROR.format(n=1) + ", "
     + _ERROR.format(n=2) + ") ELSE '[]'::jsonb END", "false"),
    (99_000, "(ARRAY['available','scheduled','retryable'])[1 + i % 3]",
     "now() - interval '2 hours' + i * interval '2 hours' / 99000",
     "CASE i % 3 WHEN 1 THEN now() + random() * interval '1 day' ELSE r.t END",
     "NULL", "NULL",
     "CASE WHEN i % 3 = 2 THEN jsonb_build_array(" + _ERROR.format(n=1) + ") "
     "ELSE '[]'::jsonb END", "true"),
    (1_000, "'running'", "now() - random() * interval '1 minute'", "r.t", "r.t", "NULL",
     "'[]'::jsonb", "true"),
]


@dataclass
class WebReadsResult:
    workload: str
    rows: int
    seed_seconds: float
    times: dict[str, list[float]] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    baseline: str = "baseline: jobs.get(id)"
    """The row the ratios divide by."""
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        base = _p(self.times[self.baseline], 95)
        out = [f"{self.workload} on {self.rows:,} rows (seeded in {self.seed_seconds:.0f} s); ms, "
               f"{len(self.times[self.baseline])} reads each; ratio = p95 / baseline p95; target p95 < 150"]
        for name, times in self.times.items():
            p95 = _p(times, 95)
            flag = "" if name.startswith("baseline") or p95 < 0.150 else "  OVER"
            out.append(f"  {name:<34} p50 {_p(times, 50) * 1000:>8.2f}  p95 {p95 * 1000:>8.2f}"
                       f"  x{p95 / base:>7.1f}{flag}")
        read = {source: self.sources.count(source) for source in sorted(set(self.sources))}
        if read:
            out.append(f"  overview sources (warm-up included): {read}")
        out.extend(f"  ! {note}" for note in sorted(set(self.notes)))
        for name, plan in self.plans.items():
            out.append(f"\n-- {name}\n{plan}")
        return out

    def json(self) -> list[dict[str, Any]]:
        base = _p(self.times[self.baseline], 95)
        return [{"workload": self.workload, "query": name, "unit": "ms", "rows": self.rows,
                 "p50": round(_p(t, 50) * 1000, 2), "p95": round(_p(t, 95) * 1000, 2),
                 "ratio_p95": round(_p(t, 95) / base, 1)} for name, t in self.times.items()]


def _p(times: list[float], pct: int) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(times)
    return ordered[max(0, -(-len(ordered) * pct // 100) - 1)]


def ensure_database(admin_url: str, name: str = DATABASE) -> str:
    """The kept database, created if missing (or dropped first on request), migrated."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if os.environ.get("PGQ_BENCH_WEB_RESEED") == "1":
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(f"CREATE DATABASE {name}")
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(pgq.Settings(database_url=url))
    return url


def seed(url: str) -> float:
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("TRUNCATE pgq_jobs CASCADE")
        # Bulk load without the secondary indexes, then build each once (sorted): minutes
        # faster than maintaining them row by row.
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'pgq_jobs' "
            "AND indexname <> 'pgq_jobs_pkey'").fetchall()
        for index_name, _ in indexes:
            conn.execute(f"DROP INDEX {index_name}")
        for rows, state, created, run_at, started, finished, errors, held in SEED:
            conn.execute(
                f"INSERT INTO pgq_jobs (queue, task, state, attempt, args, run_at, created_at, "
                f"started_at, finished_at, lease_owner, lease_expires_at, errors, tags, meta, "
                f"unique_key, unique_held) "
                f"SELECT 'q' || floor(random() * 20)::int, "
                f"'t' || floor(50 * random() ^ 2)::int, s.state, "
                f"CASE WHEN s.state IN ('scheduled', 'available') THEN 0 "
                f"WHEN s.state = 'failed' THEN 2 ELSE 1 END, "
                f"jsonb_build_object('user_id', i, 'kind', 'welcome'), {run_at}, r.t, "
                f"{started}, {finished}, "
                f"CASE WHEN s.state = 'running' THEN 'bench' END, "
                f"CASE WHEN s.state = 'running' THEN now() + interval '1 hour' END, "
                f"{errors}, {_TAGS}, {_META}, "
                f"CASE WHEN i % 20 = 7 THEN 'key-' || s.state || '-' || i END, "
                f"i % 20 = 7 AND {held} "
                f"FROM generate_series(1, {rows}) AS i, "
                # i in the laterals makes them correlated: evaluated per row
                f"LATERAL (SELECT ({created}) + 0 * i * interval '1 s' AS t) AS r, "
                f"LATERAL (SELECT ({state}) || repeat('', 0 * i) AS state) AS s")
        conn.execute(
            "INSERT INTO pgq_jobs (queue, task, state, attempt, run_at, created_at, started_at, "
            "finished_at) SELECT 'quiet', 'rare.task', 'completed', 1, t, t, t, t "
            "FROM generate_series(1, 20) AS i, "
            "LATERAL (SELECT now() - interval '29 days' + i * interval '1 minute' AS t) AS r")
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute("VACUUM ANALYZE pgq_jobs")
    return time.perf_counter() - began


def cases(probe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The job-list filters measured: name -> JobFilter fields."""
    return {
        "list: no filter": {},
        "list: state=failed": {"state": "failed"},
        "list: state=available": {"state": "available"},
        "list: queue=q7": {"queue": "q7"},
        "list: task=t20": {"task": "t20"},
        "list: tag=tag7": {"tag": "tag7"},
        "list: meta tenant-42": {"meta": {"tenant": "tenant-42"}},
        "list: unique_key": {"unique_key": probe["unique_key"]},
        "list: state=failed+queue=q3": {"state": "failed", "queue": "q3"},
        "list: since=1 hour ago": {"since": probe["now"] - timedelta(hours=1)},
        "list: task=rare.task (old)": {"task": "rare.task"},
        "list: task=absent.task": {"task": "absent.task"},
        "list: queue=quiet (old)": {"queue": "quiet"},
        "list: state=failed+task=t49": {"state": "failed", "task": "t49"},
        "list: tag=absent": {"tag": "absent"},
        "list: meta tenant absent": {"meta": {"tenant": "absent"}},
    }


def plan_of(conn: psycopg.Connection[Any], fields: dict[str, Any]) -> str:
    params = {**pgq.JobFilter(**fields).params(), "ids": None, "limit": LIMIT + 1,
              "before": None}
    rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {QUERIES['job_list']}",
                        params).fetchall()
    return "\n".join(r[0] for r in rows)


def run(url: str, *, runs: int = READS) -> WebReadsResult:
    with psycopg.connect(url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM pgq_jobs").fetchone() or (0,)
    seed_seconds = seed(url) if count < ROWS else 0.0
    redis_url = os.environ.get("PGQ_REDIS_URL", "redis://127.0.0.1:6379/0")
    settings = pgq.Settings(database_url=url, redis_url=redis_url)
    result = WebReadsResult("web_reads", ROWS, seed_seconds)
    with pgq.App(settings, strict=False) as app, \
            psycopg.connect(url, autocommit=True) as conn:
        # The stats leader, as a worker runs it: a refresh every `every` seconds on a
        # connection of its own, so the overview reads a fresh cached copy throughout.
        service = StatsService(app, holder="bench")
        service.refresh(conn)
        stop = threading.Event()
        leader = threading.Thread(target=_lead, args=(service, url, stop), daemon=True)
        leader.start()
        probe_row = conn.execute(
            "SELECT max(id), now(), (SELECT unique_key FROM pgq_jobs WHERE unique_key IS NOT "
            "NULL AND state = 'completed' ORDER BY id LIMIT 1 OFFSET 100) FROM pgq_jobs"
        ).fetchone()
        assert probe_row is not None
        probe = {"id": probe_row[0] - 5000, "now": probe_row[1], "unique_key": probe_row[2]}
        calls: dict[str, Callable[[], Any]] = {
            "baseline: SELECT 1": lambda: conn.execute("SELECT 1").fetchone(),
            "baseline: jobs.get(id)": lambda: app.jobs.get(probe["id"]),
            "overview: app.stats()": lambda: result.sources.append(app.stats().source),
        }
        for name, fields in cases(probe).items():
            calls[name] = _lister(app, fields)
        result.times = {name: [] for name in calls}
        for round_ in range(WARMUP + runs):
            for name, call in calls.items():
                began = time.perf_counter()
                call()
                if round_ >= WARMUP:
                    result.times[name].append(time.perf_counter() - began)
        stop.set()
        leader.join()
        result.plans = {name: plan_of(conn, fields) for name, fields in cases(probe).items()}
    return result


def _lead(service: StatsService, url: str, stop: threading.Event) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(service.every):
            service.refresh(conn)


def _lister(app: pgq.App, fields: dict[str, Any]) -> Callable[[], Any]:
    where = pgq.JobFilter(**fields)
    return lambda: app.jobs.list(where, limit=LIMIT)


def main() -> None:  # pragma: no cover - manual: python -m bench.web_reads
    admin = os.environ.get("PGQ_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    result = run(ensure_database(admin))
    print("\n".join(result.lines()))
    for line in result.json():
        print(json.dumps(line))


WEB_READS = {"web_reads": run}

if __name__ == "__main__":
    main()
