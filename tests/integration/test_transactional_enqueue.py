"""The job commits or rolls back with the caller's transaction, for every connection
type pgq accepts, and is invisible to other connections until the commit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import pgq
from pgq.core.settings import sqlalchemy_url


def count_jobs(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM pgq_jobs").fetchone()[0]


# Each factory yields an object to pass as conn= plus commit / rollback callables, all
# inside one transaction that also writes a business row (so we know the job rides along).

SyncTx = Callable[[str], AbstractContextManager[tuple[Any, Callable[[], None], Callable[[], None]]]]


@contextmanager
def psycopg_tx(url: str) -> Iterator[tuple[Any, Callable[[], None], Callable[[], None]]]:
    with psycopg.connect(url) as c:
        c.execute("INSERT INTO business VALUES (1)")
        yield c, c.commit, c.rollback


@contextmanager
def sa_session_tx(url: str) -> Iterator[tuple[Any, Callable[[], None], Callable[[], None]]]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with Session(engine) as session:
            session.execute(text("INSERT INTO business VALUES (1)"))
            yield session, session.commit, session.rollback
    finally:
        engine.dispose()


@contextmanager
def sa_connection_tx(url: str) -> Iterator[tuple[Any, Callable[[], None], Callable[[], None]]]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as c:
            c.execute(text("INSERT INTO business VALUES (1)"))
            yield c, c.commit, c.rollback
    finally:
        engine.dispose()


@contextmanager
def sa_connection_fresh_tx(url: str) -> Iterator[tuple[Any, Callable[[], None], Callable[[], None]]]:
    """A SQLAlchemy Connection on which nothing ran yet: pgq must begin its transaction,
    or SQLAlchemy's commit() would be a no-op and the job would be lost at close."""
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as c:
            yield c, c.commit, c.rollback
    finally:
        engine.dispose()


AsyncTx = Callable[[str], AbstractAsyncContextManager[tuple[Any, Any, Any]]]


@asynccontextmanager
async def apsycopg_tx(url: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    async with await psycopg.AsyncConnection.connect(url) as c:
        await c.execute("INSERT INTO business VALUES (1)")
        yield c, c.commit, c.rollback


@asynccontextmanager
async def sa_async_session_tx(url: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with AsyncSession(engine) as session:
            await session.execute(text("INSERT INTO business VALUES (1)"))
            yield session, session.commit, session.rollback
    finally:
        await engine.dispose()


@asynccontextmanager
async def sa_async_connection_tx(url: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with engine.connect() as c:
            await c.execute(text("INSERT INTO business VALUES (1)"))
            yield c, c.commit, c.rollback
    finally:
        await engine.dispose()


SYNC = [psycopg_tx, sa_session_tx, sa_connection_tx]
ASYNC = [apsycopg_tx, sa_async_session_tx, sa_async_connection_tx]


@pytest.fixture
def app(settings: pgq.Settings, conn: psycopg.Connection) -> Iterator[pgq.App]:
    conn.execute("CREATE TABLE business (id int)")
    with pgq.App(settings, strict=False) as a:
        yield a


@pytest.mark.parametrize("tx", SYNC, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bulk", [False, True], ids=["one", "many"])
def test_sync_rollback_leaves_nothing(tx: SyncTx, bulk: bool, app: pgq.App, db_url: str,
                                      conn: psycopg.Connection) -> None:
    with tx(db_url) as (c, _commit, rollback):
        _enqueue(app, c, bulk)
        assert count_jobs(conn) == 0
        rollback()
    assert count_jobs(conn) == 0
    assert conn.execute("SELECT count(*) FROM business").fetchone()[0] == 0


@pytest.mark.parametrize("tx", [*SYNC, sa_connection_fresh_tx], ids=lambda f: f.__name__)
@pytest.mark.parametrize("bulk", [False, True], ids=["one", "many"])
def test_sync_commit_publishes_at_commit(tx: SyncTx, bulk: bool, app: pgq.App, db_url: str,
                                         conn: psycopg.Connection) -> None:
    with tx(db_url) as (c, commit, _rollback):
        ids = _enqueue(app, c, bulk)
        assert count_jobs(conn) == 0, "visible to another connection before commit"
        commit()
    assert count_jobs(conn) == len(ids)
    rows = conn.execute("SELECT id, state FROM pgq_jobs ORDER BY id").fetchall()
    assert rows == [(i, "available") for i in sorted(ids)]


@pytest.mark.parametrize("tx", ASYNC, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bulk", [False, True], ids=["one", "many"])
def test_async_rollback_and_commit(tx: AsyncTx, bulk: bool, app: pgq.App, db_url: str,
                                   conn: psycopg.Connection) -> None:
    async def scenario() -> None:
        async with tx(db_url) as (c, _commit, rollback):
            await _enqueue_async(app, c, bulk)
            assert count_jobs(conn) == 0
            await rollback()
        assert count_jobs(conn) == 0
        async with tx(db_url) as (c, commit, _rollback):
            ids = await _enqueue_async(app, c, bulk)
            assert count_jobs(conn) == 0, "visible to another connection before commit"
            await commit()
        assert sorted(r[0] for r in conn.execute("SELECT id FROM pgq_jobs")) == sorted(ids)
        await app.aclose()

    asyncio.run(scenario())


def test_without_conn_commits_on_pgq_connection(app: pgq.App, conn: psycopg.Connection) -> None:
    job = app.enqueue("report.build", {"day": "2026-11-24"})
    assert not job.duplicate
    assert conn.execute("SELECT task, args FROM pgq_jobs WHERE id = %s", [job.id]).fetchone() == (
        "report.build", {"day": "2026-11-24"})

    async def go() -> list[pgq.Enqueued]:
        try:
            one = await app.enqueue_async("report.build", {"day": "x"})
            many = await app.enqueue_many_async([pgq.JobSpec("report.build")] * 3)
            return [one, *many]
        finally:
            await app.aclose()

    assert len(asyncio.run(go())) == 4
    assert count_jobs(conn) == 5


def test_autocommit_psycopg_connection_commits_each_enqueue(
    app: pgq.App, db_url: str, conn: psycopg.Connection
) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        app.enqueue("a.task", conn=c)
        app.enqueue_many([pgq.JobSpec("a.task", unique_key="k"), pgq.JobSpec("a.task")], conn=c)
        assert count_jobs(conn) == 3


def test_wrong_flavour_of_connection_is_a_clear_error(app: pgq.App, db_url: str) -> None:
    with psycopg.connect(db_url) as c, pytest.raises(
        pgq.UnsupportedConnectionError, match="sync psycopg Connection needs enqueue"
    ):
        asyncio.run(app.enqueue_async("a.task", conn=c))

    async def async_conn_to_sync_enqueue() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as c:
            app.enqueue("a.task", conn=c)

    with pytest.raises(pgq.UnsupportedConnectionError, match="needs enqueue_async"):
        asyncio.run(async_conn_to_sync_enqueue())
    with pytest.raises(pgq.UnsupportedConnectionError, match="cannot enqueue through"):
        app.enqueue("a.task", conn=object())


def test_sqlalchemy_engine_on_another_driver_is_refused(app: pgq.App, db_url: str) -> None:
    pytest.importorskip("sqlite3")
    engine = create_engine("sqlite://")
    with engine.connect() as c, pytest.raises(pgq.UnsupportedConnectionError, match="psycopg"):
        app.enqueue("a.task", conn=c)


def _enqueue(app: pgq.App, c: Any, bulk: bool) -> list[int]:
    if bulk:
        specs = [pgq.JobSpec("a.task", {"i": i}) for i in range(3)]
        specs.append(pgq.JobSpec("a.task", {"i": 3}, unique_key="u"))
        return [r.id for r in app.enqueue_many(specs, conn=c)]
    return [app.enqueue("a.task", {"i": 1}, conn=c).id]


async def _enqueue_async(app: pgq.App, c: Any, bulk: bool) -> list[int]:
    if bulk:
        specs = [pgq.JobSpec("a.task", {"i": i}) for i in range(3)]
        specs.append(pgq.JobSpec("a.task", {"i": 3}, unique_key="u"))
        return [r.id for r in await app.enqueue_many_async(specs, conn=c)]
    return [(await app.enqueue_async("a.task", {"i": 1}, conn=c)).id]


def test_sync_enqueue_works_without_greenlet(db_url: str) -> None:
    """A sync-only install has no greenlet (SQLAlchemy's asyncio needs it): enqueueing
    through a Session, a Connection and psycopg must not import sqlalchemy.ext.asyncio.
    Found by the demo on a fresh install."""
    script = f"""
import sys
sys.modules["greenlet"] = None  # as if not installed
import psycopg, sqlalchemy as sa
from sqlalchemy.orm import Session
import pgq
app = pgq.App(pgq.Settings(database_url={db_url!r}), strict=False)
engine = sa.create_engine(pgq.Settings(database_url={db_url!r}).sqlalchemy_url)
with Session(engine) as s:
    app.enqueue("t", conn=s)
    s.commit()
with engine.begin() as c:
    app.enqueue("t", conn=c)
with psycopg.connect({db_url!r}) as c:
    app.enqueue("t", conn=c)
try:
    app.enqueue("t", conn=object())
except pgq.UnsupportedConnectionError:
    pass
assert "sqlalchemy.ext.asyncio" not in sys.modules
app.close()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgq_jobs").fetchone() == (3,)
