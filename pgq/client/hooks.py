"""Dead-letter hooks: what ``App.on_dead_letter`` registers, and the record each receives.

A hook is told about every job that ends ``failed`` (out of attempts, ``pgq.Fail``, a
timeout on the last attempt, an outcome the database refused, or a lost worker's crash
budget spent): to page someone, post to Slack, or report to Sentry. The process that
stored it (the worker, or the one whose reclaim failed it) runs the hooks after the
commit, on a thread of its own (``pgq.worker.deadletters``): a slow hook delays other
notifications, never a job; a hook that raises is logged and not called again for that
job. docs/operations.md, "Dead letters", has the rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job that has just been stored as ``failed``, as a dead-letter hook receives it.

    Only what the worker already holds: look up the rest (args, meta, the whole
    ``errors`` history) with ``app.jobs.get(job_id)`` if the hook needs it."""

    job_id: int
    task: str
    queue: str
    attempt: int
    """The attempt that failed (1-based)."""
    max_attempts: int
    error_type: str
    """``errors[].type`` of that attempt: ``ValueError``, ``myapp.PaymentDeclined``,
    ``pgq.Timeout``, ``pgq.outcomes.Fail`` for a task that gave up on purpose."""
    error_message: str
    """Its message (at most 2,000 characters, as stored)."""
    traceback: str
    """Its traceback excerpt, as stored (may be empty)."""
    worker_id: str
    """The worker process that ran the attempt (for a reclaimed job: the lost one)."""


DeadLetterHook = Callable[[DeadLetter], "Awaitable[None] | None"]
"""``hook(dead_letter)``; a coroutine function is run to completion on the hooks' thread."""
