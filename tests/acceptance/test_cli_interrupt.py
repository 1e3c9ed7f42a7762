"""Ctrl-C in the middle of ``pgq jobs retry`` by filter, then the same command again
(issue 14: "an interrupted run resumes without duplicates").

tests/integration/test_admin_reads.py interrupts the API between two batches (its
progress callback raises); here the operator's SIGINT reaches the CLI process while a
batch's statement is still running in the server, the case a real Ctrl-C mostly hits.
A test-only trigger makes the third batch wait on an advisory lock the test holds, so
the signal lands inside that statement every time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from pgq.client.admin import BATCH

ROOT = Path(__file__).resolve().parents[2]
JOBS = BATCH * 3 + BATCH // 2
DONE = BATCH * 2
"""Jobs the two batches before the held one commit."""
LOCK = 914_014

SEED = """
INSERT INTO pgq_jobs (queue, task, state, attempt, max_attempts, finished_at, errors)
SELECT 'dead', 'mail.send', 'failed', 1, 1, now(),
       '[{"attempt": 1, "type": "SMTPError", "message": "421 try later"}]'
FROM generate_series(1, %s)
"""


def retry(db_url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_")}
    env.update({"PGQ_DATABASE_URL": db_url, "USER": "tester"})
    return subprocess.Popen([sys.executable, "-m", "pgq", "jobs", "retry", "--queue", "dead",
                             "--state", "failed", "--yes"], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigint_mid_batch_then_rerun_retries_each_job_once(conn: psycopg.Connection,
                                                           db_url: str) -> None:
    conn.execute(SEED, [JOBS])
    ids = [r[0] for r in conn.execute("SELECT id FROM pgq_jobs ORDER BY id")]
    # The third batch (ids in order, BATCH a batch) blocks on its first action row.
    conn.execute(f"""
        CREATE FUNCTION test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared({LOCK}); RETURN NEW; END $$;
        CREATE TRIGGER test_hold BEFORE INSERT ON pgq_job_actions FOR EACH ROW
        WHEN (NEW.job_id = {ids[DONE]}) EXECUTE FUNCTION test_hold()""")
    conn.execute("SELECT pg_advisory_lock(%s)", [LOCK])

    first = retry(db_url)
    deadline = time.monotonic() + 60
    while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' "
                           "AND datname = current_database()").fetchone()[0]:  # type: ignore[index]
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)  # the operator's Ctrl-C, the third batch in flight
    out, err = first.communicate(timeout=30)
    assert first.returncode == 130, (out, err)
    assert f"interrupted: {DONE} jobs retried so far in committed batches, plus the batch in " \
           "flight if the server committed it first. Run the same command again" in err
    # The statement in flight was cancelled (psycopg cancels on Ctrl-C): its batch rolled
    # back whole, changes and records together, and nothing waits on the lock any more.
    assert conn.execute("SELECT count(*) FROM pgq_job_actions").fetchone() == (DONE,)
    assert conn.execute("SELECT count(*) FROM pgq_jobs WHERE state = 'available'").fetchone() == (DONE,)
    assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' "
                        "AND datname = current_database()").fetchone() == (0,)

    conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK])
    again = retry(db_url)
    out, err = again.communicate(timeout=60)
    assert (again.returncode, out) == (0, f"retried {JOBS - DONE} jobs\n"), err
    assert conn.execute(
        "SELECT count(*), count(DISTINCT job_id), min(actor) FROM pgq_job_actions "
        "WHERE action = 'retry'").fetchone() == (JOBS, JOBS, "tester")
    assert conn.execute(
        "SELECT count(*) FROM pgq_jobs WHERE state = 'available' AND finished_at IS NULL "
        "AND errors -> 0 ->> 'type' = 'SMTPError' AND max_attempts = 2").fetchone() == (JOBS,)
