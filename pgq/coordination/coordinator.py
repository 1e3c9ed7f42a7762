"""Redis as an accelerator, PostgreSQL as the fallback (with ``wakeups``, the only
modules that import redis).

Three roles, each with a Redis implementation and a PostgreSQL one behind the same calls:

============  =======================================  ==========================================
role          Redis                                    PostgreSQL fallback
============  =======================================  ==========================================
wake-ups      PUBLISH after the enqueue commits;       ``NOTIFY pgq_wakeup`` inside the enqueuing
              workers SUBSCRIBE (one connection per    transaction (delivered only on commit);
              process); bursts coalesced               workers LISTEN (one connection per process)
run-time      ``SET key token NX PX``, renewed and     a ``pgq_locks`` row with an expiry by the
locks         released by compare-and-set Lua          database clock
leadership    ``SET NX PX`` lease, renewed by          a ``pgq_leaders`` row with an expiry by the
              compare-and-set                          database clock
============  =======================================  ==========================================

Polling at ``--poll-interval`` is the floor under wake-ups: a lost wake-up costs at most
one interval. Workers listen on *both* channels, so a publisher and a worker that disagree
about Redis's health still meet.

**Switching.** Any Redis error (timeout, refused connection, READONLY replica, killed
connection) marks Redis down, logged once, and every role continues on PostgreSQL. A
health check pings Redis at most once a second and switches back, logged once. No job
depends on Redis: only latency and database load change.

**Exclusivity across a switch.** A lock or leadership taken in Redis cannot be seen from
PostgreSQL. So after Redis is lost, a process grants *new* PostgreSQL-side locks and
leaderships only once the Redis TTL has passed (anything held in Redis has expired by
then), while a holder migrates its own hold to PostgreSQL at its next renewal, well
within the TTL. In the other direction, Redis-side acquisitions and renewals first check
that no live PostgreSQL-side hold of someone else exists, which also resolves a partial
partition (one process sees Redis, another does not) within one renew interval.
Leaderships carry fencing terms (see ``leader``). docs/coordination.md has the rest.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import psycopg
import redis

from pgq.coordination import cache
from pgq.coordination.wakeups import REDIS_ERRORS, Publisher, send_control
from pgq.core.errors import DatabaseUnavailable, PgqError
from pgq.core.settings import Settings, redact_url
from pgq.store.database import connect, execute

log = logging.getLogger("pgq.coordination")

LANES = ("acquire", "renew", "lead", "publish")
STATEMENT_TIMEOUT_MS = 5000

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
def _is_slow(exc: BaseException) -> bool:
    return isinstance(exc, redis.TimeoutError | TimeoutError)


class Mode(StrEnum):
    REDIS = "redis"
    POSTGRES = "postgres"


class Coordinator:
    """One per process. Thread-safe: the worker's loop, its heartbeat thread and its
    wake-up listener all use it."""

    def __init__(self, settings: Settings, *, check_interval: float = 1.0,
                 coalesce_seconds: float = 0.002) -> None:
        self.settings = settings
        self._prefix: str | None = None
        self.check_interval = check_interval
        self._redis: redis.Redis | None = None
        if settings.redis_url:
            self._redis = redis.Redis.from_url(
                settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5,
                retry_on_timeout=False, decode_responses=True)
        self._down_since: float | None = None if self._redis else time.monotonic()
        self._last_check = 0.0
        self._verified = False
        self._slow_failure = False
        # One connection per lane, so a slow acquisition (blocked behind another process's
        # insert of the same key) never delays a renewal, which keeps jobs alive.
        self._pg: dict[str, psycopg.Connection[Any]] = {}
        self._pg_locks = {lane: threading.Lock() for lane in LANES}
        self._held_in_redis: dict[str, str] = {}  # run-time locks held in Redis: key -> token
        # leaderships held in Redis: (key, holder) -> term
        self._terms: dict[tuple[str, str], int] = {}
        self._publisher = Publisher(self, coalesce_seconds) if self._redis else None

    @property
    def prefix(self) -> str:
        """``<PGQ_REDIS_PREFIX><instance>:``. The instance id is a random id the database
        keeps in ``pgq_instance``, so two databases sharing one Redis (and one prefix)
        never share locks, leaderships or wake-up channels. Read once per process."""
        if self._prefix is None:
            rows: list[Any] = []
            for _ in range(3):
                # Empty only if another process created the row concurrently (our
                # statement's snapshot predates its commit): the next statement sees it.
                rows = self._pg_execute("instance_id", {"candidate": uuid.uuid4().hex[:12]})
                if rows:
                    break
            if not rows:
                raise PgqError("could not read or create this database's pgq_instance id")
            self._prefix = f"{self.settings.redis_prefix}{rows[0][0]}:"
        return self._prefix

    # --- health -------------------------------------------------------------------------

    @property
    def redis_configured(self) -> bool:
        return self._redis is not None

    def redis_ok(self) -> bool:
        """Whether Redis is in use now; pings a down Redis at most every ``check_interval``."""
        if self._redis is None:
            return False
        if self._down_since is None:
            if not self._verified:  # first use: find out now rather than on a job's path
                self._verified = True
                try:
                    self._health_check()
                except REDIS_ERRORS as exc:
                    self.redis_failed(exc)
                    return False
            return True
        now = time.monotonic()
        if now - self._last_check >= self.check_interval:
            self._last_check = now
            try:
                self._health_check()
            except REDIS_ERRORS as exc:
                self._slow_failure = _is_slow(exc)
                return False
            log.warning("Redis at %s is back: wake-ups, locks and leader election use it again",
                        redact_url(self.settings.redis_url or ""))
            self._down_since = None
            return True
        return False

    def _health_check(self) -> None:
        assert self._redis is not None
        # A write, not a PING: a READONLY replica answers PING but refuses locks.
        self._redis.set(f"{self.prefix}health", "1", px=10_000)

    def redis_failed(self, exc: BaseException) -> None:
        self._slow_failure = _is_slow(exc)
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._last_check = self._down_since
            log.warning("Redis unavailable (%s: %s): falling back to PostgreSQL for wake-ups, "
                        "locks and leader election", type(exc).__name__, exc)

    def status(self) -> dict[str, str]:
        """The mode each role is in now (for logs, the stats CLI and metrics)."""
        mode = Mode.REDIS if self.redis_ok() else Mode.POSTGRES
        return {"wakeups": f"{mode}+postgres-listen+polling", "locks": str(mode),
                "leadership": str(mode),
                "redis": "not configured" if self._redis is None else (
                    "up" if mode == Mode.REDIS else "down")}

    def _in_grace(self, ttl: float) -> bool:
        """Just after Redis was lost, a hold taken in Redis may still be live."""
        return (self._redis is not None and self._down_since is not None
                and time.monotonic() - self._down_since < ttl)

    # --- PostgreSQL side ----------------------------------------------------------------

    def _pg_execute(self, name: str, params: dict[str, Any], lane: str = "acquire") -> list[Any]:
        with self._pg_locks[lane]:
            conn = self._pg.get(lane)
            if conn is None or conn.closed or conn.broken:
                conn = self._pg[lane] = connect(self.settings, autocommit=True)
                # Coordination must never hang a caller: a statement blocked this long
                # fails (DatabaseError) and the caller retries or gives up.
                execute(conn, "session_statement_timeout", {"ms": str(STATEMENT_TIMEOUT_MS)})
            try:
                return execute(conn, name, params)
            except DatabaseUnavailable:
                conn.close()  # also when it still works but cannot write (a demoted primary)
                raise

    def _recheck_redis(self) -> None:
        """Before granting a lock or leadership in PostgreSQL while Redis is down, look
        again now, not after the check interval: a process that already sees Redis back
        may hold the same key there. Unless Redis last failed by timing out (a
        blackholed host): then each look costs the timeout, so keep the interval."""
        if self._redis is not None and self._down_since is not None and not self._slow_failure:
            self._last_check = 0.0

    # --- wake-ups -----------------------------------------------------------------------

    def wake_in_transaction(self) -> bool:
        """Should an enqueue send its wake-up as a NOTIFY inside its transaction? Yes when
        Redis is not in use (and always when pgq cannot see the commit)."""
        return not self.redis_ok()

    def publish(self, queues: Iterable[str]) -> None:
        """After a commit pgq saw: wake the queues' workers through Redis (coalesced).
        Without Redis this does nothing: the enqueue sent a NOTIFY in its transaction."""
        if self._publisher is not None and self.redis_ok():
            self._publisher.add(queues)

    def channel(self, queue: str) -> str:
        return f"{self.prefix}wakeup:{queue}"

    def control_channel(self) -> str:
        """One channel for every worker's control messages (they name their worker)."""
        return f"{self.prefix}control"

    def send_control(self, messages: list[str]) -> None:
        """Push control messages to workers after the commit (``wakeups.send_control``)."""
        send_control(self, messages)

    # --- cache (Redis only; the caller keeps its PostgreSQL copy) -----------------------

    def cache_set(self, key: str, value: str, ttl: float) -> bool:
        """Store ``value`` for ``ttl`` seconds; False without Redis (``cache``)."""
        return cache.cache_set(self, key, value, ttl)

    def cache_get(self, key: str) -> str | None:
        """The value stored under ``key``, or None (none, expired, or no Redis)."""
        return cache.cache_get(self, key)

    # --- run-time locks -----------------------------------------------------------------

    def lock_acquire(self, key: str, token: str, holder: str, ttl: float) -> bool:
        params = {"key": key, "token": token, "holder": holder, "ttl": ttl}
        self._recheck_redis()
        if self.redis_ok():
            assert self._redis is not None
            redis_key = self._lock_key(key)
            try:
                # Take, then check PostgreSQL: a fallback hold taken meanwhile by a
                # process that does not see Redis yet is then seen, and wins.
                if not self._redis.set(redis_key, token, nx=True, px=int(ttl * 1000)):
                    return False
                self._held_in_redis[redis_key] = token
                if self._pg_execute("lock_live", params):
                    self.lock_release(key, token)
                    return False
                return True
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)
        if self._in_grace(ttl):
            return False
        # Redis was re-checked just above: a hold there taken in the moment since is
        # resolved at the next renewal, where a live PostgreSQL hold wins.
        return bool(self._pg_execute("lock_acquire", params))

    def lock_renew(self, key: str, token: str, holder: str, ttl: float) -> bool:
        params = {"key": key, "token": token, "holder": holder, "ttl": ttl}
        redis_key = self._lock_key(key)
        if self._held_in_redis.get(redis_key) == token:
            if self.redis_ok():
                assert self._redis is not None
                try:
                    if self._pg_execute("lock_live", params, "renew"):
                        # Another process holds it in PostgreSQL: it could not see Redis
                        # (a partial partition) or had not yet seen it return. A live
                        # PostgreSQL hold wins; give ours up.
                        self._held_in_redis.pop(redis_key, None)
                        self._redis.eval(_RELEASE, 1, redis_key, token)
                        return False
                    return bool(self._redis.eval(_RENEW, 1, redis_key, token, int(ttl * 1000)))
                except REDIS_ERRORS as exc:
                    self.redis_failed(exc)
            # Migrate the hold: others wait out the Redis TTL before taking it in PostgreSQL.
            self._held_in_redis.pop(redis_key, None)
            return bool(self._pg_execute("lock_acquire", params, "renew"))
        return bool(self._pg_execute("lock_renew", params, "renew"))

    def lock_release(self, key: str, token: str) -> None:
        redis_key = self._lock_key(key)
        if self._held_in_redis.get(redis_key) == token:
            self._held_in_redis.pop(redis_key, None)
            if self.redis_ok():
                assert self._redis is not None
                try:
                    self._redis.eval(_RELEASE, 1, redis_key, token)
                except REDIS_ERRORS as exc:
                    self.redis_failed(exc)
        self._pg_execute("lock_release", {"key": key, "token": token})

    def _lock_key(self, key: str) -> str:
        return f"{self.prefix}lock:{key}"

    # --- leadership ---------------------------------------------------------------------

    def lead(self, name: str, holder: str, ttl: float) -> int | None:
        """Become or stay leader of ``name`` for ``ttl`` seconds. Returns the leadership's
        term (a fencing token, larger for every new leadership in either backend), or None
        if someone else leads. Call again well within ``ttl`` to stay leader."""
        params = {"name": name, "holder": holder, "ttl": ttl}
        redis_key = f"{self.prefix}leader:{name}"
        self._recheck_redis()
        if self.redis_ok():
            assert self._redis is not None
            try:
                return self._lead_in_redis(redis_key, params)
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)
        held_in_redis = self._terms.pop((redis_key, holder), None) is not None
        if not held_in_redis and self._in_grace(ttl):
            # A leadership taken in Redis may still be live: only keep one we already
            # hold here, take none.
            rows = self._pg_execute("leader_renew", params, "lead")
            return int(rows[0][0]) if rows else None
        rows = self._pg_execute("leader_acquire", params, "lead")
        return int(rows[0][0]) if rows else None

    def _lead_in_redis(self, redis_key: str, params: dict[str, Any]) -> int | None:
        assert self._redis is not None
        ms = int(params["ttl"] * 1000)
        if self._pg_execute("leader_live", params, "lead"):
            # Someone took the role in PostgreSQL while we could not see Redis fail.
            self._terms.pop((redis_key, params["holder"]), None)
            return None
        term = self._terms.get((redis_key, params["holder"]))
        if term is not None:
            if self._redis.eval(_RENEW, 1, redis_key, params["holder"], ms):
                return term
            del self._terms[redis_key, params["holder"]]  # lapsed: a new leadership needs a new term
        candidate = int(self._pg_execute("leader_term_next", {}, "lead")[0][0])
        if not self._redis.set(redis_key, params["holder"], nx=True, px=ms):
            return None
        self._terms[redis_key, params["holder"]] = candidate
        self._pg_execute("leader_release", params, "lead")  # our fallback row, if Redis came back
        return candidate

    def resign(self, name: str, holder: str) -> None:
        redis_key = f"{self.prefix}leader:{name}"
        if self._terms.pop((redis_key, holder), None) is not None and self.redis_ok():
            assert self._redis is not None
            try:
                self._redis.eval(_RELEASE, 1, redis_key, holder)
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)
        self._pg_execute("leader_release", {"name": name, "holder": holder})

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.stop()
        for lane, conn in list(self._pg.items()):
            with self._pg_locks[lane]:
                conn.close()
        if self._redis is not None:
            self._redis.close()
