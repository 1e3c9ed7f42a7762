"""Pickup latency with an idle worker: how long a job waits between the enqueue call and
the start of its task.

One ``pgq worker`` subprocess (as operators run it: ``--concurrency 10``, the default
``--poll-interval 1.0``) sits idle; this process enqueues ``bench.pickup`` jobs at a
fixed rate (absolute-deadline pacing, 50/s for 10 s by default) with ``App.enqueue``
and no ``conn=``, so each enqueue commits on pgq's own pooled connection. A job's
latency is its task's first ``time.monotonic()`` minus the ``time.monotonic()`` taken
just before its enqueue call, so it includes the enqueue and its commit. Both readings
are CLOCK_MONOTONIC, which on Linux is one clock for every process of the machine.
The task returns the latency as its result (stored in ``pgq_jobs.result`` by the
worker, after the measurement). Modes:

* ``redis``: Redis configured in the enqueuer and the worker (a prefix of its own per
  run): the enqueue commits, then pgq PUBLISHes; the worker's SUBSCRIBE wakes it;
* ``notify``: no Redis anywhere: the enqueue sends ``NOTIFY`` in its transaction; the
  worker's LISTEN wakes it;
* ``poll``: no Redis, worker started with ``--no-wakeups``: it finds jobs by polling
  (expect about half the poll interval on average, up to a whole one);
* ``floor``: the baseline, the same database work without pgq: a plain psycopg
  connection runs INSERT, ``pg_notify`` and COMMIT; a 40-line listener process
  (``python -m bench.pickup floor-worker``) LISTENs and runs pgq's own ``job_claim``
  statement on each notification, then reads the clock. It is what this machine's
  PostgreSQL (two synchronous commits, one notification) costs by itself.

Each mode also gets a breakdown by the database clock (``created_at``, the enqueue
transaction's start, and ``started_at``, the claim statement's start), placed against
wall-clock readings taken next to the monotonic ones, and the share of the machine's
CPU time that was busy during the measured window (ours is a few percent: more means
something else ran and the tail is not ours alone).
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

import pgq
from pgq.store.queries import QUERIES
from pgq.worker.claim_cursor import FULL_SCAN

REDIS_URL = os.environ.get("PGQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE = "pgq_bench_pickup"
RATE = 50.0
SECONDS = 10.0
WARMUP_JOBS = 20
MODES = ("redis", "notify", "poll", "floor")
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Latency:
    """One mode's latencies, in seconds, and where the time went."""

    workload: str
    rate: float
    seconds: float
    samples: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)
    cpu_busy: list[float] = field(default_factory=list)
    """Per run: busy share of all CPUs during the measured window."""

    @staticmethod
    def percentile(values: list[float], p: float) -> float:
        """Nearest-rank percentile: the smallest value with at least p % at or below it."""
        ordered = sorted(values)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    def summary(self, values: list[float] | None = None) -> dict[str, float]:
        """p50/p95/p99/max in milliseconds (of the samples, or of ``values``)."""
        vals = self.samples if values is None else values
        return {"p50": self.percentile(vals, 50) * 1e3, "p95": self.percentile(vals, 95) * 1e3,
                "p99": self.percentile(vals, 99) * 1e3, "max": max(vals) * 1e3}


@dataclass
class _Sent:
    job_id: int
    wall0: float  # time.time() next to t0
    enqueue: float  # seconds the enqueue call took (monotonic)


def pickup(url: str, mode: str, runs: int = 1, rate: float = RATE,
           seconds: float = SECONDS) -> Latency:
    """``runs`` runs of ``seconds`` at ``rate`` jobs/s; the samples of all runs pooled."""
    if mode not in MODES:
        raise ValueError(f"unknown pickup mode {mode!r}")
    result = Latency(f"pickup_{mode}", rate, seconds)
    for _ in range(runs):
        _one_run(url, mode, rate, seconds, result)
    return result


def _one_run(url: str, mode: str, rate: float, seconds: float, into: Latency) -> None:
    prefix = f"pgqbench{os.getpid()}x{time.monotonic_ns() % 10**6}:"
    redis_url = REDIS_URL if mode == "redis" else None
    env = {k: v for k, v in os.environ.items() if k not in ("PGQ_REDIS_URL", "PGQ_REDIS_PREFIX")}
    env["PGQ_DATABASE_URL"] = url
    if redis_url:
        env |= {"PGQ_REDIS_URL": redis_url, "PGQ_REDIS_PREFIX": prefix}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE pgq_jobs")
    if mode == "floor":
        command = [sys.executable, "-m", "bench.pickup", "floor-worker"]
        enqueue, close = _raw_enqueuer(url)
    else:
        command = [sys.executable, "-m", "pgq", "worker", "--app", "bench.app:app",
                   "--concurrency", "10", "--log-level", "WARNING"]
        if mode == "poll":
            command.append("--no-wakeups")
        enqueue, close = _pgq_enqueuer(url, redis_url, prefix)
    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        _wait_ready(url, mode, prefix, proc)
        # Warm-up: opens the enqueuer's pool and Redis connection, and lets the worker's
        # first claims, imports and thread starts happen; discarded.
        warm = _paced(enqueue, WARMUP_JOBS, rate)
        _wait_done(url, [s.job_id for s in warm], proc, timeout=30)
        busy = _CpuBusy()
        sent = _paced(enqueue, round(rate * seconds), rate)
        into.cpu_busy.append(busy.share())
        _wait_done(url, [s.job_id for s in sent], proc, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        close()
        if redis_url:
            _drop_prefix(redis_url, prefix)
    _collect(url, sent, into)


Enqueue = Callable[[float], int]


def _pgq_enqueuer(url: str, redis_url: str | None, prefix: str
                  ) -> tuple[Enqueue, Callable[[], None]]:
    app = pgq.App(pgq.Settings(database_url=url, redis_url=redis_url, redis_prefix=prefix),
                  strict=False)

    def enqueue(t0: float) -> int:
        return app.enqueue("bench.pickup", {"t0": t0}).id

    return enqueue, app.close


def _raw_enqueuer(url: str) -> tuple[Enqueue, Callable[[], None]]:
    conn = psycopg.connect(url)

    def enqueue(t0: float) -> int:
        row = conn.execute("INSERT INTO pgq_jobs (task, args) VALUES ('bench.pickup', %s::jsonb) "
                           "RETURNING id", [json.dumps({"t0": t0})]).fetchone()
        conn.execute("SELECT pg_notify('pgq_wakeup', 'default')")
        conn.commit()
        assert row is not None
        return int(row[0])

    return enqueue, conn.close


def _paced(enqueue: Enqueue, n: int, rate: float) -> list[_Sent]:
    """Enqueue n jobs at ``rate`` per second against absolute deadlines (no drift)."""
    sent = []
    start = time.monotonic() + 0.05
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        wall0 = time.time()
        t0 = time.monotonic()
        job_id = enqueue(t0)
        sent.append(_Sent(job_id, wall0, time.monotonic() - t0))
    return sent


def _wait_ready(url: str, mode: str, prefix: str, proc: subprocess.Popen[bytes]) -> None:
    """Until the worker listens where the mode's wake-ups arrive (poll: until it runs;
    the warm-up jobs then prove it claims)."""

    def listening() -> bool:
        if mode == "poll":
            return True
        if mode == "redis":
            client = redis.Redis.from_url(REDIS_URL)
            try:
                # channels with a subscriber; pgq may insert a database id after the prefix
                channels = client.pubsub_channels(f"{prefix}*wakeup:default")
                return bool(channels)
            finally:
                client.close()
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query = 'LISTEN pgq_wakeup' AND pid <> pg_backend_pid()").fetchone()
        return bool(row and row[0])

    _until(listening, proc, timeout=30, what="the worker to listen")


def _wait_done(url: str, ids: list[int], proc: subprocess.Popen[bytes], timeout: float) -> None:
    def done() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pgq_jobs WHERE id = ANY(%s) "
                               "AND state = 'completed'", [ids]).fetchone()
        return bool(row and row[0] == len(ids))

    _until(done, proc, timeout, what=f"{len(ids)} jobs to complete")


def _until(check: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float,
           what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def _collect(url: str, sent: list[_Sent], into: Latency) -> None:
    by_id = {s.job_id: s for s in sent}
    with psycopg.connect(url, autocommit=True) as conn:
        rows: list[Any] = conn.execute(
            "SELECT id, result::float8, extract(epoch FROM created_at)::float8, "
            "extract(epoch FROM started_at)::float8 FROM pgq_jobs WHERE id = ANY(%s)",
            [list(by_id)]).fetchall()
    for job_id, latency, created, started in rows:
        s = by_id[job_id]
        into.samples.append(latency)
        returned = s.wall0 + s.enqueue  # the enqueue call returned: committed (and published)
        for name, value in (
                ("enqueue call", s.enqueue),
                ("return to claim", started - returned),
                ("claim to task", s.wall0 + latency - started),
                ("call to txn start", created - s.wall0)):
            into.phases.setdefault(name, []).append(value)


class _CpuBusy:
    """Busy share of all CPUs since construction, from /proc/stat (Linux; else NaN)."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    def share(self) -> float:
        end = self._read()
        if self._start is None or end is None or end[1] == self._start[1]:
            return math.nan
        return (end[0] - self._start[0]) / (end[1] - self._start[1])


def _drop_prefix(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def floor_worker(url: str) -> None:
    """The baseline's listener: LISTEN; on each notification claim with pgq's own
    ``job_claim`` statement, read the clock, and mark the claimed jobs completed with
    their latency as the result. No asyncio, no threads, no pgq worker."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    claim = QUERIES["job_claim"]
    params = {"queues": ["default"], "limits": [10], "tasks": ["bench.pickup"],
              "worker": f"floor:{os.getpid()}", "lease_seconds": 30.0, "now": None,
              **FULL_SCAN}
    with psycopg.connect(url, autocommit=True) as listen, \
            psycopg.connect(url, autocommit=True) as work:
        listen.execute("LISTEN pgq_wakeup")
        while not stopping:
            for _ in listen.notifies(timeout=0.5, stop_after=1):
                rows = work.execute(claim, params).fetchall()
                now = time.monotonic()
                if rows:
                    work.execute(
                        "UPDATE pgq_jobs AS j SET state = 'completed', finished_at = now(), "
                        "lease_owner = NULL, lease_expires_at = NULL, result = to_jsonb(r.latency) "
                        "FROM unnest(%s::bigint[], %s::float8[]) AS r(id, latency) WHERE j.id = r.id",
                        [[row[0] for row in rows], [now - row[3]["t0"] for row in rows]])


PICKUP: dict[str, Callable[..., Latency]] = {
    f"pickup_{mode}": functools.partial(pickup, mode=mode) for mode in MODES}


if __name__ == "__main__":
    if sys.argv[1:] != ["floor-worker"]:
        sys.exit("usage: python -m bench.pickup floor-worker (PGQ_DATABASE_URL in the environment)")
    floor_worker(os.environ["PGQ_DATABASE_URL"])
