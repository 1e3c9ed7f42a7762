"""The worker as operators run it: `pgq worker` subprocesses, killed, paused and
signalled for real. Each task writes an execution ledger (tests/support/ledger.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from pathlib import Path

import psycopg
import pytest

import pgq
from tests.support import ledger
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    """Starts `pgq worker` subprocesses against the test database and cleans them up."""

    def __init__(self, db_url: str, tmp: Path, extra: Sequence[str] = ()) -> None:
        self.db_url, self.tmp, self.extra = db_url, tmp, list(extra)
        self.procs: list[subprocess.Popen[str]] = []
        self.env: dict[str, str] = {}

    def start(self, *args: str, name: str = "worker") -> subprocess.Popen[str]:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PGQ_")},
               "PGQ_DATABASE_URL": self.db_url, **self.env}
        log = open(self.tmp / f"{name}-{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgq", "worker", "--app", "tests.support.jobs:app",
             "--poll-interval", "0.05", *self.extra, *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)  # its own process group: the supervisor and its children
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            with suppress(ProcessLookupError):  # the group: children that outlived it too
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=10)


def signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    """What a container runtime, the OOM killer of a cgroup or a freezer does: every
    process of `pgq worker` at once, the supervisor and its children."""
    os.killpg(proc.pid, sig)


def log_of(proc: subprocess.Popen[str]) -> str:
    return Path(proc.log_path).read_text()  # type: ignore[attr-defined]


@pytest.fixture
def workers(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workers]:
    w = Workers(db_url, tmp_path, getattr(request, "param", ()))
    yield w
    w.stop_all()


FASTEST = pytest.mark.parametrize(
    "workers", [(), ("--async-commit",)], indirect=True, ids=["default", "async-commit"])
"""The guarantees hold with pgq's fastest settings too (synchronous_commit off for
claims and outcomes: only a PostgreSQL crash can lose any of them, and these tests
crash workers, not PostgreSQL)."""


@pytest.fixture
def app(settings: pgq.Settings, conn: psycopg.Connection) -> Iterator[pgq.App]:
    ledger.create(conn)
    with pgq.App(settings, strict=False) as a:
        yield a


def states(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT state, count(*) FROM pgq_jobs GROUP BY state").fetchall())


@FASTEST
def test_10k_jobs_two_processes_exactly_once(app: pgq.App, workers: Workers,
                                             conn: psycopg.Connection) -> None:
    app.enqueue_many([pgq.JobSpec("ledger.noop" if i % 2 else "ledger.anoop")
                      for i in range(10_000)])
    sup = workers.start("--processes", "2", "--concurrency", "32")
    wait_until(lambda: states(conn).get("completed") == 10_000, 240, "10,000 completions")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=60) == 0, log_of(sup)
    per_job = conn.execute(
        "SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n > 1) "
        "FROM (SELECT job_id, count(*) AS n FROM ledger GROUP BY job_id) x").fetchone()
    assert per_job == (10_000, 0), "every job ran exactly once"
    pids = conn.execute("SELECT count(DISTINCT pid) FROM ledger").fetchone()[0]
    assert pids == 2, "both worker processes took part"


@FASTEST
def test_kill_9_loses_nothing_and_reruns_only_started_jobs(
    app: pgq.App, workers: Workers, conn: psycopg.Connection
) -> None:
    jobs = [app.enqueue("ledger.sleep", {"seconds": 60, "retry_seconds": 0.05}).id
            for _ in range(8)]
    extra = [app.enqueue("ledger.sleep", {"seconds": 0.05}).id for _ in range(4)]
    victim = workers.start("--concurrency", "8", "--lease", "2")
    wait_until(lambda: conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == 8, 30,
               "8 started jobs")
    started = {r[0] for r in conn.execute("SELECT job_id FROM ledger")}
    signal_group(victim, signal.SIGKILL)  # no cleanup, leases simply stop being renewed
    victim.wait()
    killed_at = time.monotonic()
    workers.start("--concurrency", "8", "--lease", "2")
    wait_until(lambda: states(conn).get("completed") == 12, 30, "all 12 jobs completed")
    recovery = time.monotonic() - killed_at
    assert recovery < 2 + 5 + 5, f"lease 2 s + reclaim 5 s + a few seconds; took {recovery:.1f}s"
    reruns = {r[0] for r in conn.execute("SELECT job_id FROM ledger WHERE attempt > 1")}
    assert reruns == started == set(jobs), "only the jobs that had started ran again"
    first_run_of_extra = conn.execute(
        "SELECT count(*) FROM ledger WHERE job_id = ANY(%s)", [extra]).fetchone()[0]
    assert first_run_of_extra == 4
    lost = conn.execute("SELECT count(*) FROM pgq_jobs WHERE id = ANY(%s) AND "
                        "errors->0->>'type' = 'pgq.WorkerLost'", [jobs]).fetchone()[0]
    assert lost == 8, "each re-run job records its lost attempt"


@FASTEST
def test_paused_worker_cannot_overwrite_the_new_owner(
    app: pgq.App, workers: Workers, conn: psycopg.Connection
) -> None:
    jobs = [app.enqueue("ledger.sleep", {"seconds": 2.5, "retry_seconds": 0.05}).id
            for _ in range(3)]
    stale = workers.start("--concurrency", "3", "--lease", "1.5", name="stale")
    wait_until(lambda: conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == 3, 30,
               "3 started jobs")
    stale_owner = conn.execute("SELECT DISTINCT lease_owner FROM pgq_jobs").fetchone()[0]
    signal_group(stale, signal.SIGSTOP)
    fresh = workers.start("--concurrency", "3", "--lease", "5", name="fresh")
    wait_until(lambda: states(conn).get("completed") == 3, 30, "the new owner finished")
    finished = conn.execute("SELECT id, attempt, result, finished_at FROM pgq_jobs ORDER BY id").fetchall()
    signal_group(stale, signal.SIGCONT)
    # The stale worker wakes with three tasks that finish within ~1 s and a heartbeat due:
    # wait until it has logged the lost leases, then check nothing it wrote landed.
    wait_until(lambda: log_of(stale).count("lease-lost") + log_of(stale).count("lease lost") >= 3,
               20, "the stale worker noticing its lost leases")
    assert conn.execute("SELECT id, attempt, result, finished_at FROM pgq_jobs ORDER BY id"
                        ).fetchall() == finished
    for job_id, attempt, result, _ in finished:
        assert attempt == 2 and result != stale_owner and job_id in jobs
    stale.send_signal(signal.SIGTERM)
    fresh.send_signal(signal.SIGTERM)
    assert stale.wait(timeout=30) == 0 and fresh.wait(timeout=30) == 0


@pytest.mark.serial  # 60+ connections of the shared server's 100
def test_sigterm_finishes_what_it_can_and_hands_back_the_rest(
    app: pgq.App, workers: Workers, conn: psycopg.Connection
) -> None:
    # 60 jobs, not more: each sync task's ledger holds a connection, and the shared
    # server's max_connections (100) is shared with everything else running.
    quick = [app.enqueue("ledger.sleep", {"seconds": 0.5}).id for _ in range(30)]
    slow = [app.enqueue("ledger.asleep" if i % 2 else "ledger.sleep", {"seconds": 120}).id
            for i in range(30)]
    proc = workers.start("--concurrency", "60", "--shutdown-timeout", "3")
    wait_until(lambda: conn.execute("SELECT count(DISTINCT job_id) FROM ledger").fetchone()[0]
               == 60, 60, "60 running jobs")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log_of(proc)
    rows = dict(conn.execute("SELECT id, state FROM pgq_jobs").fetchall())
    assert all(rows[i] == "completed" for i in quick)
    assert all(rows[i] == "available" for i in slow), {i: rows[i] for i in slow}
    attempts = {r[0] for r in conn.execute("SELECT attempt FROM pgq_jobs WHERE id = ANY(%s)", [slow])}
    assert attempts == {0}, "handed-back jobs keep their attempts"
    assert len(rows) == 60


def test_segfaulting_task_fails_after_crash_budget_others_complete(
    app: pgq.App, workers: Workers, conn: psycopg.Connection
) -> None:
    bad = app.enqueue("ledger.segfault").id
    good = [app.enqueue("ledger.sleep", {"seconds": 0.05}).id for _ in range(20)]
    sup = workers.start("--processes", "2", "--concurrency", "4", "--crash-budget", "3")
    wait_until(lambda: conn.execute("SELECT state FROM pgq_jobs WHERE id = %s", [bad]
                                    ).fetchone()[0] == "failed", 90, "the segfaulting job to fail")
    wait_until(lambda: states(conn).get("completed") == 20, 60, "the other jobs")
    attempt, errors = conn.execute("SELECT attempt, errors FROM pgq_jobs WHERE id = %s", [bad]).fetchone()
    # Crashes it shared with other jobs made it a suspect (not charged, attempt given
    # back); the three it caused alone are charged and end it.
    charged = [e for e in errors if e.get("charged", True)]
    assert attempt == 3 and len(charged) == 3
    assert all(e["type"] == "pgq.WorkerLost" and "SIGSEGV" in e["message"] for e in errors)
    assert "crash budget 3" in errors[-1]["message"]
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=60) == 0
    assert set(good) <= {r[0] for r in conn.execute("SELECT id FROM pgq_jobs WHERE state = 'completed'")}


def test_critical_job_starts_at_once_behind_a_bulk_flood(
    app: pgq.App, workers: Workers, conn: psycopg.Connection
) -> None:
    """Priority inversion: 1,000 bulk jobs queued, bulk capped at 6 of 8 slots. A critical
    job enqueued into that flood starts within a second."""
    app.enqueue_many([pgq.JobSpec("ledger.sleep", {"seconds": 3}, queue="bulk")
                      for _ in range(1000)])
    proc = workers.start("--queues", "critical=1,bulk=1:6", "--concurrency", "8")
    wait_until(lambda: conn.execute("SELECT count(*) FROM pgq_jobs WHERE state = 'running'"
                                    ).fetchone()[0] == 6, 30, "bulk filling its 6 slots")
    for _ in range(3):
        before = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        job = app.enqueue("ledger.noop", queue="critical").id
        started = wait_until(lambda job=job: conn.execute(
            "SELECT started_at FROM ledger WHERE job_id = %s", [job]).fetchone(), 10,
            "the critical job to start")[0]
        assert (started - before).total_seconds() < 1.0
    running_bulk = conn.execute("SELECT count(*) FROM pgq_jobs WHERE state = 'running' "
                                "AND queue = 'bulk'").fetchone()[0]
    assert running_bulk <= 6
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
