"""pgq's schema migrations, run programmatically (``pgq migrate``) or from a host
application's own Alembic environment.

pgq keeps its own Alembic history in its own version table (``pgq_alembic_version``), so
it never reads or writes a host application's ``alembic_version``. The revisions live in
the top-level ``migrations/`` of a checkout and are shipped inside the wheel as
``pgq/_migrations``.

From a host app's ``env.py`` (before ``context.configure``)::

    from pgq.store.migrate import exclude_pgq_objects, upgrade
    with engine.connect() as connection:
        upgrade(connection)                 # pgq's history, in this transaction
        context.configure(connection=connection, target_metadata=my_metadata,
                          include_object=exclude_pgq_objects)   # autogenerate ignores pgq
        with context.begin_transaction():
            context.run_migrations()
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from pgq.core.errors import DatabaseUnavailable, MigrationError
from pgq.core.settings import Settings, redact_url
from pgq.store.database import connect_failure_reason, connection_params

VERSION_TABLE = "pgq_alembic_version"
_LOCK_KEY = 0x70677121  # "pgq!": serializes concurrent `pgq migrate` runs
_PREFIX = "pgq_"


def script_location() -> Path:
    """Where the revisions are: inside the installed package, else in the checkout."""
    package = Path(__file__).resolve().parent.parent  # pgq/, from pgq/store/migrate.py
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "versions").is_dir():
            return candidate
    raise MigrationError(f"pgq's migrations are missing (looked in {package / '_migrations'})")


def script_directory() -> ScriptDirectory:
    return ScriptDirectory(str(script_location()))


def head() -> str:
    revision = script_directory().get_current_head()
    if revision is None:
        raise MigrationError("pgq's migration history is empty")
    return revision


def include_pgq_objects(obj: Any, name: str | None, type_: str, reflected: bool,
                        compare_to: Any) -> bool:
    """Alembic ``include_object`` hook limiting comparisons to pgq's own objects."""
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return (table or name or "").startswith(_PREFIX)


def exclude_pgq_objects(obj: Any, name: str | None, type_: str, reflected: bool,
                        compare_to: Any) -> bool:
    """For a host app's ``env.py``: keep pgq's tables out of its autogenerate."""
    return not include_pgq_objects(obj, name, type_, reflected, compare_to)


def current(connection: Connection) -> str | None:
    """The pgq revision this database is at, or ``None`` if pgq was never migrated."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(target: Settings | Connection, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade to ``revision``; returns (before, after). Idempotent: at the target
    already, it changes nothing. Given a Connection, runs in its transaction (the
    caller commits); given Settings, opens, migrates and commits."""
    script = script_directory()
    with _connection(target) as connection:
        _lock(connection)
        before = current(connection)
        _run(connection, lambda rev, _ctx: script._upgrade_revs(revision, rev))
        return before, current(connection)


def downgrade(target: Settings | Connection, revision: str) -> tuple[str | None, str | None]:
    """Downgrade to ``revision``. To ``base`` it removes every pgq object, including
    pgq's version table."""
    script = script_directory()
    with _connection(target) as connection:
        _lock(connection)
        before = current(connection)
        _run(connection, lambda rev, _ctx: script._downgrade_revs(revision, rev))
        if revision == "base":
            connection.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
        return before, current(connection) if revision != "base" else None


def upgrade_sql(revision: str = "head", start: str | None = None) -> str:
    """The DDL that upgrading from ``start`` (default: an empty database) to ``revision``
    would run, as one SQL script for DBAs who apply migrations themselves."""
    script = script_directory()
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql",
        opts={
            "as_sql": True,
            "output_buffer": buffer,
            "literal_binds": True,
            "version_table": VERSION_TABLE,
            "starting_rev": start,
            "destination_rev": revision,
            "transactional_ddl": True,
            "fn": lambda rev, _ctx: script._upgrade_revs(revision, rev),
        },
    )
    with Operations.context(context), context.begin_transaction():
        context.run_migrations()
    return buffer.getvalue()


def _lock(connection: Connection) -> None:
    # One migrator at a time, held to the end of the transaction: workers that all run
    # `pgq migrate` at boot queue up here, and each reads the revision only once it has
    # the lock, instead of racing to create the same tables.
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def _run(connection: Connection, fn: Any) -> None:
    context = MigrationContext.configure(
        connection,
        opts={"version_table": VERSION_TABLE, "fn": fn, "transactional_ddl": True},
    )
    try:
        with Operations.context(context):
            context.run_migrations()
    except DBAPIError as exc:
        raise MigrationError(f"migration failed: {exc.orig}") from exc


@contextmanager
def _connection(target: Settings | Connection) -> Iterator[Connection]:
    if isinstance(target, Connection):
        yield target
        return
    engine = create_engine(
        target.sqlalchemy_url, poolclass=NullPool,
        connect_args=connection_params(target),
    )
    try:
        try:
            connection = engine.connect()
        except DBAPIError as exc:
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {redact_url(target.database_url)}: "
                f"{connect_failure_reason(exc.orig or exc)}"
            ) from exc
        with connection, connection.begin():
            yield connection
    finally:
        engine.dispose()
