"""The one module that executes pgq's runtime SQL.

It drives the plans of ``pgq.client.enqueue`` (and, later, the worker's) on a psycopg 3
connection, sync or async; turns what callers pass as ``conn=`` (psycopg connections,
SQLAlchemy sessions and connections) into the psycopg connection underneath, inside the
caller's transaction; owns pgq's own connection pools; and wraps driver errors once,
here, into ``pgq.core.errors`` with the original as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from itertools import islice
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import pq

from pgq.core.errors import (
    DatabaseError,
    DatabaseUnavailable,
    MigrationError,
    PgqError,
    UnsupportedConnectionError,
)
from pgq.core.settings import Settings, redact_url
from pgq.store.plan import Copy, Exec, Pause, Plan
from pgq.store.queries import QUERIES

T = TypeVar("T")


# --- running plans -----------------------------------------------------------------------

# The statements as psycopg sends them. An ASCII statement is the same bytes in every
# client encoding PostgreSQL offers, so it is encoded once here rather than by psycopg on
# every execute (which then also hashes the new bytes twice, for its query and prepared
# statement caches): 2-3 % of a single enqueue's client instructions. Any other stays text.
_STATEMENTS: dict[str, str | bytes] = {
    name: sql.encode("ascii") if sql.isascii() else sql for name, sql in QUERIES.items()
}


def run_plan(conn: psycopg.Connection[Any], plan: Plan, *, atomic: bool = True) -> Any:
    """Drive ``plan`` on ``conn`` in the connection's current transaction. On an
    autocommit connection the plan gets a transaction of its own, so a multi-step
    enqueue is all-or-nothing there too; unless ``atomic=False``, for plans whose every
    statement is a consistent unit by itself (one job's enqueue): each then commits on
    its own, and the common one-statement case is one round trip instead of three."""
    # Every single enqueue comes through here, so this is written out rather than
    # stacked from generator-based context managers: the same errors, the same
    # transaction, fewer layers per call (issue 12, enqueue_single).
    try:
        if atomic and conn.autocommit:
            with conn.transaction():
                return _drive(conn, plan)
        return _drive(conn, plan)
    except psycopg.Error as exc:
        raise _translate(exc) from exc


def _drive(conn: psycopg.Connection[Any], plan: Plan) -> Any:
    with conn.cursor() as cur:
        reply: Any = None
        try:
            while True:
                step = plan.send(reply)
                if isinstance(step, Exec):
                    cur.execute(_STATEMENTS[step.name], step.params)
                    reply = cur.fetchall() if _has_rows(cur.pgresult) else []
                elif isinstance(step, Pause):
                    time.sleep(step.seconds)
                    reply = None
                else:
                    with cur.copy(QUERIES[step.name]) as copy:
                        for chunk in _copy_chunks(step.rows):
                            copy.write(chunk)
                    reply = None
        except StopIteration as done:
            return done.value


_ROWS_STATUSES = frozenset({pq.ExecStatus.TUPLES_OK, pq.ExecStatus.SINGLE_TUPLE,
                            pq.ExecStatus.TUPLES_CHUNK})


def _has_rows(result: pq.abc.PGresult | None) -> bool:
    """``cursor.description is not None``, without building the column descriptions
    that ``description`` makes on every call."""
    return result is not None and (result.nfields > 0 or result.status in _ROWS_STATUSES)


async def run_plan_async(conn: psycopg.AsyncConnection[Any], plan: Plan, *,
                         atomic: bool = True) -> Any:
    """``run_plan`` for an ``AsyncConnection``; the same plan, the same statements."""
    with _wrap_errors():
        async with _atomic_async(conn, atomic), conn.cursor() as cur:
            reply: Any = None
            try:
                while True:
                    step = plan.send(reply)
                    if isinstance(step, Copy):
                        async with cur.copy(QUERIES[step.name]) as copy:
                            for chunk in _copy_chunks(step.rows):
                                await copy.write(chunk)
                        reply = None
                    elif isinstance(step, Pause):
                        await asyncio.sleep(step.seconds)
                        reply = None
                    else:
                        await cur.execute(_STATEMENTS[step.name], step.params)
                        reply = await cur.fetchall() if _has_rows(cur.pgresult) else []
            except StopIteration as done:
                return done.value


_COPY_CHUNK_ROWS = 2000


def _copy_chunks(rows: Iterable[Sequence[str]]) -> Iterator[bytes]:
    """Rows of COPY text fields as COPY data, a few hundred kB at a time, so the server
    parses one chunk while the next is formatted."""
    it = iter(rows)
    while lines := ["\t".join(row) for row in islice(it, _COPY_CHUNK_ROWS)]:
        lines.append("")
        yield "\n".join(lines).encode("utf-8")


def execute(conn: psycopg.Connection[Any], name: str, params: Mapping[str, Any], *,
            binary: bool = False) -> list[Any]:
    """Run one named statement; its rows, or ``[]``. ``binary``: parameters and rows in
    PostgreSQL's binary format, for the hot path's arrays (a third of the text format's
    cost to encode: no quoting rules to apply element by element)."""
    with _wrap_errors(), conn.cursor() as cur:
        cur.execute(_STATEMENTS[name], params, binary=binary)
        return cur.fetchall() if _has_rows(cur.pgresult) else []


async def execute_async(conn: psycopg.AsyncConnection[Any], name: str,
                        params: Mapping[str, Any], *, binary: bool = False) -> list[Any]:
    """``execute`` on an ``AsyncConnection``."""
    with _wrap_errors():
        async with conn.cursor() as cur:
            await cur.execute(_STATEMENTS[name], params, binary=binary)
            return await cur.fetchall() if _has_rows(cur.pgresult) else []


@asynccontextmanager
async def _atomic_async(conn: psycopg.AsyncConnection[Any], atomic: bool = True
                        ) -> AsyncIterator[None]:
    if conn.autocommit and atomic:
        async with conn.transaction():
            yield
    else:
        yield


@contextmanager
def _wrap_errors() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise _translate(exc) from exc


def _translate(exc: psycopg.Error) -> PgqError:
    """The ``pgq.core.errors`` exception for a driver error (raise it ``from exc``)."""
    if isinstance(exc, pg_errors.UndefinedTable):
        return MigrationError(
            "the pgq tables do not exist in this database; run `pgq migrate` first"
        )
    if isinstance(exc, psycopg.OperationalError):
        # Includes the server shutting down or starting up, an administrator's
        # pg_terminate_backend, and connections cut by the network or a proxy.
        return DatabaseUnavailable(f"lost the database connection: {exc}".strip())
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        # A demoted primary after a failover (or a replica): this connection will never
        # write again; callers reconnect, which reaches the new primary.
        return DatabaseUnavailable(f"the server is read-only (failover?): {exc}".strip())
    return DatabaseError(f"{type(exc).__name__}: {exc}".strip())


# --- the caller's connection ------------------------------------------------------------

def sync_connection(conn: object) -> psycopg.Connection[Any]:
    """The psycopg connection behind ``conn``, with the caller's transaction begun.

    Accepts ``psycopg.Connection``, SQLAlchemy ``Session`` and ``Connection`` on the
    psycopg dialect. SQLAlchemy objects get their transaction begun (as SQLAlchemy's own
    autobegin would) so the job commits or rolls back with the caller's work.
    """
    if isinstance(conn, psycopg.Connection):
        return conn
    if isinstance(conn, psycopg.AsyncConnection):
        raise UnsupportedConnectionError("an AsyncConnection needs enqueue_async / enqueue_many_async")
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.orm import Session

    if isinstance(conn, Session):
        conn = conn.connection()
    if isinstance(conn, SAConnection):
        if not conn.in_transaction():
            conn.begin()
        return _driver_connection(conn.connection.driver_connection, psycopg.Connection)
    _reject_async_sqlalchemy(conn)
    raise UnsupportedConnectionError(_unsupported(conn))


async def async_connection(conn: object) -> psycopg.AsyncConnection[Any]:
    """``sync_connection`` for ``psycopg.AsyncConnection`` and SQLAlchemy's
    ``AsyncSession`` / ``AsyncConnection`` on the psycopg (async) dialect."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession

    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if isinstance(conn, SAAsyncConnection):
        if not conn.in_transaction():
            await conn.begin()
        raw = await conn.get_raw_connection()
        return _driver_connection(raw.driver_connection, psycopg.AsyncConnection)
    if isinstance(conn, psycopg.Connection):
        raise UnsupportedConnectionError("a sync psycopg Connection needs enqueue / enqueue_many")
    raise UnsupportedConnectionError(_unsupported(conn))


def _driver_connection(raw: object, expected: type[T]) -> T:
    if not isinstance(raw, expected):
        raise UnsupportedConnectionError(
            f"pgq enqueues through psycopg 3; this SQLAlchemy engine uses "
            f"{type(raw).__module__}.{type(raw).__name__}. Use a postgresql+psycopg:// URL."
        )
    return raw


def _reject_async_sqlalchemy(conn: object) -> None:
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
        from sqlalchemy.ext.asyncio import AsyncSession
    except ImportError:  # no greenlet, so no async SQLAlchemy objects either
        return

    if isinstance(conn, AsyncSession | SAAsyncConnection):
        raise UnsupportedConnectionError(
            f"a SQLAlchemy {type(conn).__name__} needs enqueue_async / enqueue_many_async"
        )


def _unsupported(conn: object) -> str:
    return (
        f"cannot enqueue through a {type(conn).__module__}.{type(conn).__name__}; pass a "
        "psycopg 3 Connection/AsyncConnection or a SQLAlchemy Session/Connection "
        "(sync or async) on the postgresql+psycopg dialect, or no conn at all"
    )


# --- pgq's own connections --------------------------------------------------------------

def liveness_params(dead_peer_timeout: float) -> dict[str, int]:
    """libpq parameters that make a connection fail within about ``dead_peer_timeout``
    seconds once its server stops answering, where a network that drops packets
    silently would otherwise leave it waiting for the kernel's retransmissions (about
    15 minutes on Linux):

    * ``tcp_user_timeout``: data sent (a query, a COMMIT) and not acknowledged for that
      long aborts the connection (Linux; elsewhere libpq ignores it);
    * keepalives: a connection waiting for a reply, or idle (LISTEN, a pooled one),
      probes the server after ``keepalives_idle`` seconds of silence, then every
      ``keepalives_interval``, and gives up after ``keepalives_count`` unanswered probes.
      libpq counts them in whole seconds, so an idle connection takes at least 2 s.

    >>> sorted(liveness_params(3.0).items())  # doctest: +NORMALIZE_WHITESPACE
    [('keepalives', 1), ('keepalives_count', 2), ('keepalives_idle', 1),
     ('keepalives_interval', 1), ('tcp_user_timeout', 3000)]
    >>> [liveness_params(12)[k] for k in ("keepalives_idle", "keepalives_count")]
    [4, 2]
    """
    idle = max(1, int(dead_peer_timeout / 3))
    return {"keepalives": 1, "keepalives_idle": idle, "keepalives_interval": idle,
            "keepalives_count": max(1, int((dead_peer_timeout - idle) / idle)),
            "tcp_user_timeout": max(1, round(dead_peer_timeout * 1000))}


def connection_params(settings: Settings) -> dict[str, Any]:
    """What every connection pgq opens passes to libpq besides the URL: the connect
    timeout and the liveness parameters (``liveness_params``). A parameter the database
    URL sets itself (``?keepalives_idle=30``) wins."""
    params: dict[str, Any] = {"connect_timeout": max(1, round(settings.connect_timeout)),
                              **liveness_params(settings.dead_peer_timeout)}
    in_url = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    return {key: value for key, value in params.items() if key not in in_url}


async def connect_async(settings: Settings, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """``connect`` for asyncio."""
    try:
        return await psycopg.AsyncConnection.connect(
            settings.database_url, **connection_params(settings), **kwargs
        )
    except psycopg.Error as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact_url(settings.database_url)}: "
            f"{connect_failure_reason(exc)}"
        ) from exc


def connect(settings: Settings, **kwargs: Any) -> psycopg.Connection[Any]:
    """A new connection, or ``DatabaseUnavailable`` with a one-line reason (no password)."""
    try:
        return psycopg.connect(settings.database_url, **connection_params(settings), **kwargs)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact_url(settings.database_url)}: "
            f"{connect_failure_reason(exc)}"
        ) from exc


def connect_failure_reason(exc: BaseException) -> str:
    """The line of a libpq connection error that says what went wrong (its first; the
    rest are hints like "Is the server running…")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class Pools:
    """pgq's own pools, opened on first use. The async pool belongs to the event loop
    that first used it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sync: psycopg_pool.ConnectionPool[Any] | None = None
        self._async: psycopg_pool.AsyncConnectionPool[Any] | None = None

    def _kwargs(self) -> dict[str, Any]:
        # Autocommit: run_plan opens a transaction where a plan needs one, and a lone
        # INSERT commits by itself (no BEGIN and COMMIT round trips).
        return {**connection_params(self._settings), "autocommit": True}

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection."""
        if self._sync is None:
            self._sync = psycopg_pool.ConnectionPool(
                self._settings.database_url, min_size=1, max_size=self._settings.pool_max_size,
                kwargs=self._kwargs(), open=False, name="pgq",
            )
            self._sync.open(wait=False)
        try:
            with self._sync.connection(timeout=self._settings.connect_timeout) as conn:
                yield conn
        except psycopg_pool.PoolTimeout as exc:
            raise self._unavailable() from exc

    @asynccontextmanager
    async def async_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._async is None:
            self._async = psycopg_pool.AsyncConnectionPool(
                self._settings.database_url, min_size=1, max_size=self._settings.pool_max_size,
                kwargs=self._kwargs(), open=False, name="pgq-async",
            )
            await self._async.open(wait=False)
        try:
            async with self._async.connection(timeout=self._settings.connect_timeout) as conn:
                yield conn
        except psycopg_pool.PoolTimeout as exc:
            raise self._unavailable() from exc

    def _unavailable(self) -> DatabaseUnavailable:
        return DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact_url(self._settings.database_url)} "
            f"within {self._settings.connect_timeout:g}s"
        )

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose_async(self) -> None:
        """Close the async pool only (on the loop that owns it); the next async use
        opens a new one on its own loop."""
        if self._async is not None:
            pool, self._async = self._async, None
            await pool.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.close()
            self._async = None
        self.close()
