"""``pgq stats`` run as operators run it, a subprocess: ``--watch`` prints refreshed
frames until it is stopped (Ctrl-C: exit 130; SIGTERM: exit 0 after the frame), in text
and in ``--json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest

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
    assert later[0].startswith("stats from direct, ") and later[1].startswith("QUEUE ")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130
    assert err.strip() == "aborted", "one line, no traceback"
