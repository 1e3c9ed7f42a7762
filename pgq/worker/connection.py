"""The worker's asyncio connections (claims, outcomes): how one is opened, and how one
that broke is replaced while the database is away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import psycopg
from psycopg.types.array import ListBinaryDumper

from pgq.core.errors import DatabaseUnavailable, MigrationError, PgqError
from pgq.core.outage import Outage
from pgq.core.settings import Settings
from pgq.store.database import connect_async, execute_async
from pgq.store.revision import SCHEMA_REVISION

Conn = psycopg.AsyncConnection[object]


async def open_connection(settings: Settings, *, async_commit: bool) -> Conn:
    """A claim or outcome connection (autocommit: each statement commits at once)."""
    conn: Conn = await connect_async(settings, autocommit=True)
    # The hot-path statements take one array per column; psycopg dumps a list as text by
    # default, quoting element by element in Python: 150 us per claim of ten queues (most
    # of it the claim cursors' timestamps), 100 us per flush of ten outcomes. Binary lists
    # cost a third of that, and the same for any queue count.
    conn.adapters.register_dumper(list, ListBinaryDumper)
    if async_commit:
        try:
            await execute_async(conn, "session_async_commit", {})
        except PgqError as exc:
            await conn.close()
            raise DatabaseUnavailable(f"could not set synchronous_commit: {exc}") from exc
    return conn


async def reopen(conn: Conn, outage: Outage, reason: Exception,
                 connect: Callable[[], Awaitable[Conn]],
                 wait: Callable[[float], Awaitable[bool]]) -> Conn | None:
    """Replace ``conn`` (broken, or open to a server that cannot serve pgq: a demoted
    primary, one shutting down): wait out the outage with the outage's backoff, then
    connect. ``wait(delay)`` sleeps and says whether to go on; when it says no, the
    caller gets None and decides (the old connection is closed by then)."""
    with suppress(Exception):  # it is being replaced because it is broken
        await conn.close()
    while True:
        if not await wait(outage.failed(reason)):
            return None
        try:
            return await connect()
        except PgqError as exc:
            reason = exc


class ClaimLink:
    """The producer's connection: opened with a check of the database's schema, its
    trouble in a loop step logged and waited out (``safely``), never fatal. A lost or
    unusable server (restart, failover, a demoted primary, a cut connection) is an
    outage: reconnect with backoff, one log line each way; a stop request ends the wait
    (the closed connection stays: the producer is about to exit)."""

    def __init__(self, settings: Settings, *, async_commit: bool, poll_seconds: float,
                 label: str, log: logging.Logger,
                 stop_requested: Callable[[], asyncio.Event]) -> None:
        self.settings = settings
        self.async_commit = async_commit
        self.poll_seconds = poll_seconds
        self.label = label
        self.log = log
        self.stop_requested = stop_requested
        self.outage = Outage(f"{label}: claim connection", logger=log,
                             kind="claim")
        self._conn: Conn | None = None

    @property
    def conn(self) -> Conn:
        assert self._conn is not None, "ClaimLink.open() first"
        return self._conn

    async def connect(self) -> Conn:
        return await open_connection(self.settings, async_commit=self.async_commit)

    async def open(self) -> None:
        self._conn = await self.connect()
        try:
            rows = await execute_async(self._conn, "schema_version", {})
        except MigrationError:
            rows = []
        current, wanted = (rows[0][0] if rows else None), SCHEMA_REVISION
        if current != wanted:
            await self._conn.close()
            raise MigrationError(f"the database's pgq schema is at {current or 'nothing'}, "
                                 f"this pgq needs {wanted}: run `pgq migrate` first")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def safely(self, awaitable: Awaitable[Any]) -> Any:
        """``awaitable``'s result, or None after database trouble (logged, waited out)."""
        try:
            result = await awaitable
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            # psycopg's own errors too: a step that opens a transaction itself (reclaim)
            # can be cut before pgq's error wrapping sees it.
            await self._reconnect(exc)
            return None
        except (PgqError, psycopg.Error) as exc:
            self.log.error("%s: %s", self.label, exc)
            if self.conn.closed or self.conn.broken:
                await self._reconnect(exc)
            else:
                await self.pause(min(self.poll_seconds, 1.0))  # back off, then retry
            return None
        self.outage.recovered()
        return result

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once for a stop request."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self.stop_requested().wait(), seconds)

    async def _reconnect(self, reason: Exception) -> None:
        async def wait(delay: float) -> bool:
            await self.pause(delay)
            return not self.stop_requested().is_set()

        conn = await reopen(self.conn, self.outage, reason, self.connect, wait)
        if conn is not None:
            self._conn = conn
