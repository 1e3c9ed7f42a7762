"""LeaderService: the loop shared by everything that runs only while holding a role.

Maintenance, the cron scheduler and the periodic jobs (stats, metrics, alerts) each do
their work in rounds, and only in the one process that leads their role (``pgq.coordination.leader``).
Every process that may do the work runs the service; all but one just campaign.

The loop, in a background thread until ``stop()``: wait for leadership, read the fencing
``term`` (skip the round if the lease lapsed since the wait), (re)open a sync autocommit
connection if there is none or it broke, do one round (``run_round``), then wait
``next_wait()``. A pgq or psycopg error in a round is logged and the loop carries on after
``retry`` seconds: a database outage, a backend killed mid-transaction or a failover must
not end the service, since the next round on a fresh connection usually succeeds. On stop,
the service resigns at once (the next leader need not wait out the TTL) and closes its
connection.

Rounds should wait on ``self._stop`` (never ``time.sleep``) so ``stop()`` is prompt, and
long rounds should check ``leadership.is_leader()`` between steps: the term given to
``run_round`` fences work that an ex-leader must never do, the check only stops early.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Self

import psycopg

from pgq.coordination.leader import Leadership
from pgq.core.errors import PgqError
from pgq.store.database import connect

if TYPE_CHECKING:
    from pgq.client.app import App


class LeaderService(ABC):
    role: ClassVar[str]
    """The leadership role (one leader per database), also the thread's name."""
    logger: ClassVar[logging.Logger] = logging.getLogger("pgq.leader")

    def __init__(self, app: App, *, holder: str, ttl: float, poll: float = 1.0,
                 retry: float = 1.0) -> None:
        self.app = app
        self.holder = holder
        self.ttl = ttl
        self.poll = poll
        """Longest wait for leadership before looking at ``stop()`` again."""
        self.retry = retry
        """Seconds between a failed round and the next."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leadership: Leadership | None = None

    # --- what a service does -------------------------------------------------------------

    @abstractmethod
    def run_round(self, conn: psycopg.Connection[Any], leadership: Leadership,
                  term: int) -> None:
        """One round of the role's work, as leader ``term`` (the fencing token)."""

    @abstractmethod
    def next_wait(self, conn: psycopg.Connection[Any]) -> float:
        """Seconds from the end of a round to the next."""

    @property
    def label(self) -> str:
        """How log lines name this service."""
        return self.role

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.run, name=f"pgq-{self.role}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the rounds, resign the role and wait (at most the TTL) for the thread."""
        self._stop.set()
        if self._leadership is not None:
            self._leadership.stop()  # interrupts a wait for leadership
        self.join(self.ttl)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; False if it still runs after ``timeout``."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def run(self) -> None:
        """Campaign for the role and do rounds while leader, until ``stop()``."""
        leadership = self._leadership = Leadership(self.app.coordinator, self.role, self.holder,
                                                   ttl=self.ttl).start()
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self._stop.is_set():
                if not leadership.wait(self.poll):
                    continue
                term = leadership.term
                if term is None:
                    continue  # the lease lapsed since wait() returned
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = connect(self.app.settings, autocommit=True)
                    self.run_round(conn, leadership, term)
                    wait = self.next_wait(conn)
                except (PgqError, psycopg.Error) as exc:  # e.g. cut inside a transaction
                    self.logger.error("%s: %s", self.label, exc)
                    wait = self.retry
                self._stop.wait(wait)
        finally:
            leadership.stop()
            if conn is not None:
                conn.close()
