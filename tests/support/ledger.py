"""The execution ledger: one row per started attempt, written by the task itself on a
per-thread autocommit connection (independent of pgq's own connections)."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg

import pgq

DDL = """
CREATE TABLE IF NOT EXISTS ledger (
    job_id bigint NOT NULL, attempt int NOT NULL, worker text NOT NULL, pid int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(), ended_at timestamptz
)"""

_local = threading.local()


def _conn() -> psycopg.Connection[Any]:
    """The ledger's database is pgq's unless ``LEDGER_DATABASE_URL`` says otherwise (the
    fault suite keeps it on a server it does not break). ``application_name`` lets a
    test that cuts pgq's connections spare the ledger's."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        url = os.environ.get("LEDGER_DATABASE_URL") or os.environ["PGQ_DATABASE_URL"]
        conn = psycopg.connect(url, autocommit=True, application_name=APPLICATION_NAME)
        _local.conn = conn
    return conn


APPLICATION_NAME = "pgq-test-ledger"


def create(conn: psycopg.Connection[Any]) -> None:
    conn.execute(DDL)


def record_start(ctx: pgq.Context) -> None:
    _conn().execute("INSERT INTO ledger (job_id, attempt, worker, pid) VALUES (%s, %s, %s, %s)",
                    [ctx.job_id, ctx.attempt, ctx.worker_id, os.getpid()])


def record_end(ctx: pgq.Context) -> None:
    _conn().execute("UPDATE ledger SET ended_at = clock_timestamp() "
                    "WHERE job_id = %s AND attempt = %s AND worker = %s",
                    [ctx.job_id, ctx.attempt, ctx.worker_id])
