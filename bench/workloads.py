"""Benchmark workloads. Each compares pgq with a same-run baseline doing the same
database work without pgq, because absolute numbers on a shared 2-core machine drift;
the ratio is the figure that counts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

import pgq
from pgq.store import migrate


@dataclass
class Figure:
    workload: str
    unit: str
    pgq: float
    baseline: float | None
    baseline_name: str

    @property
    def ratio(self) -> float | None:
        return self.pgq / self.baseline if self.baseline else None


def fresh_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(pgq.Settings(database_url=url))
    return url


def _reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE pgq_jobs")
        conn.execute("CHECKPOINT")


def _rate(n: int, url: str, fn: Callable[[], None]) -> float:
    _reset(url)
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def _median_rates(runs: int, n: int, url: str, ours: Callable[[], None],
                  base: Callable[[], None]) -> tuple[float, float]:
    """Median rates of ``ours`` and ``base``, their runs alternating (base first), so
    both meet the same neighbours on a shared machine."""
    a, b = [], []
    for _ in range(runs):
        b.append(_rate(n, url, base))
        a.append(_rate(n, url, ours))
    a.sort()
    b.sort()
    return a[len(a) // 2], b[len(b) // 2]


def enqueue_bulk(url: str, n: int = 100_000, runs: int = 5) -> Figure:
    """``App.enqueue_many`` of n jobs in one call (validation, encoding, COPY, ids),
    against a raw COPY of the same rows with no validation and no ids returned."""
    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    specs = [pgq.JobSpec("bench.noop", {"i": i, "user": f"u{i}@example.com"}) for i in range(n)]

    def with_pgq() -> None:
        assert len(app.enqueue_many(specs)) == n

    rows = [("default", "bench.noop", json.dumps({"i": i, "user": f"u{i}@example.com"}))
            for i in range(n)]

    def raw_copy() -> None:
        with psycopg.connect(url) as conn, conn.cursor() as cur, cur.copy(
            "COPY pgq_jobs (queue, task, args) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)

    try:
        ours, baseline = _median_rates(runs, n, url, with_pgq, raw_copy)
    finally:
        app.close()
    return Figure("enqueue_bulk", "jobs/s", ours, baseline, "raw COPY")


def enqueue_single(url: str, n: int = 5_000, runs: int = 5) -> Figure:
    """``App.enqueue`` of n jobs, each in its own transaction on one connection, against
    a bare INSERT + COMMIT of the same row."""
    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    args = {"user": "u@example.com"}
    encoded = json.dumps(args)

    def with_pgq() -> None:
        with psycopg.connect(url) as conn:
            for _ in range(n):
                app.enqueue("bench.noop", args, conn=conn)
                conn.commit()

    def bare() -> None:
        with psycopg.connect(url) as conn:
            for _ in range(n):
                conn.execute("INSERT INTO pgq_jobs (task, args) VALUES (%s, %s::jsonb)",
                             ["bench.noop", encoded])
                conn.commit()

    try:
        ours, baseline = _median_rates(runs, n, url, with_pgq, bare)
    finally:
        app.close()
    return Figure("enqueue_single", "jobs/s", ours, baseline, "bare INSERT + COMMIT")


def _drain_once(url: str, n: int, processes: int, task: str,
                run: Callable[[], Callable[[], None]]) -> float:
    """Enqueue n jobs, start the drainers (``run`` starts them and returns their stopper),
    wait until every job is completed; jobs/s from the first claim to the last completion,
    both by the database clock."""
    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    try:
        _reset(url)
        app.enqueue_many([pgq.JobSpec(task) for _ in range(n)])
    finally:
        app.close()
    stop = run()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM pgq_jobs WHERE state <> 'completed'"
                               ).fetchone()[0]:  # type: ignore[index]
                time.sleep(0.2)
            first, last = conn.execute(
                "SELECT min(started_at), max(finished_at) FROM pgq_jobs").fetchone()  # type: ignore[misc]
    finally:
        stop()
    return float(n / (last - first).total_seconds())


def drain(url: str, n: int = 50_000, runs: int = 3, processes: int = 2,
          task: str = "bench.noop", concurrency: int = 64, async_commit: bool = False
          ) -> Figure:
    """``pgq worker --processes N`` draining n pre-enqueued no-op jobs, from the first
    claim to the last completion (both read from the jobs table, by the database clock),
    against the database's ceiling: ``processes`` plain processes running pgq's own
    ``job_claim`` and ``job_finish_many`` statements back to back on the same batch size,
    with no task handling at all (``ceiling_loop``). Runs alternate, median of each."""
    import os
    import signal
    import subprocess
    import sys

    def worker() -> Callable[[], None]:
        env = {**os.environ, "PGQ_DATABASE_URL": url}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgq", "worker", "--app", "bench.app:app",
             "--processes", str(processes), "--concurrency", str(concurrency),
             "--poll-interval", "0.05", "--log-level", "WARNING",
             *(["--async-commit"] if async_commit else [])], env=env)

        def stop() -> None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        return stop

    def ceiling() -> Callable[[], None]:
        procs = [subprocess.Popen([sys.executable, "-m", "bench.workloads", "ceiling-loop",
                                   url, task, str(concurrency), str(int(async_commit))])
                 for _ in range(processes)]

        def stop() -> None:
            for proc in procs:
                proc.wait(timeout=60)
        return stop

    ours, base = [], []
    for _ in range(runs):
        base.append(_drain_once(url, n, processes, task, ceiling))
        ours.append(_drain_once(url, n, processes, task, worker))
    ours.sort()
    base.sort()
    return Figure(f"drain_{processes}p" + ("_async" if async_commit else ""), "jobs/s",
                  ours[len(ours) // 2], base[len(base) // 2], "claim+complete SQL loop")


def ceiling_loop(url: str, task: str, batch: int, async_commit: bool = False) -> None:
    """The database's ceiling for draining: claim ``batch`` jobs with pgq's ``job_claim``,
    record them completed with ``job_finish_many``, repeat until a claim finds nothing.
    Same statements, parameters (claim cursors included) and connection setup (autocommit,
    prepared) as a worker, on two connections like the worker's claim and flush
    connections; no Python task handling, no asyncio, no threads."""
    from pgq.store.database import connect, execute
    from pgq.worker.claim_cursor import ClaimCursors

    settings = pgq.Settings(database_url=url)
    cursors = ClaimCursors()
    worker = f"ceiling:{__import__('os').getpid()}"
    with connect(settings, autocommit=True) as claim, connect(settings, autocommit=True) as flush:
        if async_commit:
            for conn in (claim, flush):
                conn.execute("SET synchronous_commit = off")
        while True:
            rows = execute(claim, "job_claim", {
                "queues": ["default"], "limits": [batch], "tasks": [task], "worker": worker,
                "lease_seconds": 30.0, "now": None, **cursors.bounds(["default"])})
            if not rows:
                return
            cursors.claimed((r[1], r[9], r[10], r[0]) for r in rows)
            n = len(rows)
            execute(flush, "job_finish_many", {
                "ids": [r[0] for r in rows], "attempts": [r[4] for r in rows],
                "owners": [worker] * n, "states": ["completed"] * n, "delays": [0.0] * n,
                "refunds": [0] * n, "results": ["null"] * n, "errors": [None] * n,
                "now": None})


def _drain_spread(url: str, n: int, queues: list[str], processes: int, concurrency: int,
                  task: str, limit: float) -> tuple[float, float]:
    """Enqueue n jobs spread evenly over ``queues``, then run ``pgq worker --queues
    <all of them>`` with every other setting at its default until every job is completed
    (or ``limit`` seconds pass: then the jobs completed so far count). Returns jobs/s from
    the first claim to the last completion (or to the limit), by the database clock, and
    the worker's CPU time per job (µs; its processes' user + system time, start-up
    included), which other work on a shared machine disturbs less than the rate."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    try:
        _reset(url)
        app.enqueue_many([pgq.JobSpec(task, queue=queues[i % len(queues)]) for i in range(n)])
    finally:
        app.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_REDIS")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgq", "worker", "--app", "bench.app:app", "--queues",
         ",".join(queues), "--processes", str(processes), "--concurrency", str(concurrency),
         "--log-level", "WARNING"], env={**env, "PGQ_DATABASE_URL": url})
    deadline = time.monotonic() + limit
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # Through the partial indexes: a count of the whole table would compete with
            # the drain it measures.
            while time.monotonic() < deadline and conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pgq_jobs WHERE state IN "
                    "('available', 'scheduled', 'retryable')) OR EXISTS (SELECT 1 FROM "
                    "pgq_jobs WHERE state = 'running')").fetchone()[0]:  # type: ignore[index]
                time.sleep(0.5)
            first, last, done = conn.execute(
                "SELECT min(started_at), coalesce(max(finished_at) FILTER (WHERE %s), "
                "clock_timestamp()), count(*) FILTER (WHERE state = 'completed') "
                "FROM pgq_jobs", [time.monotonic() < deadline]).fetchone()  # type: ignore[misc]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the supervisor reaps its children
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return float(done / (last - first).total_seconds()), cpu / done * 1e6


def drain_queues(url: str, n: int = 100_000, runs: int = 3, queues: int = 20,
                 processes: int = 2, concurrency: int = 10, task: str = "bench.anoop",
                 limit: float = 900.0) -> Figure:
    """Issue 12, defect 1: n async no-op jobs spread evenly over ``queues`` queues, all of
    them in the worker's ``--queues``, against the same n jobs in one queue drained by
    the same command with that one queue; ``--processes 2 --concurrency 10``, defaults
    otherwise. Runs alternate (which goes first alternates too), median of each; every
    run's pair, and the median of the runs' own ratios, are printed to stderr. Target:
    ratio >= 0.9. Its own scratch database (``pgq_bench_queues``), so that another
    workload started meanwhile cannot drop it."""
    import sys

    url = fresh_database(url.rsplit("/", 1)[0] + "/postgres", "pgq_bench_queues")
    names = [f"q{i:02d}" for i in range(queues)]
    many: list[tuple[float, float]] = []
    one: list[tuple[float, float]] = []
    for r in range(runs):
        pair = [(one, names[:1]), (many, names)]
        for results, chosen in pair if r % 2 == 0 else pair[::-1]:
            results.append(_drain_spread(url, n, chosen, processes, concurrency, task, limit))
        print(f"drain_{queues}q run {r + 1}: {many[-1][0]:,.0f} jobs/s over {queues} queues, "
              f"{one[-1][0]:,.0f} in one queue, ratio {many[-1][0] / one[-1][0]:.3f}; worker "
              f"CPU {many[-1][1]:.0f} and {one[-1][1]:.0f} us/job", file=sys.stderr)
    ratios = sorted(a[0] / b[0] for a, b in zip(many, one, strict=True))
    print(f"drain_{queues}q: median of the runs' own ratios {ratios[len(ratios) // 2]:.3f}",
          file=sys.stderr)
    rates = sorted(rate for rate, _ in many), sorted(rate for rate, _ in one)
    return Figure(f"drain_{queues}q", "jobs/s", rates[0][runs // 2], rates[1][runs // 2],
                  "same backlog in one queue")


WORKLOADS: dict[str, Callable[..., Figure]] = {
    "enqueue_bulk": enqueue_bulk,
    "enqueue_single": enqueue_single,
    "drain_1p": lambda url, **kw: drain(url, processes=1, **kw),
    "drain_2p": lambda url, **kw: drain(url, processes=2, **kw),
    "drain_2p_async": lambda url, **kw: drain(url, processes=2, async_commit=True, **kw),
    "drain_20q": drain_queues,
}


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "ceiling-loop":
        ceiling_loop(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1")
