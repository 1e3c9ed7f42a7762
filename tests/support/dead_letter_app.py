"""A pgq app for ``pgq worker`` subprocesses (``tests.support.dead_letter_app:app``)
whose ``on_dead_letter`` hook writes each dead letter it is told of to the ``told``
table, with the pid of the process whose hook ran: a test sees who told, and what."""

from __future__ import annotations

import os
import signal

import psycopg

import pgq

app = pgq.App.from_env()

DDL = """CREATE TABLE IF NOT EXISTS told (
    job_id bigint, task text, queue text, attempt int, error_type text, error_message text,
    worker text, pid int)"""


@app.task(name="dl.segfault", max_attempts=10)
def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


@app.on_dead_letter
def tell(dead: pgq.DeadLetter) -> None:
    with psycopg.connect(os.environ["PGQ_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO told VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                     [dead.job_id, dead.task, dead.queue, dead.attempt, dead.error_type,
                      dead.error_message, dead.worker_id, os.getpid()])


@app.task(name="dl.fail")
def fail() -> None:
    raise pgq.Fail("gave up on purpose")
