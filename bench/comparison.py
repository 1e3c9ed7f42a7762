"""The drain shape of issue 12's side-by-side comparison, against PostgreSQL's own ceiling
measured by ``pgbench`` in the same run; and what one INFO log line per job costs.

Targets (issue 12, "Speed"): ``drain_cmp_2p`` ≥ ``TARGET_2P`` (0.25) x the ceiling, aim
``AIM_2P`` (0.35); sync tasks within ``TARGET_SYNC`` (0.8) of async (``drain_cmp_2p_sync``
/ ``drain_cmp_2p``); one INFO line per job costs at most 10 % of the drain
(``drain_cmp_2p`` / ``drain_cmp_2p_warning`` ≥ ``TARGET_LOG``, 0.9); metrics cost nothing
measurable (issue 15: ``drain_cmp_2p_metrics``, the same drain with ``--metrics-port``,
over ``drain_cmp_2p`` ≥ ``TARGET_METRICS``, 0.95; read its CPU-per-job ratio too).

Scratch database ``pgq_bench_cmp``. Before every measurement the table is truncated and
checkpointed and ``JOBS`` (20,000) jobs are enqueued with one ``App.enqueue_many``.

* **Drains** (``DRAINS``): ``python -m pgq worker --app bench.app:app --processes N
  --concurrency 10 --log-level L``, every other setting at its default (poll interval,
  lease, wake-ups by NOTIFY: no Redis, ``PGQ_REDIS_*`` is removed from the worker's
  environment). The worker is started first and the jobs are enqueued once every worker
  process LISTENs, so both processes are ready when the first job is claimed. The task is
  ``bench.anoop`` (async, returns None) or ``bench.noop`` (the same, sync). The worker's
  log (stderr) goes to a file, as a container runtime collects it; its per-job lines
  (``outcome=``) are counted to say what was measured. jobs/s = ``JOBS`` / (last
  ``finished_at`` - first ``started_at``), both by the database clock; then SIGTERM.
* **Ceiling** (the baseline): ``pgbench -n -M prepared -c 2 -j 2 -t 95`` running
  ``pgbench_script()``: one transaction that claims ``BATCH`` (100) jobs with pgq's own
  ``job_claim`` statement (the text of ``pgq/queries.sql`` at run time, its parameters
  written in as constants: queue ``default``, the task names of ``bench.app``, a 30 s
  lease, the database clock; its RETURNING rows aggregated into two arrays with
  ``\\gset``), then marks them completed by primary key, fenced on owner and state, and
  commits. The SQL alone: no Python, no task handling. 95 transactions per client take
  19,000 of the 20,000 jobs, so no claim comes back short (checked: exactly
  100 x transactions rows completed, none left running); ``SEGMENTS`` (5) such runs, each
  on a refilled table, make one measurement: jobs/s = Σ jobs / Σ (transactions / tps),
  tps being pgbench's "without initial connection time".
* **Ceiling in pgq's shape** (a second reference, no target): the same script with
  ``CONCURRENCY`` (10) jobs per claim and a COMMIT between the claim and the completion,
  as a worker process with 10 slots and its outcomes written on a second connection
  must do; ``TRANSACTIONS`` scaled to take the same 19,000 jobs. It says how much of the
  distance to the ceiling is the shape (10 jobs and two commits per cycle instead of
  100 and one) rather than pgq's code.
* **Order**: each repetition measures the ceiling and every chosen drain once, the order
  rotating between repetitions, so drift on the shared machine hits all alike. Before
  each measurement the bench waits (up to ``QUIET_WAIT``, 30 s) for a second in which
  the CPUs are at most ``QUIET_BUSY`` (50 %) busy, so a burst of someone else's work is
  less likely to land in one measurement only; that second's busy share is reported. Figures
  are medians over ``runs`` repetitions (default 3); a drain's ratio is its median over the
  ceiling's median, and each repetition's own ratio is listed too. CPU busy is the share
  of both CPUs busy during each drain (``/proc/stat``).
* **CPU per job** of each drain, which other work on the machine changes less than its
  throughput (contention still inflates it, up to ~1.5x here): the CPU time
  (``/proc/<pid>/stat``, user + system) spent between the enqueue and the last
  completion by the worker's processes (supervisor and children) and by the PostgreSQL
  backends connected to the database, over ``JOBS``. As far as the drains are CPU-bound
  (both CPUs were 75-100 % busy during them here; the rest is waiting for commits), a
  CPU-per-job ratio estimates their throughput ratio on a quiet machine; it is printed
  next to the sync/async and INFO/WARNING throughput ratios.

The ceiling's completion is not pgq's ``job_finish_many``: the ceiling is what the
database can do for claim + complete at all, so a slow plan in pgq's statements shows in
the ratio instead of lowering the ceiling with it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

import pgq
from bench.aged import busy, children
from bench.prune import cpu_jiffies
from pgq.store.queries import QUERIES

DATABASE = "pgq_bench_cmp"
JOBS = 20_000
CONCURRENCY = 10
BATCH = 100
CLIENTS = 2
TRANSACTIONS = JOBS // BATCH // CLIENTS - 5
"""Per pgbench client and run: 95, so 19,000 of the 20,000 jobs; the backlog never runs dry."""
SEGMENTS = 5
TARGET_2P = 0.25
AIM_2P = 0.35
TARGET_SYNC = 0.80
TARGET_LOG = 0.90
TARGET_METRICS = 0.95
DRAIN_TIMEOUT = 600.0
QUIET_BUSY = 0.50
QUIET_WAIT = 30.0
PGBENCH = shutil.which("pgbench") or "/usr/bin/pgbench"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Shape:
    processes: int
    task: str
    log_level: str
    metrics: bool = False
    """``--metrics-port`` (a free port; every process records, the supervisor serves)."""


DRAINS = {
    "drain_cmp_1p": Shape(1, "bench.anoop", "INFO"),
    "drain_cmp_2p": Shape(2, "bench.anoop", "INFO"),
    "drain_cmp_2p_sync": Shape(2, "bench.noop", "INFO"),
    "drain_cmp_2p_warning": Shape(2, "bench.anoop", "WARNING"),
    "drain_cmp_2p_metrics": Shape(2, "bench.anoop", "INFO", metrics=True),
}
CEILING = "ceiling"
SHAPE = "ceiling_shape"
"""The same SQL in the shape a worker of ``CONCURRENCY`` slots can use: a claim of
``CONCURRENCY`` jobs committed, then their completion committed (see the docstring)."""


@dataclass
class Series:
    name: str
    rates: list[float] = field(default_factory=list)
    """jobs/s, one per repetition."""
    cpu_busy: list[float] = field(default_factory=list)
    busy_before: list[float] = field(default_factory=list)
    """CPU busy share in the second before each measurement (``_wait_quiet``)."""
    worker_cpu: list[float] = field(default_factory=list)
    """CPU µs per job of the worker's processes (supervisor and children) in the drain."""
    db_cpu: list[float] = field(default_factory=list)
    """CPU µs per job of the PostgreSQL backends serving the worker in the drain."""
    lines_per_job: list[float] = field(default_factory=list)
    """Per-job log lines (``outcome=``) in the worker's log, per job."""

    @property
    def cpu_per_job(self) -> float:
        """Median of (worker + database) CPU µs per job."""
        ordered = sorted(w + d for w, d in zip(self.worker_cpu, self.db_cpu, strict=True))
        return ordered[len(ordered) // 2] if ordered else float("nan")

    @property
    def rate(self) -> float:
        ordered = sorted(self.rates)
        return ordered[len(ordered) // 2]


@dataclass
class ComparisonResult:
    series: dict[str, Series]

    def ratio(self, name: str, over: str = CEILING) -> float | None:
        if name not in self.series or over not in self.series:
            return None
        return self.series[name].rate / self.series[over].rate

    def each(self, name: str, over: str = CEILING) -> list[float]:
        """That ratio within each repetition."""
        return [a / b for a, b in zip(self.series[name].rates, self.series[over].rates,
                                      strict=True)]

    def cpu_ratio(self, name: str, over: str) -> float | None:
        """``over``'s CPU per job (worker + database) over ``name``'s: the throughput ratio
        the two would have where CPU is what limits them (see the module docstring)."""
        if over == CEILING or name not in self.series or over not in self.series:
            return None
        return self.series[over].cpu_per_job / self.series[name].cpu_per_job

    def checks(self) -> list[tuple[str, str, str, float, float]]:
        """(figure, numerator, denominator, ratio, target) of each target that applies."""
        out = []
        for figure, num, den, target in (
                ("drain 2p / ceiling", "drain_cmp_2p", CEILING, TARGET_2P),
                ("sync / async", "drain_cmp_2p_sync", "drain_cmp_2p", TARGET_SYNC),
                ("INFO / WARNING", "drain_cmp_2p", "drain_cmp_2p_warning", TARGET_LOG),
                ("metrics on / off", "drain_cmp_2p_metrics", "drain_cmp_2p", TARGET_METRICS)):
            value = self.ratio(num, den)
            if value is not None:
                out.append((figure, num, den, value, target))
        return out

    def lines(self) -> list[str]:
        ceiling = self.series[CEILING]
        out = [f"{'comparison':<22} {'jobs/s':>9} {'ratio':>6}  median; each repetition's "
               "jobs/s (ratio to its ceiling); CPU busy during; worker + database CPU µs per "
               "job; per-job log lines per job; CPU busy in the second before",
               f"{CEILING + ' (pgbench)':<22} {ceiling.rate:>9,.0f} {'1.00':>6}  "
               + " / ".join(f"{r:,.0f}" for r in ceiling.rates) + "; busy before "
               + ", ".join(f"{b:.0%}" for b in ceiling.busy_before)]
        if SHAPE in self.series:
            ref = self.series[SHAPE]
            out.append(f"{SHAPE + ' (pgbench)':<22} {ref.rate:>9,.0f} "
                       f"{self.ratio(SHAPE) or 0:>6.2f}  "
                       + " / ".join(f"{r:,.0f} ({q:.2f})"
                                    for r, q in zip(ref.rates, self.each(SHAPE), strict=True))
                       + f"; {CONCURRENCY} jobs per claim, claim and completion committed apart")
        for name, s in self.series.items():
            if name in (CEILING, SHAPE):
                continue
            each = " / ".join(f"{r:,.0f} ({q:.2f})" for r, q in zip(s.rates, self.each(name),
                                                                    strict=True))
            cpu = ", ".join(f"{b:.0%}" for b in s.cpu_busy)
            logs = ", ".join(f"{n:.2f}" for n in s.lines_per_job)
            before = ", ".join(f"{b:.0%}" for b in s.busy_before)
            spent = ", ".join(f"{w:.0f}+{d:.0f}" for w, d in zip(s.worker_cpu, s.db_cpu,
                                                                 strict=True))
            out.append(f"{name:<22} {s.rate:>9,.0f} {self.ratio(name) or 0:>6.2f}  {each}; "
                       f"{cpu}; {spent}; {logs}; {before}")
        for figure, num, den, value, target in self.checks():
            verdict = "pass" if value >= target else "FAIL"
            each = " / ".join(f"{q:.2f}" for q in self.each(num, den))
            aim = f", aim {AIM_2P:.2f}" if num == "drain_cmp_2p" and den == CEILING else ""
            by_cpu = self.cpu_ratio(num, den)
            cpu = f"; by CPU per job {by_cpu:.2f}" if by_cpu is not None else ""
            out.append(f"  {figure:<20} {value:>6.2f}  (each: {each}) target >= {target:.2f}"
                       f"{aim}: {verdict}{cpu}")
        if (of_shape := self.ratio("drain_cmp_2p", SHAPE)) is not None:
            each = " / ".join(f"{q:.2f}" for q in self.each("drain_cmp_2p", SHAPE))
            out.append(f"  {'drain 2p / shape':<20} {of_shape:>6.2f}  (each: {each}) no target: "
                       "the share of the SQL's own rate in pgq's shape that pgq reaches")
        return out

    def json(self) -> list[dict[str, Any]]:
        ceiling = self.series[CEILING]
        out: list[dict[str, Any]] = [{
            "workload": "drain_cmp_ceiling", "unit": "jobs/s", "pgq": None,
            "baseline": round(ceiling.rate, 1), "baseline_name": "pgbench claim+complete SQL",
            "baselines": [round(r, 1) for r in ceiling.rates],
            "busy_before": [round(b, 3) for b in ceiling.busy_before], "jobs": JOBS, "batch": BATCH,
            "clients": CLIENTS, "segments": SEGMENTS}]
        if SHAPE in self.series:
            ref = self.series[SHAPE]
            out.append({"workload": "drain_cmp_ceiling_shape", "unit": "jobs/s", "pgq": None,
                        "baseline": round(ref.rate, 1),
                        "baselines": [round(r, 1) for r in ref.rates],
                        "ratio_to_ceiling": round(ref.rate / ceiling.rate, 3),
                        "batch": CONCURRENCY, "commits_per_batch": 2})
            if "drain_cmp_2p" in self.series:
                out.append({"workload": "drain_cmp", "figure": "drain 2p / shape",
                            "ratio": round(self.ratio("drain_cmp_2p", SHAPE) or 0, 3),
                            "ratios": [round(q, 3) for q in self.each("drain_cmp_2p", SHAPE)],
                            "target": None})
        for name, s in self.series.items():
            if name in (CEILING, SHAPE):
                continue
            shape = DRAINS[name]
            out.append({"workload": name, "unit": "jobs/s", "pgq": round(s.rate, 1),
                        "baseline": round(ceiling.rate, 1),
                        "baseline_name": "pgbench claim+complete SQL",
                        "ratio": round(s.rate / ceiling.rate, 3),
                        "runs": [round(r, 1) for r in s.rates],
                        "ratios": [round(q, 3) for q in self.each(name)],
                        "cpu_busy": [round(b, 3) for b in s.cpu_busy],
                        "busy_before": [round(b, 3) for b in s.busy_before],
                        "worker_cpu_us_per_job": [round(c, 1) for c in s.worker_cpu],
                        "db_cpu_us_per_job": [round(c, 1) for c in s.db_cpu],
                        "log_lines_per_job": [round(n, 3) for n in s.lines_per_job],
                        "processes": shape.processes, "concurrency": CONCURRENCY,
                        "task": shape.task, "log_level": shape.log_level, "jobs": JOBS})
        for figure, num, den, value, target in self.checks():
            out.append({"workload": "drain_cmp", "figure": figure, "ratio": round(value, 3),
                        "ratios": [round(q, 3) for q in self.each(num, den)],
                        "cpu_ratio": (round(c, 3) if (c := self.cpu_ratio(num, den)) is not None
                                      else None),
                        "target": target, "pass": value >= target})
        return out


def comparison(url: str, names: list[str], runs: int = 3) -> ComparisonResult:
    """``runs`` repetitions of the ceiling and the drains ``names`` (module docstring)."""
    order = [CEILING, SHAPE, *[n for n in DRAINS if n in names]]
    result = ComparisonResult({name: Series(name) for name in order})
    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    try:
        with tempfile.TemporaryDirectory(prefix="pgq-bench-cmp-") as tmp:
            scripts = {CEILING: (Path(tmp) / "ceiling.sql", BATCH),
                       SHAPE: (Path(tmp) / "shape.sql", CONCURRENCY)}
            scripts[CEILING][0].write_text(pgbench_script(), encoding="utf-8")
            scripts[SHAPE][0].write_text(pgbench_script(batch=CONCURRENCY, split=True),
                                         encoding="utf-8")
            for r in range(runs):
                for i in range(len(order)):
                    name = order[(r + i) % len(order)]
                    result.series[name].busy_before.append(_wait_quiet())
                    if name in scripts:
                        result.series[name].rates.append(_ceiling(app, *scripts[name]))
                    else:
                        _drain(app, DRAINS[name], result.series[name], Path(tmp) / f"{name}.log")
    finally:
        app.close()
    return result


# --- the ceiling --------------------------------------------------------------------------

def pgbench_script(owner: str = "pgbench", batch: int = BATCH, split: bool = False) -> str:
    """One pgbench transaction: pgq's ``job_claim`` for ``batch`` jobs (its RETURNING rows
    aggregated into ``:ids`` and ``:attempts``), then the completion of those rows by
    primary key, then COMMIT. With ``split``, the claim commits before the completion (two
    transactions, as a worker's claim and outcome connections do)."""
    from bench.app import app as bench_app

    tasks = ", ".join(f"'{t.name}'" for t in bench_app.registry)
    claim = _bind(QUERIES["job_claim"], {
        "queues": "ARRAY['default']", "limits": f"ARRAY[{batch}]", "tasks": f"ARRAY[{tasks}]",
        "worker": f"'{owner}'", "lease_seconds": "30", "now": "NULL",
        "start_priorities": "NULL", "start_run_ats": "NULL", "start_ids": "NULL"})
    # A data-modifying statement must sit at the top level of a WITH: the claim's UPDATE
    # becomes one more CTE of its own WITH, and the aggregate reads its RETURNING rows.
    head, update = claim.split("\nUPDATE ", 1)
    if not head.startswith("WITH ") or "RETURNING" not in update:
        raise RuntimeError("job_claim is no longer 'WITH … UPDATE … RETURNING': "
                           "update bench.comparison.pgbench_script")
    return (
        "BEGIN;\n"
        f"{head},\nclaimed AS (\nUPDATE {update}\n)\n"
        "SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(attempt), '{}') "
        "AS attempts FROM claimed \\gset\n"
        + ("COMMIT;\nBEGIN;\n" if split else "") +
        "UPDATE pgq_jobs SET state = 'completed', finished_at = now(), result = 'null'::jsonb\n"
        f"WHERE id = ANY (:ids::bigint[]) AND lease_owner = '{owner}' AND state = 'running';\n"
        "COMMIT;\n")


def _bind(sql: str, values: dict[str, str]) -> str:
    """``sql`` without its comment lines, each ``%(name)s`` replaced by ``(values[name])``."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return re.sub(r"%\((\w+)\)s", lambda m: f"({values[m.group(1)]})", body)


def _ceiling(app: pgq.App, script: Path, batch: int) -> float:
    url = app.settings.database_url
    jobs, seconds = 0, 0.0
    for _ in range(SEGMENTS):
        _fill(app, "bench.anoop")
        done = subprocess.run(
            [PGBENCH, "-n", "-M", "prepared", "-c", str(CLIENTS), "-j", str(CLIENTS),
             "-t", str(TRANSACTIONS * BATCH // batch), "-f", str(script), url],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr.strip()}")
        processed = re.search(r"actually processed: (\d+)/", done.stdout)
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
        if processed is None or tps is None:
            raise RuntimeError(f"cannot read pgbench's output:\n{done.stdout}")
        n = int(processed.group(1))
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FILTER (WHERE state = 'completed'), "
                               "count(*) FILTER (WHERE state = 'running') FROM pgq_jobs").fetchone()
        if row is None or row[0] != n * batch or row[1]:
            raise RuntimeError(f"pgbench ran {n} transactions but {row} jobs are completed/"
                               f"running: a claim came back short of {batch}")
        jobs += n * batch
        seconds += n / float(tps.group(1))
    return jobs / seconds


# --- the drains ---------------------------------------------------------------------------

def _drain(app: pgq.App, shape: Shape, into: Series, log_path: Path) -> None:
    url = app.settings.database_url
    _fill(app, None)
    with psycopg.connect(url, autocommit=True) as conn:
        _wait_listening(conn, None, 0)  # the previous worker's sessions have ended
        with _worker(url, shape, log_path) as proc:
            _wait_listening(conn, proc, shape.processes)
            workers = [proc.pid, *descendants(proc.pid)]
            backends = [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()")]
            worker0, backend0 = process_cpu(workers), process_cpu(backends)
            cpu0 = cpu_jiffies()
            app.enqueue_many([pgq.JobSpec(shape.task) for _ in range(JOBS)])
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while _one(conn, "SELECT count(*) FROM pgq_jobs WHERE state <> 'completed'")[0]:
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker exited with {proc.returncode}; see its log")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the jobs were not done after {DRAIN_TIMEOUT:g} s")
                time.sleep(0.1)
            cpu1 = cpu_jiffies()
            worker1, backend1 = process_cpu(workers), process_cpu(backends)
        count, first, last = _one(conn, "SELECT count(*), min(started_at), max(finished_at) "
                                  "FROM pgq_jobs")
    if count != JOBS:
        raise RuntimeError(f"{count} jobs in the table, expected {JOBS}")
    into.rates.append(JOBS / (last - first).total_seconds())
    into.cpu_busy.append(busy(cpu0, cpu1))
    into.worker_cpu.append(_spent(worker0, worker1) / JOBS * 1e6)
    into.db_cpu.append(_spent(backend0, backend1) / JOBS * 1e6)
    with open(log_path, encoding="utf-8", errors="replace") as f:
        into.lines_per_job.append(sum(" outcome=" in line for line in f) / JOBS)


def descendants(pid: int) -> list[int]:
    out, todo = [], children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def process_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system, ``/proc/<pid>/stat``) of each of ``pids`` still there."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[pid] - before[pid] for pid in after if pid in before)


def _wait_quiet() -> float:
    """Wait for a second with the CPUs at most ``QUIET_BUSY`` busy (at most ``QUIET_WAIT``);
    returns the busy share of the last second measured."""
    deadline = time.monotonic() + QUIET_WAIT
    while True:
        before = cpu_jiffies()
        time.sleep(1.0)
        share = busy(before, cpu_jiffies())
        if share <= QUIET_BUSY or time.monotonic() > deadline:
            return share


def _fill(app: pgq.App, task: str | None) -> None:
    """Empty the table (truncate, checkpoint); then, with ``task``, enqueue ``JOBS`` of it."""
    with psycopg.connect(app.settings.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE pgq_jobs")
        conn.execute("CHECKPOINT")
    if task is not None:
        app.enqueue_many([pgq.JobSpec(task) for _ in range(JOBS)])


def worker_env(url: str) -> dict[str, str]:
    """The bench's environment for a worker: this database, PostgreSQL only (no Redis)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_REDIS")}
    env["PGQ_DATABASE_URL"] = url
    return env


@contextmanager
def _worker(url: str, shape: Shape, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgq", "worker", "--app", "bench.app:app",
             "--processes", str(shape.processes), "--concurrency", str(CONCURRENCY),
             "--log-level", shape.log_level,
             *(["--metrics-host", "127.0.0.1", "--metrics-port", "0"] if shape.metrics else [])],
            env=worker_env(url), cwd=ROOT, stdout=log, stderr=log)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM and wait; SIGKILL it and its children if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for child in children(proc.pid):
                with suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait()


def _wait_listening(conn: psycopg.Connection[Any], proc: subprocess.Popen[bytes] | None,
                    n: int, timeout: float = 60.0) -> None:
    """Until exactly ``n`` sessions (one per worker process) LISTEN for wake-ups."""
    deadline = time.monotonic() + timeout
    while _one(conn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
               "AND query = 'LISTEN pgq_wakeup'")[0] != n:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} worker processes did not LISTEN within {timeout:g} s")
        time.sleep(0.05)


def _one(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row


COMPARISON = {name: comparison for name in DRAINS}
"""Every name runs ``comparison`` once with all the chosen names (one ceiling per run)."""
