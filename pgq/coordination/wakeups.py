"""Wake-ups: publishing that a queue has work (after the enqueue commits) and listening
for it in workers, over Redis PUBLISH/SUBSCRIBE and PostgreSQL NOTIFY/LISTEN at once.
How the two meet and fall back is in ``coordinator``'s docstring and docs/coordination.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import psycopg
import redis

from pgq.core.errors import PgqError
from pgq.core.outage import Outage
from pgq.store.database import connect, execute

if TYPE_CHECKING:
    from pgq.coordination.coordinator import Coordinator

log = logging.getLogger("pgq.coordination")

WAKEUP_CHANNEL = "pgq_wakeup"
"""PostgreSQL's channel (queries.sql's ``wakeup_listen`` and ``queue_notify`` use it)."""
CONTROL_CHANNEL = "pgq_control"
"""PostgreSQL's channel of control messages to workers (an operator's cancel of a running
job; ``pgq.worker.control``): JSON naming the worker, on the wake-up listeners."""
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)


class Publisher(threading.Thread):
    """Publishes wake-ups off the caller's thread: the first of a burst at once, the rest
    of the burst folded into one trailing publish per queue."""

    def __init__(self, coordinator: Coordinator, coalesce_seconds: float) -> None:
        super().__init__(name="pgq-publisher", daemon=True)
        self.coordinator = coordinator
        self.coalesce_seconds = coalesce_seconds
        self._pending: set[str] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self.start()

    def add(self, queues: Iterable[str]) -> None:
        with self._cond:
            self._pending.update(queues)
            self._cond.notify()

    def stop(self) -> None:
        """Publish what is pending, then stop (before the Redis client is closed)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self.join(timeout=2)

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                queues, self._pending = self._pending, set()
                stopping = self._stopped
            if queues:
                self._publish(queues)
            if stopping:
                return
            time.sleep(self.coalesce_seconds)  # let a burst gather into the next publish

    def _publish(self, queues: set[str]) -> None:
        coordinator = self.coordinator
        assert coordinator._redis is not None
        ordered = sorted(queues)
        unheard = ordered
        try:
            pipe = coordinator._redis.pipeline(transaction=False)
            for queue in ordered:
                pipe.publish(coordinator.channel(queue), "1")
            receivers = pipe.execute()
            unheard = [q for q, n in zip(ordered, receivers, strict=True) if not n]
        except REDIS_ERRORS as exc:
            coordinator.redis_failed(exc)
        except Exception:  # the publisher thread must outlive any surprise
            log.exception("wake-up publish failed")
        if unheard:
            # Nobody subscribed (workers re-subscribing after a Redis restart, or all on
            # PostgreSQL) or Redis failed: the commit has happened, so a NOTIFY from our
            # own connection is safe and reaches every worker's LISTEN.
            try:
                coordinator._pg_execute("queue_notify", {"queues": unheard}, "publish")
            except PgqError as exc:
                log.warning("wake-up NOTIFY failed (%s); workers will poll", exc)


class WakeupListener:
    """Wakes a worker when its queues get jobs: a Redis subscription and a PostgreSQL
    LISTEN, each in its own thread with its own connection, each reconnecting on its own.
    ``on_wake`` is called from those threads, and so is ``on_control`` with each control
    message (JSON text, whichever worker it names) from either channel."""

    def __init__(self, coordinator: Coordinator, queues: list[str],
                 on_wake: Callable[[str], None],
                 on_control: Callable[[str], None] | None = None) -> None:
        self.coordinator = coordinator
        self.queues = queues
        self.on_wake = on_wake
        self.on_control = on_control
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._listen_postgres, name="pgq-listen",
                                          daemon=True)]
        if coordinator.redis_configured:
            self._threads.append(threading.Thread(target=self._subscribe_redis,
                                                  name="pgq-subscribe", daemon=True))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(timeout=3)

    def _listen_postgres(self) -> None:
        wanted = set(self.queues)
        outage = Outage("wake-up LISTEN connection", logger=log, kind="listen")
        while not self._stop.is_set():
            try:
                with connect(self.coordinator.settings, autocommit=True) as conn:
                    if self.on_control is not None:
                        execute(conn, "control_listen", {})
                    # Last: pg_stat_activity then shows exactly "LISTEN pgq_wakeup", how
                    # operators, tests and benchmarks find listening workers (queries.sql).
                    execute(conn, "wakeup_listen", {})
                    if outage.ongoing:
                        outage.recovered()
                        for queue in self.queues:  # notifications sent meanwhile are lost
                            self.on_wake(queue)
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            if note.channel == CONTROL_CHANNEL:
                                if self.on_control is not None:
                                    self.on_control(note.payload)
                            elif note.payload in wanted:
                                self.on_wake(note.payload)
            except (PgqError, psycopg.Error) as exc:
                self._stop.wait(outage.failed(exc))

    def _subscribe_redis(self) -> None:
        coordinator = self.coordinator
        channels = {coordinator.channel(q): q for q in self.queues}
        control = coordinator.control_channel() if self.on_control is not None else None
        lost = False
        while not self._stop.is_set():
            if not coordinator.redis_ok():
                lost = True
                self._stop.wait(coordinator.check_interval)
                continue
            assert coordinator._redis is not None
            pubsub = coordinator._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(*channels, *([control] if control else []))
                if lost:  # wake-ups published while we were not subscribed are gone
                    lost = False
                    for queue in self.queues:
                        self.on_wake(queue)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    if message.get("channel") == control and self.on_control is not None:
                        self.on_control(message["data"])
                    elif message.get("channel") in channels:
                        self.on_wake(channels[message["channel"]])
            except REDIS_ERRORS as exc:
                lost = True
                # A killed subscription is not a dead Redis: resubscribe if it answers.
                try:
                    coordinator._redis.ping()
                    log.warning("Redis subscription lost (%s); resubscribing", exc)
                except REDIS_ERRORS:
                    coordinator.redis_failed(exc)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    pubsub.close()


def send_control(coordinator: Coordinator, messages: list[str]) -> None:
    """After the cancel committed: PUBLISH each control message on the instance's control
    channel; those nobody heard (or all, if Redis fails) go as ``NOTIFY pgq_control``.
    Without Redis the cancel's statement sent the NOTIFY itself; nothing to do here."""
    if not messages or not coordinator.redis_ok():
        return
    assert coordinator._redis is not None
    unheard = messages
    try:
        pipe = coordinator._redis.pipeline(transaction=False)
        for message in messages:
            pipe.publish(coordinator.control_channel(), message)
        receivers = pipe.execute()
        unheard = [m for m, n in zip(messages, receivers, strict=True) if not n]
    except REDIS_ERRORS as exc:
        coordinator.redis_failed(exc)
    if unheard:
        try:
            coordinator._pg_execute("control_notify", {"messages": unheard}, "publish")
        except PgqError as exc:
            log.warning("control NOTIFY failed (%s); the workers' heartbeats will see the "
                        "cancel", exc)
