"""Retention while workers run: the claim statement's latency with and without pruning
of a backlog of 1,000,000 finished jobs going on, and proof that nothing active went.

Acceptance point: pruning 1,000,000 finished jobs while workers run degrades the claim
statement's p99 latency by no more than 20 %, and no active job is deleted.

Setup (scratch database ``pgq_bench_prune``, filled with ``INSERT … SELECT
generate_series``, then ``VACUUM ANALYZE`` and ``CHECKPOINT``):

* 1,000,000 ``completed`` jobs that finished 30 to 37 days ago (default retention keeps
  completed jobs 7 days, so all of them are due for deletion);
* 600,000 ``available`` jobs spread over three queues: the claimers' supply (a claim
  that comes back short means it ran out, and fails the run);
* rows retention must keep: 10,000 ``scheduled`` 30 days ahead (half of them carrying a
  stale ``finished_at`` from 40 days ago, which pgq never writes but prune must not trust),
  10,000 ``running`` with a live lease, 10,000 ``retryable`` waiting out a backoff,
  1,000 ``completed`` from 40 days ago whose unique key still guards (``unique_until`` in
  the future), 10,000 ``failed`` from 10 days ago and 1,000 ``cancelled`` from 1 day ago
  (both inside their retention). Their ids and states, and the ids of the available
  jobs, are copied to side tables first.

Claimers: ``CLAIMERS`` threads, each like one worker process with ``--concurrency 10``
over the queues ``q1,q2,q3``: it runs pgq's own ``job_claim`` statement through
``pgq.store.database.execute`` with the parameters ``Worker._claim`` builds (per-queue limits
from ``pgq.worker.queues.allocate``, the registered task names of ``bench.app``, a worker id,
the default 30 s lease, the database clock), on an autocommit connection from
``pgq.store.database.connect``; then records every claimed job ``completed`` with the
worker's ``job_finish_many`` statement on a second connection (its flush connection),
and waits for its next tick (``RATE`` claims per second per claimer, absolute
deadlines). A claim's latency is the wall time of that ``execute`` call (the statement,
its commit, the round trip and fetching the rows), as the worker sees it.

Pruner: another process runs ``pgq.scheduling.maintenance.prune`` on its own autocommit
connection as the maintenance leader does: default retention, database clock, and
``Maintenance``'s defaults (read from its signature) for the batch size and the pause
between batches, until every due row is gone.

Phases. ``A`` and ``B`` alternate in ``WINDOW_SECONDS`` windows while the claimers run
without a break: in ``A`` windows the pruner is held (it waits at its next pause), in
``B`` windows it prunes; claims started in the first ``GUARD_SECONDS`` of a window are
not counted (the batch in flight, the writes a pruning window leaves behind). On this
shared 2-core machine other work comes and goes within tens of seconds, and so does the
latency it causes; alternating windows expose A and B to the same neighbours, where a
baseline taken before a minute of pruning would not. Then ``C``: after a ``VACUUM`` of
the pruned table, the claimers alone for ``AFTER_SECONDS`` (context, not the figure).

The figure is p99(B) / p99(A) (target ≤ 1.20). Then the checks, which raise on failure:
every kept row is still there in its state, every available job not claimed is still
available, every claimed job is still there, and exactly the million due rows went.
"""

from __future__ import annotations

import inspect
import math
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

import pgq
from pgq.scheduling.maintenance import Maintenance
from pgq.scheduling.maintenance import prune as prune_jobs
from pgq.store.database import connect, execute
from pgq.worker.claim_cursor import FULL_SCAN
from pgq.worker.queues import allocate, parse_queues

DATABASE = "pgq_bench_prune"
FINISHED = 1_000_000
AVAILABLE = 600_000
"""The claimers' supply: enough for 10 minutes (a claim that comes back short fails the run)."""
QUEUES = "q1,q2,q3"
CLAIMERS = 2
CONCURRENCY = 10
RATE = 50.0
"""Claims per second per claimer: 2 claimers x 50 claims x 10 jobs = 1,000 jobs/s in all."""
WINDOW_SECONDS = 5.0
GUARD_SECONDS = 1.0
WARMUP_SECONDS = 1.0
AFTER_SECONDS = 20.0
TARGET = 1.20

_FILL = """
INSERT INTO pgq_jobs (queue, task, state, attempt, args, run_at, created_at, started_at,
                      finished_at, result)
SELECT 'q' || (1 + mod(i, 3)), 'bench.noop', 'completed', 1,
       jsonb_build_object('i', i, 'user', 'u' || i || '@example.com'),
       t - interval '2 seconds', t - interval '2 seconds', t - interval '1 second', t, 'null'
FROM generate_series(1, %(finished)s) AS i,
     LATERAL (SELECT now() - interval '37 days' + i * interval '7 days' / %(finished)s) AS x(t);

INSERT INTO pgq_jobs (queue, task, state, args)
SELECT 'q' || (1 + mod(i, 3)), 'bench.noop', 'available',
       jsonb_build_object('i', i, 'user', 'u' || i || '@example.com')
FROM generate_series(1, %(available)s) AS i;

INSERT INTO pgq_jobs (queue, task, state, run_at, created_at, finished_at)
SELECT 'q' || (1 + mod(i, 3)), 'bench.noop', 'scheduled', now() + interval '30 days',
       now() - interval '40 days', CASE WHEN mod(i, 2) = 0 THEN now() - interval '40 days' END
FROM generate_series(1, 10000) AS i;

INSERT INTO pgq_jobs (queue, task, state, attempt, run_at, created_at, started_at,
                      lease_owner, lease_expires_at)
SELECT 'q' || (1 + mod(i, 3)), 'bench.noop', 'running', 1, now() - interval '40 days',
       now() - interval '40 days', now() - interval '1 minute', 'bench-live-worker',
       now() + interval '1 day'
FROM generate_series(1, 10000) AS i;

INSERT INTO pgq_jobs (queue, task, state, attempt, run_at, created_at, started_at, errors)
SELECT 'q' || (1 + mod(i, 3)), 'bench.noop', 'retryable', 1, now() + interval '30 days',
       now() - interval '40 days', now() - interval '40 days',
       '[{"attempt": 1, "type": "ValueError", "message": "boom"}]'
FROM generate_series(1, 10000) AS i;

INSERT INTO pgq_jobs (queue, task, state, attempt, run_at, created_at, finished_at,
                      unique_key, unique_held, unique_until)
SELECT 'q' || (1 + mod(i, 3)), 'bench.noop', 'completed', 1, now() - interval '40 days',
       now() - interval '40 days', now() - interval '40 days', 'guard-' || i, true,
       now() + interval '1 day'
FROM generate_series(1, 1000) AS i;

INSERT INTO pgq_jobs (queue, task, state, attempt, run_at, created_at, finished_at)
SELECT 'q' || (1 + mod(i, 3)), 'bench.noop', 'failed', 25, now() - interval '10 days',
       now() - interval '10 days', now() - interval '10 days'
FROM generate_series(1, 10000) AS i;

INSERT INTO pgq_jobs (queue, task, state, run_at, created_at, finished_at)
SELECT 'q' || (1 + mod(i, 3)), 'bench.noop', 'cancelled', now() - interval '1 day',
       now() - interval '1 day', now() - interval '1 day'
FROM generate_series(1, 1000) AS i;

CREATE TABLE bench_kept AS
SELECT id, state FROM pgq_jobs
WHERE state NOT IN ('completed', 'available') OR unique_held;

CREATE TABLE bench_available AS SELECT id FROM pgq_jobs WHERE state = 'available';
"""
KEPT = 10_000 + 10_000 + 10_000 + 1_000 + 10_000 + 1_000


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Phase:
    name: str
    samples: list[float] = field(default_factory=list)
    """Claim latencies in seconds."""
    seconds: float = 0.0
    windows: int = 0
    cpu: list[int] = field(default_factory=lambda: [0, 0])
    """Jiffies of all CPUs in the phase's windows: [total, idle]."""
    wal_bytes: int = 0

    @property
    def cpu_busy(self) -> float:
        return 1 - self.cpu[1] / self.cpu[0] if self.cpu[0] else float("nan")

    def summary(self) -> dict[str, float]:
        """p50/p95/p99/max in milliseconds."""
        s = self.samples
        return {"p50": percentile(s, 50) * 1e3, "p95": percentile(s, 95) * 1e3,
                "p99": percentile(s, 99) * 1e3, "max": max(s) * 1e3}


@dataclass
class PruneRun:
    phases: dict[str, Phase]
    pruner: dict[str, Any]
    """The pruner's report: deleted (per state), active and wall seconds, batch, pause,
    batches and the statement time of each full batch."""

    @property
    def ratio(self) -> float:
        return self.phases["B"].summary()["p99"] / self.phases["A"].summary()["p99"]

    @property
    def deleted(self) -> int:
        return sum(self.pruner["deleted"].values())

    @property
    def rate(self) -> float:
        """Rows per second of pruning (the B windows)."""
        return self.deleted / float(self.pruner["active"])


LABELS = {"A": "A not pruning", "B": "B pruning", "C": "C after, vacuumed"}


@dataclass
class PruneResult:
    """Every run's phases; the latencies of all runs pooled per phase."""

    workload: str
    runs: list[PruneRun] = field(default_factory=list)

    def pooled(self, name: str) -> Phase:
        out = Phase(name)
        for run in self.runs:
            out.samples += run.phases[name].samples
        return out

    @property
    def ratio(self) -> float:
        return self.pooled("B").summary()["p99"] / self.pooled("A").summary()["p99"]

    def lines(self) -> list[str]:
        out = [f"{'prune phase':<22} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}  "
               "ms; claims in windows, CPU busy, WAL"]
        for i, run in enumerate(self.runs, 1):
            for name, p in run.phases.items():
                s = p.summary()
                out.append(f"{f'{i}: {LABELS[name]}':<22} {s['p50']:>7.2f} {s['p95']:>7.2f} "
                           f"{s['p99']:>7.2f} {s['max']:>7.2f}  {len(p.samples)} in {p.windows} "
                           f"x {p.seconds / p.windows:.0f} s, {p.cpu_busy:.0%}, "
                           f"{p.wal_bytes / 2**20 / p.seconds:.1f} MiB/s")
            r = run.pruner
            stmt = r["statements"]
            out.append(f"{f'{i}: p99 B/A':<22} {run.ratio:>7.2f}  target <= {TARGET:.2f}")
            out.append(f"{f'{i}: pruner':<22} {run.deleted:,} rows in {r['active']:.1f} s of "
                       f"pruning ({r['wall']:.0f} s wall) = {run.rate:,.0f} rows/s; batch "
                       f"{r['batch']}, pause {r['pause']:g} s, {r['batches']} batches, statement "
                       f"p50 {percentile(stmt, 50) * 1e3:.1f} ms, p99 "
                       f"{percentile(stmt, 99) * 1e3:.1f} ms, max {max(stmt) * 1e3:.1f} ms")
        if len(self.runs) > 1:
            out.append(f"{'pooled p99 B/A':<22} {self.ratio:>7.2f}")
        out.append("checks passed: kept rows intact, unclaimed available jobs all there, "
                   "exactly the due rows pruned")
        return out

    def json(self) -> dict[str, Any]:
        runs = []
        for run in self.runs:
            r = run.pruner
            stmt = r["statements"]
            runs.append({
                "ratio": round(run.ratio, 3), "deleted": r["deleted"],
                "prune_seconds": round(r["active"], 2), "prune_wall_seconds": round(r["wall"], 2),
                "prune_rows_per_s": round(run.rate), "batch": r["batch"], "pause": r["pause"],
                "batches": r["batches"],
                "statement_ms": {"p50": round(percentile(stmt, 50) * 1e3, 2),
                                 "p99": round(percentile(stmt, 99) * 1e3, 2),
                                 "max": round(max(stmt) * 1e3, 2)},
                "phases": {name: {"claims": len(p.samples), "windows": p.windows,
                                  "seconds": round(p.seconds, 2),
                                  "cpu_busy": round(p.cpu_busy, 3),
                                  "wal_mib_per_s": round(p.wal_bytes / 2**20 / p.seconds, 2),
                                  **{k: round(v, 3) for k, v in p.summary().items()}}
                           for name, p in run.phases.items()}})
        return {"workload": self.workload, "unit": "ms", "target_ratio": TARGET,
                "ratio": round(self.ratio, 3), "runs": runs}


def prune(url: str, runs: int = 1) -> PruneResult:
    """``runs`` full runs (fill, alternating A/B windows until pruned, C, checks); each
    run's figures and the ratio of the pooled samples."""
    result = PruneResult("prune")
    for _ in range(runs):
        result.runs.append(_one_run(url))
    return result


def _one_run(url: str) -> PruneRun:
    settings = pgq.Settings(database_url=url)
    _fill(url)
    claimed: set[int] = set()
    phases = {"A": Phase("A"), "B": Phase("B"), "C": Phase("C")}
    report = _alternate(settings, phases, claimed)
    _after(settings, phases["C"], claimed)
    for phase in phases.values():
        if not phase.samples:
            raise RuntimeError(f"phase {phase.name}: no claims recorded")
    _check(url, claimed, report["deleted"])
    return PruneRun(phases, report)


def _fill(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_kept, bench_available")
        conn.execute("TRUNCATE pgq_jobs")
        for statement in _FILL.split(";\n\n"):
            conn.execute(statement, {"finished": FINISHED, "available": AVAILABLE}
                         if "%(" in statement else None)
        conn.execute("VACUUM ANALYZE pgq_jobs")
        conn.execute("CHECKPOINT")


def _alternate(settings: pgq.Settings, phases: dict[str, Phase], claimed: set[int]
               ) -> dict[str, Any]:
    """A and B windows, claimers throughout, until the pruner is done; its report."""
    url = settings.database_url
    ctx = multiprocessing.get_context("spawn")
    gate = ctx.Event()
    reports, child = ctx.Pipe(duplex=False)
    pruner = ctx.Process(target=_pruner, args=(url, gate, child), name="bench-pruner",
                         daemon=True)
    pruner.start()
    child.close()
    windows: list[tuple[str, float, float]] = []
    try:
        with _Claimers(settings, "AB", claimed) as claimers, \
                psycopg.connect(url, autocommit=True) as conn:
            if reports.recv() != "ready":
                raise RuntimeError("the pruner did not start")
            time.sleep(WARMUP_SECONDS)
            name = "A"
            while True:
                if name == "B":
                    gate.set()
                else:
                    gate.clear()
                start, cpu0, wal0 = time.monotonic(), cpu_jiffies(), _wal_lsn(conn)
                finished = reports.poll(WINDOW_SECONDS)
                end, cpu1, wal1 = time.monotonic(), cpu_jiffies(), _wal_lsn(conn)
                _account(phases[name], start, end, cpu0, cpu1, wal1 - wal0)
                windows.append((name, start, end))
                if finished or claimers.failed:
                    break  # a failed claimer raises when the block exits
                name = "B" if name == "A" else "A"
        report = reports.recv()
    except EOFError:
        report = None
    finally:
        gate.set()
        pruner.join(timeout=5)
        if pruner.is_alive():
            pruner.terminate()
            pruner.join()
    if not isinstance(report, dict) or pruner.exitcode != 0:
        raise RuntimeError(f"the pruner failed (exit code {pruner.exitcode}): {report!r}")
    for t0, latency in claimers.samples:
        for name, start, end in windows:
            if start + GUARD_SECONDS <= t0 < end:
                phases[name].samples.append(latency)
                break
    return report


def _after(settings: pgq.Settings, phase: Phase, claimed: set[int]) -> None:
    """C: the claimers alone on the vacuumed, pruned table."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("VACUUM pgq_jobs")
        conn.execute("CHECKPOINT")
        with _Claimers(settings, "C", claimed) as claimers:
            time.sleep(WARMUP_SECONDS)
            start, cpu0, wal0 = time.monotonic(), cpu_jiffies(), _wal_lsn(conn)
            time.sleep(AFTER_SECONDS)
            end, cpu1, wal1 = time.monotonic(), cpu_jiffies(), _wal_lsn(conn)
        _account(phase, start, end, cpu0, cpu1, wal1 - wal0)
        phase.samples = [lat for t0, lat in claimers.samples if start <= t0 < end]


def _account(phase: Phase, start: float, end: float, cpu0: tuple[int, int],
             cpu1: tuple[int, int], wal: int) -> None:
    phase.seconds += end - start
    phase.windows += 1
    phase.cpu[0] += cpu1[0] - cpu0[0]
    phase.cpu[1] += cpu1[1] - cpu0[1]
    phase.wal_bytes += wal


def _wal_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'").fetchone()
    assert row is not None
    return int(row[0])


def cpu_jiffies() -> tuple[int, int]:
    """Jiffies of all CPUs since boot: (total, idle + iowait), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)


class _Claimers:
    """``CLAIMERS`` claim loops in threads, from entering the block to leaving it; their
    (start, latency) samples and the ids they claimed (added to ``claimed``)."""

    def __init__(self, settings: pgq.Settings, tag: str, claimed: set[int]) -> None:
        from bench.app import app as bench_app

        self.settings = settings
        self.tasks = [t.name for t in bench_app.registry]
        self.claimed = claimed
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(f"bench-claimer-{tag}-{i}",),
                                          daemon=True) for i in range(CLAIMERS)]

    @property
    def failed(self) -> bool:
        return bool(self._errors)

    def __enter__(self) -> _Claimers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        if self._errors and exc[0] is None:
            raise RuntimeError("a claimer failed") from self._errors[0]

    def _run(self, worker: str) -> None:
        try:
            self._loop(worker)
        except BaseException as exc:  # re-raised by __exit__
            self._errors.append(exc)

    def _loop(self, worker: str) -> None:
        specs = parse_queues(QUEUES)
        hungry: dict[str, bool] = {}
        interval = 1.0 / RATE
        samples: list[tuple[float, float]] = []
        claimed: list[int] = []
        with connect(self.settings, autocommit=True) as conn, \
                connect(self.settings, autocommit=True) as flush:
            deadline = time.monotonic()
            rounds = 0
            while not self._stop.is_set():
                rounds += 1
                limits = allocate(specs, CONCURRENCY, {}, hungry, rotation=rounds)
                wanted = {q: n for q, n in limits.items() if n > 0}
                t0 = time.monotonic()
                rows = execute(conn, "job_claim", {
                    "queues": list(wanted), "limits": list(wanted.values()),
                    "tasks": self.tasks, "worker": worker, "lease_seconds": 30.0,
                    "now": None, **FULL_SCAN})
                samples.append((t0, time.monotonic() - t0))
                if len(rows) < sum(wanted.values()):
                    raise RuntimeError(f"{worker}: a claim came back short, the supply of "
                                       f"available jobs ran out (raise AVAILABLE)")
                got: dict[str, int] = {}
                for row in rows:
                    got[row[1]] = got.get(row[1], 0) + 1
                for queue, n in wanted.items():
                    hungry[queue] = got.get(queue, 0) >= n
                if rows:
                    n = len(rows)
                    ids = [row[0] for row in rows]
                    claimed += ids
                    done = execute(flush, "job_finish_many", {
                        "ids": ids, "attempts": [row[4] for row in rows],
                        "owners": [worker] * n, "states": ["completed"] * n,
                        "delays": [0.0] * n, "refunds": [0] * n, "results": ["null"] * n,
                        "errors": [None] * n, "now": None})
                    if len(done) != n:
                        raise RuntimeError(f"{worker}: {n - len(done)} outcome(s) fenced out")
                deadline += interval
                pause = deadline - time.monotonic()
                if pause > 0:
                    self._stop.wait(pause)
                else:
                    deadline = time.monotonic()  # fell behind: do not burst to catch up
        with self._lock:
            self.samples += samples
            self.claimed.update(claimed)


def _pruner(url: str, gate: Any, reports: Any) -> None:
    """In its own process: ``pgq.scheduling.maintenance.prune`` as the maintenance leader runs it,
    with ``Maintenance``'s default batch and pause; held at a pause while ``gate`` is
    clear. Sends "ready", then its report."""
    defaults = inspect.signature(Maintenance).parameters
    batch: int = defaults["batch"].default
    pause: float = defaults["pause"].default
    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    statements: list[float] = []
    active = 0.0
    with connect(app.settings, autocommit=True) as conn:
        reports.send("ready")
        gate.wait()
        began = resumed = last = time.monotonic()

        def between() -> bool:
            nonlocal active, resumed, last
            statements.append(time.monotonic() - last)
            time.sleep(pause)
            if not gate.is_set():
                active += time.monotonic() - resumed
                gate.wait()
                resumed = time.monotonic()
            last = time.monotonic()
            return True

        deleted = prune_jobs(conn, app.settings.retention, batch=batch, now=app.clock.now(),
                             between=between)
        ended = time.monotonic()
    active += ended - resumed
    reports.send({"deleted": deleted, "active": active, "wall": ended - began, "batch": batch,
                  "pause": pause, "batches": len(statements) + 1, "statements": statements})
    reports.close()


def _check(url: str, claimed: set[int], deleted: dict[str, int]) -> None:
    """Fail loudly unless exactly the due rows went and everything else is intact."""
    with psycopg.connect(url, autocommit=True) as conn:
        def one(sql: str, params: Any = None) -> int:
            row = conn.execute(sql, params).fetchone()
            assert row is not None
            return int(row[0])

        problems = []
        lost = one("SELECT count(*) FROM bench_kept AS k LEFT JOIN pgq_jobs AS j USING (id) "
                   "WHERE j.id IS NULL OR j.state <> k.state")
        if one("SELECT count(*) FROM bench_kept") != KEPT or lost:
            problems.append(f"{lost} kept row(s) (active, guarding or within retention) "
                            "deleted or changed")
        gone = one("SELECT count(*) FROM bench_available AS a LEFT JOIN pgq_jobs AS j "
                   "USING (id) WHERE j.id IS NULL")
        if gone:
            problems.append(f"{gone} available or claimed job(s) deleted")
        waiting = one("SELECT count(*) FROM pgq_jobs WHERE state = 'available'")
        if waiting != AVAILABLE - len(claimed):
            problems.append(f"{waiting} available jobs left, expected "
                            f"{AVAILABLE} - {len(claimed)} claimed")
        done = one("SELECT count(*) FROM pgq_jobs WHERE id = ANY(%s) AND state = 'completed'",
                   [list(claimed)])
        if done != len(claimed):
            problems.append(f"{len(claimed) - done} claimed job(s) not completed")
        due = one("SELECT count(*) FROM pgq_jobs WHERE state = 'completed' "
                  "AND finished_at < now() - interval '7 days' AND NOT unique_held")
        if due or deleted != {"completed": FINISHED, "failed": 0, "cancelled": 0}:
            problems.append(f"pruned {deleted}, {due} due row(s) left; expected exactly "
                            f"{FINISHED:,} completed")
        if problems:
            raise AssertionError("prune benchmark: " + "; ".join(problems))


PRUNE = {"prune": prune}
