"""Claim cursors in a running worker (pgq.worker.claim_cursor): under an open snapshot its claims
start where the live jobs start instead of walking the dead head of the claim index, and
a job that appears before a queue's start is still claimed, by the next full scan.

The planner side (a claim from a start skips the dead entries, and takes the same jobs)
is in test_query_plans.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import pgq
import pgq.worker.producer as worker_module
from pgq.store.database import execute_async
from pgq.worker import WorkerConfig
from pgq.worker.claim_cursor import ClaimCursors

pytestmark = pytest.mark.timeout(120)


class Claims:
    """Every claim the worker runs (job_claim, or job_finish_and_claim with outcomes): was
    it a full scan, and which jobs it took."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[bool, list[int]]] = []
        real = execute_async  # what pgq.worker imported

        async def spy(conn: Any, name: str, params: Any, **options: Any) -> Any:
            rows = await real(conn, name, params, **options)
            if name == "job_claim" and rows is not None:
                self.seen.append((params["start_ids"] is None, [r[0] for r in rows]))
            if name == "job_finish_and_claim" and rows is not None:  # a claim with outcomes
                self.seen.append((params["start_ids"] is None, [r[1] for r in rows if not r[0]]))
            return rows

        monkeypatch.setattr(worker_module, "execute_async", spy)

    def taking(self) -> list[tuple[bool, list[int]]]:
        return [(full, ids) for full, ids in self.seen if ids]


def drain(worker: pgq.Worker) -> None:
    asyncio.run(asyncio.wait_for(worker.run_async(stop_when="done"), 60))


def test_claims_start_past_the_dead_head_under_an_open_snapshot(
        make_app: Callable[..., pgq.App], db_url: str, conn: psycopg.Connection[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    app.task(name="c.noop")(lambda: None)
    claims = Claims(monkeypatch)
    with psycopg.connect(db_url, autocommit=True) as hold:
        hold.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        hold.execute("SELECT 1").fetchall()
        app.enqueue_many([pgq.JobSpec("c.noop") for _ in range(600)])
        drain(pgq.Worker(app, WorkerConfig(concurrency=4, poll_seconds=0.05)))
        hold.execute("ROLLBACK")
    states = conn.execute("SELECT state, attempt, count(*) FROM pgq_jobs GROUP BY 1, 2").fetchall()
    assert states == [("completed", 1, 600)]
    taking = claims.taking()
    assert sorted(i for _, ids in taking for i in ids) == sorted(
        r[0] for r in conn.execute("SELECT id FROM pgq_jobs").fetchall())
    # The first claim knows no start; after it, full scans are the exception.
    assert taking[0][0]
    bounded = sum(1 for full, _ in taking if not full)
    assert bounded > len(taking) // 2, taking


def test_a_job_before_the_start_is_taken_by_the_next_full_scan(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog of priority 0 is being drained, so the queue's start sits in it; an urgent
    job (priority -50) enqueued meanwhile sorts before that start. Claims from the start
    cannot see it; the next full scan takes it, long before the backlog is done."""
    app = make_app()
    producer = make_app(strict=False)
    urgent: list[int] = []
    done = threading.Event()

    @app.task(name="c.backlog")
    def backlog(i: int) -> None:
        if i == 20:
            urgent.append(producer.enqueue("c.urgent", priority=-50).id)
        threading.Event().wait(0.005)

    @app.task(name="c.urgent")
    def urgent_task() -> None:
        done.set()

    claims = Claims(monkeypatch)
    app.enqueue_many([pgq.JobSpec("c.backlog", {"i": i}) for i in range(400)])
    drain(pgq.Worker(app, WorkerConfig(concurrency=1, poll_seconds=0.05)))
    assert done.is_set()
    (job_id,) = urgent
    taking = claims.taking()
    which = [n for n, (_, ids) in enumerate(taking) if job_id in ids]
    assert len(which) == 1
    full, _ = taking[which[0]]
    assert full, "a claim from the start took a job that sorts before it"
    # Every bounded claim between its enqueue and that full scan passed it by; the
    # full scan came well before the backlog ran out (400 jobs, it was enqueued at #20).
    started = conn.execute(
        "SELECT count(*) FROM pgq_jobs WHERE task = 'c.backlog' "
        "AND started_at > (SELECT started_at FROM pgq_jobs WHERE id = %s)", [job_id]).fetchone()
    assert started is not None and started[0] > 200, started


def test_a_worker_stopping_once_nothing_is_due_looks_before_the_starts(
        make_app: Callable[..., pgq.App], conn: psycopg.Connection[Any]) -> None:
    """stop_when="due" must not stop on a claim from a start that came back empty while
    a due job waits before that start. Full scans are made to never come by time here,
    so only the last look (which forgets the starts) can find it."""
    app = make_app()
    producer = make_app(strict=False)
    urgent: list[int] = []

    @app.task(name="c.backlog")
    def backlog(i: int) -> None:
        if i == 9:
            urgent.append(producer.enqueue("c.urgent", priority=-50).id)

    app.task(name="c.urgent")(lambda: None)
    app.enqueue_many([pgq.JobSpec("c.backlog", {"i": i}) for i in range(10)])
    worker = pgq.Worker(app, WorkerConfig(concurrency=1, poll_seconds=0.05))
    worker.producer._cursors = ClaimCursors(share=1e-9)  # a full scan only when no start is known
    asyncio.run(asyncio.wait_for(worker.run_async(stop_when="due"), 60))
    (job_id,) = urgent
    states = dict(conn.execute("SELECT id, state FROM pgq_jobs").fetchall())
    assert set(states.values()) == {"completed"}, states
    assert states[job_id] == "completed"
