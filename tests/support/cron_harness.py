"""A scheduler process for the cluster-wide exactly-once test:
``python -m tests.support.cron_harness HOLDER`` with PGQ_DATABASE_URL (and optionally
PGQ_REDIS_URL, PGQ_REDIS_PREFIX) set. Its clock is a row the test moves
(``fake_clock``), so minutes pass in milliseconds; everything else is real: processes,
leadership (TTL 1 s), the database and the fire records."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from datetime import datetime, timedelta
from typing import Any

import psycopg

import pgq
from pgq.scheduling.scheduler import Scheduler

TTL = 1.0
TICK = 0.02
DDL = "CREATE TABLE IF NOT EXISTS fake_clock (one bool PRIMARY KEY DEFAULT true, t timestamptz NOT NULL)"


class TableClock:
    """``now()`` is the time the test wrote in ``fake_clock`` (one connection per thread)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()

    def now(self) -> datetime:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = psycopg.connect(self.url, autocommit=True)
        row = conn.execute("SELECT t FROM fake_clock").fetchone()
        assert row is not None
        value: datetime = row[0]
        return value


def create(conn: psycopg.Connection[Any], start: datetime) -> None:
    conn.execute(DDL)
    conn.execute("INSERT INTO fake_clock (t) VALUES (%s)", [start])


def advance(conn: psycopg.Connection[Any], delta: timedelta) -> datetime:
    row = conn.execute("UPDATE fake_clock SET t = t + %s RETURNING t", [delta]).fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def build_app(url: str | None = None) -> pgq.App:
    url = url or os.environ["PGQ_DATABASE_URL"]
    app = pgq.App(pgq.Settings.from_env(database_url=url), clock=TableClock(url))

    @app.task(name="cron.tick")
    def tick() -> None: ...

    app.cron("* * * * *", "cron.tick", name="every_minute", catch_up="backfill",
             backfill_window=timedelta(days=1))
    app.cron("*/7 * * * *", "cron.tick", name="every_7_latest", catch_up="latest")
    return app


def main(holder: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    scheduler = Scheduler(build_app(), holder=holder, ttl=TTL, tick=TICK)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop())
    print("scheduling", flush=True)
    scheduler.run()


if __name__ == "__main__":
    main(sys.argv[1])
