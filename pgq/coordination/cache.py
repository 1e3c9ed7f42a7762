"""The cache role: short-lived documents other processes read (the queue stats), in
Redis only. Its PostgreSQL fallback is the caller's table (``pgq_stats`` for the stats,
written by the same service), since a cache that is not there is merely a slower read.

Both calls fail soft: without Redis, or on a Redis error (which marks Redis down, as for
every role), ``cache_set`` returns False and ``cache_get`` None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgq.coordination.wakeups import REDIS_ERRORS

if TYPE_CHECKING:
    from pgq.coordination.coordinator import Coordinator


def cache_set(coordinator: Coordinator, key: str, value: str, ttl: float) -> bool:
    client = coordinator._redis
    if client is None or not coordinator.redis_ok():
        return False
    try:
        client.set(f"{coordinator.prefix}cache:{key}", value, px=max(1, int(ttl * 1000)))
    except REDIS_ERRORS as exc:
        coordinator.redis_failed(exc)
        return False
    return True


def cache_get(coordinator: Coordinator, key: str) -> str | None:
    client = coordinator._redis
    if client is None or not coordinator.redis_ok():
        return None
    try:
        value = client.get(f"{coordinator.prefix}cache:{key}")
    except REDIS_ERRORS as exc:
        coordinator.redis_failed(exc)
        return None
    return value if isinstance(value, str) else None
