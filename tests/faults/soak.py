"""The soak: a mixed workload for a configurable time, with a worker restart (kill -9)
and a Redis restart along the way, then the ledger check and the workers' memory.

    .venv/bin/python -m tests.faults.soak --minutes 20

Uses the shared PostgreSQL (a database of its own, dropped at the end) and a throwaway
redis-server on a spare port. Every second it enqueues a mix: 40 successes (sync and
async), 3 tasks that fail twice then succeed, 1 that overruns its timeout until it
fails, 1 that always raises; a cron entry fires every minute. Two `pgq worker
--scheduler` processes run it. A third of the way in, one worker is kill -9'ed and
replaced; two thirds in, Redis is stopped for 5 s. At the end it waits for every job to
finish and prints: jobs by outcome, lost (never finished), attempts beyond each task's
expected count (justified if the job started before the last fault ended), cron fires,
and each worker's RSS over time.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

import pgq
from pgq.store import migrate
from tests.faults.harness import Run
from tests.faults.soak_app import EXPECTED_ATTEMPTS
from tests.support.redisserver import RedisServer

ADMIN_URL = os.environ.get("PGQ_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak")
    parser.add_argument("--minutes", type=float, default=20.0)
    minutes = parser.parse_args().minutes
    name = f"pgq_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(pgq.Settings(database_url=url))
    redis = RedisServer().start()
    tmp = Path(tempfile.mkdtemp(prefix="pgq-soak-"))
    try:
        soak(url, redis, tmp, minutes)
    finally:
        redis.destroy()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def soak(url: str, redis: RedisServer, tmp: Path, minutes: float) -> None:
    run = Run(url, url, tmp, redis_url=redis.url)
    try:
        _soak(run, redis, minutes)
    finally:
        run.stop()  # whatever happened, no worker outlives the soak


def _soak(run: Run, redis: RedisServer, minutes: float) -> None:
    args = ("--app", "tests.faults.soak_app:app", "--scheduler")
    workers = [run.start_worker(*args), run.start_worker(*args)]
    memory: dict[int, list[tuple[float, int]]] = {}
    began = time.monotonic()
    end = began + minutes * 60
    faults = {"kill": began + (end - began) / 3, "redis": began + 2 * (end - began) / 3}
    fault_end = None
    # The enqueuer does not import the soak's tasks, so their options are explicit (an
    # enqueue takes a task's defaults only from its own app's registry).
    mix = ([pgq.JobSpec("ledger.noop"), pgq.JobSpec("ledger.anoop")] * 20
           + [pgq.JobSpec("soak.flaky", max_attempts=5)] * 3
           + [pgq.JobSpec("soak.slow", max_attempts=2, timeout=0.2),
              pgq.JobSpec("soak.broken", max_attempts=2)])
    next_sample = began + 30  # after start-up: imports, pools, threads
    while time.monotonic() < end:
        tick = time.monotonic()
        run.ids += [r.id for r in run.app.enqueue_many(mix)]
        if "kill" in faults and tick >= faults["kill"]:
            del faults["kill"]
            os.kill(workers[0].pid, signal.SIGKILL)
            workers[0].wait()
            workers[0] = run.start_worker(*args)
            fault_end = run.ledger_now()
            print(f"{tick - began:7.0f} s  killed a worker (kill -9) and started another")
        if "redis" in faults and tick >= faults["redis"]:
            del faults["redis"]
            redis.stop()
            time.sleep(5.0)
            redis.start()
            fault_end = run.ledger_now()
            print(f"{tick - began:7.0f} s  Redis stopped for 5 s and started again")
        if tick >= next_sample:
            for w in workers:
                kib = rss_kib(w.pid)
                if kib is not None:
                    memory.setdefault(w.pid, []).append((tick - began, kib))
            next_sample += 60
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))  # one batch a second
    wait_until_all_ended(run, 300)
    for w in workers:
        kib = rss_kib(w.pid)
        if kib is not None:
            memory.setdefault(w.pid, []).append((time.monotonic() - began, kib))
    report(run, fault_end, memory)


def wait_until_all_ended(run: Run, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(run.pgq_url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM pgq_jobs WHERE state NOT IN "
                           "('completed', 'failed', 'cancelled')").fetchone()[0]:  # type: ignore[index]
            if time.monotonic() > deadline:
                return  # reported as lost
            time.sleep(0.5)


def report(run: Run, fault_end: object, memory: dict[int, list[tuple[float, int]]]) -> None:
    with psycopg.connect(run.pgq_url, autocommit=True) as conn:
        outcomes = conn.execute("SELECT task, state, count(*) FROM pgq_jobs GROUP BY 1, 2 "
                                "ORDER BY 1, 2").fetchall()
        attempts = conn.execute(
            "SELECT j.id, j.task, min(l.started_at), count(l.*) FROM pgq_jobs AS j "
            "LEFT JOIN ledger AS l ON l.job_id = j.id GROUP BY j.id, j.task").fetchall()
        unfinished = conn.execute("SELECT count(*) FROM pgq_jobs WHERE state NOT IN "
                                  "('completed', 'failed', 'cancelled')").fetchone()[0]  # type: ignore[index]
        fires = conn.execute("SELECT count(*) FROM pgq_cron_fires").fetchone()[0]  # type: ignore[index]
    extra = [(job, first) for job, task, first, n in attempts if n > EXPECTED_ATTEMPTS[task]]
    justified = sum(1 for _, first in extra if fault_end is not None and first <= fault_end)
    never = sum(1 for _, _, _, n in attempts if n == 0)
    print(f"jobs: {len(attempts):,}  lost (not finished): {unfinished}  never started: {never}")
    for task, state, n in outcomes:
        print(f"  {task:<14} {state:<10} {n:>8,}")
    print(f"jobs with more attempts than their task's expected count: {len(extra)} "
          f"({justified} justified by a fault, {len(extra) - justified} unjustified)")
    print(f"cron fires recorded: {fires}")
    for pid, samples in memory.items():
        line = ", ".join(f"{t / 60:.0f} min {kib / 1024:.1f}" for t, kib in samples)
        print(f"worker pid {pid} RSS MiB: {line}")
    if unfinished or never or len(extra) - justified:
        raise SystemExit("soak FAILED")
    print("soak passed")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the cleanup on SIGTERM too
    main()
