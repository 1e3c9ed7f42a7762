"""A worker process's settings (``WorkerConfig``), its exit codes and its identity."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from pgq.core.errors import ConfigError
from pgq.worker.queues import QueueSpec
from pgq.worker.reclaim import DEFAULT_CRASH_BUDGET

EXIT_OK = 0
EXIT_RECYCLE = 75
"""Exit code of a worker that stopped itself to be replaced (too many abandoned threads)."""
EXIT_CONFIG = 78
"""Exit code of a worker that cannot start (configuration, schema): the supervisor stops
instead of restarting it in a loop."""
DEFAULT_LEASE_SECONDS = 12.0
"""Short enough that a dead worker's jobs run again within about 17 s (lease, plus the
5 s reclaim cadence); long enough for three heartbeats (every 4 s) to fail before a job
is lost. Its cost: one heartbeat statement per process every 4 s, and a worker cut off
from PostgreSQL for more than 12 s has its jobs run elsewhere (fencing keeps its late
writes out). The supervisor renews leases too, so a task holding the GIL cannot lose one."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    queues: tuple[QueueSpec, ...] = (QueueSpec("default"),)
    concurrency: int = 10
    """Jobs this process runs at once, all queues together."""
    strict: bool = False
    """Serve queues in strict order instead of by weight."""
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    """How long a claim or heartbeat keeps a job; a worker silent this long loses it, and
    its jobs run again within lease + ``reclaim_seconds`` (+ a claim): 17 s by default."""
    heartbeat_seconds: float | None = None
    """Heartbeat interval; default a third of the lease, so two heartbeats can fail."""
    poll_seconds: float = 1.0
    """Longest wait between claims when idle (the floor under wake-ups)."""
    shutdown_seconds: float = 30.0
    """Grace period on SIGTERM for running jobs before they are handed back."""
    reclaim_seconds: float = 5.0
    """How often this worker looks for expired leases to reclaim."""
    crash_budget: int = DEFAULT_CRASH_BUDGET
    """Times a job may lose its worker (crash, kill, hang) before it ends failed."""
    completion_window: float = 0.01
    """Seconds outcomes wait to be written together. A crash inside it re-runs those jobs."""
    max_abandoned_threads: int | None = None
    """Timed-out sync threads still running that are tolerated before the worker recycles
    itself (default: concurrency). A thread that returns after its timeout (a task that
    heeds ``ctx.cancelled``) no longer counts."""
    scheduler: bool = False
    """Also run the cron scheduler in this process (it fires only while leader)."""
    maintenance: bool = True
    """Campaign for the maintenance role (retention of finished jobs) in this process."""
    stats: bool = True
    """Campaign for the stats role (queue stats cached in Redis and ``pgq_stats`` every
    few seconds) in this process."""
    wakeups: bool = True
    """Listen for wake-ups (Redis SUBSCRIBE and PostgreSQL LISTEN). Off: poll only, for
    diagnosis and benchmarks; pickup then takes up to ``poll_seconds``."""
    async_commit: bool = False
    """Commit claims and outcomes with ``synchronous_commit = off``: no wait for the WAL
    flush. A crash of PostgreSQL (not of a worker) can then lose the last moments of
    them (up to 3 x ``wal_writer_delay``, 0.6 s by default): a lost completion runs its
    job again once the lease expires, a lost claim makes the job claimable again. No
    other guarantee changes; a task's own ``ctx.transaction()`` commits synchronously."""
    claim_window: float = 0.002
    """While jobs still run and fewer than half the slots are free, a freed slot waits up
    to this long for more to free before claiming: sync tasks' results come from the
    thread pool a few at a time, and one claim for many slots (carrying their outcomes)
    costs less than many small ones. An idle worker, or one with half its slots free,
    claims at once."""
    lock_wait_seconds: float = 0.5
    """A job whose run-time lock is taken waits this long (±50 %) before trying again,
    without spending an attempt."""
    metrics_port: int | None = None
    """Serve ``/metrics``, ``/livez`` and ``/readyz`` on this port (the supervisor), and
    record metrics in every process (docs/observability.md)."""
    metrics_host: str = "0.0.0.0"  # noqa: S104 - probes and scrapers come from outside
    """Address the metrics port listens on (all, for Kubernetes probes and scrapers)."""
    liveness_seconds: float = 30.0
    """``/livez`` fails once a process's event loop has not ticked for this long (a task
    blocking it), or its heartbeat thread has not gone round for this long or three
    heartbeat intervals, whichever is longer."""

    def __post_init__(self) -> None:
        if not self.queues:
            raise ConfigError("a worker needs at least one queue")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if self.lease_seconds < 1 or self.poll_seconds <= 0 or self.shutdown_seconds < 0:
            raise ConfigError("lease must be >= 1 s, poll > 0 s and shutdown timeout >= 0 s")
        if self.crash_budget < 1:
            raise ConfigError("crash budget must be at least 1")

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds or self.lease_seconds / 3

    @property
    def max_held(self) -> int:
        """Jobs a worker holds at most (leases it owns): ``concurrency`` running and up
        to as many again whose outcomes wait to be stored. One batch of outcomes deeper
        than the running jobs lets the next claim run while the last outcomes are being
        written; a database that stops storing outcomes still stops the claims."""
        return 2 * self.concurrency

    @property
    def abandoned_limit(self) -> int:
        return self.max_abandoned_threads or self.concurrency


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
