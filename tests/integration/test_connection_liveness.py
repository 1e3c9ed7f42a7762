"""Every connection pgq opens carries TCP keepalives and ``tcp_user_timeout``, read back
from the kernel's socket options of the real connections (without them, a network that
silently drops packets leaves a connection waiting about 15 minutes). The behaviour
under a real black hole is proven by tests/faults/test_partition.py."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import pgq
from pgq.core.settings import Settings
from pgq.store import migrate
from pgq.store.database import Pools, connect, connect_async, liveness_params
from pgq.worker import WorkerConfig
from tests.integration.test_worker import Background
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def tcp_options(fd: int) -> tuple[int, int, int, int, int]:
    """(SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT) of the
    socket ``fd``, as the kernel has them."""
    with socket.socket(fileno=os.dup(fd)) as s:
        return (s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))


def expected(dead_peer_timeout: float) -> tuple[int, int, int, int, int]:
    p = liveness_params(dead_peer_timeout)
    return (1, p["keepalives_idle"], p["keepalives_interval"], p["keepalives_count"],
            p["tcp_user_timeout"])


@pytest.fixture
def tcp_settings(settings: Settings) -> Settings:
    assert urlsplit(settings.database_url).hostname == "127.0.0.1", "needs a TCP URL"
    return settings.with_changes(dead_peer_timeout=7.0)


def test_connect_and_connect_async(tcp_settings: Settings) -> None:
    with connect(tcp_settings) as conn:
        assert tcp_options(conn.fileno()) == expected(7.0)

    async def go() -> tuple[int, ...]:
        conn = await connect_async(tcp_settings)
        try:
            return tcp_options(conn.fileno())
        finally:
            await conn.close()

    assert asyncio.run(go()) == expected(7.0)


def test_the_enqueue_pools(tcp_settings: Settings) -> None:
    pools = Pools(tcp_settings)
    try:
        with pools.connection() as conn:
            assert tcp_options(conn.fileno()) == expected(7.0)

        async def go() -> tuple[int, ...]:
            async with pools.async_connection() as conn:
                return tcp_options(conn.fileno())

        async def run_and_close() -> tuple[int, ...]:
            try:
                return await go()
            finally:
                await pools.aclose()

        assert asyncio.run(run_and_close()) == expected(7.0)
    finally:
        pools.close()


def test_the_migration_engine(tcp_settings: Settings) -> None:
    with migrate._connection(tcp_settings) as connection:
        raw: Any = connection.connection.driver_connection
        assert tcp_options(raw.fileno()) == expected(7.0)


def test_a_parameter_in_the_database_url_wins(tcp_settings: Settings) -> None:
    url = tcp_settings.database_url + "?keepalives_idle=17"
    with connect(tcp_settings.with_changes(database_url=url)) as conn:
        assert tcp_options(conn.fileno())[:2] == (1, 17)


def _postgres_sockets(port: int) -> dict[int, int]:
    """This process's TCP connections to ``port``: local port -> fd."""
    found = {}
    for entry in Path("/proc/self/fd").iterdir():
        try:
            if not os.readlink(entry).startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(entry.name))) as s:
                if s.family == socket.AF_INET and s.type == socket.SOCK_STREAM \
                        and s.getpeername()[1] == port:
                    found[s.getsockname()[1]] = int(entry.name)
        except OSError:
            continue  # closed meanwhile, or not connected
    return found


def test_every_connection_of_a_worker(tcp_settings: Settings) -> None:
    """A worker in this process, a job running: every TCP connection it opened to
    PostgreSQL (claims, outcomes, heartbeats, LISTEN, leader lanes) has the liveness
    options; its own (claims, outcomes, heartbeats) within a quarter of its lease."""
    port = urlsplit(tcp_settings.database_url).port or 5432
    before = set(_postgres_sockets(port))
    app = pgq.App(tcp_settings)
    started, release = threading.Event(), threading.Event()

    @app.task(name="liveness.hold")
    def hold() -> None:
        started.set()
        release.wait(20)

    try:
        app.enqueue("liveness.hold")
        worker = pgq.Worker(app, WorkerConfig(lease_seconds=4.0, poll_seconds=0.05))
        assert worker.settings.dead_peer_timeout == 1.0
        background = Background(worker)
        try:
            assert started.wait(15), "the job did not start"
            # The heartbeat connects in its own thread: wait until it has.
            wait_until(lambda: len(set(_postgres_sockets(port)) - before) >= 4, 10,
                       "the worker's connections")
            options = [tcp_options(fd) for local, fd in _postgres_sockets(port).items()
                       if local not in before]
        finally:
            release.set()
            background.join()
    finally:
        app.close()
    assert options and all(o in (expected(1.0), expected(7.0)) for o in options), options
    assert sum(o == expected(1.0) for o in options) >= 3, options  # claim, outcome, heartbeat
