"""pgq: durable background jobs on PostgreSQL, with Redis as an optional accelerator.

The public surface is what this module exports; ``tests/unit/test_public_api.py`` pins it.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from pgq.app import App
from pgq.clock import Clock, DatabaseClock, ManualClock
from pgq.enqueue import Enqueued, EnqueueOptions, JobSpec
from pgq.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    InvalidArgsError,
    InvalidIdentifierError,
    InvalidJobError,
    InvalidOptionError,
    MigrationError,
    PayloadTooLargeError,
    PgqError,
    TaskDefinitionError,
    UnknownTaskError,
    UnsupportedConnectionError,
)
from pgq.settings import Settings
from pgq.states import JobState
from pgq.tasks import Task, TaskRegistry

try:
    __version__ = _version("pgq-jobs")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "App",
    "Clock",
    "ConfigError",
    "DatabaseClock",
    "DatabaseError",
    "DatabaseUnavailable",
    "EnqueueOptions",
    "Enqueued",
    "InvalidArgsError",
    "InvalidIdentifierError",
    "InvalidJobError",
    "InvalidOptionError",
    "JobSpec",
    "JobState",
    "ManualClock",
    "MigrationError",
    "PayloadTooLargeError",
    "PgqError",
    "Settings",
    "Task",
    "TaskDefinitionError",
    "TaskRegistry",
    "UnknownTaskError",
    "UnsupportedConnectionError",
    "__version__",
]
