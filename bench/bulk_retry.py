"""Retry 100,000 dead letters by filter while two workers drain another queue (issue 14's
acceptance point): the workers' claim latency before and during ``pgq jobs retry``, the
progress bar, and an interrupted run that resumes without duplicates.

Target: claim latency p99 during the bulk retry within 1.5 x before
(``bench.bulk_retry_report.TARGET``).

Each run (scratch database ``pgq_bench_retry``, tables truncated first):

* **Seed** (``INSERT ... SELECT generate_series``): ``DEAD`` jobs in queue ``dead`` that
  look like dead letters a worker left: ``failed``, 3 of 3 attempts used, ``started_at``
  and ``finished_at`` set, three ``errors`` entries (attempt, at, type, message,
  traceback, worker); then ``VACUUM ANALYZE`` and ``CHECKPOINT``.
* **Live traffic**: ``pgq worker --app bench.app:app --processes 2 --concurrency 10
  --queues live`` (defaults otherwise; PostgreSQL only, wake-ups by NOTIFY; nothing
  serves ``dead``, so retried jobs stay available), started and waited for until both
  processes LISTEN. A feeder process (``python -m bench.bulk_retry feed``) enqueues
  ``bench.pickup`` jobs in queue ``live`` at ``RATE`` (500) jobs/s, one ``App.enqueue``
  (one commit, one NOTIFY) per job against absolute deadlines, as a web tier enqueues
  one job per request. (A first version enqueued 10 jobs per call: a claim takes them
  together, so their latencies came in identical tens and a p99 over 7,500 jobs was
  the p99 of 750 calls, which scattered widely between runs.)
* **Windows**, by the database clock: ``WARMUP`` s discarded, then ``before``
  (``BEFORE`` s, no retry), ``during`` (from just before ``pgq jobs retry --queue dead
  --state failed --yes`` is started to its exit: the CLI's start-up and its count
  included, as an operator experiences it), ``after`` (``AFTER`` s, context only).
  The CLI's stderr is a pseudo-terminal, so it draws its progress bar as on a terminal;
  the bench reads it and counts the distinct percentages drawn.
* **Claim latency** of a ``live`` job = ``started_at - run_at``: from the instant it was
  due (its enqueue transaction's start) to the start of the claim statement that took it,
  both ``now()`` of the database. A job belongs to the window its ``run_at`` falls in.
  Also reported, as ``pickup``: the task's first ``time.monotonic()`` minus the feeder's
  just before the enqueue call (the job's result), which adds the claim statement's own
  run time, its commit and the hand-off to the task.
* **Profile**: every 0.1 s a sampler reads ``pg_stat_activity`` of the database; each
  active backend is tallied per window by what it runs (the pgq statement its text is,
  autovacuum) and its wait event (``CPU`` when none).
* **Checks** (raise on failure): every seeded job is ``available`` in ``dead``, with its
  three ``errors`` entries, and has exactly one ``retry`` row in ``pgq_job_actions``
  (``DEAD`` rows, ``DEAD`` distinct jobs); every ``live`` job completed.
* **Interrupted run**, on a second ``DEAD`` dead letters (queue ``dead2``, seeded while the
  live traffic goes on): the same CLI on a pseudo-terminal gets SIGINT once
  ``pgq_job_actions`` has ``INTERRUPT_AT`` (20,000) of its rows (polled every 20 ms);
  then the same command again. Checked: exit code 130 and its message, then exactly
  ``DEAD`` retry rows for ``DEAD`` distinct jobs, all ``available``, and what the first
  run committed plus what the rerun changed is ``DEAD``.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

import pgq
from bench.aged import busy
from bench.bulk_retry_report import BulkRetryResult
from bench.comparison import ROOT, stop, worker_env
from bench.prune import cpu_jiffies, percentile
from pgq.store.queries import QUERIES

DATABASE = "pgq_bench_retry"
DEAD = 100_000
RATE = 500.0
WARMUP = 3.0
BEFORE = 15.0
AFTER = 10.0
INTERRUPT_AT = 20_000
SAMPLE_EVERY = 0.1

_SEED = """
INSERT INTO pgq_jobs (queue, task, state, attempt, max_attempts, args, run_at, created_at,
                      started_at, finished_at, errors)
SELECT %(queue)s, 'bench.noop', 'failed', 3, 3, jsonb_build_object('order', i),
       t - interval '2 minutes', t - interval '3 minutes', t - interval '1 second', t,
       (SELECT jsonb_agg(jsonb_build_object(
                 'attempt', a, 'at', t - (3 - a) * interval '1 minute',
                 'type', 'requests.exceptions.ConnectionError',
                 'message', 'HTTPSConnectionPool(host=''api.example.com''): Max retries exceeded',
                 'traceback', E'Traceback (most recent call last):\\n  File "shop/sync.py", '
                              'line 41, in push\\nrequests.exceptions.ConnectionError',
                 'worker', 'web-3:' || (1000 + a) || ':a1') ORDER BY a)
        FROM generate_series(1, 3) AS a)
FROM generate_series(1, %(n)s) AS i,
     LATERAL (SELECT now() - interval '2 days' + i * interval '1 second') AS x(t)
"""


class _Sampler(threading.Thread):
    """Tallies the database's active backends every ``SAMPLE_EVERY`` s, per window."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.window = url, ""
        self.tally: dict[str, Counter[str]] = {}
        self._halt = threading.Event()
        self._names = {" ".join(sql.split())[:120]: name for name, sql in QUERIES.items()}

    def _role(self, backend: str, query: str) -> str:
        if backend != "client backend":
            return backend
        return self._names.get(" ".join(query.split())[:120], "other")

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._halt.wait(SAMPLE_EVERY):
                rows = conn.execute(
                    "SELECT backend_type, query, coalesce(wait_event_type || ':' || wait_event, "
                    "'CPU') FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'active' AND pid <> pg_backend_pid()").fetchall()
                counts = self.tally.setdefault(self.window, Counter())
                counts["samples"] += 1
                for backend, query, wait in rows:
                    counts[f"{self._role(backend, query)} {wait}"] += 1

    def close(self) -> None:
        self._halt.set()
        self.join()


class _Terminal:
    """A pseudo-terminal for a CLI's stderr, read by a thread (so it never blocks)."""

    def __init__(self) -> None:
        import pty
        self.leader, self.follower = pty.openpty()
        self.seen = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.leader, 4096)
            except OSError:  # the other end closed
                return
            if not chunk:
                return
            self.seen += chunk

    def text(self) -> str:
        os.close(self.follower)
        self._reader.join(timeout=5)
        os.close(self.leader)
        return self.seen.decode(errors="replace")


def _cli(url: str, queue: str, term: _Terminal) -> subprocess.Popen[bytes]:
    env = {**worker_env(url), "USER": "bench"}
    return subprocess.Popen(
        [sys.executable, "-m", "pgq", "jobs", "retry", "--queue", queue, "--state", "failed",
         "--yes", "--reason", "bench: upstream back"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=term.follower)


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _one(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row


def _wait(check: Any, what: str, timeout: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def _check_retried(conn: psycopg.Connection[Any], queue: str) -> None:
    """Every job of ``queue`` available once, history kept, one retry action each."""
    jobs = _one(conn, "SELECT count(*), count(*) FILTER (WHERE state = 'available' AND "
                "finished_at IS NULL AND jsonb_array_length(errors) = 3 AND attempt = 3 "
                "AND max_attempts = 4) FROM pgq_jobs WHERE queue = %s", [queue])
    actions = _one(conn, "SELECT count(*), count(DISTINCT a.job_id), count(*) FILTER (WHERE "
                   "j.queue IS DISTINCT FROM %s) FROM pgq_job_actions a LEFT JOIN pgq_jobs j "
                   "ON j.id = a.job_id WHERE a.action = 'retry' AND a.job_id IN "
                   "(SELECT id FROM pgq_jobs WHERE queue = %s)", [queue, queue])
    if jobs != (DEAD, DEAD) or actions != (DEAD, DEAD, 0):
        raise AssertionError(f"{queue}: jobs (all, available with history) {jobs}, retry "
                             f"actions (rows, jobs, elsewhere) {actions}; want {DEAD} each")


def one_run(url: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cpu": {}}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE pgq_jobs, pgq_job_actions")
        conn.execute(_SEED, {"queue": "dead", "n": DEAD})
        conn.execute("VACUUM ANALYZE pgq_jobs")
        conn.execute("CHECKPOINT")
        sampler = _Sampler(url)
        with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "pgq", "worker", "--app", "bench.app:app", "--processes",
                 "2", "--concurrency", "10", "--queues", "live", "--log-level", "WARNING"],
                env=worker_env(url), cwd=ROOT, stdout=log, stderr=log)
            feeder = None
            try:
                _wait(lambda: worker.poll() is None and _one(
                    conn, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                    "current_database() AND query = 'LISTEN pgq_wakeup'")[0] == 2,
                    "both worker processes to LISTEN", 60)
                feeder = subprocess.Popen([sys.executable, "-m", "bench.bulk_retry", "feed", url],
                                          cwd=ROOT, stdout=subprocess.PIPE)
                sampler.start()
                time.sleep(WARMUP)
                out["windows"] = windows = {"before": [_now(conn)]}
                sampler.window, jiffies = "before", cpu_jiffies()
                time.sleep(BEFORE)
                windows["before"].append(_now(conn))
                out["cpu"]["before"] = busy(jiffies, cpu_jiffies())
                _retry(conn, url, sampler, out)
                sampler.window, jiffies = "after", cpu_jiffies()
                windows["after"] = [_now(conn)]
                time.sleep(AFTER)
                windows["after"].append(_now(conn))
                out["cpu"]["after"] = busy(jiffies, cpu_jiffies())
                sampler.window = ""
                _check_retried(conn, "dead")
                out["interrupt"] = _interrupted(conn, url)
            finally:
                if feeder is not None:
                    feeder.send_signal(signal.SIGTERM)
                    out["fed"] = int((feeder.communicate(timeout=30)[0] or b"0").split()[0])
                if worker.poll() is None:  # else the error that ended the run is the news
                    _wait(lambda: not _one(conn, "SELECT count(*) FROM pgq_jobs WHERE queue = "
                                           "'live' AND state <> 'completed'")[0],
                          "live jobs to finish", 60)
                stop(worker)
                if sampler.is_alive():
                    sampler.close()
        out["profile"] = sampler.tally
        out["latency"] = _latencies(conn, out["windows"])
    return out


def _retry(conn: psycopg.Connection[Any], url: str, sampler: _Sampler,
           out: dict[str, Any]) -> None:
    """``pgq jobs retry`` of every dead letter, timed, on a pseudo-terminal."""
    term = _Terminal()
    sampler.window, jiffies = "during", cpu_jiffies()
    out["windows"]["during"] = [_now(conn)]
    began = time.perf_counter()
    cli = _cli(url, "dead", term)
    stdout, _ = cli.communicate(timeout=1800)
    seconds = time.perf_counter() - began
    out["windows"]["during"].append(_now(conn))
    out["cpu"]["during"] = busy(jiffies, cpu_jiffies())
    shown = term.text()
    if cli.returncode != 0 or stdout != f"retried {DEAD} jobs\n".encode():
        raise AssertionError(f"pgq jobs retry: exit {cli.returncode}, {stdout!r}, {shown[-500:]}")
    steps = sorted({int(p) for p in re.findall(r"(\d+)%", shown)})
    if not steps or steps[-1] != 100:
        raise AssertionError(f"no progress bar drawn up to 100%: {shown[-500:]!r}")
    starts = [r[0] for r in conn.execute(
        "SELECT extract(epoch FROM at)::float8 FROM pgq_job_actions GROUP BY at ORDER BY at")]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    out["retry"] = {"seconds": seconds, "rate": DEAD / seconds, "batches": len(starts),
                    "progress_steps": len(steps),
                    "first_batch_after": starts[0] - out["windows"]["during"][0].timestamp(),
                    "batch_p50": percentile(gaps, 50) if gaps else 0.0,
                    "batch_max": max(gaps, default=0.0)}


def _interrupted(conn: psycopg.Connection[Any], url: str) -> dict[str, Any]:
    """SIGINT a retry of ``dead2`` after ``INTERRUPT_AT`` actions, then run it again."""
    conn.execute(_SEED, {"queue": "dead2", "n": DEAD})
    conn.execute("ANALYZE pgq_jobs")
    base = _one(conn, "SELECT count(*) FROM pgq_job_actions")[0]

    def actions() -> int:
        return int(_one(conn, "SELECT count(*) FROM pgq_job_actions")[0]) - int(base)

    term = _Terminal()
    cli = _cli(url, "dead2", term)
    _wait(lambda: actions() >= INTERRUPT_AT or cli.poll() is not None,
          f"{INTERRUPT_AT} retry actions", 600, every=0.02)
    at_signal = actions()
    cli.send_signal(signal.SIGINT)
    cli.wait(timeout=60)
    said = term.text()
    committed = actions()
    match = re.search(r"interrupted: (\d+) jobs retried so far", said)
    if cli.returncode != 130 or match is None:
        raise AssertionError(f"interrupted retry: exit {cli.returncode}, {said[-500:]!r}")
    again = _cli(url, "dead2", rerun := _Terminal())
    stdout, _ = again.communicate(timeout=1800)
    rerun.text()
    changed = int(re.fullmatch(rb"retried (\d+) jobs\n", stdout or b"")[1])  # type: ignore[index]
    _check_retried(conn, "dead2")
    if committed + changed != DEAD:
        raise AssertionError(f"first run committed {committed}, rerun changed {changed}")
    return {"at_signal": at_signal, "committed": committed, "cli_said": int(match[1]),
            "exit": cli.returncode, "rerun_changed": changed}


def _latencies(conn: psycopg.Connection[Any], windows: dict[str, list[datetime]]
               ) -> dict[str, dict[str, list[float]]]:
    """Per window: claim latencies (started_at - run_at) and pickup (the task's result), s."""
    out: dict[str, dict[str, list[float]]] = {}
    for name, (start, end) in windows.items():
        rows = conn.execute(
            "SELECT extract(epoch FROM started_at - run_at)::float8, result::float8 "
            "FROM pgq_jobs WHERE queue = 'live' AND run_at >= %s AND run_at < %s",
            [start, end]).fetchall()
        out[name] = {"claim": [r[0] for r in rows], "pickup": [r[1] for r in rows]}
    return out


def feed(url: str) -> None:
    """The feeder: one ``bench.pickup`` job in ``live`` per call, ``RATE`` a second against
    absolute deadlines; on SIGTERM prints how many it enqueued."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    app = pgq.App(pgq.Settings(database_url=url), strict=False)
    sent, start = 0, time.monotonic()
    try:
        while not stopping:
            delay = start + sent / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.monotonic()
            app.enqueue("bench.pickup", {"t0": t0}, queue="live")
            sent += 1
    finally:
        app.close()
        print(sent, flush=True)


def run(url: str, *, runs: int = 1) -> BulkRetryResult:
    return BulkRetryResult("bulk_retry", [one_run(url) for _ in range(runs)])


BULK_RETRY = {"bulk_retry": run}


if __name__ == "__main__":
    if sys.argv[1:2] != ["feed"]:
        sys.exit("usage: python -m bench.bulk_retry feed DATABASE_URL")
    feed(sys.argv[2])
