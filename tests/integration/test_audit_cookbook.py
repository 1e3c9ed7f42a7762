"""Every query in docs/audit.md runs, on seeded data, and answers correctly.

The ```sql blocks are parsed out of the cookbook, so a new block is executed without
touching this file. Each block belongs to the heading above it. A block with a check in
``CHECKS`` must return exactly what the seed implies. Any other block must still run and
return rows for the seeded data. Parameters are psql variables (``:'job_id'``) and are
substituted as quoted literals, the way psql does it.

The seed is one realistic history. Jobs are enqueued through ``pgq.App``, backdated with
a ``ManualClock``, and then moved through the state machine with the plain SQL UPDATEs a
worker would run (claim, fail with an ``errors`` entry, retry, complete, cancel); an
operator's retry goes through ``app.jobs.retry``, which records it in ``pgq_job_actions``.
The expectations are computed from a Python mirror of that history, not from SQL.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import pgq

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"

FINISHED = ("completed", "failed", "cancelled")
CLAIMABLE = ("available", "scheduled", "retryable")
PARAM = re.compile(r":'([A-Za-z_][A-Za-z0-9_]*)'")
RAW_PARAM = re.compile(r"(?<![:\w]):[A-Za-z_]")  # psql's unquoted :name, not a ::cast


# --- the cookbook ----------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    heading: str
    sql: str

    def __str__(self) -> str:
        return self.heading


def cookbook() -> list[Query]:
    """Every ```sql block of the cookbook, under the nearest heading above it."""
    queries: list[Query] = []
    heading = "(no heading)"
    blocks = r"^(#{1,6}) ([^\n]+?)\s*$|^```sql\n(.*?)^```|^```[^\n]*\n.*?^```"
    for match in re.finditer(blocks, DOC.read_text(), re.M | re.S):
        if match.group(1):
            heading = match.group(2)
        elif match.group(3) is not None:
            queries.append(Query(heading, match.group(3).strip()))
    return queries


def documented_variables() -> set[str]:
    """The variables the ``\\set`` block at the top of the cookbook shows how to set."""
    return set(re.findall(r"^\\set (\w+) ", DOC.read_text(), re.M))


QUERIES = cookbook()


def substitute(query: str, params: dict[str, object], conn: psycopg.Connection) -> str:
    """What psql does with ``:'name'``: paste the value in as a quoted literal."""
    def literal(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in params, f"the cookbook uses :'{name}', which the test does not set"
        value = params[name]
        text = value.isoformat() if isinstance(value, datetime) else str(value)
        return sql.Literal(text).as_string(conn)

    return PARAM.sub(literal, query)


# --- the seed: a mirror of the jobs, and a worker made of SQL UPDATEs ------------------

@dataclass
class Job:
    id: int
    task: str
    queue: str
    tenant: str
    tags: tuple[str, ...]
    created_at: datetime
    run_at: datetime
    state: str
    max_attempts: int
    timeout: float | None
    unique_key: str | None = None
    attempt: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    errors: list[tuple[int, datetime, str, str, str]] = field(default_factory=list)
    """(attempt, at, type, message, worker) per failed attempt, oldest first."""
    actions: list[tuple[datetime, str, str, str, str]] = field(default_factory=list)
    """(at, actor, action, reason, from state) per operator action, oldest first."""


class History:
    """Enqueues through pgq and then plays a worker's part in SQL. It keeps a mirror of
    every job so that the expectations do not depend on the queries being tested."""

    def __init__(self, app: pgq.App, clock: pgq.ManualClock, conn: psycopg.Connection,
                 now: datetime) -> None:
        self.app, self.clock, self.conn, self.now = app, clock, conn, now
        self.jobs: list[Job] = []
        self._n = itertools.count(1)

    def ago(self, **kwargs: float) -> datetime:
        return self.now - timedelta(**kwargs)

    def later(self, **kwargs: float) -> datetime:
        return self.now + timedelta(**kwargs)

    def enqueue(self, task: str, at: datetime, *, tenant: str, tags: tuple[str, ...] = (),
                **options: Any) -> Job:
        self.clock.set(at)
        done = self.app.enqueue(task, {"n": next(self._n)}, meta={"tenant": tenant},
                                tags=list(tags), **options)
        assert not done.duplicate
        return self._mirror(done.id, tenant, tags)

    def enqueue_many(self, specs: list[pgq.JobSpec], at: datetime, tenant: str) -> list[Job]:
        self.clock.set(at)
        return [self._mirror(done.id, tenant, ()) for done in self.app.enqueue_many(specs)]

    def _mirror(self, job_id: int, tenant: str, tags: tuple[str, ...]) -> Job:
        row = self.conn.execute(
            "SELECT task, queue, state, created_at, run_at, max_attempts, timeout_seconds,"
            " unique_key FROM pgq_jobs WHERE id = %s", [job_id]).fetchone()
        assert row is not None
        job = Job(job_id, row[0], row[1], tenant, tags, row[3], row[4], row[2], row[5],
                  row[6], row[7])
        self.jobs.append(job)
        return job

    def _update(self, job: Job, guard: str, assignments: str, **params: Any) -> None:
        cur = self.conn.execute(
            f"UPDATE pgq_jobs SET {assignments} WHERE id = %(id)s AND {guard}",
            {"id": job.id, **params})
        assert cur.rowcount == 1, f"job {job.id} ({job.state}) cannot move: {assignments}"

    def claim(self, job: Job, at: datetime, worker: str, lease: float = 30) -> None:
        expires = at + timedelta(seconds=lease)
        self._update(job, "state IN ('available', 'scheduled', 'retryable') AND run_at <= %(at)s",
                     "state = 'running', attempt = attempt + 1, started_at = %(at)s,"
                     " lease_owner = %(worker)s, lease_expires_at = %(expires)s",
                     at=at, worker=worker, expires=expires)
        job.state, job.attempt, job.started_at = "running", job.attempt + 1, at
        job.lease_owner, job.lease_expires_at = worker, expires

    def heartbeat(self, job: Job, expires: datetime) -> None:
        self._update(job, "state = 'running'", "lease_expires_at = %(expires)s", expires=expires)
        job.lease_expires_at = expires

    def complete(self, job: Job, at: datetime) -> None:
        self._update(job, "state = 'running'",
                     "state = 'completed', finished_at = %(at)s, result = %(result)s",
                     at=at, result=Jsonb({"ok": True, "n": job.id}))
        job.state, job.finished_at = "completed", at

    def fail(self, job: Job, at: datetime, error_type: str, message: str,
             retry_at: datetime | None = None) -> None:
        """Record a failed attempt: retryable if given a retry time and attempts remain,
        else the dead letter."""
        dead = retry_at is None or job.attempt >= job.max_attempts
        self._update(
            job, "state = 'running'",
            "state = %(state)s, run_at = coalesce(%(retry_at)s, run_at),"
            " finished_at = CASE WHEN %(dead)s THEN %(at)s::timestamptz END,"
            " errors = errors || jsonb_build_array(jsonb_build_object("
            "   'attempt', attempt, 'at', to_jsonb(%(at)s::timestamptz), 'type', %(type)s::text,"
            "   'message', %(message)s::text, 'traceback', %(traceback)s::text,"
            "   'worker', lease_owner))",
            state="failed" if dead else "retryable", retry_at=None if dead else retry_at,
            dead=dead, at=at, type=error_type, message=message,
            traceback=f'Traceback (most recent call last):\n  File "tasks.py", line 12\n'
                      f"{error_type}: {message}")
        job.errors.append((job.attempt, at, error_type, message, job.lease_owner or ""))
        if dead:
            job.state, job.finished_at = "failed", at
        else:
            assert retry_at is not None
            job.state, job.run_at = "retryable", retry_at

    def retry_by_hand(self, job: Job, at: datetime, actor: str, reason: str) -> None:
        """An operator sends a dead letter back to the queue, through the operations API
        (``app.jobs.retry``), which records the action in ``pgq_job_actions``. Its key
        hold is not restored, because it was released when a new job took the key."""
        assert job.state == "failed"
        self.clock.set(at)
        assert self.app.jobs.retry(job.id, actor=actor, reason=reason).changed == 1
        job.actions.append((at, actor, "retry", reason, job.state))
        job.state, job.run_at, job.finished_at = "available", at, None
        job.max_attempts = max(job.max_attempts, job.attempt + 1)

    def cancel(self, job: Job, at: datetime) -> None:
        self._update(job, "state IN ('scheduled', 'available', 'retryable')",
                     "state = 'cancelled', finished_at = %(at)s", at=at)
        job.state, job.finished_at = "cancelled", at


A, B = "worker-a:1717", "worker-b:4242"
OPERATOR = "carol@ops"
GATEWAY = ("GatewayError", "502 Bad Gateway from payments.example")
GATEWAY_TIMEOUT = ("GatewayError", "504 Gateway Timeout from payments.example")
DECLINED = ("CardDeclined", "card declined: insufficient funds")
SMTP = ("TimeoutError", "smtp.example.com: timed out after 10s")
OOM = ("MemoryError", "out of memory resizing a 12000x9000 image")

RECEIPT_SECONDS = [0.4, 0.8, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 12.0]
"""Run times of the receipts that completed at their first attempt in the last 24 h."""


@dataclass
class Seed:
    history: History
    params: dict[str, object]
    named: dict[str, Job]

    @property
    def jobs(self) -> list[Job]:
        return self.history.jobs

    @property
    def now(self) -> datetime:
        return self.history.now


def seed_history(h: History) -> dict[str, Job]:
    named: dict[str, Job] = {}

    def run(job: Job, start: datetime, seconds: float, worker: str) -> None:
        h.claim(job, start, worker)
        h.complete(job, start + timedelta(seconds=seconds))

    # Receipts: most succeed at once, two after SMTP timeouts, one long ago.
    for i, seconds in enumerate(RECEIPT_SECONDS):
        job = h.enqueue("email.receipt", h.ago(hours=10, minutes=i * 7),
                        tenant="acme" if i < 6 else "globex",
                        tags=("order:1001", "receipt") if i == 2 else ("receipt",), timeout=30)
        run(job, job.created_at + timedelta(seconds=1), seconds, A if i % 2 else B)
        named.setdefault("receipt", job)
    r11 = h.enqueue("email.receipt", h.ago(hours=6), tenant="acme", timeout=30)
    h.claim(r11, r11.created_at + timedelta(seconds=1), A)
    h.fail(r11, r11.created_at + timedelta(seconds=11), *SMTP,
           retry_at=r11.created_at + timedelta(seconds=40))
    run(r11, r11.created_at + timedelta(seconds=41), 0.9, B)
    r12 = h.enqueue("email.receipt", h.ago(hours=5), tenant="globex", timeout=30)
    for k in range(2):
        h.claim(r12, r12.created_at + timedelta(minutes=k, seconds=1), B)
        h.fail(r12, r12.created_at + timedelta(minutes=k, seconds=11), *SMTP,
               retry_at=r12.created_at + timedelta(minutes=k + 1))
    run(r12, r12.created_at + timedelta(minutes=2, seconds=1), 1.1, A)
    old_receipt = h.enqueue("email.receipt", h.ago(days=3), tenant="acme", timeout=30)
    run(old_receipt, old_receipt.created_at + timedelta(seconds=1), 100.0, A)
    named["old_receipt"] = old_receipt

    # Charges: dead letters whose last error differs from their first, a retry waiting.
    b1 = h.enqueue("billing.charge", h.ago(hours=30), tenant="acme", tags=("billing",),
                   queue="critical", max_attempts=3, timeout=20)
    for k, error in enumerate([GATEWAY, GATEWAY, DECLINED]):
        h.claim(b1, b1.created_at + timedelta(minutes=k, seconds=1), [A, B, A][k])
        h.fail(b1, b1.created_at + timedelta(minutes=k, seconds=3), *error,
               retry_at=b1.created_at + timedelta(minutes=k + 1))
    named["dead_charge"] = b1
    b2 = h.enqueue("billing.charge", h.ago(days=2), tenant="globex", queue="critical",
                   max_attempts=3, timeout=20)
    h.claim(b2, b2.created_at + timedelta(seconds=1), B)
    h.fail(b2, b2.created_at + timedelta(seconds=2), *DECLINED)  # not retryable: dead at once
    b3 = h.enqueue("billing.charge", h.ago(hours=5), tenant="acme", queue="critical",
                   max_attempts=3, timeout=20)
    for k in range(3):
        h.claim(b3, b3.created_at + timedelta(minutes=k, seconds=1), A)
        h.fail(b3, b3.created_at + timedelta(minutes=k, seconds=5), *GATEWAY,
               retry_at=b3.created_at + timedelta(minutes=k + 1))
    old_charge = h.enqueue("billing.charge", h.ago(days=10), tenant="acme", queue="critical",
                           max_attempts=3, timeout=20)
    h.claim(old_charge, old_charge.created_at + timedelta(seconds=1), B)
    h.fail(old_charge, old_charge.created_at + timedelta(seconds=2), *DECLINED)
    b4 = h.enqueue("billing.charge", h.ago(minutes=20), tenant="acme", queue="critical",
                   max_attempts=3, timeout=20)
    h.claim(b4, b4.created_at + timedelta(seconds=1), B)
    h.fail(b4, h.ago(minutes=19), *GATEWAY, retry_at=h.ago(minutes=2))  # overdue retry
    b5 = h.enqueue("billing.charge", h.ago(minutes=3), tenant="globex", queue="critical",
                   max_attempts=3, timeout=20)
    h.claim(b5, b5.created_at + timedelta(seconds=1), A)
    h.fail(b5, b5.created_at + timedelta(seconds=4), *GATEWAY_TIMEOUT, retry_at=h.later(minutes=10))

    # Unique keys on charges: a cancelled holder released by a re-enqueue, a completed
    # job whose window has ended but is still flagged, and one still inside its window.
    u0 = h.enqueue("billing.charge", h.ago(hours=26), tenant="acme", tags=("order:1001",),
                   queue="critical", max_attempts=3, timeout=20, unique_key="charge:order-1001",
                   delay=timedelta(hours=2))
    h.cancel(u0, h.ago(hours=25))
    u1 = h.enqueue("billing.charge", h.ago(hours=1), tenant="acme", tags=("order:1001",),
                   queue="critical", max_attempts=3, timeout=20, unique_key="charge:order-1001",
                   delay=timedelta(minutes=90))
    u2 = h.enqueue("billing.charge", h.ago(hours=3), tenant="globex", queue="critical",
                   max_attempts=3, timeout=20, unique_key="charge:order-1002",
                   unique_for=timedelta(hours=1))
    run(u2, u2.created_at + timedelta(seconds=2), 1.5, A)
    u3 = h.enqueue("billing.charge", h.ago(hours=3), tenant="initech", queue="critical",
                   max_attempts=3, timeout=20, unique_key="charge:order-1003",
                   unique_for=timedelta(hours=24))
    run(u3, u3.created_at + timedelta(seconds=2), 2.5, B)
    named.update(cancelled_holder=u0, holder=u1, lapsed=u2, windowed=u3)

    # A tenant sync failed, a new one took its key and completed, and then an operator
    # retried the failed one by hand. It is active again but holds no key.
    v0 = h.enqueue("sync.tenant", h.ago(days=3), tenant="acme", queue="maintenance",
                   unique_key="sync:acme")
    h.claim(v0, v0.created_at + timedelta(seconds=1), A)
    h.fail(v0, v0.created_at + timedelta(seconds=30), "ConnectionError", "crm.example: reset")
    v1 = h.enqueue("sync.tenant", h.ago(days=2), tenant="acme", queue="maintenance",
                   unique_key="sync:acme")
    run(v1, v1.created_at + timedelta(seconds=1), 20.0, B)
    h.retry_by_hand(v0, h.ago(seconds=30), OPERATOR, "crm.example is back")
    named.update(retried_by_hand=v0, lapsed_sync=v1)

    # Image resizes: a failure whose first attempt is older than a week, one attempt
    # past its timeout with a live lease, and a healthy one.
    i1 = h.enqueue("image.resize", h.ago(days=8), tenant="globex", max_attempts=2, timeout=60)
    h.claim(i1, i1.created_at + timedelta(seconds=1), A)
    h.fail(i1, i1.created_at + timedelta(seconds=9), *OOM, retry_at=h.ago(days=2))
    h.claim(i1, h.ago(days=2), B)
    h.fail(i1, h.ago(days=2) + timedelta(seconds=9), *OOM, retry_at=h.ago(days=1))
    x2 = h.enqueue("image.resize", h.ago(hours=2, seconds=5), tenant="globex", timeout=60)
    h.claim(x2, h.ago(hours=2), A)
    h.heartbeat(x2, h.later(seconds=20))
    x3 = h.enqueue("image.resize", h.ago(seconds=12), tenant="acme", timeout=60)
    h.claim(x3, h.ago(seconds=10), B, lease=40)

    # Reports: a worker died holding one, one runs long without a timeout, and the queue
    # has work waiting, including a scheduled job whose time has come.
    x1 = h.enqueue("report.build", h.ago(minutes=13), tenant="acme", queue="reports", timeout=3600)
    h.claim(x1, h.ago(minutes=12), B, lease=180)
    x4 = h.enqueue("report.build", h.ago(hours=3, minutes=1), tenant="globex", queue="reports")
    h.claim(x4, h.ago(hours=3), A)
    h.heartbeat(x4, h.later(seconds=30))
    named.update(stuck_lease=x1, stuck_timeout=x2, healthy=x3, long_no_timeout=x4)
    h.enqueue("report.build", h.ago(minutes=30), tenant="acme", queue="reports")
    h.enqueue("report.build", h.ago(minutes=5), tenant="globex", queue="reports")
    named["due_scheduled"] = h.enqueue("report.build", h.ago(hours=2), tenant="acme",
                                       queue="reports", delay=timedelta(hours=1))
    h.enqueue("report.build", h.now, tenant="globex", queue="reports", delay=timedelta(hours=1))

    # Fresh and future work elsewhere.
    h.enqueue("email.receipt", h.ago(minutes=1), tenant="globex", timeout=30)
    h.enqueue("email.digest", h.now, tenant="acme", delay=timedelta(days=1))
    h.enqueue_many([pgq.JobSpec("export.rows", {"part": p}, queue="bulk",
                                meta={"tenant": "acme"}) for p in range(5)], h.now, "acme")
    return named


@pytest.fixture
def seed(db_url: str, conn: psycopg.Connection) -> Iterator[Seed]:
    now = conn.execute("SELECT now()").fetchone()[0]
    clock = pgq.ManualClock(now)
    with pgq.App(pgq.Settings(database_url=db_url), strict=False, clock=clock) as app:
        history = History(app, clock, conn, now)
        named = seed_history(history)
    assert conn.execute("SELECT count(*) FROM pgq_jobs").fetchone()[0] == len(history.jobs)
    params: dict[str, object] = {
        "job_id": named["dead_charge"].id,
        "task": "billing.charge",
        "tenant": "acme",
        "since": history.ago(days=4),
        "until": history.ago(minutes=15),
        "unique_key": "charge:order-1001",
        "tag": "order:1001",
        "worker": A,
    }
    yield Seed(history, params, named)


QUERY_PARAMS: dict[str, Callable[[Seed], dict[str, object]]] = {
    # "Who retried this job?": asked about the job an operator retried (the dead charge
    # that :'job_id' names for the other queries had no operator action).
    "View: pgq_operator_actions": lambda seed: {"job_id": seed.named["retried_by_hand"].id},
}
"""Parameters of one query that differ from the seed's ``params``."""


Run = Callable[..., list[dict[str, Any]]]


def runner(query: Query, seed: Seed, conn: psycopg.Connection) -> Run:
    params = {**seed.params, **QUERY_PARAMS.get(query.heading, lambda _: {})(seed)}

    def run(**overrides: object) -> list[dict[str, Any]]:
        text = substitute(query.sql, {**params, **overrides}, conn)
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(text)
            assert cur.description is not None, "every cookbook block is a query"
            names = [c.name for c in cur.description]
            assert len(set(names)) == len(names), f"duplicate column names: {names}"
            assert "?column?" not in names, "name every computed column"
            return cur.fetchall()
    return run


# --- the checks, by heading --------------------------------------------------------------

def within(actual: timedelta, expected: timedelta, slack: timedelta = timedelta(minutes=1)) -> bool:
    """``actual`` was measured at a later now() than ``expected`` was computed for."""
    return expected <= actual < expected + slack


def percentile_cont(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def check_overview(seed: Seed, run: Run) -> None:
    got = {(r["queue"], r["state"]): r["jobs"] for r in run()}
    assert got == Counter((j.queue, j.state) for j in seed.jobs)


def check_job_story(seed: Seed, run: Run) -> None:
    dead = seed.named["dead_charge"]
    rows = run()
    assert [r["id"] for r in rows] == [dead.id] * 3
    assert {(r["state"], r["attempt"], r["lease_owner"]) for r in rows} == {("failed", 3, A)}
    assert [(r["error_no"], r["error_attempt"], r["error_type"], r["error_message"],
             r["error_worker"], r["error_at"]) for r in rows] == [
        (n, attempt, kind, message, worker, at)
        for n, (attempt, at, kind, message, worker) in enumerate(dead.errors, start=1)]
    assert all(r["error_traceback"].startswith("Traceback") for r in rows)
    assert rows[0]["finished_at"] == dead.finished_at
    assert rows[0]["meta"] == {"tenant": "acme"}

    fine = seed.named["receipt"]
    (row,) = run(job_id=fine.id)
    assert (row["id"], row["state"], row["attempt"], row["error_no"], row["error_type"]) == (
        fine.id, "completed", 1, None, None)
    assert row["result"] == {"ok": True, "n": fine.id}
    assert run(job_id=max(j.id for j in seed.jobs) + 1) == []


def recent_errors(seed: Seed) -> list[tuple[Job, int, datetime, str, str, str]]:
    week_ago = seed.now - timedelta(days=7)
    return [(j, *e) for j in seed.jobs for e in j.errors if e[1] >= week_ago]


def check_failures_by_task(seed: Seed, run: Run) -> None:
    rows = run()
    got = {(r["task"], r["error_type"]): (r["failed_attempts"], r["jobs"], r["now_dead"])
           for r in rows}
    assert got == {
        ("billing.charge", "GatewayError"): (7, 4, 2),   # b1 x2, b3 x3, b4, b5; 2 retrying
        ("billing.charge", "CardDeclined"): (2, 2, 2),   # b1, b2; the 10-day-old one is out
        ("email.receipt", "TimeoutError"): (3, 2, 0),    # both receipts recovered
        ("image.resize", "MemoryError"): (1, 1, 1),      # its 8-day-old first attempt is out
        ("sync.tenant", "ConnectionError"): (1, 1, 0),   # retried by hand since
    }
    # The same, derived from the mirror, plus when each group was last seen and why.
    expected: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
    for job, _attempt, at, kind, message, _worker in recent_errors(seed):
        expected.setdefault((job.task, kind), []).append((at, message))
    for r in rows:
        last_at, last_message = max(expected[r["task"], r["error_type"]])
        assert (r["last_seen"], r["last_message"]) == (last_at, last_message)
    assert [r["failed_attempts"] for r in rows] == sorted(
        (r["failed_attempts"] for r in rows), reverse=True)


def check_failures_of_one_task(seed: Seed, run: Run) -> None:
    rows = run()
    expected = sorted(((at, job.id, attempt, kind, worker)
                       for job, attempt, at, kind, _message, worker in recent_errors(seed)
                       if job.task == "billing.charge"), reverse=True)
    assert len(expected) == 9
    assert [(r["failed_at"], r["id"], r["attempt"], r["error_type"], r["worker"])
            for r in rows] == expected
    assert {r["id"] for r in run(task="email.receipt")} == {
        j.id for j in seed.jobs if j.task == "email.receipt" and j.errors}
    assert run(task="export.rows") == []


def check_stuck(seed: Seed, run: Run) -> None:
    rows = run()
    lease, timeout = seed.named["stuck_lease"], seed.named["stuck_timeout"]
    # started_at order: the timed-out resize has been running for two hours
    assert [(r["id"], r["why"]) for r in rows] == [
        (timeout.id, "past its timeout"), (lease.id, "lease expired")]
    by_id = {r["id"]: r for r in rows}
    assert by_id[lease.id]["lease_owner"] == B
    assert within(by_id[timeout.id]["overdue"], timedelta(hours=2) - timedelta(seconds=60))
    assert within(by_id[lease.id]["running_for"], timedelta(minutes=12))
    running = {j.id for j in seed.jobs if j.state == "running"}
    assert running - {r["id"] for r in rows} == {seed.named["healthy"].id,
                                                 seed.named["long_no_timeout"].id}


def check_worker(seed: Seed, run: Run) -> None:
    rows = run()
    mine = [j for j in seed.jobs if j.lease_owner == A]
    assert sorted(r["id"] for r in rows) == sorted(j.id for j in mine)
    states = [r["state"] for r in rows]
    assert states[:2] == ["running", "running"] and "running" not in states[2:]
    assert {r["id"] for r in run(worker="worker-z:1")} == set()


def finished_this_week(seed: Seed) -> list[Job]:
    week_ago = seed.now - timedelta(days=7)
    return [j for j in seed.jobs
            if j.state in FINISHED and j.finished_at is not None and j.finished_at >= week_ago]


def check_retry_distribution(seed: Seed, run: Run) -> None:
    rows = run()
    got = {(r["task"], r["attempt"]): r["jobs"] for r in rows}
    assert got == Counter((j.task, j.attempt) for j in finished_this_week(seed))
    assert got[("billing.charge", 3)] == 2 and got[("billing.charge", 0)] == 1
    for task in {r["task"] for r in rows}:
        assert sum(r["pct_of_task"] for r in rows if r["task"] == task) == pytest.approx(100, abs=0.3)


def check_retry_summary(seed: Seed, run: Run) -> None:
    got = {r["task"]: (r["finished"], r["needed_retries"], r["recovered"], r["max_attempt"])
           for r in run()}
    expected = {}
    for task in {j.task for j in finished_this_week(seed)}:
        jobs = [j for j in finished_this_week(seed) if j.task == task]
        expected[task] = (len(jobs), sum(j.attempt > 1 for j in jobs),
                          sum(j.attempt > 1 and j.state == "completed" for j in jobs),
                          max(j.attempt for j in jobs))
    assert got == expected
    assert got["email.receipt"] == (13, 2, 2, 3)
    assert got["billing.charge"] == (6, 2, 0, 3)


def claimable_now(seed: Seed) -> dict[str, list[Job]]:
    out: dict[str, list[Job]] = {}
    for j in seed.jobs:
        if j.state in CLAIMABLE and j.run_at <= seed.now:
            out.setdefault(j.queue, []).append(j)
    return out


def check_queue_lag(seed: Seed, run: Run) -> None:
    rows = run()
    expected = claimable_now(seed)
    assert {r["queue"]: r["claimable"] for r in rows} == {q: len(js) for q, js in expected.items()}
    assert {r["queue"]: r["claimable"] for r in rows} == {
        "reports": 3, "critical": 1, "default": 1, "maintenance": 1, "bulk": 5}
    assert [r["queue"] for r in rows] == ["reports", "critical", "default", "maintenance", "bulk"]
    for r in rows:
        oldest = min(j.run_at for j in expected[r["queue"]])
        assert within(r["oldest_wait"], seed.now - oldest), r
        assert r["of_which_retries"] == sum(j.state == "retryable" for j in expected[r["queue"]])
    assert within(rows[0]["oldest_wait"], timedelta(hours=1))  # the due scheduled report


def check_future(seed: Seed, run: Run) -> None:
    rows = run()
    future: dict[tuple[str, str], list[datetime]] = {}
    for j in seed.jobs:
        if j.state in ("scheduled", "retryable") and j.run_at > seed.now:
            future.setdefault((j.queue, j.state), []).append(j.run_at)
    assert {(r["queue"], r["state"]): (r["jobs"], r["next_run_at"], r["last_run_at"])
            for r in rows} == {k: (len(v), min(v), max(v)) for k, v in future.items()}
    assert {(r["queue"], r["state"]) for r in rows} == {
        ("critical", "retryable"), ("critical", "scheduled"), ("default", "scheduled"),
        ("reports", "scheduled")}


def check_p95(seed: Seed, run: Run) -> None:
    rows = {r["task"]: r for r in run()}
    assert set(rows) == {"email.receipt", "billing.charge"}
    receipts = [*RECEIPT_SECONDS, 0.9, 1.1]  # the two retried receipts: their last attempt
    email = rows["email.receipt"]
    assert email["completed"] == len(receipts)
    assert email["p95"].total_seconds() == pytest.approx(percentile_cont(receipts, 0.95), abs=1e-5)
    assert email["p50"].total_seconds() == pytest.approx(percentile_cont(receipts, 0.5), abs=1e-5)
    assert email["max"] == timedelta(seconds=12)  # the 100 s receipt of three days ago is out
    charges = rows["billing.charge"]
    assert (charges["completed"], charges["p95"]) == (2, timedelta(seconds=2.45))
    assert list(rows) == ["email.receipt", "billing.charge"], "slowest p95 first"


def check_dead_letters(seed: Seed, run: Run) -> None:
    rows = run()
    dead = [j for j in seed.jobs if j.state == "failed"]
    expected: dict[tuple[str, str], list[Job]] = {}
    for j in dead:
        expected.setdefault((j.errors[-1][2], j.errors[-1][3]), []).append(j)
    got = {(r["error_type"], r["message"]): r for r in rows}
    assert {k: r["jobs"] for k, r in got.items()} == {k: len(v) for k, v in expected.items()}
    assert {k: r["jobs"] for k, r in got.items()} == {DECLINED: 3, GATEWAY: 1, OOM: 1}
    for key, jobs in expected.items():
        newest = max(jobs, key=lambda j: j.finished_at or seed.now)
        assert (got[key]["newest"], got[key]["newest_id"]) == (newest.finished_at, newest.id)
        assert got[key]["tasks"] == sorted({j.task for j in jobs})


def check_tenant(seed: Seed, run: Run) -> None:
    since, until = seed.params["since"], seed.params["until"]
    assert isinstance(since, datetime) and isinstance(until, datetime)
    for tenant in ("acme", "globex", "initech"):
        rows = run(tenant=tenant)
        expected = Counter((j.task, j.state) for j in seed.jobs
                           if j.tenant == tenant and since <= j.created_at < until)
        assert {(r["task"], r["state"]): r["jobs"] for r in rows} == expected, tenant
        assert all(since <= r["first_enqueued"] <= r["last_enqueued"] < until for r in rows)
    # the window and the tenant both matter for this seed
    acme = [j for j in seed.jobs if j.tenant == "acme"]
    assert any(j.created_at < since for j in acme) and any(j.created_at >= until for j in acme)
    assert run(tenant="nobody") == []


def check_unique_holder(seed: Seed, run: Run) -> None:
    holder, released = seed.named["holder"], seed.named["cancelled_holder"]
    rows = run()
    assert [(r["id"], r["state"], r["unique_held"], r["blocks_enqueue"]) for r in rows] == [
        (holder.id, "scheduled", True, True), (released.id, "cancelled", False, False)]
    (lapsed,) = run(unique_key="charge:order-1002")
    assert (lapsed["id"], lapsed["unique_held"], lapsed["blocks_enqueue"]) == (
        seed.named["lapsed"].id, True, False)
    (windowed,) = run(unique_key="charge:order-1003")
    assert (windowed["id"], windowed["blocks_enqueue"]) == (seed.named["windowed"].id, True)
    assert run(task="email.receipt") == []
    # nobody blocks: the completed sync's hold lapsed, the hand-retried one holds nothing
    assert [(r["id"], r["state"], r["unique_held"], r["blocks_enqueue"])
            for r in run(task="sync.tenant", unique_key="sync:acme")] == [
        (seed.named["lapsed_sync"].id, "completed", True, False),
        (seed.named["retried_by_hand"].id, "available", False, False)]


def check_tag(seed: Seed, run: Run) -> None:
    rows = run()
    assert [r["id"] for r in rows] == sorted(
        (j.id for j in seed.jobs if "order:1001" in j.tags), reverse=True)
    assert {r["task"] for r in rows} == {"email.receipt", "billing.charge"}
    assert len(run(tag="receipt")) == 10
    assert run(tag="order") == [], "a tag matches whole, not by prefix"


def check_operator_actions(seed: Seed, run: Run) -> None:
    retried = seed.named["retried_by_hand"]
    assert [(r["at"], r["actor"], r["action"], r["reason"], r["detail"]["from"], r["job_state"])
            for r in run()] == [(*action, retried.state) for action in retried.actions]
    assert retried.actions == [(seed.now - timedelta(seconds=30), OPERATOR, "retry",
                                "crm.example is back", "failed")]
    assert run(job_id=seed.named["dead_charge"].id) == [], "a job nobody acted on"


CHECKS: dict[str, Callable[[Seed, Run], None]] = {
    "Overview: jobs per queue and state": check_overview,
    "What happened to job X": check_job_story,
    "Failures by task this week, and why": check_failures_by_task,
    "Recent failures of one task": check_failures_of_one_task,
    "Jobs stuck running": check_stuck,
    "What a worker was running": check_worker,
    "Retry counts: attempts per finished job": check_retry_distribution,
    "Retry counts: jobs that needed more than one attempt": check_retry_summary,
    "Queue lag": check_queue_lag,
    "Jobs scheduled for the future": check_future,
    "p95 run time per task": check_p95,
    "Dead letters by error": check_dead_letters,
    "What a tenant enqueued": check_tenant,
    "Who holds a unique key": check_unique_holder,
    "Jobs by tag": check_tag,
    "View: pgq_operator_actions": check_operator_actions,
}


# --- the tests -----------------------------------------------------------------------------

def test_the_cookbook_has_its_queries() -> None:
    assert len(QUERIES) >= 8
    headings = [q.heading for q in QUERIES]
    assert len(set(headings)) == len(headings), "one ```sql block per heading"
    missing = set(CHECKS) - set(headings)
    assert not missing, f"checks whose heading is gone from docs/audit.md: {missing}"


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_block_is_one_statement_in_psql_syntax(query: Query) -> None:
    body = re.sub(r"--[^\n]*", "", query.sql).strip().removesuffix(";")
    assert ";" not in body, "one statement per block, so each result is checked"
    assert not RAW_PARAM.search(body), "write parameters as :'name' (quoted), not :name"
    undocumented = set(PARAM.findall(body)) - documented_variables()
    assert not undocumented, f"add \\set lines for {undocumented} to the cookbook's top"


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_query_answers_correctly(query: Query, seed: Seed, conn: psycopg.Connection) -> None:
    run = runner(query, seed, conn)
    rows = run()
    assert rows, "the seed covers every situation the cookbook asks about"
    check = CHECKS.get(query.heading)
    if check is not None:
        check(seed, run)
