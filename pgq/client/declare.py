"""``app.task``: declaring a task on an App, a mixin of ``App`` (kept apart so the App
class stays within the layout's size limit as its options grow)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from pgq.core.backoff import Backoff
from pgq.core.redaction import Redactor
from pgq.core.tasks import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    DEFAULT_TIMEOUT,
    Task,
    TaskRegistry,
)


class TaskDeclarations:
    registry: TaskRegistry

    @overload
    def task(self, fn: Callable[..., Any], /) -> Task: ...
    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
        lock: str | None = None,
        redact: Redactor | None = None,
    ) -> Callable[[Callable[..., Any]], Task]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
        lock: str | None = None,
        redact: Redactor | None = None,
    ) -> Task | Callable[[Callable[..., Any]], Task]:
        """Register a task: ``@app.task`` or ``@app.task(name="email:send", queue="critical")``.
        The options are the defaults of its jobs; each enqueue may override them.
        ``redact``: this task's ``pgq.Redactor``, instead of the app's (docs/redaction.md)."""

        def register(func: Callable[..., Any]) -> Task:
            return self.registry.register(func, name=name, queue=queue, priority=priority,
                                          max_attempts=max_attempts, timeout=timeout,
                                          backoff=backoff, lock=lock, redact=redact)

        return register(fn) if fn is not None else register
