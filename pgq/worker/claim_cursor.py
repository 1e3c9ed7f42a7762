"""Claim cursors: where each queue's claimable jobs start, so that a claim does not walk
the dead head of the claim index again and again.

Why. ``pgq_jobs_claim_idx`` orders a queue's claimable jobs by (priority, run_at, id),
and a claim walks it from the start. A claimed job's old, claimable version keeps its
entry there until vacuum removes it; while any session holds a snapshot open (a long
report, a ``pg_dump``, a stuck transaction) nothing can remove it, and index scans cannot
mark it dead either. Every claim then walks every job claimed since that snapshot began,
visiting each one's row, before it reaches a live one: a drain of 50,000 jobs read 21
million index tuples instead of 48 thousand (issue 12, defect 2).

What. Per queue, the smallest key (priority, run_at, id) among the jobs the last claim
took. Every entry that claim walked past before that key was, at the time, no job this
worker could take (a dead version, not yet due, locked by another claim, a task it does
not know, or one that must run alone), so the next claim starts there: ``job_claim``
takes it as a lower bound and the index scan begins at it.

The catch, and the rescan. A job can still appear before a queue's start: enqueued with
a higher priority than the backlog, committed by a transaction that began before the
start's job was enqueued, a retryable or scheduled job of higher priority that became
due, or one released by another worker's claim that rolled back. So, regularly, a claim
ignores the starts and walks every queue from its beginning (a full scan), and the
starts are taken again from what it found. How often: a full scan may begin once
``1 / share`` times the duration of the previous one has passed since that one began
(``share`` 5 %: full scans take at most about a twentieth of the claim connection's
time). On a healthy table a full scan costs what any claim costs, a few milliseconds, so
it comes every few tens of milliseconds: a job that appears before a start waits about
that long. Under an open snapshot a full scan grows with the dead head and comes less
often (a dead head that takes 20 ms to walk: every 0.4 s), and such a job waits that
long, while every other claim skips the head.

A claim from a start that comes back short therefore proves nothing about what waits
before it: a worker told to stop once nothing is due (``stop_when="due"``) forgets the
starts before its last look at every queue.

Nothing here touches the database; ``pgq.worker`` asks for the bounds before each
``job_claim`` and reports what it claimed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

Key = tuple[int, datetime, int]
"""A claim index position within a queue: (priority, run_at, id)."""

SHARE = 0.05
"""The largest share of the claim connection's time that full scans may take."""

FULL_SCAN: dict[str, Any] = {"start_priorities": None, "start_run_ats": None, "start_ids": None}
"""``job_claim``'s start parameters for a walk of every queue from its beginning."""


class ClaimCursors:
    """One worker's claim starts, per queue (see the module docstring).

    >>> from datetime import datetime, timezone
    >>> t = [0.0]
    >>> c = ClaimCursors(clock=lambda: t[0])
    >>> c.bounds(["default"]) == FULL_SCAN     # nothing known yet: from the beginning
    True
    >>> at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> t[0] = 0.002                           # that claim took 2 ms
    >>> c.claimed([("default", 0, at, 12), ("default", 0, at, 11)])
    >>> t[0] = 0.010
    >>> b = c.bounds(["default", "other"])     # from job 11 on; "other" from its beginning
    >>> b["start_priorities"], b["start_run_ats"] == [at, None], b["start_ids"]
    ([0, None], True, [11, None])
    >>> t[0] = 0.040                           # 20 x 2 ms after the full scan began
    >>> c.bounds(["default"]) == FULL_SCAN
    True
    """

    def __init__(self, *, share: float = SHARE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self._share = share
        self._clock = clock
        self._starts: dict[str, Key] = {}
        self._next_full = 0.0
        """Clock time from which the next claim is a full scan."""
        self._began = 0.0
        """When the claim in flight began."""
        self._full = True
        """Is the claim in flight a full scan?"""

    def bounds(self, queues: Sequence[str]) -> dict[str, Any]:
        """``job_claim``'s start parameters for a claim of ``queues`` about to begin."""
        self._began = now = self._clock()
        starts = [self._starts.get(q) for q in queues]
        self._full = now >= self._next_full or all(s is None for s in starts)
        if self._full:
            return FULL_SCAN
        return {"start_priorities": [s[0] if s else None for s in starts],
                "start_run_ats": [s[1] if s else None for s in starts],
                "start_ids": [s[2] if s else None for s in starts]}

    def claimed(self, jobs: Iterable[tuple[str, int, datetime, int]]) -> None:
        """The claim just begun took ``jobs``, each (queue, priority, run_at, id). A queue
        that got none keeps its start: what lies before it has not changed."""
        if self._full:
            self._next_full = self._began + (self._clock() - self._began) / self._share
        firsts: dict[str, Key] = {}
        for queue, priority, run_at, job_id in jobs:
            key = (priority, run_at, job_id)
            if queue not in firsts or key < firsts[queue]:
                firsts[queue] = key
        self._starts.update(firsts)

    def forget(self) -> None:
        """Walk every queue from its beginning until a claim of it takes jobs again: a
        claim from a start that comes back short does not prove a queue has nothing due
        (a worker asked to stop once nothing is due makes sure with this)."""
        self._starts.clear()

    def start(self, queue: str) -> Key | None:
        """Where ``queue``'s next bounded claim starts (None: from its beginning)."""
        return self._starts.get(queue)
