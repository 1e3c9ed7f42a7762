"""SQLAlchemy sessions given as ``conn=``: the wake-up of an enqueue waits for the
session's commit (and is forgotten on its rollback), through the session's events.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

Publish = Callable[[list[str]], None]

_SESSION_KEY = "pgq_wakeup_queues"


def after_session_commit(conn: object, publish: Publish) -> Callable[[list[str]], None] | None:
    """For a SQLAlchemy ``Session`` (or ``AsyncSession``): a callable that remembers queues
    and ``publish``es them when the session commits. None for anything else: pgq cannot
    see when that connection's transaction ends."""
    # An AsyncSession's events live on its sync_session. Duck-typed: importing
    # sqlalchemy.ext.asyncio needs greenlet, which a sync-only install lacks.
    session = getattr(conn, "sync_session", conn)
    if not any(c.__module__.startswith("sqlalchemy.") for c in type(session).__mro__):
        return None  # a psycopg connection: no import of SQLAlchemy's ORM on its path
    from sqlalchemy.orm import Session

    if isinstance(session, Session):
        return partial(_publish_after_commit, session, publish)
    return None


def _publish_after_commit(session: Any, publish: Publish, queues: list[str]) -> None:
    """Remember ``queues`` on the session; publish them when it commits, forget them if
    it rolls back. The listeners are registered once per session."""
    from sqlalchemy import event


    pending: set[str] | None = session.info.get(_SESSION_KEY)
    if pending is None:
        pending = session.info[_SESSION_KEY] = set()

        def committed(s: Any) -> None:
            # Also fired when a SAVEPOINT is released: the outer transaction is still
            # open then, and the wake-up waits for its commit.
            if pending and not s.in_nested_transaction():
                publish(list(pending))
                pending.clear()

        def rolled_back(s: Any, previous: Any) -> None:
            # A rolled-back SAVEPOINT leaves the outer transaction's enqueues standing (an
            # enqueue made inside it then costs at most one empty claim).
            if not previous.nested:
                pending.clear()

        event.listen(session, "after_commit", committed)
        event.listen(session, "after_soft_rollback", rolled_back)
    pending.update(queues)
