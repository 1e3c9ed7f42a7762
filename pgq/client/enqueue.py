"""What an enqueue writes, decided without I/O.

``JobSpec`` is the caller's request; ``prepare`` validates it into a ``JobRow`` (raising
an ``InvalidJobError`` before anything touches the database). ``pgq.client.plans`` turns
rows into SQL steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypedDict

from pgq.core.errors import InvalidOptionError, UnknownTaskError
from pgq.core.tasks import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    Task,
    TaskRegistry,
)
from pgq.core.validation import (
    MAX_UNIQUE_KEY_BYTES,
    check_free_text,
    check_max_attempts,
    check_payload_size,
    check_priority,
    check_queue,
    check_tags,
    check_task_name,
    check_timeout,
    encode_json_object,
)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job to enqueue. Unset options take the task's defaults."""

    task: str | Task
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None
    """-100..100; lower runs first within a queue. Default: the task's, else 0."""
    delay: timedelta | float | None = None
    """Run no earlier than this long after enqueue (seconds or timedelta)."""
    run_at: datetime | None = None
    """Run no earlier than this aware datetime. Exclusive with ``delay``."""
    max_attempts: int | None = None
    timeout: timedelta | float | None = None
    """Time limit for one attempt. Default: the task's."""
    unique_key: str | None = None
    """At most one job per (task, unique_key) is active at a time; a second enqueue
    returns the first job's id with ``duplicate=True``."""
    unique_for: timedelta | None = None
    """Also count a job that *completed* within this window (from its enqueue) as a
    duplicate: "one daily report per user". Needs ``unique_key``."""
    tags: Sequence[str] = ()
    meta: Mapping[str, Any] | None = None
    """Application metadata (tenant, request id); stored, not passed to the task."""


class EnqueueOptions(TypedDict, total=False):
    """The keyword options of ``App.enqueue``: ``JobSpec``'s fields after ``args``."""

    queue: str | None
    priority: int | None
    delay: timedelta | float | None
    run_at: datetime | None
    max_attempts: int | None
    timeout: timedelta | float | None
    unique_key: str | None
    unique_for: timedelta | None
    tags: Sequence[str]
    meta: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Enqueued:
    """The result of an enqueue: the job's id, and whether it was a duplicate (the id is
    then the existing job's). A duplicate is a result, not an error."""

    id: int
    duplicate: bool = False


class JobRow(NamedTuple):
    """A validated ``JobSpec``, in the shape the SQL takes."""

    queue: str
    task: str
    priority: int
    max_attempts: int
    args: str
    run_at: datetime | None
    delay: timedelta
    timeout_seconds: float | None
    unique_key: str | None
    unique_for: timedelta | None
    tags: list[str]
    meta: str


def prepare(spec: JobSpec, registry: TaskRegistry, *, strict: bool, max_payload_bytes: int) -> JobRow:
    """Validate ``spec`` completely, or raise an ``InvalidJobError``. No I/O."""
    if _takes_defaults(spec):
        # The common case (task and args only), worth a short path in bulk enqueues: the
        # task's defaults were validated when it was registered, pgq's are constants.
        return prepare_defaults(spec.task, spec.args, registry, strict=strict,
                                max_payload_bytes=max_payload_bytes)
    task, _, args_json = _task_and_args(spec.task, spec.args, registry, strict)
    meta_json = encode_json_object(spec.meta, "meta") if spec.meta is not None else "{}"
    check_payload_size(args_json, meta_json, max_payload_bytes)

    if spec.delay is not None and spec.run_at is not None:
        raise InvalidOptionError("give either delay or run_at, not both")
    if spec.run_at is not None:
        if not isinstance(spec.run_at, datetime):
            raise InvalidOptionError(f"run_at must be a datetime, got {type(spec.run_at).__name__}")
        if spec.run_at.tzinfo is None or spec.run_at.utcoffset() is None:
            raise InvalidOptionError(
                "run_at is a naive datetime; pass an aware one (e.g. datetime.now(UTC) + ...) "
                "so the database cannot misread its time zone"
            )
    delay = _as_timedelta(spec.delay, "delay") or timedelta(0)
    if delay < timedelta(0):
        raise InvalidOptionError(f"delay must not be negative, got {delay}")

    timeout = spec.timeout
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    if timeout is not None:
        timeout_seconds = check_timeout(timeout)
    else:
        timeout_seconds = task.timeout if task is not None else None

    unique_key = None
    if spec.unique_key is not None:
        unique_key = check_free_text(spec.unique_key, "unique_key", MAX_UNIQUE_KEY_BYTES)
    unique_for = _as_timedelta(spec.unique_for, "unique_for")
    if unique_for is not None:
        if unique_key is None:
            raise InvalidOptionError("unique_for needs a unique_key")
        if unique_for <= timedelta(0):
            raise InvalidOptionError(f"unique_for must be positive, got {unique_for}")

    return JobRow(
        queue=check_queue(spec.queue if spec.queue is not None else (task.queue if task else DEFAULT_QUEUE)),
        task=task.name if task else check_task_name(spec.task),
        priority=check_priority(spec.priority if spec.priority is not None
                                else (task.priority if task else DEFAULT_PRIORITY)),
        max_attempts=check_max_attempts(spec.max_attempts if spec.max_attempts is not None
                                        else (task.max_attempts if task else DEFAULT_MAX_ATTEMPTS)),
        args=args_json,
        run_at=spec.run_at,
        delay=delay,
        timeout_seconds=timeout_seconds,
        unique_key=unique_key,
        unique_for=unique_for,
        tags=check_tags(spec.tags),
        meta=meta_json,
    )


def prepare_defaults(task: str | Task, args: Mapping[str, Any], registry: TaskRegistry, *,
                     strict: bool, max_payload_bytes: int) -> JobRow:
    """``prepare(JobSpec(task, args), ...)``, the same checks and the same row, without
    building the ``JobSpec``: for ``App.enqueue`` called with no options."""
    resolved, name, args_json = _task_and_args(task, args, registry, strict)
    check_payload_size(args_json, "{}", max_payload_bytes)
    if resolved is None:
        return JobRow(DEFAULT_QUEUE, name, DEFAULT_PRIORITY, DEFAULT_MAX_ATTEMPTS,
                      args_json, None, _NO_DELAY, None, None, None, [], "{}")
    return JobRow(resolved.queue, resolved.name, resolved.priority, resolved.max_attempts,
                  args_json, None, _NO_DELAY, resolved.timeout, None, None, [], "{}")


def _task_and_args(task: str | Task, args: Mapping[str, Any], registry: TaskRegistry,
                   strict: bool) -> tuple[Task | None, str, str]:
    """The task (``None``: not registered, allowed when not ``strict``), its name, and
    ``args`` encoded, checked against the task's signature."""
    resolved: Task | None
    if isinstance(task, Task):
        resolved, name = task, task.name
    else:
        name = check_task_name(task)
        resolved = registry.get(name)
        if resolved is None and strict:
            known = ", ".join(t.name for t in registry) or "none"
            raise UnknownTaskError(
                f"unknown task {name!r} (registered: {known}); register it with @app.task "
                "or create the App with strict=False to enqueue by name for another service"
            )
    args_json = encode_json_object(args, "args")
    if resolved is not None:
        resolved.check_args(args)
    return resolved, name, args_json


_NO_DELAY = timedelta(0)


def _takes_defaults(spec: JobSpec) -> bool:
    return (spec.queue is None and spec.priority is None and spec.delay is None
            and spec.run_at is None and spec.max_attempts is None and spec.timeout is None
            and spec.unique_key is None and spec.unique_for is None and spec.meta is None
            and isinstance(spec.tags, tuple | list) and not spec.tags)


def _as_timedelta(value: timedelta | float | None, what: str) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOptionError(f"{what} must be a timedelta or seconds, got {value!r}")
    try:
        return timedelta(seconds=value)
    except (OverflowError, ValueError):
        raise InvalidOptionError(f"{what} is out of range: {value!r}") from None
