"""The worker's asyncio connections (claims, outcomes): how one is opened, and how one
that broke is replaced while the database is away."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress

import psycopg
from psycopg.types.array import ListBinaryDumper

from pgq.core.errors import DatabaseUnavailable, PgqError
from pgq.core.outage import Outage
from pgq.core.settings import Settings
from pgq.store.database import connect_async, execute_async

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
