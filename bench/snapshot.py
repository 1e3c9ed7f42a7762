"""Drain under an open snapshot: the drain of a fresh table while another session holds a
``REPEATABLE READ`` snapshot open (a long report, a ``pg_dump``, a stuck transaction),
against the same drain with no snapshot held, in the same run.

Acceptance point (issue 12, defect 2): the drain under the snapshot reaches at least
0.8 x the fresh drain (``TARGET``).

Why a snapshot hurts: every job leaves row versions behind (enqueued, claimed, finished),
and while the snapshot is open none of them can be removed, by vacuum or by an index
scan marking its entry dead. A statement that reaches its rows through an index whose
head fills with such entries walks all of them on every execution. The index reads are
reported per index (``pg_stat_user_indexes.idx_tup_read`` over the drain) so the cause
of a slow drain is visible, not guessed.

Database ``pgq_bench_snapshot``. Each repetition runs both conditions, their order
alternating between repetitions (fresh first, then snapshot first, ...):

1. reset: ``TRUNCATE pgq_jobs``, ``VACUUM ANALYZE``, ``CHECKPOINT``;
2. ``snapshot`` only: a separate connection runs ``BEGIN ISOLATION LEVEL REPEATABLE READ;
   SELECT 1 FROM pgq_jobs LIMIT 1`` and keeps the snapshot until step 5 (its
   ``backend_xmin`` is checked);
3. ``App.enqueue_many`` of ``n`` (default 50,000) no-op ``bench.noop`` jobs;
4. **drain**: ``python -m pgq worker --app bench.app:app --processes 2 --concurrency 64
   --poll-interval 0.05`` (``drain_2p``'s command line) until every job is ``completed``
   (a count by sequential scan every 0.25 s, so the bench's own check reads no index);
   SIGTERM and wait for the worker to exit (its backends then flush their statistics).
   jobs/s = ``n`` / (last ``finished_at`` - first ``started_at``), database clock;
   index reads = ``idx_tup_read`` after minus before, per index of ``pgq_jobs``;
5. ``snapshot`` only: ``ROLLBACK`` of the snapshot's transaction.

Figures: per condition the median drain of the repetitions, each repetition's drain, CPU
busy, and the index reads of the claim index, the running-jobs index and the primary key
(median over repetitions); the ratio snapshot/fresh of the median drains (the figure with
the target, >= ``TARGET``), and for reading the noise each repetition's own ratio (its two
drains ran back to back).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import psycopg

import pgq
from bench.aged import busy, snapshot_held, worker
from bench.prune import cpu_jiffies

DATABASE = "pgq_bench_snapshot"
JOBS = 50_000
TARGET = 0.80
CONDITIONS = ("fresh", "snapshot")
INDEXES = ("pgq_jobs_claim_idx", "pgq_jobs_running_idx", "pgq_jobs_pkey")
DRAIN_TIMEOUT = 1800.0

_READS = """
SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes WHERE relname = 'pgq_jobs'
"""


@dataclass
class Condition:
    name: str
    rates: list[float] = field(default_factory=list)
    cpu_busy: list[float] = field(default_factory=list)
    reads: list[dict[str, int]] = field(default_factory=list)
    """Index tuples read during each drain, per index."""

    @property
    def rate(self) -> float:
        return _median(self.rates)

    def read(self, index: str) -> int:
        return int(_median([r.get(index, 0) for r in self.reads]))


@dataclass
class SnapshotResult:
    workload: str
    jobs: int
    conditions: dict[str, Condition]

    @property
    def ratio(self) -> float:
        return self.conditions["snapshot"].rate / self.conditions["fresh"].rate

    def each(self) -> list[float]:
        """Each repetition's snapshot/fresh ratio."""
        return [s / f for s, f in zip(self.conditions["snapshot"].rates,
                                      self.conditions["fresh"].rates, strict=True)]

    def lines(self) -> list[str]:
        short = {"pgq_jobs_claim_idx": "claim idx", "pgq_jobs_running_idx": "running idx",
                 "pgq_jobs_pkey": "pkey"}
        out = [f"{'snapshot condition':<19} {'drain':>9} " + " ".join(
                   f"{short[i]:>12}" for i in INDEXES)
               + "  jobs/s (median); index tuples read per drain (median); each drain; CPU busy",
               f"{'':<19} {self.jobs:,} jobs per drain"]
        for cond in self.conditions.values():
            each = " / ".join(f"{r:,.0f}" for r in cond.rates)
            cpu = ", ".join(f"{b:.0%}" for b in cond.cpu_busy)
            out.append(f"{cond.name:<19} {cond.rate:>9,.0f} " + " ".join(
                f"{cond.read(i):>12,}" for i in INDEXES) + f"  {each}; {cpu}")
        verdict = "pass" if self.ratio >= TARGET else "FAIL"
        each = " / ".join(f"{r:.2f}" for r in self.each())
        out.append(f"{'snapshot/fresh':<19} {self.ratio:>9.2f}  drain ratio; target >= "
                   f"{TARGET:.2f}: {verdict}; each repetition's: {each}")
        return out

    def json(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for cond in self.conditions.values():
            out.append({"workload": self.workload, "condition": cond.name, "unit": "jobs/s",
                        "jobs": self.jobs, "drain": round(cond.rate, 1),
                        "drains": [round(r, 1) for r in cond.rates],
                        "cpu_busy": [round(b, 3) for b in cond.cpu_busy],
                        "idx_tup_read": cond.reads})
        out.append({"workload": self.workload, "figure": "snapshot/fresh",
                    "drain_ratio": round(self.ratio, 3),
                    "drain_ratios": [round(r, 3) for r in self.each()],
                    "target_drain_ratio": TARGET,
                    "pass": self.ratio >= TARGET})
        return out


def drain_snapshot(url: str, runs: int = 3, n: int = JOBS) -> SnapshotResult:
    """``runs`` repetitions of both conditions (see the module docstring)."""
    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    conditions = {name: Condition(name) for name in CONDITIONS}
    try:
        for r in range(runs):
            for i in range(len(CONDITIONS)):
                name = CONDITIONS[(r + i) % len(CONDITIONS)]
                _one(app, conditions[name], n)
    finally:
        app.close()
    return SnapshotResult("drain_snapshot", n, conditions)


def _one(app: pgq.App, into: Condition, n: int) -> None:
    url = app.settings.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE pgq_jobs")
        conn.execute("VACUUM ANALYZE pgq_jobs")
        conn.execute("CHECKPOINT")
    with ExitStack() as stack:
        if into.name == "snapshot":
            stack.enter_context(snapshot_held(url))
        app.enqueue_many([pgq.JobSpec("bench.noop") for _ in range(n)])
        conn = stack.enter_context(psycopg.connect(url, autocommit=True))
        conn.execute("SET enable_indexscan = off")
        conn.execute("SET enable_bitmapscan = off")
        before = _reads(conn)
        with worker(url, processes=2) as proc:
            cpu0 = cpu_jiffies()
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while _scalar(conn, "SELECT count(*) FROM pgq_jobs WHERE state = 'completed'") < n:
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the jobs were not done after {DRAIN_TIMEOUT:g} s")
                time.sleep(0.25)
            cpu1 = cpu_jiffies()
        # The worker has exited: its backends flushed their statistics on the way out.
        after = _reads(conn)
        first, last = conn.execute(
            "SELECT min(started_at), max(finished_at) FROM pgq_jobs").fetchone() or (None, None)
    into.rates.append(n / (last - first).total_seconds())
    into.cpu_busy.append(busy(cpu0, cpu1))
    into.reads.append({k: after.get(k, 0) - before.get(k, 0) for k in after})


def _reads(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Index tuples read so far, per index of pgq_jobs (the statistics as of now)."""
    for _ in range(20):  # a backend that just exited may flush a moment later
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = {name: int(read) for name, read in conn.execute(_READS).fetchall()}
        time.sleep(0.1)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        again = {name: int(read) for name, read in conn.execute(_READS).fetchall()}
        if rows == again:
            return rows
    return again


def _scalar(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def _median(values: list[float] | list[int]) -> float:
    ordered = sorted(values)
    return float(ordered[len(ordered) // 2]) if ordered else 0.0


SNAPSHOT = {"drain_snapshot": drain_snapshot}
