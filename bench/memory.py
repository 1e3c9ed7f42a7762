"""Worker memory: the resident set size (RSS) of one worker process over 200,000 jobs.

Acceptance point (from the issue): worker memory stays flat (no growth beyond noise).

Method (scratch database ``pgq_bench_memory``; the table is truncated and checkpointed
before each run):

* one ``python -m pgq worker --app bench.app:app --processes 1 --concurrency 64
  --poll-interval 0.05 --log-level WARNING`` subprocess (``bench.workloads.drain``'s
  options, one process). With ``--processes 1`` the command runs the worker in its own
  process, with no supervisor: the pid ``subprocess.Popen`` returns is the process that
  claims and runs the jobs (checked: it must have no child process);
* the bench waits until the worker LISTENs (``pg_stat_activity``) and reads its RSS once
  (``start``: imported, connected, no job run yet);
* then ``JOBS / CHUNK`` (20) rounds: ``App.enqueue_many`` of ``CHUNK`` (10,000) no-op
  ``bench.noop`` jobs, wait until none is available, scheduled, retryable or running, so
  every outcome is stored, then ``SETTLE`` (0.5 s) for the last task threads to finish;
* RSS is read at those quiescent points, with the worker idle: after the first
  ``WARMUP`` (10,000) jobs (the **warm-up** sample: caches, pools, thread stacks,
  lazily imported modules, allocator arenas have reached their working size), then
  every ``EVERY`` (20,000) jobs up to the last (200,000). RSS is ``VmRSS`` of
  ``/proc/<pid>/status`` (also ``RssAnon``, the heap's share, and ``Threads``).

Figures: RSS at warm-up and at the end; growth = end - warm-up, in MiB and in % of the
warm-up RSS; the slope, in KiB per 10,000 jobs, of a least-squares line through every
sample from warm-up on (so one late bump weighs less than in "end - warm-up").

**Flat** (pass) means both: growth ≤ ``MAX_GROWTH`` (5 %) of the warm-up RSS, and slope ≤
``MAX_SLOPE_KIB`` (100 KiB per 10,000 jobs, about 10 bytes per job). A leak of one small
Python object per job (an int in a set or a list: 36 bytes or more) would be ~350 KiB per
10,000 jobs and fail the slope; allocator noise (arenas, page granularity) moves RSS by
a few hundred KiB up or down without a trend. With ``--runs N``, N independent runs, each
with a new worker; each must pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

import pgq
from bench.aged import children, wait_idle, worker

DATABASE = "pgq_bench_memory"
JOBS = 200_000
CHUNK = 10_000
WARMUP = 10_000
EVERY = 20_000
SETTLE = 0.5
MAX_GROWTH = 0.05
MAX_SLOPE_KIB = 100.0
CHUNK_TIMEOUT = 600.0


@dataclass
class Sample:
    jobs: int
    """Jobs completed when it was taken."""
    rss_kib: int
    anon_kib: int
    threads: int


@dataclass
class MemoryRun:
    start: Sample
    samples: list[Sample] = field(default_factory=list)
    """From warm-up on."""
    hwm_kib: int = 0
    """Peak RSS of the process (``VmHWM``) at the end."""

    @property
    def growth_kib(self) -> int:
        return self.samples[-1].rss_kib - self.samples[0].rss_kib

    @property
    def growth_share(self) -> float:
        return self.growth_kib / self.samples[0].rss_kib

    @property
    def slope(self) -> float:
        """KiB per 10,000 jobs, least squares over the samples."""
        xs = [s.jobs / 10_000 for s in self.samples]
        ys = [float(s.rss_kib) for s in self.samples]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0

    @property
    def flat(self) -> bool:
        return self.growth_share <= MAX_GROWTH and self.slope <= MAX_SLOPE_KIB


@dataclass
class MemoryResult:
    workload: str
    jobs: int
    runs: list[MemoryRun] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{'memory':<16} {'jobs done':>10} {'RSS MiB':>9} {'anon MiB':>9} {'threads':>8}"
               f"  one worker process (--processes 1 --concurrency 64), idle when read"]
        for i, run in enumerate(self.runs, 1):
            for label, s in [("start", run.start), *(("warm-up" if j == 0 else "", s)
                                                     for j, s in enumerate(run.samples))]:
                out.append(f"{f'{i}: {label}' if label else '':<16} {s.jobs:>10,} "
                           f"{s.rss_kib / 1024:>9.1f} {s.anon_kib / 1024:>9.1f} {s.threads:>8}")
            first, last = run.samples[0], run.samples[-1]
            out.append(f"{f'{i}: growth':<16} {run.growth_kib / 1024:+.1f} MiB "
                       f"({run.growth_share:+.1%}) from {first.rss_kib / 1024:.1f} at "
                       f"{first.jobs:,} jobs to {last.rss_kib / 1024:.1f} at {last.jobs:,}; "
                       f"slope {run.slope:+.0f} KiB per 10,000 jobs; peak {run.hwm_kib / 1024:.1f} MiB")
            out.append(f"{f'{i}: flat':<16} {'pass' if run.flat else 'FAIL'}  (growth <= "
                       f"{MAX_GROWTH:.0%} of warm-up and slope <= {MAX_SLOPE_KIB:.0f} KiB "
                       "per 10,000 jobs)")
        return out

    def json(self) -> list[dict[str, Any]]:
        return [{"workload": self.workload, "run": i, "unit": "KiB", "jobs": self.jobs,
                 "start_kib": run.start.rss_kib, "warmup_kib": run.samples[0].rss_kib,
                 "end_kib": run.samples[-1].rss_kib, "peak_kib": run.hwm_kib,
                 "growth_mib": round(run.growth_kib / 1024, 2),
                 "growth_share": round(run.growth_share, 4),
                 "slope_kib_per_10k_jobs": round(run.slope, 1),
                 "max_growth_share": MAX_GROWTH, "max_slope_kib": MAX_SLOPE_KIB, "pass": run.flat,
                 "samples": [[s.jobs, s.rss_kib, s.anon_kib, s.threads] for s in run.samples]}
                for i, run in enumerate(self.runs, 1)]


def memory(url: str, runs: int = 1, jobs: int = JOBS, chunk: int = CHUNK, warmup: int = WARMUP,
           every: int = EVERY) -> MemoryResult:
    """``runs`` runs of one worker process through ``jobs`` jobs (module docstring)."""
    if warmup % chunk or every % chunk or jobs % chunk or jobs < warmup + every:
        raise ValueError("warmup, every and jobs must be multiples of chunk, jobs >= warmup + every")
    result = MemoryResult("memory", jobs)
    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    try:
        for _ in range(runs):
            result.runs.append(_one_run(app, jobs, chunk, warmup, every))
    finally:
        app.close()
    return result


def _one_run(app: pgq.App, jobs: int, chunk: int, warmup: int, every: int) -> MemoryRun:
    url = app.settings.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE pgq_jobs")
        conn.execute("CHECKPOINT")
        with worker(url, processes=1) as proc:
            _wait_listening(conn, proc)
            time.sleep(SETTLE)
            run = MemoryRun(_read(proc.pid, 0))
            if children(proc.pid):
                raise RuntimeError(f"the worker {proc.pid} has child processes "
                                   f"{children(proc.pid)}: not the process running the jobs?")
            conn.execute("SET enable_seqscan = off")
            done = 0
            while done < jobs:
                app.enqueue_many([pgq.JobSpec("bench.noop") for _ in range(chunk)])
                wait_idle(conn, proc, CHUNK_TIMEOUT, every=0.05)
                done += chunk
                if done == warmup or (done > warmup and done % every == 0):
                    time.sleep(SETTLE)
                    run.samples.append(_read(proc.pid, done))
            run.hwm_kib = _status(proc.pid)["VmHWM"]
        conn.execute("RESET enable_seqscan")
        row = conn.execute("SELECT count(*) FROM pgq_jobs WHERE state = 'completed'").fetchone()
    if row is None or row[0] != jobs:
        raise RuntimeError(f"{row[0] if row else 0} jobs completed, expected {jobs}")
    return run


def _wait_listening(conn: psycopg.Connection[Any], proc: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND query = 'LISTEN pgq_wakeup'").fetchone()
        if row and row[0]:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not LISTEN within {timeout:g} s")
        time.sleep(0.1)


def _status(pid: int) -> dict[str, int]:
    """The numeric fields of ``/proc/<pid>/status`` (sizes in KiB)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def _read(pid: int, jobs: int) -> Sample:
    s = _status(pid)
    return Sample(jobs, s["VmRSS"], s.get("RssAnon", 0), s["Threads"])


MEMORY = {"memory": memory}
