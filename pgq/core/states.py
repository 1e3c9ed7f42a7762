"""The job state machine: one closed set of states, each documented by how a job
enters and leaves it. The ``state`` column of ``pgq_jobs`` holds these exact strings.

::

              enqueue(run_at > now)             enqueue
                    │                              │
                scheduled ──(run_at ≤ now)──► available ◄──────────────┐
                                                │ claim (lease)          │ backoff elapsed
                                                ▼                        │
                                             running ──error, attempts left──► retryable
                                      ┌─────────┼──────────┬─────────────┐
                                   success   cancel     error, no attempts left / discard
                                      ▼         ▼          ▼
                                  completed  cancelled   failed  (the dead letter)

A worker's claim takes ``available`` jobs and also ``scheduled`` and ``retryable``
jobs whose ``run_at`` has passed (by the database clock), so no promotion process is
needed for a job to run on time.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    SCHEDULED = "scheduled"
    """Enqueued with a ``run_at`` in the future. Becomes claimable when ``run_at`` passes."""

    AVAILABLE = "available"
    """Ready to run now. A worker's claim moves it to ``running``."""

    RUNNING = "running"
    """Claimed by a worker that holds a lease on it (``lease_owner``, ``lease_expires_at``).
    Leaves for ``completed``, ``retryable``, ``failed`` or ``cancelled``; if the lease
    expires, the attempt counts as failed and the job follows the retry path."""

    RETRYABLE = "retryable"
    """An attempt failed and attempts remain. Claimable again once ``run_at`` (the end of
    the backoff) passes; the failure is recorded in ``errors``."""

    COMPLETED = "completed"
    """Finished successfully; ``result`` holds the task's return value. Terminal."""

    FAILED = "failed"
    """The dead letter: attempts exhausted or failed on purpose. Kept with its full
    ``errors`` history, visible to audits, and retryable by hand. Terminal."""

    CANCELLED = "cancelled"
    """Stopped on purpose (by the task, an operator or the API) and never retried. Terminal."""


ACTIVE_STATES: frozenset[JobState] = frozenset(
    {JobState.SCHEDULED, JobState.AVAILABLE, JobState.RUNNING, JobState.RETRYABLE}
)
"""States in which a job may still run; a job in one of them holds its unique key."""

FINISHED_STATES: frozenset[JobState] = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
)
"""Terminal states; rows in them are pruned by retention, never run again unless retried by hand."""

CLAIMABLE_STATES: frozenset[JobState] = frozenset(
    {JobState.SCHEDULED, JobState.AVAILABLE, JobState.RETRYABLE}
)
"""States the claim considers (with ``run_at <= now()``); the claim index is partial on them."""
