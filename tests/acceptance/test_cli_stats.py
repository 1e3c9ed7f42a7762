"""``pgq stats`` run as operators run it, a subprocess: ``--watch`` prints refreshed
frames until it is stopped (Ctrl-C: exit 130; SIGTERM: exit 0 after the frame), in text
and in ``--json``; and with the Redis server that held the cached stats killed, the same
figures, from ``pgq_stats`` and then computed directly, each marked as such."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest

import pgq
from pgq.scheduling.stats import StatsService
from tests.support.redisserver import RedisServer

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def start(db_url: str, *args: str, redis_url: str | None = None) -> subprocess.Popen[str]:
    """``python -m pgq ARGS`` with only the PGQ_* variables given here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_")}
    env["PGQ_DATABASE_URL"] = db_url
    if redis_url is not None:
        env["PGQ_REDIS_URL"] = redis_url
    return subprocess.Popen([sys.executable, "-m", "pgq", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


@pytest.fixture
def watcher() -> Iterator[list[subprocess.Popen[str]]]:
    """The processes a test starts, killed if the test left one running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def json_frames(stdout: IO[str]) -> Iterator[dict[str, Any]]:
    """One JSON document per line, each a refresh (blocks until the next is printed)."""
    while line := stdout.readline():
        yield json.loads(line)


def text_frames(stdout: IO[str]) -> Iterator[list[str]]:
    """The lines of each refresh, a frame being complete once the next one starts."""
    frame: list[str] = []
    while line := stdout.readline():
        if line.startswith("stats from ") and frame:
            yield frame
            frame = []
        frame.append(line.rstrip("\n"))


def enqueue_one(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO pgq_jobs (queue, task) VALUES ('watched', 'w.task')")


def test_watch_json_prints_a_line_per_refresh_and_sigterm_ends_it_cleanly(
        db_url: str, watcher: list[subprocess.Popen[str]]) -> None:
    # No Redis and no stats leader: each frame is computed by the CLI itself, so a job
    # enqueued after the first frame shows in a later one only if the watch refreshes.
    process = start(db_url, "stats", "--json", "--watch", "0.5")
    watcher.append(process)
    assert process.stdout is not None
    frames = json_frames(process.stdout)
    first = next(frames)
    assert first["source"] == "direct" and "watched" not in first["queues"]
    enqueue_one(db_url)
    seen = [first]
    for frame in frames:  # the frame computed before the insert committed may come first
        seen.append(frame)
        if "watched" in frame["queues"] or len(seen) == 6:
            break
    assert seen[-1]["queues"]["watched"]["counts"]["available"] == 1, seen
    times = [frame["computed_at"] for frame in seen]
    assert times == sorted(set(times)), "each frame is a new refresh"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert err == ""
    assert all(json.loads(line)["source"] == "direct" for line in out.splitlines()), \
        "whole lines only: the frame being printed is finished"


def test_watch_text_redraws_and_ctrl_c_exits_130(
        db_url: str, watcher: list[subprocess.Popen[str]]) -> None:
    process = start(db_url, "stats", "--watch", "0.5")
    watcher.append(process)
    assert process.stdout is not None
    frames = text_frames(process.stdout)
    first = next(frames)
    assert first[0].startswith("stats from direct, ") and first[1].startswith("no queues")
    enqueue_one(db_url)
    later = next(frames)
    while not any(line.startswith("watched ") for line in later):
        later = next(frames)
    assert later[0].startswith("stats from direct, ") and later[2].startswith("QUEUE ")
    assert later[1].startswith("UNSERVED: queue watched has 1 due job(s)"), "no worker runs"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130
    assert err.strip() == "aborted", "one line, no traceback"


def stats_json(db_url: str, redis_url: str) -> dict[str, Any]:
    process = start(db_url, "stats", "--json", redis_url=redis_url)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def without_lag(document: dict[str, Any]) -> dict[str, Any]:
    """The per-queue figures but the lag, which grows between two computations."""
    return {name: {k: v for k, v in q.items() if k != "lag_seconds"}
            for name, q in document["queues"].items()}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own on a spare port (never the shared one on 6379),
    for the test to kill."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH: this test kills a Redis server of its own")
    server = RedisServer().start()
    yield server
    server.destroy()


def test_stats_with_the_redis_that_cached_them_killed(
        db_url: str, conn: psycopg.Connection, redis_server: RedisServer) -> None:
    conn.execute("INSERT INTO pgq_jobs (queue, task, state, run_at) VALUES "
                 "('mail', 'm.send', 'available', now() - interval '1 minute'), "
                 "('mail', 'm.send', 'available', now()), "
                 "('mail', 'm.send', 'scheduled', now() + interval '1 hour')")
    conn.execute("INSERT INTO pgq_jobs (queue, task, state, attempt, started_at, finished_at) "
                 "VALUES ('mail', 'm.send', 'failed', 1, now() - interval '3 minutes', "
                 "now() - interval '2 minutes')")
    settings = pgq.Settings(database_url=db_url, redis_url=redis_server.url)
    with pgq.App(settings, strict=False) as app, \
            psycopg.connect(db_url, autocommit=True) as leader_conn:
        StatsService(app, holder="t").refresh(leader_conn)  # the leader's round, once
    cached = stats_json(db_url, redis_server.url)
    assert cached["source"] == "redis"
    mail = cached["queues"]["mail"]
    assert (mail["counts"]["available"], mail["counts"]["scheduled"], mail["dead_letters"],
            mail["dead_letter_growth"]["5m"]) == (2, 1, 1, 1)

    redis_server.stop()  # killed, not shut down: like a crash
    from_table = stats_json(db_url, redis_server.url)
    assert from_table["source"] == "postgres", "not from the Redis cache"
    assert {k: from_table[k] for k in ("computed_at", "queues")} == {
        k: cached[k] for k in ("computed_at", "queues")}, "the same document, from pgq_stats"

    conn.execute("DELETE FROM pgq_stats")  # no copy left anywhere: computed by the CLI
    direct = stats_json(db_url, redis_server.url)
    assert direct["source"] == "direct" and direct["age_seconds"] == 0
    assert direct["computed_at"] > cached["computed_at"]
    assert without_lag(direct) == without_lag(cached), "the same figures, computed here"
    assert direct["queues"]["mail"]["lag_seconds"] >= cached["queues"]["mail"]["lag_seconds"]
