"""Which queues a worker serves and how its slots are shared: the answer to priority
inversion.

``--queues critical=6,default=3,bulk=1:4`` reads: serve three queues; with all of them
busy, give critical 6/10 of the slots, default 3/10, bulk 1/10; never run more than 4
bulk jobs at once. Slots a queue leaves idle are lent to busy queues, except one per idle queue: that
slot stays free so the queue's next job starts at once instead of waiting for a
borrowed slot to come back (this is what stops a bulk flood from delaying a password
reset). Lending never exceeds a queue's cap, so capping bulk queues below
``--concurrency`` reserves more. ``--strict`` serves queues in
the order given instead: a queue gets slots only when every queue before it has no work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pgq.errors import ConfigError
from pgq.validation import QUEUE_PATTERN

_SPEC = re.compile(rf"^(?P<name>{QUEUE_PATTERN.pattern})(?:=(?P<weight>\d+))?(?::(?P<cap>\d+))?$")


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    weight: int = 1
    cap: int | None = None
    """Most jobs of this queue running at once in one worker process; None = no cap."""


def parse_queues(text: str) -> list[QueueSpec]:
    """Parse ``name[=weight][:cap],...`` or raise ``ConfigError``.

    >>> [(q.name, q.weight, q.cap) for q in parse_queues("critical=6,default=3,bulk=1:4")]
    [('critical', 6, None), ('default', 3, None), ('bulk', 1, 4)]
    """
    specs: list[QueueSpec] = []
    for part in (p.strip() for p in text.split(",")):
        match = _SPEC.match(part)
        if not match:
            raise ConfigError(
                f"bad queue spec {part!r}: use name[=weight][:cap], e.g. critical=6 or bulk=1:4"
            )
        weight = int(match["weight"] or 1)
        cap = int(match["cap"]) if match["cap"] is not None else None
        if weight < 1 or (cap is not None and cap < 1):
            raise ConfigError(f"queue {match['name']!r}: weight and cap must be at least 1")
        specs.append(QueueSpec(match["name"], weight, cap))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"a queue is listed twice in {text!r}")
    return specs


def allocate(
    specs: Sequence[QueueSpec],
    concurrency: int,
    running: Mapping[str, int],
    hungry: Mapping[str, bool] | None = None,
    *,
    strict: bool = False,
    rotation: int = 0,
) -> dict[str, int]:
    """How many jobs to claim from each queue now.

    ``running``: jobs of each queue running in this process. ``hungry``: whether the
    queue's last claim came back full (it has more work); unknown counts as hungry.
    An idle queue is always offered one probe slot while any slot is free, so new work
    in it is noticed at once; when there are fewer free slots than idle queues, the
    probes rotate (``rotation`` is the caller's round counter). Weighted: each hungry
    queue is offered its weighted share of all slots, less what it runs; what is left is
    lent, by weight, to hungry queues, within caps. Strict: in order, idle queues get
    their probe and the first hungry queue takes everything left; later queues wait.

    >>> q = parse_queues("critical=6,default=3,bulk=1")
    >>> allocate(q, 10, {})
    {'critical': 6, 'default': 3, 'bulk': 1}
    >>> allocate(q, 10, {"bulk": 1}, {"critical": False, "default": False, "bulk": True})
    {'critical': 1, 'default': 1, 'bulk': 7}
    >>> allocate(parse_queues("critical,bulk=1:8"), 10, {"bulk": 8})
    {'critical': 2, 'bulk': 0}
    >>> allocate(parse_queues("a,b,c"), 10, {}, {"a": False, "b": True}, strict=True)
    {'a': 1, 'b': 9, 'c': 0}
    """
    hungry = hungry or {}
    free = concurrency - sum(running.get(s.name, 0) for s in specs)
    out = {s.name: 0 for s in specs}

    def room(spec: QueueSpec) -> int:
        if spec.cap is None:
            return free
        return max(0, spec.cap - running.get(spec.name, 0) - out[spec.name])

    if free <= 0:
        return out
    if strict:
        # In order: idle queues get a probe; the first queue with work takes the rest,
        # and the queues after it wait.
        for spec in specs:
            if hungry.get(spec.name, True):
                out[spec.name] = min(free, room(spec))
                break
            if free > 0 and room(spec) > 0:
                out[spec.name] = 1
                free -= 1
        return out
    idle = [s for s in specs if not hungry.get(s.name, True)]
    busy = [s for s in specs if hungry.get(s.name, True)]
    if idle and free <= len(idle):
        # Too few slots to probe every idle queue and still serve the busy ones: one slot
        # per queue, rotating over all of them, so none is starved of attention.
        start = rotation % len(specs)
        for spec in [*specs[start:], *specs[:start]]:
            if free > 0 and room(spec) > 0:
                out[spec.name] = 1
                free -= 1
        return out
    # Probes: one slot per idle queue.
    for spec in idle:
        if room(spec) > 0:
            out[spec.name] = 1
            free -= 1

    total_weight = sum(s.weight for s in specs)
    # Pass 1: each busy queue's weighted share, less what it already runs.
    for spec in busy:
        share = concurrency * spec.weight // total_weight
        take = min(max(0, share - running.get(spec.name, 0)), room(spec), free)
        out[spec.name] += take
        free -= take
    # Pass 2: lend what is left to busy queues by weight, one slot at a time, within caps.
    while free > 0:
        candidates = [s for s in busy if room(s) > 0]
        if not candidates:
            break
        best = min(candidates, key=lambda s: (running.get(s.name, 0) + out[s.name]) / s.weight)
        out[best.name] += 1
        free -= 1
    return out
