"""Retry delays: exponential backoff with jitter.

The default waits about 30 s, 5 min, 30 min, 2 h, 6 h, 12 h, then 24 h per attempt, each
±15 %. The early steps ride out a blip; the later ones outlast a dependency's outage
without hammering it; the jitter keeps jobs that failed together (an outage) from
retrying together (a thundering herd).

>>> Backoff(jitter=0).delay(1), Backoff(jitter=0).delay(4), Backoff(jitter=0).delay(99)
(30.0, 7200.0, 86400.0)
>>> Backoff(base=1, factor=2, cap=10, jitter=0).schedule(6)
[1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_STEPS: tuple[float, ...] = (30, 300, 1800, 7200, 21600, 43200, 86400)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry ``n`` (n = the attempt that just failed, from 1).

    With ``steps`` (the default): the n-th step, the last one repeating. With ``base``:
    ``base * factor ** (n - 1)``, capped at ``cap``. ``jitter`` is the ± fraction.
    """

    steps: Sequence[float] | None = field(default=DEFAULT_STEPS)
    base: float | None = None
    factor: float = 2.0
    cap: float = 86400.0
    jitter: float = 0.15

    def __post_init__(self) -> None:
        if self.base is not None:
            object.__setattr__(self, "steps", None)
            if self.base <= 0 or self.factor < 1:
                raise ValueError("Backoff needs base > 0 and factor >= 1")
        if self.steps is not None and (
                not self.steps or any(not 0 <= step <= 10 * 365 * 86400 for step in self.steps)):
            raise ValueError("Backoff steps must be a non-empty list of delays in seconds")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        n = max(1, attempt)
        if self.steps is not None:
            raw = float(self.steps[min(n, len(self.steps)) - 1])
        else:
            assert self.base is not None
            raw = float(min(self.cap, self.base * self.factor ** min(n - 1, 64)))
        if self.jitter:
            raw *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return raw

    def schedule(self, attempts: int) -> list[float]:
        return [self.delay(n) for n in range(1, attempts + 1)]
