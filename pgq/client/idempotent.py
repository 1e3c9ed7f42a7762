"""Idempotent enqueue (the HTTP API's ``Idempotency-Key``): the same key within
``TTL`` returns the first request's job instead of enqueuing again, and the same key
with a different request (``fingerprint``: the caller's digest of what was asked) is
refused with ``IdempotencyConflict``.

Exactly one job per key, however many requests race: in one transaction the request
inserts the key's row (``idempotency_claim``, ON CONFLICT), enqueues through that same
connection (``app.enqueue(..., conn=)``) and records the job id, then commits. A
concurrent request with the key waits on the row's primary key until that commit, takes
nothing and reads the committed row; if the first one rolled back (its enqueue was
refused), the waiter's insert goes through and it enqueues instead. A key older than
``TTL`` is replaced by its next use; maintenance prunes the rest
(``pgq.scheduling.maintenance``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Unpack

from pgq.client.enqueue import Enqueued, EnqueueOptions
from pgq.core.errors import IdempotencyConflict, InvalidOptionError
from pgq.core.tasks import Task
from pgq.store.database import run_plan, run_plan_async
from pgq.store.plan import Exec, Plan

if TYPE_CHECKING:
    from pgq.client.app import App

TTL = timedelta(hours=24)
"""How long a key names its first job."""
MAX_KEY = 255
"""The longest key (or fingerprint) accepted."""
ATTEMPTS = 3
"""Claims tried before giving up: a key can vanish between a conflict and the read
only if it expired and was pruned just then."""


def _check(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_KEY:
        raise InvalidOptionError(f"{what} must be a string of 1 to {MAX_KEY} characters, "
                                 f"got {value!r}")
    return value


def plan_claim(key: str, fingerprint: str, now: datetime | None) -> Plan:
    """None if this request took the key, else the first request's (fingerprint, job id),
    or ("", None) if the key vanished meanwhile (try again)."""
    took = yield Exec("idempotency_claim", {"key": key, "fingerprint": fingerprint, "now": now,
                                            "ttl": TTL.total_seconds()})
    if took:
        return None
    rows = yield Exec("idempotency_read", {"key": key})
    return tuple(rows[0]) if rows else ("", None)


def plan_set_job(key: str, job_id: int) -> Plan:
    yield Exec("idempotency_set_job", {"key": key, "job_id": job_id})


def _replayed(key: str, fingerprint: str, first: tuple[str, int | None]) -> Enqueued:
    if first[0] != fingerprint:
        raise IdempotencyConflict(f"idempotency key {key!r} was used for a different request")
    assert first[1] is not None  # set in the transaction that took the key
    return Enqueued(first[1], duplicate=True)


def enqueue_idempotent(app: App, key: str, fingerprint: str, task: str | Task,
                       args: Mapping[str, Any] | None = None,
                       **options: Unpack[EnqueueOptions]) -> tuple[Enqueued, bool]:
    """Enqueue ``task`` once per ``key`` (for ``TTL``): returns the job and ``replayed``,
    True when the key was seen before (the first job's id, ``duplicate=True``). The same
    key with another ``fingerprint`` raises ``IdempotencyConflict``."""
    _check(key, "idempotency key")
    _check(fingerprint, "fingerprint")
    for _ in range(ATTEMPTS):
        with app._pools.connection() as conn, conn.transaction():
            first = run_plan(conn, plan_claim(key, fingerprint, app.clock.now()), atomic=False)
            if first is None:
                done = app.enqueue(task, args, conn=conn, **options)
                run_plan(conn, plan_set_job(key, done.id), atomic=False)
                return done, False
            if first[1] is not None:
                return _replayed(key, fingerprint, first), True
    raise IdempotencyConflict(f"idempotency key {key!r} could not be taken (it kept "
                              "expiring while in use); try again")


async def aenqueue_idempotent(app: App, key: str, fingerprint: str, task: str | Task,
                              args: Mapping[str, Any] | None = None,
                              **options: Unpack[EnqueueOptions]) -> tuple[Enqueued, bool]:
    """``enqueue_idempotent`` for async code."""
    _check(key, "idempotency key")
    _check(fingerprint, "fingerprint")
    for _ in range(ATTEMPTS):
        async with app._pools.async_connection() as conn, conn.transaction():
            first = await run_plan_async(conn, plan_claim(key, fingerprint, app.clock.now()),
                                         atomic=False)
            if first is None:
                done = await app.enqueue_async(task, args, conn=conn, **options)
                await run_plan_async(conn, plan_set_job(key, done.id), atomic=False)
                return done, False
            if first[1] is not None:
                return _replayed(key, fingerprint, first), True
    raise IdempotencyConflict(f"idempotency key {key!r} could not be taken (it kept "
                              "expiring while in use); try again")
