"""The public surface is exactly ``pgq.__all__``: adding or removing a name is a decision
made here, in review, not a side effect of an import."""

from __future__ import annotations

import pgq

PUBLIC = [
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


def test_all_is_pinned() -> None:
    assert pgq.__all__ == PUBLIC


def test_all_is_sorted_without_duplicates() -> None:
    assert pgq.__all__ == sorted(pgq.__all__)
    assert len(set(pgq.__all__)) == len(pgq.__all__)


def test_every_public_name_is_importable() -> None:
    for name in pgq.__all__:
        assert getattr(pgq, name, None) is not None, name
    namespace: dict[str, object] = {}
    exec("from pgq import *", namespace)  # noqa: S102 - a fixed statement, exercising __all__
    assert sorted(k for k in namespace if k != "__builtins__") == PUBLIC


def test_public_names_come_from_pgq_modules() -> None:
    for name in pgq.__all__:
        value = getattr(pgq, name)
        if name == "__version__":
            assert isinstance(value, str) and value
        else:
            assert getattr(value, "__module__", "").startswith("pgq."), name


def test_errors_are_exported_with_their_base() -> None:
    exported_errors = {n for n in pgq.__all__ if isinstance(getattr(pgq, n), type)
                       and issubclass(getattr(pgq, n), Exception)}
    # two families: failures of pgq, and outcomes a task raises on purpose
    pgq_errors = {n for n in exported_errors if issubclass(getattr(pgq, n), pgq.PgqError)}
    outcomes = {n for n in exported_errors if issubclass(getattr(pgq, n), pgq.JobOutcome)}
    assert pgq_errors | outcomes == exported_errors and not pgq_errors & outcomes
    assert len(pgq_errors) == 19
    assert outcomes == {"JobOutcome", "Retry", "Snooze", "Cancel", "Fail"}
