"""``Context``: what a running task may know and do about its own job.

A task receives it by declaring a first parameter named ``ctx``. It carries the job's
identity and lease deadline, a way to report progress (flushed with the next heartbeat,
one statement per worker process, not one per call), a cancellation signal, and
``ctx.transaction()``: a database transaction that also marks the job completed, so the
task's own writes and the completion commit together, exactly once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pgq.core.errors import LeaseLost, PgqError
from pgq.core.validation import encode_json_object

if TYPE_CHECKING:
    import psycopg

__all__ = ["Context", "LeaseLost"]

_CANCELLED_LOCK = threading.Lock()


@dataclass(eq=False)
class Context:
    job_id: int
    task: str
    queue: str
    attempt: int
    max_attempts: int
    lease_expires_at: datetime
    """When the lease runs out unless renewed (the heartbeat renews it automatically)."""
    worker_id: str
    result: Any = None
    """For ``transaction()``: the result stored when the transaction marks the job done."""
    _progress: str | None = field(default=None, repr=False)
    _completed_in_transaction: bool = field(default=False, repr=False)
    _transaction: Any = field(default=None, repr=False)  # set by the worker
    _cancelled: threading.Event | None = field(default=None, repr=False)

    @property
    def cancelled(self) -> threading.Event:
        """Set when the job should stop: its timeout passed, the lease was lost, or the
        worker is shutting down. Long-running sync tasks should check
        ``ctx.cancelled.is_set()`` (or ``ctx.cancelled.wait(seconds)`` to sleep)."""
        # Made on first use: most jobs never look, and an Event costs more to build than
        # the rest of a job's bookkeeping. The lock makes the loop (which sets it) and the
        # task's thread (which reads it) agree on one Event.
        event = self._cancelled
        if event is None:
            with _CANCELLED_LOCK:
                if self._cancelled is None:
                    self._cancelled = threading.Event()
                event = self._cancelled
        return event

    def progress(self, **data: Any) -> None:
        """Record progress (a JSON object); stored in ``progress`` with the next heartbeat."""
        self._progress = encode_json_object(data, "progress")

    def take_progress(self) -> str | None:
        value, self._progress = self._progress, None
        return value

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in a transaction that, on success, also marks this job completed
        (with ``ctx.result``). If the lease was lost, the transaction rolls back and
        ``LeaseLost`` is raised: the writes and the completion happen together or not
        at all, so a retry after a crash never sees one without the other."""
        if self._transaction is None:
            raise PgqError("ctx.transaction() is available in a worker only")
        with self._transaction(self) as conn:
            yield conn
        self._completed_in_transaction = True

    @property
    def completed_in_transaction(self) -> bool:
        return self._completed_in_transaction

    def encoded_result(self) -> str | None:
        return json.dumps(self.result) if self.result is not None else None
