"""A process that campaigns for leadership and, while leader, does fenced "leader work":
``python -m tests.support.leader_harness HOLDER`` with PGQ_DATABASE_URL, PGQ_REDIS_URL,
PGQ_REDIS_PREFIX and LEADER_TTL set.

Every change of leadership is a ``leader_events`` row; every attempt at leader work is a
``leader_attempts`` row, and an attempt becomes a ``leader_work`` row only if its term is
at least the largest term that did work (the fencing check, serialised by a table lock).
All timestamps are the database clock's."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import psycopg

import pgq
from pgq.coordination.leader import Leadership

DDL = """
CREATE TABLE IF NOT EXISTS leader_events (
    id bigserial PRIMARY KEY, holder text NOT NULL, term bigint,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS leader_attempts (
    id bigserial PRIMARY KEY, holder text NOT NULL, term bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS leader_work (
    id bigserial PRIMARY KEY, holder text NOT NULL, term bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
"""

NAME = "harness"
PACE = 0.05  # seconds between units of leader work


def create(conn: psycopg.Connection[Any]) -> None:
    conn.execute(DDL)


def main(holder: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = pgq.App.from_env()
    ttl = float(os.environ.get("LEADER_TTL", "2"))
    url = os.environ["PGQ_DATABASE_URL"]
    events = psycopg.connect(url, autocommit=True)
    events_lock = threading.Lock()

    def changed(term: int | None) -> None:
        with events_lock:
            events.execute("INSERT INTO leader_events (holder, term) VALUES (%s, %s)",
                           [holder, term])

    work = psycopg.connect(url, autocommit=True)
    with Leadership(app.coordinator, NAME, holder, ttl=ttl, on_change=changed) as leadership:
        print("campaigning", flush=True)
        while True:
            leadership.wait()
            term = leadership.term
            if term is None:
                continue
            with work.transaction():
                work.execute("INSERT INTO leader_attempts (holder, term) VALUES (%s, %s)",
                             [holder, term])
                work.execute("LOCK TABLE leader_work IN SHARE ROW EXCLUSIVE MODE")
                work.execute(
                    "INSERT INTO leader_work (holder, term) SELECT %s, %s "
                    "WHERE %s >= (SELECT coalesce(max(term), 0) FROM leader_work)",
                    [holder, term, term])
            threading.Event().wait(PACE)  # pacing of the work, not synchronisation


if __name__ == "__main__":
    main(sys.argv[1])
