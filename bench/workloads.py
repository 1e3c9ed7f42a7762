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
from pgq import migrate


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


def _median_rate(runs: int, n: int, url: str, fn: Callable[[], None]) -> float:
    rates = []
    for _ in range(runs):
        _reset(url)
        start = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - start))
    rates.sort()
    return rates[len(rates) // 2]


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
        baseline = _median_rate(runs, n, url, raw_copy)
        ours = _median_rate(runs, n, url, with_pgq)
    finally:
        app.close()
    return Figure("enqueue_bulk", "jobs/s", ours, baseline, "raw COPY")


def enqueue_single(url: str, n: int = 5_000, runs: int = 3) -> Figure:
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
        baseline = _median_rate(runs, n, url, bare)
        ours = _median_rate(runs, n, url, with_pgq)
    finally:
        app.close()
    return Figure("enqueue_single", "jobs/s", ours, baseline, "bare INSERT + COMMIT")


def drain(url: str, n: int = 50_000, runs: int = 3, processes: int = 2,
          task: str = "bench.noop") -> Figure:
    """``pgq worker --processes N`` draining n pre-enqueued no-op jobs, from the first
    claim to the last completion (both read from the jobs table, by the database clock).
    The database-ceiling baseline arrives with the performance issue."""
    import os
    import signal
    import subprocess
    import sys

    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    rates = []
    try:
        for _ in range(runs):
            _reset(url)
            app.enqueue_many([pgq.JobSpec(task) for _ in range(n)])
            env = {**os.environ, "PGQ_DATABASE_URL": url}
            proc = subprocess.Popen(
                [sys.executable, "-m", "pgq", "worker", "--app", "bench.app:app",
                 "--processes", str(processes), "--concurrency", "64", "--poll-interval",
                 "0.05", "--log-level", "WARNING"], env=env)
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    while conn.execute("SELECT count(*) FROM pgq_jobs WHERE state <> 'completed'"
                                       ).fetchone()[0]:  # type: ignore[index]
                        time.sleep(0.2)
                    first, last = conn.execute(
                        "SELECT min(started_at), max(finished_at) FROM pgq_jobs").fetchone()  # type: ignore[misc]
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            rates.append(n / (last - first).total_seconds())
    finally:
        app.close()
    rates.sort()
    return Figure(f"drain_{processes}p", "jobs/s", rates[len(rates) // 2], None, "-")


WORKLOADS: dict[str, Callable[..., Figure]] = {
    "enqueue_bulk": enqueue_bulk,
    "enqueue_single": enqueue_single,
    "drain_1p": lambda url, **kw: drain(url, processes=1, **kw),
    "drain_2p": lambda url, **kw: drain(url, processes=2, **kw),
}
