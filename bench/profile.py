"""Where a worker's time goes during the comparison drain: CPU per job, broken down by
what the worker was doing, from py-spy samples of its processes.

    .venv/bin/pip install py-spy            # not a dependency of pgq; reads other
    python -m bench.profile                 # processes' memory, so run it as root
    python -m bench.profile --task bench.noop --log-level WARNING

Scratch database ``pgq_bench_profile``. ``--jobs`` (default 150,000) jobs of ``--task``
are enqueued, then ``python -m pgq worker --app bench.app:app --processes 2
--concurrency 10 --log-level L`` (``bench.comparison``'s drain, log to a file) drains
them. After ``--warmup`` seconds, ``py-spy record --subprocesses --nonblocking --rate R
--format raw`` samples every process of the worker for ``--duration`` seconds; samples
of idle threads (waiting in ``epoll``, on a lock, sleeping) are not recorded. Around the
sampling the bench reads the database clock and each process's CPU time (``utime +
stime`` of ``/proc/<pid>/stat``: Python, C extensions, libpq and the kernel's work for
its system calls); the backlog must not run dry meanwhile (checked).

* **CPU per job** = the worker processes' CPU time in the window / the jobs finished in
  it (``finished_at`` between the two clock readings);
* **breakdown**: each sample goes to one category by the frames of its stack
  (``category``). py-spy counts a thread as active when the kernel has it runnable, on a
  CPU *or waiting for one*; on a shared 2-core machine a worker that sends a statement
  is often preempted right there by the PostgreSQL backend it woke up, and an event loop
  woken from ``epoll`` waits for a CPU inside ``select``. So the run-queue wait of every
  thread of the worker processes is read too (``/proc/<pid>/task/*/schedstat``: time on
  a CPU, time runnable but waiting), and the samples whose innermost frame is such a
  wake-up point (``WAIT_POINTS``) are charged that wait first: their CPU is what is left
  of them after it (never below zero); every other category's CPU is its samples'
  share. µs per job = CPU / jobs; the shares are then scaled so that they add up to the
  measured CPU. The supervisor's own samples are kept apart (``supervisor``);
* **cycle**: from the table after the drain (the whole drain, not only the window):
  each claim stamps its jobs' ``started_at`` with its transaction's ``now()``, each
  outcome flush their ``finished_at``: per worker, jobs per claim, jobs per flush, and
  the median time from a claim to the flush of its jobs, and from that flush to the
  worker's next claim (one cycle of the claim → run → record pipeline).

Prints the table (µs per job and %), then the leaf functions with the most samples,
as evidence for each category, then the cycle.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

import pgq
from bench.comparison import descendants, process_cpu, stop, worker_env
from bench.workloads import fresh_database

DATABASE = "pgq_bench_profile"
ROOT = Path(__file__).resolve().parent.parent

CATEGORIES = (
    "waiting for a CPU", "claim: statement", "claim: row decode", "job start",
    "producer wait/wake", "event loop", "task call",
    "sync hand-off", "result encode", "outcome bookkeeping", "logging", "completion write",
    "heartbeat", "other services", "other", "supervisor",
)
"""In the order of a job's life. ``job start``: a claimed row made into a running job
(context, registry, asyncio task or thread-pool submit). ``producer wait/wake``: the
producer between claims (deciding whether to claim, waiting for a freed slot or a
wake-up: futures, ``asyncio.wait``). ``event loop``: asyncio's own
frames with no pgq frame below them (running callbacks, polling, timers). ``sync
hand-off``: the thread pool's queue and the result's way back to the loop (sync tasks).
``outcome bookkeeping``: deciding the outcome and queueing it for the completer
(``_success``, ``_record``, waking the producer). ``completion write``: the completer
(batching, ``job_finish_many``, releasing slots). ``other services``: maintenance,
reclaim, wake-up listener. ``waiting for a CPU``: the run-queue wait charged to the
wake-up points (no CPU of the worker's; kept out of the per-job total)."""

WAIT_POINTS = ("EpollSelector.select", "BaseCursor._send_query_prepared",
               "BaseCursor._send_query_params", "_PollLikeSelector.select", "Connection.wait",
               "Condition.wait")
"""Innermost frames where a thread is runnable without running: woken from ``epoll`` (or
a blocking connection's wait, or a lock) but not yet on a CPU, or preempted by the
backend its ``send`` just woke. (A thread blocked there is idle and not sampled.)"""


@dataclass(frozen=True)
class Frame:
    func: str
    file: str


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
_PROCESS = re.compile(r'process (\d+):"[^"]*";?')


def parse(raw: str) -> list[tuple[int, list[Frame], int]]:
    """py-spy's ``--format raw`` (collapsed stacks) as (pid, frames root first, count);
    the pid is the innermost ``process`` prefix (``--subprocesses``)."""
    out = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        pids = _PROCESS.findall(stack)
        stack = _PROCESS.sub("", stack)
        frames = []
        for text in stack.split(";"):
            m = _FRAME.match(text)
            if m:
                frames.append(Frame(m["func"], m["file"]))
        out.append((int(pids[-1]) if pids else 0, frames, int(count)))
    return out


_HEARTBEAT = {"Heartbeat.run", "HeldJobs.to_renew", "HeldJobs.renewed", "HeldJobs.locks"}
_DECODE = ("fetchall", "fetchone", "fetchmany", "_load_rows", "load_rows", "load_row",
           "_make_row", "load_sequence")
_START = {"Executor.run", "Executor._run_sync"}
_BOOKKEEPING = {"Executor._success", "Completer.record", "Producer.slot_freed",
                "Executor._decide", "Executor._sync_done", "Executor._raised",
                "Executor._failure"}
_COMPLETION = {"Completer._run", "Completer._flush", "Completer._store",
               "Completer._params", "HeldJobs.forget"}
_SERVICES = ("pgq/maintenance.py", "pgq/worker/reclaim.py", "pgq/coordination.py",
             "pgq/leader.py", "pgq/scheduler.py", "pgq/outage.py", "pgq/leader_service.py")


_LOOP = {"BaseEventLoop._run_once", "Handle._run"}


def category(frames: list[Frame]) -> str:
    """The category of one sampled stack (frames root first). The frames down to the
    event loop's dispatch (``_run_once``, ``Handle._run``) are dropped: what is left is
    the callback or coroutine step being run (nothing: the loop itself). Then rules in
    order; the first that matches wins, so a log call made by the completer counts as
    logging."""
    last = max((i for i, f in enumerate(frames) if f.func in _LOOP), default=-1)
    if last >= 0:
        frames = frames[last + 1:]
        if not frames:
            return "event loop"
    funcs = [f.func for f in frames]
    files = [f.file for f in frames]
    if any(f.startswith("logging/") for f in files) or "log_job" in funcs:
        return "logging"
    if "encode_result" in funcs or "pgq/validation.py" in files:
        return "result encode"
    if _HEARTBEAT.intersection(funcs):
        return "heartbeat"
    if "Producer._claim" in funcs:
        if _START.intersection(funcs) or "Context.__init__" in funcs:
            return "job start"
        if any(f.endswith(_DECODE) for f in funcs):
            return "claim: row decode"
        return "claim: statement"
    if _COMPLETION.intersection(funcs):
        return "completion write"
    if "bench/app.py" in files or "Executor._call_async" in funcs or "Executor._middleware" in funcs:
        return "task call"
    if _BOOKKEEPING.intersection(funcs):
        return "outcome bookkeeping"
    if "pgq/worker/threads.py" in files:
        return "sync hand-off"
    if _START.intersection(funcs) or "Executor._execute" in funcs:
        return "job start"
    if any(f.startswith(_SERVICES) for f in files):
        return "other services"
    if "Producer.run" in funcs or "Producer._wake_or_stop" in funcs:
        return "producer wait/wake"
    if any(f.startswith("pgq/") for f in files):
        return "other"
    if any(f.startswith(("asyncio/", "selectors.py")) for f in files):
        return "event loop"
    return "other"


@dataclass
class Cycle:
    workers: int
    claims: int
    flushes: int
    jobs: int
    claim_to_flush_ms: float
    flush_to_claim_ms: float
    cycle_ms: float


@dataclass
class Profile:
    jobs: int
    seconds: float
    cpu: dict[int, float]
    """CPU seconds per process in the window."""
    rq_wait: float
    """Seconds the worker processes' threads were runnable but not running."""
    supervisor: int
    samples: collections.Counter[str]
    leaves: dict[str, collections.Counter[str]]
    cycle: Cycle | None = None

    @property
    def workers_cpu(self) -> float:
        return sum(v for pid, v in self.cpu.items() if pid != self.supervisor)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds per category (module docstring): wake-up points' samples minus
        the run-queue wait, the rest by share, scaled to the measured CPU."""
        worker = {c: n for c, n in self.samples.items() if c != "supervisor"}
        total = sum(worker.values())
        if not total:
            return {}
        per_sample = (self.workers_cpu + self.rq_wait) / total
        raw = {c: n * per_sample for c, n in worker.items()}
        raw["waiting for a CPU"] = max(0.0, raw.get("waiting for a CPU", 0.0) - self.rq_wait)
        scale = self.workers_cpu / sum(raw.values()) if sum(raw.values()) else 0.0
        return {c: v * scale for c, v in raw.items()}

    def lines(self, top: int = 6) -> list[str]:
        worker_samples = sum(n for c, n in self.samples.items() if c != "supervisor")
        per_job = self.workers_cpu / self.jobs * 1e6
        cpu = self.cpu_seconds()
        out = [f"{self.jobs:,} jobs in {self.seconds:.1f} s ({self.jobs / self.seconds:,.0f} jobs/s); "
               f"worker CPU {self.workers_cpu:.2f} s = {per_job:.1f} µs per job, run-queue wait "
               f"{self.rq_wait:.2f} s; supervisor CPU {self.cpu.get(self.supervisor, 0.0):.2f} s; "
               f"{worker_samples:,} worker samples",
               f"{'category':<22} {'µs/job':>8} {'%':>6} {'samples':>8}"]
        for name in CATEGORIES:
            n = self.samples.get(name, 0)
            if name == "supervisor":
                out.append(f"{name:<22} {'':>8} {'':>6} {n:>8}  (not in the total)")
                continue
            seconds = cpu.get(name, 0.0)
            share = seconds / self.workers_cpu if self.workers_cpu else 0.0
            out.append(f"{name:<22} {seconds / self.jobs * 1e6:>8.1f} {share:>6.1%} {n:>8}")
        out.append("leaf functions by category (samples):")
        for name in CATEGORIES:
            leaves = self.leaves.get(name)
            if leaves:
                out.append(f"  {name}: " + "; ".join(f"{leaf} {n}" for leaf, n in
                                                     leaves.most_common(top)))
        if self.cycle:
            c = self.cycle
            out.append(f"cycle (whole drain, {c.workers} worker processes): {c.jobs / c.claims:.1f} "
                       f"jobs per claim, {c.jobs / c.flushes:.1f} per flush; median claim -> its "
                       f"flush {c.claim_to_flush_ms:.2f} ms, flush -> next claim "
                       f"{c.flush_to_claim_ms:.2f} ms, claim -> next claim {c.cycle_ms:.2f} ms")
        return out


def profile(admin: str, task: str, log_level: str, jobs: int, processes: int,
            concurrency: int, warmup: float, duration: float, rate: int) -> Profile:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    url = fresh_database(admin, DATABASE)
    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    try:
        app.enqueue_many([pgq.JobSpec(task) for _ in range(jobs)])
    finally:
        app.close()
    with tempfile.TemporaryDirectory(prefix="pgq-bench-profile-") as tmp, \
            psycopg.connect(url, autocommit=True) as conn:
        log_path, raw_path = Path(tmp) / "worker.log", Path(tmp) / "raw.txt"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pgq", "worker", "--app", "bench.app:app",
                 "--processes", str(processes), "--concurrency", str(concurrency),
                 "--log-level", log_level], env=worker_env(url), cwd=ROOT, stdout=log,
                stderr=log)
        try:
            time.sleep(warmup)
            pids = [proc.pid, *descendants(proc.pid)]
            (t0,) = _one(conn, "SELECT clock_timestamp()")
            cpu0 = process_cpu(pids)
            wait0 = sum(_rq_wait(pid) for pid in pids[1:])
            spy = subprocess.run(
                [py_spy, "record", "--pid", str(proc.pid), "--subprocesses", "--nonblocking",
                 "--rate", str(rate), "--duration", str(int(duration)), "--format", "raw",
                 "-o", str(raw_path)], capture_output=True, text=True, check=False)
            cpu1 = process_cpu(pids)
            wait1 = sum(_rq_wait(pid) for pid in pids[1:])
            (t1,) = _one(conn, "SELECT clock_timestamp()")
            done, left = _one(conn, "SELECT count(*) FILTER (WHERE finished_at BETWEEN %s AND %s), "
                              "count(*) FILTER (WHERE state = 'available') FROM pgq_jobs",
                              [t0, t1])
        finally:
            stop(proc)
        if spy.returncode != 0 or not raw_path.exists():
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy.stderr.strip()}")
        if not left:
            raise RuntimeError("the backlog ran dry during sampling: use more --jobs")
        samples: collections.Counter[str] = collections.Counter()
        leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for pid, frames, count in parse(raw_path.read_text(encoding="utf-8")):
            if pid == proc.pid:
                name = "supervisor"
            elif frames and frames[-1].func in WAIT_POINTS:
                name = "waiting for a CPU"
            else:
                name = category(frames)
            samples[name] += count
            if frames:
                leaves[name][f"{frames[-1].func} ({frames[-1].file})"] += count
        cycle = _cycle(conn)
    return Profile(int(done), (t1 - t0).total_seconds(),
                   {pid: cpu1[pid] - cpu0[pid] for pid in cpu1 if pid in cpu0}, wait1 - wait0, proc.pid,
                   samples, leaves, cycle)


_CYCLE = """
WITH claims AS (
    SELECT lease_owner AS worker, started_at AS claimed, max(finished_at) AS flushed
    FROM pgq_jobs WHERE state = 'completed' GROUP BY 1, 2
), steps AS (
    SELECT worker, claimed, flushed,
           lead(claimed) OVER (PARTITION BY worker ORDER BY claimed) AS next_claim
    FROM claims
)
SELECT (SELECT count(DISTINCT lease_owner) FROM pgq_jobs WHERE state = 'completed'),
       (SELECT count(*) FROM claims),
       (SELECT count(*) FROM (SELECT DISTINCT lease_owner, finished_at FROM pgq_jobs
                              WHERE state = 'completed') AS f),
       (SELECT count(*) FROM pgq_jobs WHERE state = 'completed'),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM flushed - claimed)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM next_claim - flushed)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM next_claim - claimed))
FROM steps WHERE next_claim IS NOT NULL
"""
"""A claim stamps its jobs' started_at with its transaction's now(), a flush their
finished_at: jobs sharing (worker, started_at) were claimed together."""


def _cycle(conn: psycopg.Connection[Any]) -> Cycle | None:
    workers, claims, flushes, jobs, to_flush, to_claim, cycle = _one(conn, _CYCLE)
    if not claims or to_flush is None:
        return None
    return Cycle(workers, claims, flushes, jobs, to_flush * 1e3, to_claim * 1e3, cycle * 1e3)


def _rq_wait(pid: int) -> float:
    """Seconds the threads of ``pid`` (those alive now) spent runnable, waiting for a CPU."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def _one(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--task", default="bench.anoop")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--jobs", type=int, default=150_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    opts = parser.parse_args()
    admin = os.environ.get("PGQ_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    result = profile(admin, opts.task, opts.log_level, opts.jobs, opts.processes,
                     opts.concurrency, opts.warmup, opts.duration, opts.rate)
    print(f"profile: task {opts.task}, --processes {opts.processes} --concurrency "
          f"{opts.concurrency} --log-level {opts.log_level}, py-spy {opts.rate} Hz for "
          f"{opts.duration:g} s")
    print("\n".join(result.lines()))


if __name__ == "__main__":
    main()
