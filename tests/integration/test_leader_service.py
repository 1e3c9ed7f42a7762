"""LeaderService against the real database and Redis: rounds run only while the service
holds its role, each with the leadership's fencing term; the role moves to the next
service with a larger term; stop() cuts a long wait short and resigns at once; a failed
round is logged and the next one runs on a fresh connection."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import pgq
from pgq.coordination.leader import Leadership
from pgq.scheduling.service import LeaderService
from tests.conftest import Databases, url_for
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

ROLE = "counter"


@pytest.fixture
def db_url(databases: Databases, migrated_template: str) -> str:
    return url_for(databases.create(template=migrated_template, prefix="pgq_hb"))


class Counter(LeaderService):
    """Counts rounds; each round reports (term, backend pid) on ``rounds``."""

    role = ROLE

    def __init__(self, app: pgq.App, holder: str, *, wait: float = 60.0,
                 fail_first: bool = False) -> None:
        super().__init__(app, holder=holder, ttl=2.0, poll=0.05, retry=0.05)
        self.wait = wait
        self.fail_first = fail_first
        self.rounds: queue.Queue[tuple[int, int]] = queue.Queue()
        self.count = 0

    def run_round(self, conn: psycopg.Connection[Any], leadership: Leadership,
                  term: int) -> None:
        assert leadership.term == term, "a round runs only as the current leader"
        self.count += 1
        self.rounds.put((term, conn.info.backend_pid))
        if self.fail_first and self.count == 1:
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    def next_wait(self, conn: psycopg.Connection[Any]) -> float:
        return self.wait


@pytest.fixture
def app(make_app: Callable[..., pgq.App]) -> Iterator[pgq.App]:
    yield make_app(strict=False)


def test_rounds_run_only_while_leader_and_stop_is_prompt(app: pgq.App) -> None:
    rival = app.coordinator.lead(ROLE, "rival", 30)
    assert rival is not None
    service = Counter(app, "me").start()
    try:
        wait_until(lambda: service._leadership is not None
                   and service._leadership.attempts >= 2, 10, "two campaigns lost to the rival")
        assert service.count == 0, "no round without the role"
        app.coordinator.resign(ROLE, "rival")
        term, _ = service.rounds.get(timeout=10)
        assert term > rival
    finally:
        began = time.monotonic()
        service.stop()  # the service is in its 60 s wait for the next round
    assert service.join(0), "the thread ended"
    assert time.monotonic() - began < 1.0, "stop() cut the wait short"
    assert service.count == 1
    after = app.coordinator.lead(ROLE, "rival", 30)
    assert after is not None and after > term, "resigned at stop(): no TTL to wait out"


def test_the_role_moves_to_the_next_service_with_a_larger_term(app: pgq.App) -> None:
    first = Counter(app, "first").start()
    second = Counter(app, "second")
    try:
        term_first, _ = first.rounds.get(timeout=10)
        second.start()
        wait_until(lambda: second._leadership is not None
                   and second._leadership.attempts >= 2, 10, "the second service campaigning")
        assert second.count == 0, "one leader at a time"
        first.stop()
        term_second, _ = second.rounds.get(timeout=10)
        assert term_second > term_first
        assert first.count == 1
    finally:
        first.stop()
        second.stop()


def test_a_failed_round_is_logged_and_the_next_reconnects(
        app: pgq.App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="pgq.leader")
    service = Counter(app, "me", fail_first=True).start()
    try:
        _, first_backend = service.rounds.get(timeout=10)
        _, second_backend = service.rounds.get(timeout=10)  # after retry, not the 60 s wait
    finally:
        service.stop()
    assert second_backend != first_backend, "a fresh connection after the broken one"
    errors = [r.getMessage() for r in caplog.records if r.name == "pgq.leader"]
    assert errors and errors[0].startswith(f"{ROLE}: "), errors
