"""A silent network partition between a worker and PostgreSQL (issue 12, defect 9).

Topology (tests/support/netns.py): a PostgreSQL cluster of the test's own listens on
the root side of a veth pair; worker A (``pgq worker``: supervisor and child) runs in a
network namespace the test creates, worker B in the root namespace. While A runs a job,
nftables rules inside A's namespace silently drop every packet to and from the server's
port: no reset, no ICMP, as a failed switch. Without keepalives and ``tcp_user_timeout``
A's connections would wait out the kernel's retransmissions (~15 minutes) and its task
would run on past its lease while B ran the job again.

Proven: A logs the outage within the detection bound; A tells its task to stop before
the lease can expire, and never stores that attempt's result; B runs the job again
once the lease has expired, with no overlap; when the rules are removed, A reconnects
and runs new jobs; no job is lost or run twice without the fault to blame.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgq
from pgq.core.settings import Settings
from pgq.store import migrate
from pgq.worker.heartbeat import LEASE_MARGIN_SECONDS
from tests.faults.harness import REPORTS, FaultReport
from tests.support.netns import BlackHole, port_is_free
from tests.support.pgcluster import PgCluster
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
PORTS = range(25460, 25480)
"""Ports this test may give its own server (and so its namespace and addresses)."""
LEASE = 6.0
HEARTBEAT = LEASE / 3
DEAD_PEER = Settings().for_lease(LEASE).dead_peer_timeout  # 1.5 s
GIVE_UP_AFTER = LEASE - min(LEASE_MARGIN_SECONDS, LEASE / 6)  # 5 s
RECLAIM = 5.0  # the worker's default reclaim interval

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def hole_and_server() -> Iterator[tuple[BlackHole, PgCluster]]:
    port = next((p for p in PORTS if port_is_free(p)), None)
    assert port is not None, f"no free port in {PORTS}"
    hole = BlackHole(port).open()
    cluster = None
    try:
        cluster = PgCluster(port=port, listen=(hole.server_address,)).start()
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE pgq")
        migrate.upgrade(Settings(database_url=cluster.url_for("pgq")))
        yield hole, cluster
    finally:
        hole.heal()
        hole.close()
        if cluster is not None:
            cluster.destroy()


class Workers:
    """`pgq worker` processes with the partition app, stopped whatever happens."""

    def __init__(self, tmp: Path, ledger: Path) -> None:
        self.tmp, self.ledger = tmp, ledger
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, name: str, url: str, wrap: Any = None) -> Path:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PGQ_")},
               "PGQ_DATABASE_URL": url, "PARTITION_LEDGER": str(self.ledger)}
        log_path = self.tmp / f"worker-{name}.log"
        cmd = [sys.executable, "-m", "pgq", "worker", "--app", "tests.faults.partition_app:app",
               "--concurrency", "2", "--poll-interval", "0.2", "--lease", str(LEASE),
               "--shutdown-timeout", "2", "--no-maintenance",
               "--log-level", "DEBUG"]  # per-job success lines are DEBUG; one is checked below
        with open(log_path, "w") as log:
            self.procs.append(subprocess.Popen(
                wrap(cmd) if wrap else cmd, cwd=ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT, text=True, start_new_session=True))
        return log_path

    def stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)


def ledger_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_seen(path: Path, pattern: str, timeout: float) -> float:
    """Poll a worker's log until ``pattern`` appears; the wall-clock time it was seen."""
    regex = re.compile(pattern)
    wait_until(lambda: regex.search(path.read_text()), timeout,
               f"{pattern!r} in {path} (log:\n{path.read_text()[-3000:]})")
    return time.time()


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and nftables need root")
def test_silent_partition(hole_and_server: tuple[BlackHole, PgCluster], tmp_path: Path) -> None:
    hole, cluster = hole_and_server
    inside_url = f"postgresql://postgres@{hole.server_address}:{cluster.port}/pgq"
    url = cluster.url_for("pgq")
    ledger = tmp_path / "ledger.jsonl"
    app = pgq.App(Settings(database_url=url), strict=False)
    workers = Workers(tmp_path, ledger)
    try:
        (job,) = [r.id for r in app.enqueue_many([pgq.JobSpec("partition.hold", {"seconds": 60})])]
        log_a = workers.start("a", inside_url, wrap=hole.inside)
        start_a = wait_until(lambda: next((e for e in ledger_events(ledger)
                                           if e["job"] == job and e["event"] == "start"), None),
                             30, "worker A to start the job")
        worker_a = start_a["worker"]
        log_b = workers.start("b", url)
        first_seen(log_b, r"worker \S+ started", 30)

        dropped = time.time()
        hole.drop(cluster.port)

        # (1) A sees the outage within the bound: its next heartbeat (at most one interval
        # away) fails within the dead-peer timeout, instead of ~15 minutes.
        outage_seen = first_seen(log_a, r"heartbeat connection: lost", HEARTBEAT + DEAD_PEER + 10)
        assert outage_seen - dropped <= HEARTBEAT + DEAD_PEER + 1.5, outage_seen - dropped

        # (2) A tells the task to stop before the lease can expire: within the lease less
        # the margin of the last renewal, itself at most one interval before the drop.
        told = wait_until(lambda: next((e for e in ledger_events(ledger) if e["job"] == job
                                        and e["event"] == "told to stop"), None),
                          LEASE + 10, "worker A to tell its task to stop")
        assert told["worker"] == worker_a and told["attempt"] == 1
        assert told["at"] - dropped <= GIVE_UP_AFTER + 1.0, told["at"] - dropped
        first_seen(log_a, r"giving up 1 running job\(s\) before their leases expire", 5)

        # (4) B runs it again once the lease has expired (and only then), while A is cut off.
        with psycopg.connect(url, autocommit=True) as conn:
            def completed() -> Any:
                return conn.execute("SELECT attempt, result, errors FROM pgq_jobs "
                                    "WHERE id = %s AND state = 'completed'", [job]).fetchone()

            attempt, result, errors = wait_until(completed, LEASE + RECLAIM + 15,
                                                 "worker B to run the job again")
        rerun = [e for e in ledger_events(ledger) if e["job"] == job and e["attempt"] == 2]
        assert [e["event"] for e in rerun] == ["start", "end"], rerun
        assert rerun[0]["worker"] != worker_a
        assert rerun[0]["at"] > told["at"], "the job ran twice at once"
        # Stored: B's attempt and B's result, not A's (A's task returned too, after it was
        # told to stop); the lost attempt is on record.
        assert (attempt, result) == (2, rerun[0]["worker"]), (attempt, result)
        assert [e["attempt"] for e in errors] == [1], errors

        # (3) The rules go: A reconnects and works again. B stops first, so that the new
        # jobs can only be A's.
        workers.stop(workers.procs[1])
        hole.heal()
        healed = time.time()
        first_seen(log_a, r"claim connection: reconnected", 20)
        reconnect = time.time() - healed
        ids = [r.id for r in app.enqueue_many([pgq.JobSpec("partition.noop") for _ in range(20)])]
        with psycopg.connect(url, autocommit=True) as conn:
            wait_until(lambda: conn.execute(
                "SELECT count(*) = %s FROM pgq_jobs WHERE id = ANY(%s) AND state = 'completed'",
                [len(ids), ids]).fetchone()[0], 20, "worker A to run new jobs")  # type: ignore[index]
        starts = [e for e in ledger_events(ledger) if e["job"] in ids]
        assert sorted(e["job"] for e in starts) == sorted(ids), "a job ran twice or never"
        assert {e["worker"] for e in starts} == {worker_a}

        # Nothing of attempt 1 was stored as if A still owned it.
        assert not re.search(rf"job={job} .*attempt=1/\d+ outcome=completed", log_a.read_text())
        # The held job ran twice, its first run cut off by the fault: justified.
        REPORTS.append(FaultReport("silent network partition", 1 + len(ids), 1 + len(ids),
                                   0, 1, 0, reconnect))
        print(f"\npartition: outage logged {outage_seen - dropped:.1f} s after the drop, task "
              f"told to stop after {told['at'] - dropped:.1f} s, re-run by B after "
              f"{rerun[0]['at'] - dropped:.1f} s, A reconnected {reconnect:.1f} s after healing")
    finally:
        hole.heal()
        workers.stop_all()
        app.close()


def test_a_worker_that_cannot_renew_gives_its_jobs_up_before_the_lease_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    """The heartbeat's verdict without a black hole (no root needed): an in-process
    worker whose server is stopped (every connection refused at once) tells its task to
    stop within the lease less the margin, never stores that attempt, and once the
    server is back runs the job again after its lease expired."""
    lease = 3.0
    give_up_after = lease - min(LEASE_MARGIN_SECONDS, lease / 6)
    cluster = PgCluster().start()
    try:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE pgq")
        app = pgq.App(Settings(database_url=cluster.url_for("pgq")))
        started, told = threading.Event(), threading.Event()
        told_at: list[float] = []

        @app.task(name="hold")
        def hold(ctx: pgq.Context) -> int:
            if ctx.attempt == 1:
                started.set()
                if ctx.cancelled.wait(30):
                    told_at.append(time.monotonic())
                    told.set()
            return ctx.attempt  # returned even when told to stop: must not be stored

        migrate.upgrade(app.settings)
        (job,) = [r.id for r in app.enqueue_many([pgq.JobSpec("hold")])]
        worker = pgq.Worker(app, pgq.WorkerConfig(lease_seconds=lease, poll_seconds=0.05,
                                                  maintenance=False))
        thread = threading.Thread(target=worker.run, kwargs={"install_signals": False},
                                  daemon=True)
        thread.start()
        try:
            assert started.wait(30), "the job did not start"
            stopped = time.monotonic()
            cluster.stop("fast")
            assert told.wait(lease + 5), "the task was never told to stop"
            assert told_at[0] - stopped <= give_up_after + 0.5, told_at[0] - stopped
            assert any("giving up 1 running job(s)" in r.getMessage() for r in caplog.records)
            time.sleep(lease)  # the database stays down past the lease: the outage itself
            cluster.start()
            with psycopg.connect(cluster.url_for("pgq"), autocommit=True) as conn:
                attempt, result, errors = wait_until(lambda: conn.execute(
                    "SELECT attempt, result, errors FROM pgq_jobs WHERE id = %s "
                    "AND state = 'completed'", [job]).fetchone(), 30, "the job to run again")
            assert (attempt, result) == (2, 2)
            assert [e["attempt"] for e in errors] == [1]
        finally:
            worker.request_stop()
            thread.join(30)
            app.close()
    finally:
        cluster.destroy()
