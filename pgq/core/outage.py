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

log = logging.getLogger("pgq.outage")

FIRST_DELAY = 0.1
MAX_DELAY = 5.0


class Outage:
    def __init__(self, what: str, *, first: float = FIRST_DELAY, cap: float = MAX_DELAY,
                 logger: logging.Logger = log) -> None:
        self.what = what
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
        else:
            self.log.debug("%s: still unavailable (%s)", self.what, reason)
        self.failures += 1
        return self.delay(self.failures)

    def recovered(self) -> None:
        """Record success: ends the outage (logged once) if there was one."""
        if self._since is not None:
            self.log.info("%s: reconnected after %.1f s (%d attempt(s))", self.what,
                          time.monotonic() - self._since, self.failures)
        self._since = None
        self.failures = 0

    def delay(self, failures: int) -> float:
        ceiling = min(self.cap, self.first * 2 ** min(failures - 1, 30))
        return random.uniform(ceiling / 2, ceiling)
