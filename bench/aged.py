"""Aged table: drain throughput and claim latency with 1,000,000 finished jobs in the
table, and again while a long ``REPEATABLE READ`` transaction stays open, against the
same on an empty table in the same run.

Acceptance point (from the issue): the aged drain reaches at least 0.8 x the empty-table
drain (``TARGET``). The same bar is printed for ``aged+rr`` for information: the issue
names the aged drain only.

Databases. ``pgq_bench_aged`` holds the aged table: ``FINISHED`` (1,000,000) ``completed``
jobs of ``bench.noop`` in queue ``default`` written with one ``INSERT … SELECT
generate_series`` (the column set of ``bench/prune.py``'s fill; finished between 24 and
1 hours ago, so inside the default 7-day retention and never pruned by the worker's
maintenance), then ``VACUUM ANALYZE`` and ``CHECKPOINT``. ``pgq_bench_aged_empty`` holds
the baseline's empty table. Two databases on the same server, so the three conditions
can be interleaved instead of filling and emptying one table between them.

Conditions, each repetition in this order:

1. reset: delete every row a previous repetition added (``id`` above the fill's last id;
   all rows in the empty database), ``VACUUM ANALYZE pgq_jobs``, ``CHECKPOINT``; the same
   steps in both databases;
2. ``aged+rr`` only: a separate connection runs ``BEGIN ISOLATION LEVEL REPEATABLE READ;
   SELECT 1 FROM pgq_jobs LIMIT 1`` and keeps that snapshot until step 6 (checked through
   ``backend_xmin`` in ``pg_stat_activity``), so no dead row version created after it can
   be removed, by vacuum or by index scans marking entries dead;
3. ``App.enqueue_many`` of ``n`` (default 50,000) no-op ``bench.noop`` jobs;
4. **drain**: ``python -m pgq worker --app bench.app:app --processes 2 --concurrency 64
   --poll-interval 0.05 --log-level WARNING`` as a subprocess (the command line of
   ``bench.workloads.drain``) until no job is available, scheduled, retryable or running
   (checked every 0.2 s through the partial indexes, ``enable_seqscan`` off on that
   connection, so the check does not scan the million rows); then SIGTERM and wait. The
   figure is ``n`` / (last ``finished_at`` - first ``started_at``) over the jobs of step 3
   only (``id`` above the last id before it), both by the database clock;
5. **claim probe**, after the worker has stopped: 20 warm-up claims (discarded) then
   ``PROBES`` (2,000) claims of 10 jobs from a supply of ``(20 + PROBES) * 10`` jobs
   enqueued for it, back to back on one autocommit connection: pgq's own ``job_claim``
   statement through ``pgq.store.database.execute`` with the parameters ``Worker._claim``
   builds (queue ``default``, the task names of ``bench.app``, 30 s lease, database
   clock, the start its ``pgq.worker.claim_cursor`` gives); each claimed batch is then marked
   ``completed`` with ``job_finish_many`` on a second connection, as the worker's
   completer does. A latency is the wall time of the claim's ``execute`` (statement,
   commit, round trip, fetching rows);
6. ``aged+rr`` only: ``ROLLBACK`` of the snapshot's transaction (in a ``finally``, as is
   the worker's SIGTERM).

Order. The probe follows the drain in every condition, so each probe sees its table
after the same churn (``n`` jobs claimed and finished; in ``aged+rr`` none of their dead
versions removable); a probe on the pristine table would measure nothing the drain did.
The conditions rotate from one repetition to the next (empty, aged, aged+rr; then aged,
aged+rr, empty; ...), so slow drift of a shared machine hits each of them alike.

Figures: per condition the median drain rate of ``runs`` repetitions, and p50/p99
(nearest rank) of the probe's claim latencies pooled over the repetitions; the ratios
aged/empty and aged+rr/empty of the drain rate (target ≥ ``TARGET``) and of the claim
p50 and p99 (no target; > 1 means slower). CPU busy is the share of all CPUs busy during each
drain (``/proc/stat``): the worker and PostgreSQL take most of two cores, so anything
well below that means the drain waited on something.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

import pgq
from bench.prune import cpu_jiffies, percentile
from bench.workloads import fresh_database
from pgq.store.database import connect, execute
from pgq.worker.claim_cursor import ClaimCursors

DATABASE = "pgq_bench_aged"
EMPTY_DATABASE = "pgq_bench_aged_empty"
FINISHED = 1_000_000
JOBS = 50_000
PROBES = 2_000
PROBE_WARMUP = 20
CLAIM = 10
TARGET = 0.80
CONDITIONS = ("empty", "aged", "aged+rr")
DRAIN_TIMEOUT = 1800.0
ROOT = Path(__file__).resolve().parent.parent

_FILL = """
INSERT INTO pgq_jobs (queue, task, state, attempt, args, run_at, created_at, started_at,
                      finished_at, result)
SELECT 'default', 'bench.noop', 'completed', 1,
       jsonb_build_object('i', i, 'user', 'u' || i || '@example.com'),
       t - interval '2 seconds', t - interval '2 seconds', t - interval '1 second', t, 'null'
FROM generate_series(1, %(finished)s) AS i,
     LATERAL (SELECT now() - interval '24 hours' + i * interval '23 hours' / %(finished)s)
     AS x(t)
"""

_ACTIVE = """
SELECT EXISTS (SELECT 1 FROM pgq_jobs WHERE state IN ('available', 'scheduled', 'retryable'))
    OR EXISTS (SELECT 1 FROM pgq_jobs WHERE state = 'running')
"""
"""Any job not finished yet? Through the partial claim and running indexes."""


@dataclass
class Condition:
    name: str
    rates: list[float] = field(default_factory=list)
    """Drain jobs/s, one per repetition."""
    claims: list[float] = field(default_factory=list)
    """Claim latencies in seconds, pooled over the repetitions."""
    cpu_busy: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        ordered = sorted(self.rates)
        return ordered[len(ordered) // 2]

    def claim_ms(self) -> dict[str, float]:
        c = self.claims
        return {"p50": percentile(c, 50) * 1e3, "p99": percentile(c, 99) * 1e3,
                "max": max(c) * 1e3}


@dataclass
class AgedResult:
    workload: str
    jobs: int
    finished: int
    probes: int
    conditions: dict[str, Condition]

    def ratios(self, name: str) -> tuple[float, float, float]:
        """(drain rate, claim p50, claim p99) of condition ``name`` over the empty table's."""
        base, cond = self.conditions["empty"].claim_ms(), self.conditions[name].claim_ms()
        return (self.conditions[name].rate / self.conditions["empty"].rate,
                cond["p50"] / base["p50"], cond["p99"] / base["p99"])

    def lines(self) -> list[str]:
        out = [f"{'aged condition':<16} {'drain':>9} {'claim p50':>10} {'p99':>8} {'max':>8}  "
               "jobs/s (median), ms; each drain's jobs/s; CPU busy per drain",
               f"{'':<16} {self.jobs:,} jobs per drain, {self.finished:,} finished rows, "
               f"{self.probes:,} claims of {CLAIM} per probe"]
        for cond in self.conditions.values():
            c = cond.claim_ms()
            each = " / ".join(f"{r:,.0f}" for r in cond.rates)
            busy = ", ".join(f"{b:.0%}" for b in cond.cpu_busy)
            out.append(f"{cond.name:<16} {cond.rate:>9,.0f} {c['p50']:>10.2f} {c['p99']:>8.2f} "
                       f"{c['max']:>8.2f}  {each}; {busy}")
        for name in CONDITIONS[1:]:
            drain, p50, p99 = self.ratios(name)
            verdict = "pass" if drain >= TARGET else "FAIL"
            note = "" if name == "aged" else " (the target is the aged drain's; for reference)"
            out.append(f"{name + '/empty':<16} {drain:>9.2f} {p50:>10.2f} {p99:>8.2f}  ratios; "
                       f"drain target >= {TARGET:.2f}: {verdict}{note}")
        return out

    def json(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for cond in self.conditions.values():
            out.append({"workload": self.workload, "condition": cond.name, "unit": "jobs/s, ms",
                        "jobs": self.jobs, "finished_rows": 0 if cond.name == "empty"
                        else self.finished, "drain": round(cond.rate, 1),
                        "drains": [round(r, 1) for r in cond.rates],
                        "cpu_busy": [round(b, 3) for b in cond.cpu_busy],
                        "claims": len(cond.claims),
                        "claim_ms": {k: round(v, 3) for k, v in cond.claim_ms().items()}})
        for name in CONDITIONS[1:]:
            drain, p50, p99 = self.ratios(name)
            out.append({"workload": self.workload, "figure": f"{name}/empty",
                        "drain_ratio": round(drain, 3), "claim_p50_ratio": round(p50, 3),
                        "claim_p99_ratio": round(p99, 3),
                        "target_drain_ratio": TARGET, "pass": drain >= TARGET})
        return out


def aged(url: str, runs: int = 3, n: int = JOBS, finished: int = FINISHED,
         probes: int = PROBES) -> AgedResult:
    """``runs`` repetitions of the three conditions (see the module docstring); ``url`` is
    the aged database, the empty one is created next to it."""
    urls = {"empty": fresh_database(url, EMPTY_DATABASE), "aged": url, "aged+rr": url}
    keep = {"empty": 0, "aged": _fill(url, finished)}
    keep["aged+rr"] = keep["aged"]
    apps = {u: pgq.App(pgq.Settings(database_url=u), strict=False) for u in set(urls.values())}
    conditions = {name: Condition(name) for name in CONDITIONS}
    try:
        for r in range(runs):
            for i in range(len(CONDITIONS)):
                name = CONDITIONS[(r + i) % len(CONDITIONS)]
                u = urls[name]
                _reset(u, keep[name])
                _one(apps[u], conditions[name], n, probes, hold=name == "aged+rr")
    finally:
        for app in apps.values():
            app.close()
    return AgedResult("aged", n, finished, probes, conditions)


def _fill(url: str, finished: int) -> int:
    """The aged table; its last id."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE pgq_jobs")
        conn.execute(_FILL, {"finished": finished})
        conn.execute("VACUUM ANALYZE pgq_jobs")
        conn.execute("CHECKPOINT")
        count, last = _one_row(conn, "SELECT count(*), coalesce(max(id), 0) FROM pgq_jobs")
    if count != finished:
        raise RuntimeError(f"filled {count} rows, expected {finished}")
    return int(last)


def _reset(url: str, keep: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM pgq_jobs WHERE id > %s", [keep])
        conn.execute("VACUUM ANALYZE pgq_jobs")
        conn.execute("CHECKPOINT")


def _one(app: pgq.App, into: Condition, n: int, probes: int, *, hold: bool) -> None:
    url = app.settings.database_url
    with snapshot_held(url) if hold else _nothing(), \
            psycopg.connect(url, autocommit=True) as conn:
        (before,) = _one_row(conn, "SELECT coalesce(max(id), 0) FROM pgq_jobs")
        app.enqueue_many([pgq.JobSpec("bench.noop") for _ in range(n)])
        conn.execute("SET enable_seqscan = off")
        with worker(url, processes=2) as proc:
            cpu0 = cpu_jiffies()
            wait_idle(conn, proc, DRAIN_TIMEOUT)
            cpu1 = cpu_jiffies()
        conn.execute("RESET enable_seqscan")
        done, total, first, last = _one_row(
            conn, "SELECT count(*) FILTER (WHERE state = 'completed'), count(*), min(started_at), "
            "max(finished_at) FROM pgq_jobs WHERE id > %s", [before])
        if done != n or total != n:
            raise RuntimeError(f"{into.name}: {done} of {total} new jobs completed, expected {n}")
        into.rates.append(n / (last - first).total_seconds())
        into.cpu_busy.append(busy(cpu0, cpu1))
        app.enqueue_many([pgq.JobSpec("bench.noop") for _ in range((PROBE_WARMUP + probes) * CLAIM)])
        into.claims += _probe(app.settings, probes)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def snapshot_held(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A REPEATABLE READ transaction holding its snapshot for the block; rolled back after."""
    conn = psycopg.connect(url, autocommit=True)
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT 1 FROM pgq_jobs LIMIT 1").fetchall()
        with psycopg.connect(url, autocommit=True) as probe:
            (xmin,) = _one_row(probe, "SELECT backend_xmin FROM pg_stat_activity WHERE pid = %s",
                               [conn.info.backend_pid])
        if xmin is None:
            raise RuntimeError("the REPEATABLE READ transaction holds no snapshot")
        yield conn
    finally:
        try:
            conn.execute("ROLLBACK")
        finally:
            conn.close()


@contextmanager
def worker(url: str, processes: int, concurrency: int = 64) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m pgq worker`` on ``url`` with ``bench.workloads.drain``'s options, for the
    block; SIGTERM and wait after it (SIGKILL, its children too, if it does not stop in 60 s)."""
    env = {**os.environ, "PGQ_DATABASE_URL": url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgq", "worker", "--app", "bench.app:app", "--processes",
         str(processes), "--concurrency", str(concurrency), "--poll-interval", "0.05",
         "--log-level", "WARNING"], env=env, cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for child in children(proc.pid):
                    with suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                proc.kill()
                proc.wait()


def children(pid: int) -> list[int]:
    """Child process ids of ``pid``, from ``/proc/<pid>/task/*/children``."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def wait_idle(conn: psycopg.Connection[Any], proc: subprocess.Popen[bytes], timeout: float,
              every: float = 0.2) -> None:
    """Until no job is available, scheduled, retryable or running."""
    deadline = time.monotonic() + timeout
    while _one_row(conn, _ACTIVE)[0]:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} before the jobs were done")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the jobs were not done after {timeout:g} s")
        time.sleep(every)


def _probe(settings: pgq.Settings, probes: int) -> list[float]:
    """Claim latencies (seconds) of ``probes`` back-to-back claims of ``CLAIM`` jobs."""
    from bench.app import app as bench_app

    tasks = [t.name for t in bench_app.registry]
    worker_id = f"bench-aged-probe-{os.getpid()}"
    samples: list[float] = []
    cursors = ClaimCursors()
    with connect(settings, autocommit=True) as conn, connect(settings, autocommit=True) as flush:
        for i in range(PROBE_WARMUP + probes):
            t0 = time.perf_counter()
            rows = execute(conn, "job_claim", {
                "queues": ["default"], "limits": [CLAIM], "tasks": tasks, "worker": worker_id,
                "lease_seconds": 30.0, "now": None, **cursors.bounds(["default"])})
            elapsed = time.perf_counter() - t0
            cursors.claimed((r[1], r[9], r[10], r[0]) for r in rows)
            if len(rows) != CLAIM:
                raise RuntimeError(f"claim {i} returned {len(rows)} jobs, expected {CLAIM}")
            if i >= PROBE_WARMUP:
                samples.append(elapsed)
            done = execute(flush, "job_finish_many", {
                "ids": [row[0] for row in rows], "attempts": [row[4] for row in rows],
                "owners": [worker_id] * CLAIM, "states": ["completed"] * CLAIM,
                "delays": [0.0] * CLAIM, "refunds": [0] * CLAIM, "results": ["null"] * CLAIM,
                "errors": [None] * CLAIM, "now": None})
            if len(done) != CLAIM:
                raise RuntimeError(f"claim {i}: {CLAIM - len(done)} outcome(s) fenced out")
    return samples




def busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[0] - before[0]
    return 1 - (after[1] - before[1]) / total if total else float("nan")


def _one_row(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row


AGED = {"aged": aged}
