"""Which queues a worker serves and how its slots are shared: the answer to priority
inversion and to starvation.

``--queues critical=6,default=3,bulk=1:4`` reads: serve three queues; with all of them
busy, give critical 6/10 of the slots, default 3/10, bulk 1/10; never run more than 4
bulk jobs at once. Slots a queue leaves idle are lent to busy queues, except one per
idle queue: that slot stays free so the queue's next job starts at once instead of
waiting for a borrowed slot to come back (this is what stops a bulk flood from delaying
a password reset). Lending never exceeds a queue's cap, so capping bulk queues below
``--concurrency`` reserves more. Shares that are not whole slots (twenty queues on ten
slots: half a slot each) are served in turns carried from one claim round to the next
(``Turns``), so every queue with work gets slots within a bounded number of rounds.
``--strict`` serves queues in the order given instead: a queue gets slots only when
every queue before it has no work.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pgq.core.errors import ConfigError
from pgq.core.validation import QUEUE_PATTERN

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


@dataclass(frozen=True, slots=True)
class _Plan:
    """What allocation derives from the queue specs alone, worked out once per worker."""

    specs: tuple[QueueSpec, ...]
    concurrency: int
    tick: int
    """Virtual time of one turn of weight 1: ``lcm`` of the weights, so every weight's
    turn is a whole number of ticks and no rounding can hand anyone an extra turn."""
    ticks: dict[str, int]
    shares: dict[str, int]
    """Each queue's whole share: ``concurrency * weight // total weight``."""
    by_name: dict[str, QueueSpec]


@dataclass(slots=True)
class Turns:
    """What weighted allocation remembers from one claim round to the next: whose turn
    it is. One per worker process (its producer), created empty.

    Each queue has a *virtual time* that a turn advances by ``1/weight``; the next turn
    goes to the queue whose virtual time is lowest, ties to the queue served longest ago
    (queues never served: in the order given, from the ``rotation`` of the first round).
    ``clock`` is the virtual time of the latest turn: a queue never competes below it,
    so one that was idle or at its cap banks no credit, and a queue served only by turns
    is never more than one turn ahead of it: what bounds its wait (``allocate``)."""

    clock: int = 0
    vtime: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    """Sequence number of each queue's latest slot (turn, whole share or probe)."""
    seq: int = 0
    plan: _Plan | None = None

    def planned(self, specs: Sequence[QueueSpec], concurrency: int, rotation: int) -> _Plan:
        plan = self.plan
        if plan is not None and plan.concurrency == concurrency and (
                plan.specs is specs or plan.specs == tuple(specs)):
            return plan
        weights = [s.weight for s in specs]
        tick, total = math.lcm(*weights), sum(weights)
        if plan is None or plan.tick != tick:
            self.vtime.clear()  # times counted in other ticks
            self.clock = 0
        n = len(specs)
        for i, spec in enumerate(specs):  # never served: in order, from ``rotation``
            self.last.setdefault(spec.name, (i - rotation) % n - n)
        self.plan = _Plan(tuple(specs), concurrency, tick,
                          {s.name: tick // s.weight for s in specs} | {_PROBE: tick},
                          {s.name: concurrency * s.weight // total for s in specs},
                          {s.name: s for s in specs})
        return self.plan

    def when(self, key: str) -> int:
        """The virtual time ``key`` competes at: its own, or the clock if that is later."""
        vtime = self.vtime.get(key, 0)
        return vtime if vtime > self.clock else self.clock

    def served(self, key: str) -> None:
        self.seq += 1
        self.last[key] = self.seq

    def charge(self, key: str, ticks: int) -> None:
        """``key`` got slots out of turn (its whole share): they count as its turns."""
        self.vtime[key] = self.when(key) + ticks
        self.served(key)

    def deal(self, slots: int, players: Sequence[str], ticks: Mapping[str, int],
             takes: Callable[[str], bool]) -> Iterator[str]:
        """Up to ``slots`` turns among ``players``, lowest virtual time first, ties to
        the one served longest ago. ``takes(key)`` says whether a player still takes a
        slot (room under its cap); one that does not is passed over."""
        # Every player competes at the clock or later, and the clock only rises to the
        # time of the turn just given, which no player is below: so the heap's order is
        # the order of ``when``.
        last, vtime, clock = self.last, self.vtime, self.clock
        heap = [(max(vtime.get(k, 0), clock), last.get(k, 0), k) for k in players]
        heapq.heapify(heap)
        while slots > 0 and heap:
            time, _, key = heapq.heappop(heap)
            if not takes(key):
                continue
            self.clock = time
            self.vtime[key] = time + ticks[key]
            self.served(key)
            heapq.heappush(heap, (self.vtime[key], self.seq, key))
            slots -= 1
            yield key


_PROBE = ""
"""The idle queues' shared participant in the turns while slots are scarce (no queue is
named ``""``)."""


def allocate(
    specs: Sequence[QueueSpec],
    concurrency: int,
    running: Mapping[str, int],
    hungry: Mapping[str, bool] | None = None,
    *,
    strict: bool = False,
    rotation: int = 0,
    turns: Turns | None = None,
) -> dict[str, int]:
    """How many jobs to claim from each queue now. No I/O; the only state it reads and
    advances is ``turns`` (a fresh one when None, as in the examples below).

    ``running``: jobs of each queue running in this process. ``hungry``: whether the
    queue's last claim came back full or it was woken since (it has more work);
    unknown counts as hungry, never as empty. ``rotation`` orders the queues never
    served, from that index on (the caller's round counter; ``turns`` keeps the order
    of its first round). Weighted, in three steps:

    1. **Probes.** An idle (not hungry) queue is offered one probe slot, so new work in
       it starts at once. When free slots are scarce (no more than idle queues), the
       idle queues instead share one player in the turns of step 3, of weight 1, each
       of its turns probing the idle queue probed longest ago.
    2. **Whole shares.** Each hungry queue gets ``concurrency * weight // total weight``
       slots less what it runs (within its cap): the whole-slot part of its share is
       guaranteed, whatever the other queues do.
    3. **Turns.** The slots left go one at a time to the hungry queue (with room under
       its cap) whose virtual time is lowest (``Turns``), ties to the one served
       longest ago. A slot, by turn or by whole share, advances a queue's virtual time
       by ``1/weight``, so over many rounds hungry queues get slots in proportion to
       their weights, fractional shares included.

    **Bound.** A hungry queue ``q`` whose whole share is 0 slots (the queues that
    integer shares used to starve) gets a turn before any other player ``p`` has had
    more than ``ceil(w_p / w_q)`` turns: it waits at most ``sum(ceil(w_p / w_q) for p
    != q)`` turns (the probe player included while probes are shared). With N queues
    of equal weight that is N - 1 turns (N while probes are shared). A claim round with
    a slot left after probes and whole shares gives at least one turn, so this also
    bounds the claim rounds it waits. A queue with a whole share ``s >= 1`` gets freed
    slots ahead of every turn until it runs ``s`` jobs.

    Strict: in order, idle queues get their probe and the first hungry queue takes
    everything left; later queues wait.

    >>> q = parse_queues("critical=6,default=3,bulk=1")
    >>> allocate(q, 10, {})
    {'critical': 6, 'default': 3, 'bulk': 1}
    >>> allocate(q, 10, {"bulk": 1}, {"critical": False, "default": False, "bulk": True})
    {'critical': 1, 'default': 1, 'bulk': 7}
    >>> allocate(parse_queues("critical,bulk=1:8"), 10, {"bulk": 8})
    {'critical': 2, 'bulk': 0}
    >>> allocate(parse_queues("a,b,c"), 10, {}, {"a": False, "b": True}, strict=True)
    {'a': 1, 'b': 9, 'c': 0}

    Fewer slots than queues: each round serves the queues whose turn it is.

    >>> many, t = parse_queues("q1,q2,q3,q4,q5"), Turns()
    >>> [sorted(k for k, n in allocate(many, 2, {}, turns=t).items() if n) for _ in range(3)]
    [['q1', 'q2'], ['q3', 'q4'], ['q1', 'q5']]
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
    turns = turns if turns is not None else Turns()
    plan = turns.planned(specs, concurrency, rotation)
    idle = [s for s in specs if not hungry.get(s.name, True)]
    busy = [s for s in specs if hungry.get(s.name, True)]
    scarce = len(idle) > 0 and free <= len(idle)
    if not scarce:
        # Probes: one slot per idle queue.
        for spec in idle:
            if room(spec) > 0:
                out[spec.name] = 1
                free -= 1
                turns.served(spec.name)
    # Whole shares, less what each queue already runs. They come first, and count as
    # turns: the turns make up the fractional rest of each share.
    for spec in busy:
        owed = plan.shares[spec.name] - running.get(spec.name, 0)
        take = min(owed, room(spec), free) if owed > 0 else 0
        if take > 0:
            out[spec.name] += take
            free -= take
            turns.charge(spec.name, take * plan.ticks[spec.name])
    # Turns, one slot at a time.
    probes = sorted((s for s in idle if out[s.name] == 0) if scarce else (),
                    key=lambda s: turns.last[s.name])

    def takes(key: str) -> bool:
        if key != _PROBE:
            return room(plan.by_name[key]) > 0
        while probes and room(probes[0]) <= 0:
            probes.pop(0)
        return bool(probes)

    players = [s.name for s in busy] + ([_PROBE] if probes else [])
    for player in turns.deal(free, players, plan.ticks, takes):
        name = player
        if player == _PROBE:
            name = probes.pop(0).name
            turns.served(name)
        out[name] += 1
        free -= 1
    return out
