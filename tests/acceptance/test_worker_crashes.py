"""Workers that crash, hang, hold the GIL or lose their supervisor (issue 12, defects 3,
4, 5, 6, 7 and 10), run as operators run them: `pgq worker` subprocesses, with the
execution ledger (tests/support/ledger.py) as the witness of what ran where and how often."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import pgq
from pgq.worker import Worker, WorkerConfig
from tests.acceptance.test_worker_processes import Workers, log_of, signal_group, states
from tests.conftest import REDIS_URL
from tests.support import ledger
from tests.support.waiting import wait_until


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(db_url, tmp_path)
    yield w
    w.stop_all()


@pytest.fixture
def app(settings: pgq.Settings, conn: psycopg.Connection) -> Iterator[pgq.App]:
    ledger.create(conn)
    with pgq.App(settings, strict=False) as a:
        yield a


def ledger_rows(conn: psycopg.Connection, job_id: int) -> list[tuple]:
    return conn.execute("SELECT attempt, worker, pid, started_at, ended_at FROM ledger "
                        "WHERE job_id = %s ORDER BY started_at", [job_id]).fetchall()


def test_dead_workers_jobs_run_again_within_lease_plus_reclaim(
    app: pgq.App, workers: Workers, conn: psycopg.Connection
) -> None:
    """Defect 3: with the default settings (lease 12 s, reclaim every 5 s), the jobs of a
    worker killed with its whole process group run again within lease + reclaim + 1 s,
    not after a retry backoff on top (it was 65 s)."""
    config = WorkerConfig()
    bound = config.lease_seconds + config.reclaim_seconds + 1
    assert bound <= 20, "the defaults promise recovery in about 20 s or less"
    jobs = [app.enqueue("ledger.sleep", {"seconds": 600, "retry_seconds": 0.05}).id
            for _ in range(4)]
    victim = workers.start("--concurrency", "4", name="victim")
    wait_until(lambda: conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == 4, 60,
               "4 started jobs")
    survivor = workers.start("--concurrency", "4", "--queues", "other", name="survivor")
    # The survivor serves another queue: it can only reclaim, so the victim's jobs come
    # back through the lease path, the slow one, and a third worker runs them.
    wait_until(lambda: "started" in log_of(survivor), 30, "the survivor to start")
    signal_group(victim, signal.SIGKILL)
    victim.wait()
    killed = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    workers.start("--concurrency", "4", name="runner")
    wait_until(lambda: states(conn).get("completed") == 4, 60, "the 4 jobs to run again")
    restarted = conn.execute("SELECT max(started_at) FROM ledger WHERE attempt = 2"
                             ).fetchone()[0]
    took = (restarted - killed).total_seconds()
    assert took <= bound, f"jobs ran again {took:.1f}s after the kill; bound {bound:.0f}s"
    errors = conn.execute("SELECT errors FROM pgq_jobs WHERE id = ANY(%s)", [jobs]).fetchall()
    assert all(e[0][0]["type"] == "pgq.WorkerLost" for e in errors)


@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.parametrize("redis", [False, True], ids=["postgres-only", "redis"])
def test_innocent_neighbours_of_a_crashing_job_complete(
    app: pgq.App, workers: Workers, conn: psycopg.Connection, processes: str, redis: bool
) -> None:
    """Defect 4: a job that segfaults its process while others are running beside it
    (several seconds long) ends failed after its crash budget; every neighbour completes,
    and no crash is charged to a neighbour."""
    if redis:
        workers.env = {"PGQ_REDIS_URL": REDIS_URL}
    innocent = [app.enqueue("ledger.sleep", {"seconds": 2}).id for _ in range(5)]
    poison = app.enqueue("ledger.segfault").id
    sup = workers.start("--processes", processes, "--concurrency", "6", "--crash-budget", "3")
    wait_until(lambda: conn.execute("SELECT state FROM pgq_jobs WHERE id = %s", [poison]
                                    ).fetchone()[0] == "failed", 120, "the poison job to fail")
    wait_until(lambda: conn.execute(
        "SELECT count(*) FROM pgq_jobs WHERE id = ANY(%s) AND state = 'completed'", [innocent]
    ).fetchone()[0] == 5, 120, "every innocent job to complete")
    # The first crash hit the poison job and some neighbours together (they were still
    # running when it crashed): that is what this test is about.
    first_crash = conn.execute(
        "SELECT count(*) FROM pgq_jobs, jsonb_array_elements(errors) AS e "
        "WHERE id = ANY(%s) AND e->>'type' = 'pgq.WorkerLost'", [innocent]).fetchone()[0]
    assert first_crash >= 1, "no neighbour was running when the poison job crashed"
    for job_id in innocent:
        (errors,) = conn.execute("SELECT errors FROM pgq_jobs WHERE id = %s", [job_id]).fetchone()
        assert all(e.get("charged") is False for e in errors), errors
    attempt, errors = conn.execute("SELECT attempt, errors FROM pgq_jobs WHERE id = %s",
                                   [poison]).fetchone()
    charged = [e for e in errors if e.get("charged", True)]
    assert len(charged) == 3 and "crash budget 3" in charged[-1]["message"]
    assert attempt == 3
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=60) == 0, log_of(sup)


def test_task_holding_the_gil_past_its_lease_runs_once(
    app: pgq.App, workers: Workers, conn: psycopg.Connection
) -> None:
    """Defect 7: a sync task inside one C call that keeps the GIL for 9 s, with a 2 s
    lease, starves its process's heartbeat thread; the supervisor renews the lease, so
    the worker reclaiming expired leases beside it never runs the job a second time."""
    job = app.enqueue("ledger.gil", {"seconds": 9}).id
    holder = workers.start("--concurrency", "2", "--lease", "2", name="holder")
    wait_until(lambda: ledger_rows(conn, job), 60, "the job to start")
    workers.start("--concurrency", "2", "--lease", "2", name="rival")
    wait_until(lambda: states(conn).get("completed") == 1, 60, "the job to complete")
    rows = ledger_rows(conn, job)
    assert len(rows) == 1, f"the job ran {len(rows)} times"
    attempt, errors = conn.execute("SELECT attempt, errors FROM pgq_jobs WHERE id = %s",
                                   [job]).fetchone()
    assert (attempt, errors) == (1, [])
    assert "lease lost" not in log_of(holder)


def test_sync_task_stuck_in_c_past_its_timeout_ends_by_its_timeout(
    app: pgq.App, workers: Workers, conn: psycopg.Connection
) -> None:
    """Defect 7, hard timeouts: a task with a 1 s timeout stuck 60 s in a C call that
    keeps the GIL cannot be interrupted; the supervisor ends its process at the hard
    deadline and charges the timeout to it alone. Its neighbour is handed back uncharged
    and completes."""
    stuck = app.enqueue("ledger.gil_timeout", {"seconds": 60}, max_attempts=1).id
    sup = workers.start("--concurrency", "2")
    wait_until(lambda: ledger_rows(conn, stuck), 60, "the stuck job to start")
    neighbour = app.enqueue("ledger.sleep", {"seconds": 0.5}).id
    wait_until(lambda: conn.execute("SELECT state FROM pgq_jobs WHERE id = %s", [stuck]
                                    ).fetchone()[0] == "failed", 30, "the stuck job to fail")
    (errors,) = conn.execute("SELECT errors FROM pgq_jobs WHERE id = %s", [stuck]).fetchone()
    assert [e["type"] for e in errors] == ["pgq.Timeout"], errors
    assert "timeout of 1s" in errors[0]["message"]
    wait_until(lambda: conn.execute("SELECT state FROM pgq_jobs WHERE id = %s", [neighbour]
                                    ).fetchone()[0] == "completed", 30, "the neighbour")
    (n_errors,) = conn.execute("SELECT errors FROM pgq_jobs WHERE id = %s", [neighbour]).fetchone()
    assert all(e.get("charged") is False for e in n_errors), n_errors
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=60) == 0, log_of(sup)


def test_self_recycling_worker_is_restarted(
    app: pgq.App, workers: Workers, conn: psycopg.Connection
) -> None:
    """Defect 6: with the default single process, a worker that recycles itself (its one
    slot's thread abandoned at the timeout) is replaced and goes on running jobs."""
    stuck = app.enqueue("ledger.stuck", {"seconds": 300}).id
    sup = workers.start("--concurrency", "1")
    wait_until(lambda: ledger_rows(conn, stuck), 60, "the stuck job to start")
    wait_until(lambda: "asked to be recycled" in log_of(sup), 30, "the worker to recycle")
    first_pid = ledger_rows(conn, stuck)[0][2]
    later = app.enqueue("ledger.sleep", {"seconds": 0}).id
    wait_until(lambda: conn.execute("SELECT state FROM pgq_jobs WHERE id = %s", [later]
                                    ).fetchone()[0] == "completed", 60, "a job after recycling")
    assert ledger_rows(conn, later)[0][2] != first_pid, "a fresh process ran it"
    assert sup.poll() is None, "the worker is still up"


def test_children_stop_and_hand_back_when_the_supervisor_is_killed(
    app: pgq.App, workers: Workers, conn: psycopg.Connection
) -> None:
    """Defect 10: kill -9 of the supervisor alone: its children notice, hand their jobs
    back (not spent) and exit within a few seconds, instead of running on unsupervised."""
    jobs = [app.enqueue("ledger.sleep", {"seconds": 600}).id for _ in range(4)]
    sup = workers.start("--processes", "2", "--concurrency", "2")
    wait_until(lambda: conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == 4, 60,
               "4 started jobs")
    pids = {r[0] for r in conn.execute("SELECT DISTINCT pid FROM ledger")}
    assert len(pids) == 2
    sup.kill()  # the supervisor only
    sup.wait()
    killed = time.monotonic()

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    wait_until(lambda: not any(alive(p) for p in pids), 10, "the children to exit")
    assert time.monotonic() - killed < 10
    rows = conn.execute("SELECT state, attempt FROM pgq_jobs WHERE id = ANY(%s)", [jobs]).fetchall()
    assert rows == [("available", 0)] * 4, rows


def test_a_jobs_timeout_comes_from_its_task_when_the_producer_did_not_know_it(
    settings: pgq.Settings, conn: psycopg.Connection
) -> None:
    """Defect 5: a job whose producer did not know the task (timeout NULL) still gets its
    task's timeout in the worker; without it, a hung task held its slot for ever."""
    with pgq.App(settings, strict=False) as producer:
        job = producer.enqueue("slow.task").id
    assert conn.execute("SELECT timeout_seconds FROM pgq_jobs WHERE id = %s", [job]
                        ).fetchone()[0] is None
    with pgq.App(settings) as worker_app:
        @worker_app.task(name="slow.task", timeout=0.3)
        def slow(ctx: pgq.Context) -> None:
            ctx.cancelled.wait(30)

        config = WorkerConfig(poll_seconds=0.05, maintenance=False)
        worker = Worker(worker_app, config)
        asyncio.run(asyncio.wait_for(worker.run_async(stop_when="due"), 20))
    state, errors = conn.execute("SELECT state, errors FROM pgq_jobs WHERE id = %s",
                                 [job]).fetchone()
    assert state == "retryable" and errors[0]["type"] == "pgq.Timeout", (state, errors)


def test_children_that_cannot_start_stop_the_supervisor(settings: pgq.Settings) -> None:
    """A child that cannot start (configuration, schema) is not restarted in a loop: the
    supervisor stops its other children and exits 1."""
    from pgq.worker.supervisor import Supervisor
    from tests.support.jobs import app as jobs_app
    from tests.support.jobs import cannot_load

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        supervisor = Supervisor(jobs_app, cannot_load, (), WorkerConfig(), processes=2)
        started = time.monotonic()
        assert supervisor.run() == 1
        assert time.monotonic() - started < 30
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
