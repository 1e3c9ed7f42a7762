"""The lease table: the jobs a worker process runs, in memory its supervisor reads.

A worker's heartbeat thread renews its leases, but only while that process can run
Python. A task inside a C call that holds the GIL (a regex gone quadratic, a C extension
that never releases it) starves the thread: the lease would expire and a second worker
run the job while the first is still inside it. So the supervisor, a separate process
that runs no task code, reads this table and renews its children's leases itself while
the child is alive and not stopped; and it ends a child whose job is past its *hard
deadline* (its timeout plus a grace), which is the only way to stop a task that cannot
be interrupted: a hard timeout for sync tasks.

Layout: shared memory of int64, four per slot: job id (0 = free), attempt, hard deadline
(``time.monotonic()`` in milliseconds, system-wide on Linux; 0 = none), timeout (ms). Only the child's
event loop writes, and only at a job's start and end; the supervisor reads without a
lock. A slot is filled id-last and emptied id-first, and a reader re-checks the id, so a
torn read is rare and harmless anyway: every statement the supervisor runs with an entry
is fenced on (id, attempt, owner, running).

Two more int64 after the slots are the child's pulse, for the liveness probe the
supervisor serves (``pgq.worker.health``): when its event loop last ran a tick
(``LOOP``) and when its heartbeat thread last went round (``HEARTBEAT``), in the same
milliseconds. One writer each, read without a lock: a torn read is one stale probe.
"""

from __future__ import annotations

import time
from typing import Any

_FIELDS = 4
LOOP, HEARTBEAT = 0, 1
_PULSES = 2


def hard_grace(timeout: float) -> float:
    """How long past its timeout a job may run before its process is ended: long enough
    for the worker's own (soft) timeout to record the outcome when the task is merely
    slow, short enough to bound a hung one."""
    return max(2.0, 0.05 * timeout)


class LeaseTable:
    """Made by the supervisor (``LeaseTable.create``), handed to the child at spawn."""

    def __init__(self, array: Any) -> None:
        self._a = array
        self._slots = (len(array) - _PULSES) // _FIELDS
        self._free = list(range(self._slots - 1, -1, -1))

    @classmethod
    def create(cls, mp_context: Any, slots: int) -> LeaseTable:
        return cls(mp_context.RawArray("q", slots * _FIELDS + _PULSES))

    def __getstate__(self) -> Any:
        return self._a

    def __setstate__(self, array: Any) -> None:
        self.__init__(array)  # type: ignore[misc]

    # --- the child (its event loop thread only) ------------------------------------------

    def put(self, job_id: int, attempt: int, timeout: float | None) -> int | None:
        """Record a running job; returns its slot, or None if the table is full (the
        child's own heartbeat still renews such a job)."""
        if not self._free:
            return None
        slot = self._free.pop()
        base = slot * _FIELDS
        deadline = 0
        if timeout is not None:
            deadline = int((time.monotonic() + timeout + hard_grace(timeout)) * 1000)
        self._a[base + 1] = attempt
        self._a[base + 2] = deadline
        self._a[base + 3] = int((timeout or 0) * 1000)
        self._a[base] = job_id
        return slot

    def clear(self, slot: int) -> None:
        self._a[slot * _FIELDS] = 0
        self._free.append(slot)

    def beat(self, which: int) -> None:
        """The loop (``LOOP``) or the heartbeat thread (``HEARTBEAT``) is alive now."""
        self._a[self._slots * _FIELDS + which] = int(time.monotonic() * 1000)

    def last_beat(self, which: int) -> float | None:
        """When ``which`` last beat (``time.monotonic()`` seconds), None if never."""
        ms = self._a[self._slots * _FIELDS + which]
        return ms / 1000 if ms else None

    # --- the supervisor --------------------------------------------------------------------

    def entries(self) -> list[tuple[int, int, float | None, float]]:
        """(job id, attempt, hard deadline on the monotonic clock or None, timeout) per
        used slot."""
        out: list[tuple[int, int, float | None, float]] = []
        a = self._a
        for slot in range(self._slots):
            base = slot * _FIELDS
            job_id = a[base]
            if not job_id:
                continue
            attempt, deadline, timeout = a[base + 1], a[base + 2], a[base + 3]
            if a[base] != job_id:
                continue  # rewritten while read
            out.append((job_id, attempt, deadline / 1000 if deadline else None, timeout / 1000))
        return out
