"""Leader election across real processes (tests/support/leader_harness.py): takeover after
``kill -9``, the PostgreSQL fallback with Redis stopped, and a paused leader that must do
no leader work once it resumes. Each harness writes its leadership changes, its attempts
at leader work and its fenced work to tables, by the database clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import leader_harness
from tests.support.redisserver import RedisServer
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
TTL = 2.0
RENEW = TTL / 3
SLACK = 0.3
"""Measurement slack on takeover times: the kill and the clock reading are separate
steps, and the new leader's event row is written after it won."""


class Harnesses:
    def __init__(self, db_url: str, redis_url: str, prefix: str, tmp: Path) -> None:
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("PGQ_")},
                    "PGQ_DATABASE_URL": db_url, "PGQ_REDIS_URL": redis_url,
                    "PGQ_REDIS_PREFIX": prefix, "LEADER_TTL": str(TTL)}
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, holder: str) -> subprocess.Popen[str]:
        log = open(self.tmp / f"{holder}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.leader_harness", holder],
                                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                text=True)
        self.procs[holder] = proc
        return proc

    def log(self, holder: str) -> str:
        return (self.tmp / f"{holder}.log").read_text()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.destroy()


@pytest.fixture
def harnesses(db_url: str, conn: psycopg.Connection, redis_server: RedisServer,
              tmp_path: Path) -> Iterator[Harnesses]:
    leader_harness.create(conn)
    h = Harnesses(db_url, redis_server.url, f"lead{os.getpid()}:", tmp_path)
    yield h
    h.stop_all()


def db_now(conn: psycopg.Connection) -> Any:
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]


def current_leader(conn: psycopg.Connection) -> str | None:
    """The holder of the latest leadership event that won (None if the latest lost)."""
    row = conn.execute("SELECT holder, term FROM leader_events ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row and row[1] is not None else None


def workers_since(conn: psycopg.Connection, since: Any) -> set[str]:
    rows = conn.execute("SELECT DISTINCT holder FROM leader_work WHERE at > %s", [since])
    return {r[0] for r in rows}


def recent_workers(conn: psycopg.Connection, seconds: float = 0.5) -> set[str]:
    rows = conn.execute("SELECT DISTINCT holder FROM leader_work "
                        "WHERE at > clock_timestamp() - make_interval(secs => %s)", [seconds])
    return {r[0] for r in rows}


def first_win_after(conn: psycopg.Connection, since: Any, other_than: str) -> Any:
    row = conn.execute("SELECT min(at) FROM leader_events WHERE term IS NOT NULL "
                       "AND holder <> %s AND at > %s", [other_than, since]).fetchone()
    return row[0] if row else None


def assert_fenced_history(conn: psycopg.Connection) -> None:
    """Accepted work: each term belongs to one holder and terms never go back."""
    rows = conn.execute("SELECT holder, term FROM leader_work ORDER BY id").fetchall()
    owner: dict[int, str] = {}
    last = 0
    for holder, term in rows:
        assert owner.setdefault(term, holder) == holder, f"term {term} used by two holders"
        assert term >= last, "work accepted from an older term after a newer one"
        last = term


def start_three(harnesses: Harnesses, conn: psycopg.Connection) -> str:
    for holder in ("a", "b", "c"):
        harnesses.start(holder)
    leader = wait_until(lambda: current_leader(conn), 15, "a first leader")
    wait_until(lambda: recent_workers(conn) == {leader}, 10, "leader work")
    return str(leader)


def test_kill_9_leader_is_replaced_within_ttl_plus_renew(
        harnesses: Harnesses, conn: psycopg.Connection, redis_server: RedisServer) -> None:
    leader = start_three(harnesses, conn)
    (instance,) = conn.execute("SELECT id FROM pgq_instance").fetchone()  # type: ignore[misc]
    holder_in_redis = redis_server.client().get(f"lead{os.getpid()}:{instance}:leader:harness")
    assert holder_in_redis == leader, "leadership should be held in Redis while it is up"
    assert not conn.execute("SELECT 1 FROM pgq_leaders").fetchall(), "nothing in the fallback"

    harnesses.procs[leader].kill()
    killed_at = db_now(conn)
    new_at = wait_until(lambda: first_win_after(conn, killed_at, leader), 10, "a new leader")
    took = (new_at - killed_at).total_seconds()
    assert took <= TTL + RENEW + SLACK, f"takeover took {took:.2f}s"
    successor = current_leader(conn)
    assert successor not in (None, leader)
    # (its first work may be written just before its leadership event: wait for work after)
    wait_until(lambda: workers_since(conn, new_at), 5, "the successor's work")
    assert workers_since(conn, new_at) == {successor}
    assert_fenced_history(conn)


def test_redis_stopped_postgres_elects_exactly_one(
        harnesses: Harnesses, conn: psycopg.Connection, redis_server: RedisServer) -> None:
    leader = start_three(harnesses, conn)
    redis_server.stop()
    stopped_at = db_now(conn)
    # The leader moves its hold into pgq_leaders at its next renewal; the others wait out
    # the Redis TTL before they would take a fallback leadership of their own.
    wait_until(lambda: conn.execute("SELECT holder FROM pgq_leaders").fetchall() == [(leader,)],
               TTL + 2, "the leader's hold migrated to PostgreSQL")
    wait_until(lambda: "falling back to PostgreSQL" in harnesses.log(leader), 5, "fallback log")
    # Over 2 TTLs after the switch, exactly one process does leader work.
    window_start = db_now(conn)
    wait_until(lambda: (db_now(conn) - window_start).total_seconds() > 2 * TTL, 3 * TTL + 5,
               "two TTLs of PostgreSQL-only leadership")
    assert workers_since(conn, stopped_at) == {leader}

    # And a kill -9 in PostgreSQL mode hands over through the leader row.
    harnesses.procs[leader].kill()
    killed_at = db_now(conn)
    new_at = wait_until(lambda: first_win_after(conn, killed_at, leader), 10, "a new leader")
    assert (new_at - killed_at).total_seconds() <= TTL + RENEW + SLACK
    successor = current_leader(conn)
    wait_until(lambda: conn.execute("SELECT holder FROM pgq_leaders").fetchall()
               == [(successor,)], 5, "the successor's leader row")
    assert_fenced_history(conn)


def test_leader_paused_past_ttl_does_no_leader_work_after_resuming(
        harnesses: Harnesses, conn: psycopg.Connection) -> None:
    leader = start_three(harnesses, conn)
    proc = harnesses.procs[leader]
    proc.send_signal(signal.SIGSTOP)
    stopped_at = db_now(conn)
    wait_until(lambda: first_win_after(conn, stopped_at, leader), 10, "a new leader")
    wait_until(lambda: (db_now(conn) - stopped_at).total_seconds() > TTL, TTL + 2,
               "the paused leader's TTL to pass")
    resumed_at = db_now(conn)
    proc.send_signal(signal.SIGCONT)
    # Once it runs again it notices at once that its leadership lapsed.
    wait_until(lambda: conn.execute(
        "SELECT 1 FROM leader_events WHERE holder = %s AND term IS NULL AND at > %s",
        [leader, resumed_at]).fetchone() or "is no longer leader" in harnesses.log(leader),
        5, "the resumed process to notice it lost leadership")
    # Give it several renew intervals of running to misbehave in.
    wait_until(lambda: (db_now(conn) - resumed_at).total_seconds() > 3 * RENEW, 10,
               "three renew intervals after SIGCONT")
    assert leader not in workers_since(conn, resumed_at), "the ex-leader did leader work"
    # At most the one attempt a pause could have cut in half, refused by the fence.
    attempts = conn.execute("SELECT count(*) FROM leader_attempts WHERE holder = %s AND at > %s",
                            [leader, resumed_at]).fetchone()
    assert attempts is not None and attempts[0] <= 1
    assert current_leader(conn) != leader
    assert_fenced_history(conn)
