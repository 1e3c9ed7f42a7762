"""Leadership: one process in the cluster does a role's work (cron, maintenance).

``Leadership`` campaigns in a background thread through the ``Coordinator`` (Redis
``SET NX PX``, or a ``pgq_leaders`` row by the database clock) and renews every third of
the TTL. Two promises:

* **It stops in time.** ``is_leader()`` is true only until the last successful renewal
  *started* plus the TTL, on this process's monotonic clock (which keeps running while the
  process is paused). The backend's lease began after that start, so the process stops
  believing before anyone else can take over; a failed renewal stops it at once. A leader
  paused by SIGSTOP, a GC or swapping past its TTL finds ``is_leader()`` false the moment
  it resumes.
* **Its work can be fenced.** The moment between "am I leader?" and the work itself can
  still be cut by a pause. ``term`` is a fencing token: every new leadership, in either
  backend, gets a larger one. Work that must never be done by an ex-leader writes its
  term with the work and refuses a smaller term than the largest seen (the cron scheduler
  gets the same effect from unique keys per tick).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pgq.coordination.coordinator import Coordinator

log = logging.getLogger("pgq.leader")

DEFAULT_TTL = 15.0


class Leadership:
    def __init__(self, coordinator: Coordinator, name: str, holder: str, *,
                 ttl: float = DEFAULT_TTL, renew_every: float | None = None,
                 on_change: Callable[[int | None], None] | None = None) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.coordinator = coordinator
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.renew_every = renew_every if renew_every is not None else ttl / 3
        if not 0 < self.renew_every < ttl:
            raise ValueError("renew_every must be positive and shorter than ttl")
        self.on_change = on_change
        self._term: int | None = None
        self.attempts = 0
        """Campaigns so far (won, lost or failed)."""
        self._valid_until = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stopping = False
        self._changed = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name=f"pgq-leader-{name}", daemon=True)

    # --- queries (any thread) ------------------------------------------------------------

    def is_leader(self) -> bool:
        return self.term is not None

    @property
    def term(self) -> int | None:
        """This leadership's fencing token, or None when not (or no longer surely) leader."""
        with self._lock:
            if self._term is not None and time.monotonic() < self._valid_until:
                return self._term
            return None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until this process leads (True), or ``timeout`` passes or ``stop()`` is
        called (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not (self._term is not None and time.monotonic() < self._valid_until):
                if self._stopping:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> Leadership:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop campaigning and hand the role over at once (no TTL wait for the next)."""
        self._stop.set()
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout=self.ttl)
        was = self._set(None, 0.0, resigning=True)
        if was is not None:
            try:
                self.coordinator.resign(self.name, self.holder)
            except Exception as exc:  # the lease expires on its own
                log.warning("could not resign %s: %s", self.name, exc)

    def __enter__(self) -> Leadership:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the campaign --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.attempts += 1
            try:
                term = self.coordinator.lead(self.name, self.holder, self.ttl)
            except Exception as exc:
                # Database unreachable: we cannot renew, so whatever we hold runs out at
                # its deadline; keep trying.
                log.warning("leader election for %s failed: %s", self.name, exc)
            else:
                self._set(term, started + self.ttl)
            self._stop.wait(max(0.0, started + self.renew_every - time.monotonic()))

    def _set(self, term: int | None, valid_until: float, resigning: bool = False) -> int | None:
        with self._changed:
            was = self._term  # the last term we held, even if it lapsed since
            self._term, self._valid_until = term, valid_until
            self._changed.notify_all()
        if was != term:
            if term is None:
                log.log(logging.INFO if resigning else logging.WARNING,
                        "%s: %s %s (term %s)", self.name, self.holder,
                        "resigns" if resigning else "is no longer leader", was)
            else:
                log.info("%s: %s is leader, term %d (%s)", self.name, self.holder, term,
                         self.coordinator.status()["leadership"])
            if self.on_change is not None:
                self.on_change(term)
        return was
