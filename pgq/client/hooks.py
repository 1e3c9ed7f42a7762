"""Dead-letter hooks: what ``App.on_dead_letter`` registers, and the record each receives.

A hook is told about every job a worker process stores as ``failed`` (out of attempts,
``pgq.Fail``, or a timeout on the last attempt): to page someone, post to Slack, or
report to Sentry. Workers run hooks after the outcome is committed, on a thread of their
own (``pgq.worker.deadletters``): a slow hook delays other notifications, never a job;
a hook that raises is logged and not called again for that job. docs/operations.md,
"Dead letters", has the rules.
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
    """The worker process that ran the attempt."""


DeadLetterHook = Callable[[DeadLetter], "Awaitable[None] | None"]
"""``hook(dead_letter)``; a coroutine function is run to completion on the hooks' thread."""
