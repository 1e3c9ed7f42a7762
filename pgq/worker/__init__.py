"""The worker: claims jobs, runs them, records their outcomes, and never loses one.

``process.Worker`` wires one process's services (producer, executor, completer,
heartbeat); ``supervisor.Supervisor`` runs worker processes and renews their leases.
The layer may use everything below it (the app, scheduling, coordination, the store,
the vocabulary); nothing below imports it.
"""

from pgq.worker.config import (
    DEFAULT_LEASE_SECONDS,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RECYCLE,
    WorkerConfig,
    new_worker_id,
)
from pgq.worker.process import Worker

__all__ = ["DEFAULT_LEASE_SECONDS", "EXIT_CONFIG", "EXIT_OK", "EXIT_RECYCLE", "Worker",
           "WorkerConfig", "new_worker_id"]
