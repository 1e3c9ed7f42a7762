"""Dead letters no worker process lived to report (issue 14 item 7), as operators run
workers: a ``pgq worker`` subprocess whose child segfaults on a job until its crash
budget is spent. The child that ran the job is dead, so the supervisor that reclaimed it
runs the app's ``on_dead_letter`` hooks and logs the failed job's line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psycopg
import pytest

import pgq
from tests.support.dead_letter_app import DDL
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def supervisor(db_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """``pgq worker`` (a supervisor and one child) on the dead-letter app, crash budget 2;
    its process group killed afterwards if the test did not stop it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_")}
    env["PGQ_DATABASE_URL"] = db_url
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pgq", "worker", "--app", "tests.support.dead_letter_app:app",
             "--processes", "1", "--concurrency", "1", "--crash-budget", "2",
             "--poll-interval", "0.05"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
    yield process, log
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def test_a_child_tells_the_hooks_of_a_job_it_failed(
        db_url: str, conn: psycopg.Connection,
        supervisor: tuple[subprocess.Popen[str], Path]) -> None:
    """The ordinary path, through ``pgq worker`` given its database URL (here by
    PGQ_DATABASE_URL): the app the command loads keeps its hooks."""
    conn.execute(DDL)
    with pgq.App(pgq.Settings(database_url=db_url), strict=False) as app:
        job_id = app.enqueue("dl.fail").id
    process, log = supervisor
    wait_until(lambda: conn.execute("SELECT count(*) FROM told").fetchone()[0] >= 1, 60,
               "the hook to be told of the dead letter")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()
    (row,) = conn.execute("SELECT job_id, error_type, error_message, pid FROM told").fetchall()
    assert row[:3] == (job_id, "pgq.outcomes.Fail", "gave up on purpose")
    assert row[3] != process.pid, "told by the child that ran it"


def test_the_supervisor_tells_the_hooks_of_a_job_its_childs_crashes_failed(
        db_url: str, conn: psycopg.Connection,
        supervisor: tuple[subprocess.Popen[str], Path]) -> None:
    conn.execute(DDL)
    with pgq.App(pgq.Settings(database_url=db_url), strict=False) as app:
        job_id = app.enqueue("dl.segfault").id
    process, log = supervisor
    wait_until(lambda: conn.execute("SELECT count(*) FROM told").fetchone()[0] >= 1, 90,
               "the hook to be told of the dead letter")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()
    (row,) = conn.execute("SELECT job_id, task, queue, attempt, error_type, error_message, "
                          "worker, pid FROM told").fetchall()
    state, owner = conn.execute("SELECT state, lease_owner FROM pgq_jobs WHERE id = %s",
                                [job_id]).fetchone()
    assert state == "failed"
    assert row[:5] == (job_id, "dl.segfault", "default", 2, "pgq.WorkerLost")
    assert row[5].endswith("(signal SIGSEGV) during attempt 2; lost its worker 2 times "
                           "(crash budget 2)"), row[5]
    assert row[6] == owner, "the dead child that ran the attempt"
    assert row[7] == process.pid, "told by the supervisor: the child was dead"
    lines = [line for line in log.read_text().splitlines() if f"job={job_id} " in line]
    failed = [line for line in lines if " outcome=failed " in line]
    assert len(failed) == 1 and "WARNING pgq.reclaim " in failed[0], lines
    assert f" error=pgq.WorkerLost: {row[5]}" in failed[0]
