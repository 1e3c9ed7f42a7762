"""Five scheduler processes, the leader killed (-9) and paused (SIGSTOP) at random while
a fast clock runs hours of minutely ticks: every (entry, tick) is enqueued exactly once,
and a backfill entry has no gaps at all (tests/support/cron_harness.py)."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REDIS_URL
from tests.support import cron_harness
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2030, 6, 1, 0, 0, 30, tzinfo=UTC)
STEPS = 240  # fake minutes
STEP_REAL = 0.04  # real seconds per fake minute


class Schedulers:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.started = 0

    def start(self) -> str:
        holder = f"s{self.started}"
        self.started += 1
        log = open(self.tmp / f"{holder}.log", "w")  # noqa: SIM115
        self.procs[holder] = subprocess.Popen(
            [sys.executable, "-m", "tests.support.cron_harness", holder], cwd=ROOT,
            env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        return holder

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(params=["redis", "postgres"])
def schedulers(request: pytest.FixtureRequest, db_url: str, conn: psycopg.Connection,
               tmp_path: Path) -> Iterator[Schedulers]:
    cron_harness.create(conn, START)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PGQ_")},
           "PGQ_DATABASE_URL": db_url}
    if request.param == "redis":
        env |= {"PGQ_REDIS_URL": REDIS_URL, "PGQ_REDIS_PREFIX": f"cron{os.getpid()}:"}
    s = Schedulers(env, tmp_path)
    yield s
    s.stop_all()


def last_firer(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT scheduler FROM pgq_cron_fires ORDER BY enqueued_at DESC, "
                       "fire_at DESC LIMIT 1").fetchone()
    return row[0] if row else None


def test_five_schedulers_with_leader_killed_and_paused_fire_each_tick_once(
        schedulers: Schedulers, conn: psycopg.Connection) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4)))
    for _ in range(5):
        schedulers.start()
    wait_until(lambda: last_firer(conn), 20, "a first fire")
    paused: dict[str, int] = {}  # holder -> step to resume at
    killed = stopped = 0
    now = START
    for step in range(STEPS):
        now = cron_harness.advance(conn, timedelta(minutes=1))
        for holder, until in list(paused.items()):
            if step >= until:
                schedulers.procs[holder].send_signal(signal.SIGCONT)
                del paused[holder]
        if step % 40 == 20:
            leader = last_firer(conn)
            if leader and leader not in paused and schedulers.procs[leader].poll() is None:
                if rng.random() < 0.5:
                    schedulers.procs[leader].kill()
                    schedulers.start()
                    killed += 1
                else:
                    schedulers.procs[leader].send_signal(signal.SIGSTOP)
                    paused[leader] = step + rng.randint(30, 60)  # 1.2-2.4 s > TTL
                    stopped += 1
        threading.Event().wait(STEP_REAL)  # the fast clock's pace, not synchronisation
    for holder in paused:
        schedulers.procs[holder].send_signal(signal.SIGCONT)
    assert killed + stopped >= 4

    last_tick = now.replace(second=0)
    wait_until(lambda: conn.execute(
        "SELECT max(fire_at) FROM pgq_cron_fires WHERE entry = 'every_minute'").fetchone()
        == (last_tick,), 30, "the final tick to fire")

    minutely = [r[0] for r in conn.execute(
        "SELECT fire_at FROM pgq_cron_fires WHERE entry = 'every_minute' ORDER BY fire_at")]
    first = minutely[0]
    expected = [first + timedelta(minutes=i)
                for i in range(int((last_tick - first).total_seconds() // 60) + 1)]
    assert minutely == expected, "backfill: every minute exactly once, no gaps"
    assert len(expected) >= STEPS - 5

    seven = [r[0] for r in conn.execute(
        "SELECT fire_at FROM pgq_cron_fires WHERE entry = 'every_7_latest' ORDER BY fire_at")]
    assert len(seven) == len(set(seven))
    assert all(t.minute % 7 == 0 for t in seven)
    # "latest" skips a tick only if no scheduler looked between it and the next tick
    # (a takeover): any pass in that window, seen as an every_minute fire enqueued then,
    # would have fired it.
    entry = cron_harness.build_app(schedulers.env["PGQ_DATABASE_URL"]).schedules["every_7_latest"]
    ticks = [seven[0]]
    while (nxt := entry.next_after(ticks[-1])) is not None and nxt <= seven[-1]:
        ticks.append(nxt)
    skipped = sorted(set(ticks) - set(seven))
    for tick, after in itertools.pairwise(ticks):
        if tick in skipped:
            passes = conn.execute(
                "SELECT count(*) FROM pgq_cron_fires WHERE entry = 'every_minute' "
                "AND enqueued_at >= %s AND enqueued_at < %s", [tick, after]).fetchone()
            assert passes == (0,), f"{tick} was skipped though a scheduler was running"

    jobs = conn.execute("SELECT count(*), count(DISTINCT id) FROM pgq_jobs").fetchone()
    assert jobs == (len(minutely) + len(seven),) * 2, "one job per fire, nothing else"
    orphans = conn.execute("SELECT count(*) FROM pgq_cron_fires f "
                           "LEFT JOIN pgq_jobs j ON j.id = f.job_id WHERE j.id IS NULL").fetchone()
    assert orphans == (0,)
    firers = {r[0] for r in conn.execute("SELECT DISTINCT scheduler FROM pgq_cron_fires")}
    assert len(firers) >= 2, "leadership changed hands"

