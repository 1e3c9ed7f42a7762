"""One long-lived connection's view of an outage: when to try again, and what to log.

Every connection pgq keeps open (claims, outcomes, heartbeats, LISTEN, Redis pub/sub,
leader renewals) reconnects on its own with the same rules:

* **capped exponential backoff with jitter**: 0.1 s, 0.2 s, 0.4 s, ... up to 5 s, each
  delay drawn between half and all of that, so a fleet of workers that lost the same
  server does not reconnect in lock step when it returns (no thundering herd);
* **one log line per outage, not per attempt**: a WARNING when it begins (with the
  reason), an INFO with its length when it ends; the attempts in between log at DEBUG.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

log = logging.getLogger("pgq.outage")

observer: Callable[[str, bool], None] | None = None
"""Told (kind, True) when an outage begins and (kind, False) when it ends: the metrics
(``pgq.observability.metrics.enable`` sets it; this layer imports nothing of pgq)."""

FIRST_DELAY = 0.1
MAX_DELAY = 5.0


class Outage:
    def __init__(self, what: str, *, first: float = FIRST_DELAY, cap: float = MAX_DELAY,
                 logger: logging.Logger = log, kind: str = "connection") -> None:
        self.what = what
        self.kind = kind
        """A bounded name for metrics (``what`` names the worker): claim, outcome, ..."""
        self.first, self.cap = first, cap
        self.log = logger
        self.failures = 0
        self._since: float | None = None

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, reason: object) -> float:
        """Record a failed attempt; the seconds to wait before the next one."""
        if self._since is None:
            self._since = time.monotonic()
            self.log.warning("%s: lost (%s); reconnecting", self.what, reason)
            if observer is not None:
                observer(self.kind, True)
        else:
            self.log.debug("%s: still unavailable (%s)", self.what, reason)
        self.failures += 1
        return self.delay(self.failures)

    def recovered(self) -> None:
        """Record success: ends the outage (logged once) if there was one."""
        if self._since is not None:
            self.log.info("%s: reconnected after %.1f s (%d attempt(s))", self.what,
                          time.monotonic() - self._since, self.failures)
            if observer is not None:
                observer(self.kind, False)
        self._since = None
        self.failures = 0

    def delay(self, failures: int) -> float:
        ceiling = min(self.cap, self.first * 2 ** min(failures - 1, 30))
        return random.uniform(ceiling / 2, ceiling)
