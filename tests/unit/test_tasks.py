"""The task registry: names, defaults, duplicates, context and async detection."""

from __future__ import annotations

from typing import Any

import pytest

import pgq
from pgq.core.errors import InvalidArgsError, TaskDefinitionError
from pgq.core.tasks import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    DEFAULT_TIMEOUT,
    Task,
    TaskRegistry,
    default_task_name,
)


def resize_image(path: str, width: int = 100) -> str:
    return f"{path}@{width}"


def other_function(path: str) -> None:
    """A different function, to collide with ``resize_image``'s name."""


async def fetch_feed(url: str) -> None:
    """An async task."""


class Reports:
    @staticmethod
    def daily(day: str) -> None:
        """A task that is a static method: its qualname has a dot."""


def test_default_name_is_module_and_qualname() -> None:
    task = TaskRegistry().register(resize_image)
    assert __name__.endswith("test_tasks")
    assert task.name == f"{__name__}.resize_image"
    assert default_task_name(Reports.daily) == f"{__name__}.Reports.daily"


def test_explicit_name_wins() -> None:
    task = TaskRegistry().register(resize_image, name="images.resize")
    assert task.name == "images.resize"


def test_nested_function_needs_an_explicit_name() -> None:
    def nested() -> None:
        pass

    with pytest.raises(TaskDefinitionError) as exc:
        TaskRegistry().register(nested)
    message = str(exc.value)
    assert "test_nested_function_needs_an_explicit_name.<locals>.nested" in message
    assert "pass name=..." in message
    assert TaskRegistry().register(nested, name="nested.ok").name == "nested.ok"


MODULE_LEVEL_LAMBDAS = [lambda: None]  # qualname '<lambda>', without '<locals>'


def test_lambda_needs_an_explicit_name() -> None:
    registry = TaskRegistry()
    with pytest.raises(TaskDefinitionError, match=r"<lambda>.*pass name=\.\.\."):
        registry.register(lambda: None)
    with pytest.raises(TaskDefinitionError, match=r"cannot derive a stable task name for '<lambda>' "):
        registry.register(MODULE_LEVEL_LAMBDAS[0])
    assert len(registry) == 0
    assert registry.register(lambda: None, name="noop").name == "noop"


def test_function_from_main_needs_an_explicit_name() -> None:
    def job() -> None:
        pass

    job.__qualname__ = "job"
    job.__module__ = "__main__"
    with pytest.raises(TaskDefinitionError, match=r"module '__main__'"):
        TaskRegistry().register(job)


def test_same_name_for_a_different_function_fails() -> None:
    registry = TaskRegistry()
    first = registry.register(resize_image, name="images.resize")
    with pytest.raises(TaskDefinitionError) as exc:
        registry.register(other_function, name="images.resize")
    assert str(exc.value) == (
        f"task name 'images.resize' is already registered to {__name__}.resize_image"
    )
    assert registry.get("images.resize") is first


def test_registering_the_same_function_again_is_fine() -> None:
    registry = TaskRegistry()
    registry.register(resize_image)
    again = registry.register(resize_image)
    assert len(registry) == 1
    assert registry.get(again.name) is again
    assert again.fn is resize_image


def test_same_function_under_two_names() -> None:
    registry = TaskRegistry()
    registry.register(resize_image, name="a")
    registry.register(resize_image, name="b")
    assert len(registry) == 2


def takes_ctx(ctx: Any, x: int) -> None: ...
def takes_ctx_only(ctx: Any) -> None: ...
def takes_ctx_positional_only(ctx: Any, /, x: int) -> None: ...
def ctx_not_first(x: int, ctx: Any) -> None: ...
def ctx_keyword_only(*, ctx: Any) -> None: ...
def ctx_var_positional(*ctx: Any) -> None: ...
def context_named_differently(context: Any, x: int) -> None: ...
def no_params() -> None: ...
async def async_takes_ctx(ctx: Any, url: str) -> None: ...


@pytest.mark.parametrize(("fn", "expected"), [
    (takes_ctx, True), (takes_ctx_only, True), (takes_ctx_positional_only, True), (async_takes_ctx, True),
    (ctx_not_first, False), (ctx_keyword_only, False), (ctx_var_positional, False),
    (context_named_differently, False), (no_params, False), (resize_image, False),
])
def test_context_detection(fn: Any, expected: bool) -> None:
    assert TaskRegistry().register(fn).takes_context is expected


@pytest.mark.parametrize(("fn", "expected"), [
    (fetch_feed, True), (async_takes_ctx, True), (resize_image, False), (takes_ctx, False),
])
def test_async_detection(fn: Any, expected: bool) -> None:
    assert TaskRegistry().register(fn).is_async is expected


def test_defaults() -> None:
    task = TaskRegistry().register(resize_image)
    assert (task.queue, task.priority, task.max_attempts, task.timeout) == (
        DEFAULT_QUEUE, DEFAULT_PRIORITY, DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT)
    assert (DEFAULT_QUEUE, DEFAULT_PRIORITY, DEFAULT_MAX_ATTEMPTS) == ("default", 0, 25)
    assert DEFAULT_TIMEOUT == 1800.0, "a hung task must not hold its slot for ever by default"


def test_no_timeout_only_when_asked_for() -> None:
    assert TaskRegistry().register(resize_image, timeout=None).timeout is None
    app = pgq.App(pgq.Settings(database_url="postgresql://localhost/x"), strict=False)
    assert app.task(resize_image).timeout == DEFAULT_TIMEOUT
    assert app.task(name="no.limit", timeout=None)(resize_image).timeout is None


def test_declared_defaults_are_kept() -> None:
    task = TaskRegistry().register(resize_image, queue="images", priority=-5, max_attempts=3, timeout=10)
    assert (task.queue, task.priority, task.max_attempts, task.timeout) == ("images", -5, 3, 10.0)
    assert isinstance(task.timeout, float)


@pytest.mark.parametrize(("options", "problem"), [
    ({"name": "1bad"}, "invalid task name '1bad'"),
    ({"name": "has space"}, "invalid task name 'has space'"),
    ({"queue": "bad queue"}, "invalid queue name 'bad queue'"),
    ({"queue": "a,b"}, "invalid queue name 'a,b'"),
    ({"queue": ""}, "invalid queue name ''"),
    ({"priority": 101}, "priority must be between -100 (runs first) and 100, got 101"),
    ({"priority": -101}, "got -101"),
    ({"priority": True}, "priority must be an int, got bool"),
    ({"max_attempts": 0}, "max_attempts must be between 1 and 1000, got 0"),
    ({"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
    ({"timeout": float("nan")}, "timeout must be a positive number of seconds, got nan"),
])
def test_invalid_defaults(options: dict[str, Any], problem: str) -> None:
    registry = TaskRegistry()
    with pytest.raises(TaskDefinitionError) as exc:
        registry.register(resize_image, **options)
    message = str(exc.value)
    name = options.get("name", f"{__name__}.resize_image")
    assert message.startswith(f"task {name!r}: ")
    assert problem in message
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert len(registry) == 0  # nothing was registered


def test_iteration_is_sorted_by_name() -> None:
    registry = TaskRegistry()
    for name in ["m.b", "z", "a.c", "B", "m.a"]:
        registry.register(resize_image, name=name)
    assert [t.name for t in registry] == ["B", "a.c", "m.a", "m.b", "z"]
    assert all(isinstance(t, Task) for t in registry)


def test_lookup() -> None:
    registry = TaskRegistry()
    task = registry.register(resize_image, name="images.resize")
    assert "images.resize" in registry
    assert "images.crop" not in registry
    assert 42 not in registry
    assert registry.get("images.resize") is task
    assert registry.get("images.crop") is None
    assert len(registry) == 1


def test_calling_a_task_calls_the_function() -> None:
    task = TaskRegistry().register(resize_image)
    assert task("a.png", width=7) == "a.png@7"
    assert task("a.png") == "a.png@100"


def test_check_args() -> None:
    task = TaskRegistry().register(resize_image)
    task.check_args({"path": "a.png"})
    task.check_args({"path": "a.png", "width": 5})
    with pytest.raises(InvalidArgsError, match="missing a required argument: 'path'"):
        task.check_args({})
    with pytest.raises(InvalidArgsError, match="unexpected keyword argument 'height'"):
        task.check_args({"path": "a.png", "height": 5})


def test_check_args_skips_ctx() -> None:
    task = TaskRegistry().register(takes_ctx)
    task.check_args({"x": 1})
    with pytest.raises(InvalidArgsError, match="missing a required argument: 'x'"):
        task.check_args({})
