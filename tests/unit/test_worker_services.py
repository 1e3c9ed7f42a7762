"""Each worker service on its own, its neighbours replaced by fakes: the executor with a
list for a completer, no database, no producer (issue 13: every service unit-testable
alone). The completer alone against a database is in
tests/integration/test_worker_services.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import pgq
from pgq.worker.config import WorkerConfig
from pgq.worker.executor import Executor
from pgq.worker.held import HeldJobs, Outcome, Running


@pytest.fixture
def app() -> Iterator[pgq.App]:
    app = pgq.App(pgq.Settings(database_url="postgresql://nobody@127.0.0.1:1/none"), strict=False)

    @app.task(name="t.double")
    def double(n: int) -> int:
        return 2 * n

    @app.task(name="t.broken", max_attempts=3)
    async def broken() -> None:
        raise ValueError("no")

    @app.task(name="t.slow", max_attempts=1, timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(30)

    yield app
    app.close()


def _row(job_id: int, task: str, args: dict[str, Any], attempt: int = 1,
         max_attempts: int = 3) -> tuple[Any, ...]:
    """A job_claim row's first nine columns, as the producer hands them over."""
    return (job_id, "default", task, args, attempt, max_attempts, None, datetime.now(UTC), 0)


async def _run(app: pgq.App, rows: list[tuple[Any, ...]]) -> tuple[list[Outcome], HeldJobs]:
    """Run ``rows`` through an executor whose completer is a list; returns the outcomes
    once every job has one."""
    recorded: list[Outcome] = []
    done = asyncio.Event()
    held = HeldJobs(None, release_lock=lambda key, token: None)

    def record(running: Running, outcome: Outcome) -> None:  # the fake completer
        running.decided = True
        recorded.append(outcome)
        if len(recorded) == len(rows):
            done.set()

    executor = Executor(app, WorkerConfig(), "w1", held, record, transaction=lambda ctx: None,
                        coordinator=app.coordinator, recycle=lambda: None)
    executor.start()
    try:
        for row in rows:
            executor.run(row)
        await asyncio.wait_for(done.wait(), 10)
    finally:
        executor.stop()
    return recorded, held


def test_the_executor_decides_outcomes_and_hands_them_to_its_completer(app: pgq.App) -> None:
    outcomes, held = asyncio.run(_run(app, [
        _row(1, "t.double", {"n": 21}),
        _row(2, "t.broken", {}, attempt=1),
        _row(3, "t.broken", {}, attempt=3),
        _row(4, "t.slow", {}, max_attempts=1)]))
    by_id = {o.job_id: o for o in outcomes}
    assert (by_id[1].state, by_id[1].result) == ("completed", "42")
    assert by_id[2].state == "retryable" and by_id[2].delay > 0
    assert by_id[3].state == "failed" and json.loads(by_id[3].error or "")["type"] == "ValueError"
    assert by_id[4].state == "failed"
    assert json.loads(by_id[4].error or "")["type"] == "pgq.Timeout"
    # The executor writes nothing and forgets nothing: the jobs stay held, decided, for
    # the completer to store and forget.
    assert len(held) == 4 and all(r.decided for r in held.values())


def test_a_lost_lease_stops_the_job_and_frees_it_without_an_outcome(app: pgq.App) -> None:
    async def scenario() -> tuple[list[Outcome], HeldJobs, Running]:
        recorded: list[Outcome] = []
        held = HeldJobs(None, release_lock=lambda key, token: None)
        executor = Executor(app, WorkerConfig(), "w1", held,
                            lambda running, outcome: recorded.append(outcome),
                            transaction=lambda ctx: None, coordinator=app.coordinator,
                            recycle=lambda: None)
        executor.start()
        try:
            executor.run(_row(9, "t.slow", {}, max_attempts=1))
            running = held.get(9)
            assert running is not None
            executor.lease_lost(9)
            assert running.handle is not None
            await asyncio.gather(running.handle, return_exceptions=True)
            assert running.handle.done()
        finally:
            executor.stop()
        return recorded, held, running

    recorded, held, running = asyncio.run(scenario())
    assert recorded == [] and 9 not in held
    assert running.lost and running.ctx.cancelled.is_set()
    assert held.stats.finished == {"lease-lost": 1}
