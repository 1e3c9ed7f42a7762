"""Runs `pgq worker` processes through a fault and checks the execution ledger.

Every task of ``tests.support.jobs`` records each started attempt in the ledger, on its
own connection to a database the fault does not touch. After the run:

* **lost**: jobs enqueued (and committed) that never reached a terminal state;
* **duplicates**: jobs with more than one started attempt; *justified* if the earlier
  attempt started before the fault ended (it may have been cut off by it), otherwise
  *unjustified* (a job that ran twice for no reason);
* **recovery**: from the moment the fault ended (the service back) to the first job
  completed after it, read by polling the jobs table;
* **stranded**: jobs still ``running`` with a lease expired longer ago than the reclaim
  interval: a crashed worker's jobs must come back without anyone's help.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

import pgq
from tests.support import ledger

ROOT = Path(__file__).resolve().parents[2]
LEASE = 3.0
RECLAIM = 5.0  # the worker's default reclaim interval

REPORTS: list[FaultReport] = []
"""Printed at the end of the run by tests/faults/conftest.py."""
RUNS: list[Run] = []
"""Stopped after every test by tests/faults/conftest.py, whatever the outcome."""


@dataclass
class FaultReport:
    fault: str
    enqueued: int
    completed: int
    lost: int
    justified: int
    unjustified: int
    recovery: float

    def line(self) -> str:
        return (f"{self.fault:<28} enqueued {self.enqueued:>6,}  completed {self.completed:>6,}  "
                f"lost {self.lost}  duplicates {self.justified} justified / "
                f"{self.unjustified} unjustified  recovered in {self.recovery:.1f} s")


class Run:
    def __init__(self, pgq_url: str, ledger_url: str, tmp: Path,
                 redis_url: str | None = None) -> None:
        self.pgq_url, self.ledger_url, self.redis_url = pgq_url, ledger_url, redis_url
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []
        self.ids: list[int] = []
        with psycopg.connect(ledger_url, autocommit=True) as conn:
            ledger.create(conn)
        self.app = pgq.App(pgq.Settings(database_url=pgq_url, redis_url=redis_url),
                           strict=False)
        self._stopped = False
        RUNS.append(self)

    def enqueue(self, n: int) -> None:
        specs = [pgq.JobSpec("ledger.noop" if i % 2 else "ledger.anoop") for i in range(n)]
        self.ids += [r.id for r in self.app.enqueue_many(specs)]

    def start_worker(self, *args: str) -> subprocess.Popen[str]:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PGQ_")},
               "PGQ_DATABASE_URL": self.pgq_url, "LEDGER_DATABASE_URL": self.ledger_url}
        if self.redis_url:
            env["PGQ_REDIS_URL"] = self.redis_url
        log = open(self.tmp / f"worker-{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgq", "worker", "--app", "tests.support.jobs:app",
             "--concurrency", "8", "--poll-interval", "0.2", "--lease", str(LEASE),
             "--no-maintenance", *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)  # its own process group: the supervisor and its children
        self.procs.append(proc)
        return proc

    def worker_resources(self) -> dict[int, tuple[int, int]]:
        """Open file descriptors and RSS (KiB) of every live worker process (supervisors
        and their children), by pid."""
        pids = [p.pid for p in self.procs if p.poll() is None]
        for pid in list(pids):
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pids += [int(c) for c in (task / "children").read_text().split()]
        found = {}
        for pid in pids:
            with contextlib.suppress(OSError):
                fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
                rss = next(int(line.split()[1]) for line in
                           Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("VmRSS:"))
                found[pid] = (fds, rss)
        return found

    def completed(self, states: str = "'completed'") -> int | None:
        """Jobs completed so far, or None while the database cannot answer."""
        try:
            with psycopg.connect(self.pgq_url, autocommit=True, connect_timeout=2) as conn:
                row = conn.execute(f"SELECT count(*) FROM pgq_jobs WHERE state IN ({states})"
                                   ).fetchone()
                return int(row[0]) if row else 0
        except psycopg.Error:
            return None

    def wait_completed(self, at_least: int, timeout: float, *, ended: bool = False) -> None:
        """Until ``at_least`` jobs completed (or, with ``ended``, reached any end state)."""
        states = "'completed', 'failed', 'cancelled'" if ended else "'completed'"
        deadline = time.monotonic() + timeout
        while (self.completed(states) or 0) < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {at_least} jobs completed in {timeout} s; "
                                     f"worker logs in {self.tmp}")
            time.sleep(0.05)

    def ledger_now(self) -> Any:
        with psycopg.connect(self.ledger_url, autocommit=True) as conn:
            return conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]

    def recovery_after(self, fault_ended: float, timeout: float = 60.0) -> float:
        """Seconds from ``fault_ended`` (monotonic) to the first completion after it."""
        before = None
        while before is None:
            before = self.completed()
            if time.monotonic() - fault_ended > timeout:
                raise AssertionError("the database did not answer after the fault")
        if before >= len(self.ids):
            return 0.0
        while True:
            now = self.completed()
            if now is not None and now > before:
                return time.monotonic() - fault_ended
            if time.monotonic() - fault_ended > timeout:
                raise AssertionError(f"no job completed within {timeout} s of the fault "
                                     f"ending; worker logs in {self.tmp}")
            time.sleep(0.02)

    def finish(self, fault: str, fault_end: Any, recovery: float,
               timeout: float = 90.0) -> FaultReport:
        """Wait for every job to end, stop the workers, check the ledger, report."""
        self.wait_completed(len(self.ids), timeout, ended=True)
        self.stop()
        with psycopg.connect(self.pgq_url, autocommit=True) as conn:
            states: dict[str, int] = dict(conn.execute(
                "SELECT state, count(*) FROM pgq_jobs WHERE id = ANY(%s) GROUP BY state",
                [self.ids]).fetchall())
            stranded = conn.execute(
                "SELECT count(*) FROM pgq_jobs WHERE state = 'running' AND lease_expires_at "
                "< now() - make_interval(secs => %s)", [RECLAIM]).fetchone()[0]  # type: ignore[index]
        terminal = sum(states.get(s, 0) for s in ("completed", "failed", "cancelled"))
        with psycopg.connect(self.ledger_url, autocommit=True) as conn:
            dups = conn.execute(
                "SELECT job_id, min(started_at) FROM ledger GROUP BY job_id "
                "HAVING count(*) > 1").fetchall()
            ran = conn.execute("SELECT count(DISTINCT job_id) FROM ledger").fetchone()[0]  # type: ignore[index]
        justified = sum(1 for _, first in dups if first <= fault_end)
        report = FaultReport(fault, len(self.ids), states.get("completed", 0),
                             len(self.ids) - terminal, justified, len(dups) - justified,
                             recovery)
        REPORTS.append(report)
        assert report.lost == 0, (report.line(), states)
        assert ran == len(self.ids), f"{len(self.ids) - ran} job(s) never started"
        assert report.unjustified == 0, report.line()
        assert stranded == 0, f"{stranded} job(s) left running with an expired lease"
        assert recovery <= 30.0, report.line()
        return report

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.app.close()
