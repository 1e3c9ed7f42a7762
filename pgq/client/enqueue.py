"""What an enqueue writes, decided without I/O.

``JobSpec`` is the caller's request; ``prepare`` validates it into a ``JobRow`` (raising
an ``InvalidJobError`` before anything touches the database); the ``plan_*`` generators
are the enqueue algorithms written once, as a sequence of SQL steps. ``pgq.store.database``
drives a plan on a sync or an async connection, so the two paths cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypedDict

from pgq.core.errors import DatabaseError, InvalidOptionError, UnknownTaskError
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
from pgq.store.plan import Copy, Exec, Step

_UNIQUE_RETRIES = 10
"""How often one enqueue re-tries a unique key whose holder vanished or lapsed between
two statements. Each retry needs another transaction to change that key in between,
so running out means something pathological, reported as an error."""


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


# --- plans: the algorithms, as SQL steps -----------------------------------------------



def plan_notify(plan: Generator[Step, Any, Any], queues: Sequence[str]
                ) -> Generator[Step, Any, Any]:
    """``plan``, then a PostgreSQL wake-up for ``queues`` in the same transaction."""
    result = yield from plan
    yield Exec("queue_notify", {"queues": sorted(set(queues))})
    return result


def plan_enqueue_one(row: JobRow, now: datetime | None, *, notify: bool = False
                     ) -> Generator[Step, Any, Enqueued]:
    """One job; with ``notify``, the PostgreSQL wake-up goes with the INSERT (one round
    trip for the common case instead of two)."""
    params = row._asdict()  # a new dict, this plan's own
    params["now"] = now
    params["notify"] = notify
    for _ in range(_UNIQUE_RETRIES):
        inserted = yield Exec("job_insert", params)
        if inserted:
            return Enqueued(inserted[0][0])
        holder = yield Exec("job_unique_holder_release",
                            {"task": row.task, "unique_key": row.unique_key, "now": now})
        if holder and not holder[0][1]:
            return Enqueued(holder[0][0], duplicate=True)
        # The holder vanished or its hold lapsed (released by us or by a concurrent
        # enqueue of the same key): insert again, which finds whoever holds it now.
    raise DatabaseError(
        f"unique key {row.unique_key!r} of task {row.task!r} changed hands "
        f"{_UNIQUE_RETRIES} times during one enqueue"
    )


def plan_enqueue_many(rows: Sequence[JobRow], now: datetime | None, *, notify: bool = False
                      ) -> Generator[Step, Any, list[Enqueued]]:
    """``_plan_many``; with ``notify``, then one PostgreSQL wake-up per queue."""
    if notify:
        notified: list[Enqueued] = yield from plan_notify(_plan_many(rows, now),
                                                          [r.queue for r in rows])
        return notified
    return (yield from _plan_many(rows, now))


def _plan_many(rows: Sequence[JobRow], now: datetime | None) -> Generator[Step, Any, list[Enqueued]]:
    """Keyless jobs go in by COPY; jobs with unique keys by one INSERT … ON CONFLICT for
    the batch. Round trips per call, not per job: 2 for keyless, 2 (+1 if any key was
    taken) for keyed; a key whose holder changed mid-call falls back to the one-job plan."""
    results: list[Enqueued | None] = [None] * len(rows)
    keyless = [i for i, r in enumerate(rows) if r.unique_key is None]
    keyed = [i for i, r in enumerate(rows) if r.unique_key is not None]

    if keyless:
        ((db_now, ids),) = yield Exec("clock_now_and_ids", {"now": now, "n": len(keyless)})
        for job_id, i in zip(ids, keyless, strict=True):
            results[i] = Enqueued(job_id)
        # Formatted lazily, while the driver streams: the server parses one chunk while
        # the next is formatted. (Validation is over by now; formatting cannot fail.)
        yield Copy("job_copy", _copy_rows([rows[i] for i in keyless], ids, db_now))

    if keyed:
        keys = {"tasks": [rows[i].task for i in keyed],
                "unique_keys": [rows[i].unique_key for i in keyed], "now": now}
        yield Exec("job_unique_release_lapsed_many", keys)
        inserted = yield Exec("job_insert_unique_many", _columns(rows, keyed, now))
        new_ids = {(task, key): job_id for job_id, task, key in inserted}
        taken: set[tuple[str, str | None]] = set()
        missing = []
        for i in keyed:
            key = (rows[i].task, rows[i].unique_key)
            if key in new_ids:
                # The batch's first row with this key was inserted; later ones duplicate it.
                results[i] = Enqueued(new_ids[key], duplicate=key in taken)
                taken.add(key)
            else:
                missing.append(i)
        if missing:
            held = yield Exec("job_unique_holders_many", {
                "tasks": [rows[i].task for i in missing],
                "unique_keys": [rows[i].unique_key for i in missing], "now": now})
            holders = {(task, key): job_id for task, key, job_id in held}
            for i in missing:
                holder = holders.get((rows[i].task, rows[i].unique_key))
                if holder is not None:
                    results[i] = Enqueued(holder, duplicate=True)
                else:
                    results[i] = yield from plan_enqueue_one(rows[i], now)
    return [r for r in results if r is not None]


# COPY's text format, written here rather than by the driver's per-value dumpers (most
# of a bulk enqueue's time otherwise). Queue and task names are validated identifiers and
# the numbers and timestamps are ours, so only JSON and tags need escaping. JSON from
# pgq's encoder never holds a raw control character, only backslashes to double.
_NULL = "\\N"


def _copy_rows(rows: Sequence[JobRow], ids: Sequence[int], db_now: datetime
               ) -> Iterator[tuple[str, ...]]:
    now_text = db_now.isoformat()
    for job_id, r in zip(ids, rows, strict=True):
        if r.run_at is None and not r.delay:
            state, run_at = "available", now_text
        else:
            at = r.run_at if r.run_at is not None else db_now + r.delay
            state, run_at = ("scheduled" if at > db_now else "available"), at.isoformat()
        yield job_copy_row(job_id, r, state, run_at, now_text)


def job_copy_row(job_id: int, r: JobRow, state: str, run_at: str, created_at: str,
                 meta: str | None = None) -> tuple[str, ...]:
    """The fields of ``job_copy`` for one job (timestamps already as ISO text)."""
    return (str(job_id), r.queue, r.task, state, str(r.priority), str(r.max_attempts),
            _copy_text(r.args), run_at, created_at,
            _NULL if r.timeout_seconds is None else repr(r.timeout_seconds),
            _copy_array(r.tags), _copy_text(r.meta if meta is None else meta))


def _copy_text(text: str) -> str:
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def _copy_array(items: Sequence[str]) -> str:
    """A text[] literal in COPY text format: every element quoted, so no content (commas,
    braces, NULL, spaces) can be misread."""
    if not items:
        return "{}"
    quoted = ('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in items)
    return _copy_text("{" + ",".join(quoted) + "}")


def _columns(rows: Sequence[JobRow], indexes: Sequence[int], now: datetime | None) -> dict[str, Any]:
    picked = [rows[i] for i in indexes]
    return {
        "queue": [r.queue for r in picked],
        "task": [r.task for r in picked],
        "priority": [r.priority for r in picked],
        "max_attempts": [r.max_attempts for r in picked],
        "args": [r.args for r in picked],
        "run_at": [r.run_at for r in picked],
        "delay": [r.delay for r in picked],
        "timeout_seconds": [r.timeout_seconds for r in picked],
        "unique_key": [r.unique_key for r in picked],
        "unique_for": [r.unique_for for r in picked],
        "tags": [json.dumps(r.tags) for r in picked],
        "meta": [r.meta for r in picked],
        "ord": list(range(len(picked))),
        "now": now,
    }
