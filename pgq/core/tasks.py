"""Tasks: named Python functions a job can run, and the registry that maps names to them.

A task is declared with ``@app.task(...)`` and carries the defaults its jobs get unless
an enqueue overrides them. Arguments travel as a JSON object and are passed as keyword
arguments. A task that wants its run-time context (job id, attempt, lease deadline, ...)
declares a first positional parameter named ``ctx``; the worker passes it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pgq.core.backoff import Backoff
from pgq.core.errors import InvalidArgsError, PgqError, TaskDefinitionError
from pgq.core.redaction import DEFAULT as DEFAULT_REDACTOR
from pgq.core.redaction import Redactor
from pgq.core.validation import (
    check_max_attempts,
    check_priority,
    check_queue,
    check_task_name,
    check_timeout,
)

DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 0
DEFAULT_MAX_ATTEMPTS = 25
"""25 attempts with the default backoff spread retries over roughly three weeks, long
enough to outlast a weekend outage of a dependency (Sidekiq chose the same number)."""
DEFAULT_TIMEOUT = 1800.0
"""Seconds one attempt may run unless the task or the job says otherwise: generous (30
minutes), so it only ends what is hung, and a hung task cannot hold its slot and its
lease for ever. ``timeout=None`` on a task asks for no limit explicitly."""

CONTEXT_PARAMETER = "ctx"


@dataclass(frozen=True, slots=True)
class Task:
    """A registered task. Calling it calls the function directly (handy in tests)."""

    name: str
    fn: Callable[..., Any]
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = DEFAULT_TIMEOUT
    """Seconds one attempt may take (30 minutes by default); ``None`` for no limit."""
    backoff: Backoff = field(default_factory=Backoff)
    """Delays between retries (see ``pgq.Backoff``)."""
    lock: str | None = None
    """Run-time lock key template, formatted with the job's args (``"sync:tenant:{tenant_id}"``):
    at most one job holding a given key runs at a time, across all workers."""
    redact: Redactor = DEFAULT_REDACTOR
    """What its args and errors look like wherever they are shown or stored as errors
    (``pgq.core.redaction``): its own, or the app's it was registered with."""
    takes_context: bool = field(default=False)
    is_async: bool = field(default=False)
    _signature: inspect.Signature | None = field(default=None, init=False, repr=False,
                                                 compare=False)

    def __post_init__(self) -> None:
        # Once, not per enqueue: inspect.signature costs more than the rest of a check.
        object.__setattr__(self, "_signature", inspect.signature(self.fn))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def check_args(self, args: Mapping[str, Any]) -> None:
        """Reject args the function could not be called with, at enqueue time rather than
        as a failed attempt later."""
        sig = self._signature
        assert sig is not None
        leading = (None,) if self.takes_context else ()
        try:
            sig.bind(*leading, **args)
        except TypeError as exc:
            raise InvalidArgsError(f"args do not fit task {self.name!r}{sig}: {exc}") from None
        if self.lock is not None:
            self.lock_key(args)

    def lock_key(self, args: Mapping[str, Any]) -> str | None:
        """The job's run-time lock key, or None if the task declares no lock."""
        if self.lock is None:
            return None
        try:
            return self.lock.format(**args)
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidArgsError(
                f"task {self.name!r}: lock {self.lock!r} needs args it was not given ({exc})"
            ) from None


class TaskRegistry:
    """Task names to ``Task`` objects; a name can be registered once. ``redact``: the
    redactor of tasks registered without their own."""

    def __init__(self, redact: Redactor | None = None) -> None:
        if redact is not None and not isinstance(redact, Redactor):
            raise TypeError(f"redact must be a pgq.Redactor, got {redact!r}")
        self._tasks: dict[str, Task] = {}
        self.redact = redact or DEFAULT_REDACTOR

    def register(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
        lock: str | None = None,
        redact: Redactor | None = None,
    ) -> Task:
        task_name = name if name is not None else default_task_name(fn)
        try:
            task = Task(
                name=check_task_name(task_name),
                fn=fn,
                queue=check_queue(queue),
                priority=check_priority(priority),
                max_attempts=check_max_attempts(max_attempts),
                timeout=check_timeout(timeout),
                backoff=backoff or Backoff(),
                lock=lock,
                redact=_redactor(redact, self.redact),
                takes_context=_takes_context(fn),
                is_async=inspect.iscoroutinefunction(fn),
            )
        except PgqError as exc:
            raise TaskDefinitionError(f"task {task_name!r}: {exc}") from None
        existing = self._tasks.get(task.name)
        if existing is not None and existing.fn is not fn:
            raise TaskDefinitionError(
                f"task name {task.name!r} is already registered to "
                f"{existing.fn.__module__}.{existing.fn.__qualname__}"
            )
        self._tasks[task.name] = task
        return task

    def get(self, name: str) -> Task | None:
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(sorted(self._tasks.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._tasks)


def _redactor(given: object, default: Redactor) -> Redactor:
    if given is None:
        return default
    if not isinstance(given, Redactor):
        raise TaskDefinitionError(f"redact must be a pgq.Redactor, got {given!r}")
    return given


def default_task_name(fn: Callable[..., Any]) -> str:
    """``module.qualname``: stable across processes, unlike anything derived from ``__main__``."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if module in (None, "__main__") or "<locals>" in qualname or "<lambda>" in qualname:
        raise TaskDefinitionError(
            f"cannot derive a stable task name for {qualname or fn!r} "
            f"(module {module!r}); pass name=... to @app.task"
        )
    return f"{module}.{qualname}"


def _takes_context(fn: Callable[..., Any]) -> bool:
    params = list(inspect.signature(fn).parameters.values())
    return bool(params) and params[0].name == CONTEXT_PARAMETER and params[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
