"""pgq: durable background jobs on PostgreSQL, with Redis as an optional accelerator.

The public surface is what this module exports; ``tests/unit/test_public_api.py`` pins it.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from pgq.client.app import App
from pgq.client.enqueue import Enqueued, EnqueueOptions, JobSpec
from pgq.client.hooks import DeadLetter
from pgq.client.jobfilter import JobFilter
from pgq.core.backoff import Backoff
from pgq.core.clock import Clock, DatabaseClock, ManualClock
from pgq.core.cron import CatchUp, CronEntry, ScheduleError
from pgq.core.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    InvalidArgsError,
    InvalidIdentifierError,
    InvalidJobError,
    InvalidOptionError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    LeaseLost,
    MigrationError,
    PayloadTooLargeError,
    PgqError,
    ResultTimeout,
    TaskDefinitionError,
    UnknownTaskError,
    UnsupportedConnectionError,
)
from pgq.core.logs import JsonFormatter
from pgq.core.outcomes import Cancel, Fail, JobOutcome, Retry, Snooze
from pgq.core.redaction import Redactor
from pgq.core.settings import Settings
from pgq.core.states import JobState
from pgq.core.tasks import Task, TaskRegistry
from pgq.worker import Worker, WorkerConfig
from pgq.worker.context import Context
from pgq.worker.queues import QueueSpec, parse_queues

try:
    __version__ = _version("pgq-jobs")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "App",
    "Backoff",
    "Cancel",
    "CatchUp",
    "Clock",
    "ConfigError",
    "Context",
    "CronEntry",
    "DatabaseClock",
    "DatabaseError",
    "DatabaseUnavailable",
    "DeadLetter",
    "EnqueueOptions",
    "Enqueued",
    "Fail",
    "InvalidArgsError",
    "InvalidIdentifierError",
    "InvalidJobError",
    "InvalidOptionError",
    "JobCancelled",
    "JobFailed",
    "JobFilter",
    "JobNotFound",
    "JobOutcome",
    "JobSpec",
    "JobState",
    "JsonFormatter",
    "LeaseLost",
    "ManualClock",
    "MigrationError",
    "PayloadTooLargeError",
    "PgqError",
    "QueueSpec",
    "Redactor",
    "ResultTimeout",
    "Retry",
    "ScheduleError",
    "Settings",
    "Snooze",
    "Task",
    "TaskDefinitionError",
    "TaskRegistry",
    "UnknownTaskError",
    "UnsupportedConnectionError",
    "Worker",
    "WorkerConfig",
    "__version__",
    "parse_queues",
]
