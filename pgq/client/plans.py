"""The enqueue algorithms, written once as sequences of SQL steps (``Exec``, ``Copy``),
and COPY's text format. ``pgq.store.database`` drives a plan on a sync or an async
connection, so the two paths cannot drift apart; the plans themselves do no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from pgq.client.enqueue import Enqueued, JobRow, JobSpec
from pgq.core.errors import DatabaseError
from pgq.store.plan import Copy, Exec, Plan, Step

_UNIQUE_RETRIES = 10
"""How often one enqueue re-tries a unique key whose holder vanished or lapsed between
two statements. Each retry needs another transaction to change that key in between,
so running out means something pathological, reported as an error."""



def plan_notify(plan: Generator[Step, Any, Any], queues: Collection[str]
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


def plan_enqueue_stream(specs: Sequence[JobSpec], prepare: Callable[[JobSpec], JobRow],
                        now: datetime | None, queues: set[str], *, notify: bool = False
                        ) -> Generator[Step, Any, list[Enqueued]]:
    """``enqueue_many`` of jobs without unique keys, each validated as COPY streams it:
    Python validates and formats one chunk while the server parses the one before (on
    two cores, most of a bulk enqueue's validation then costs no wall time). A bad spec
    raises out of the COPY, which aborts it; the caller must run this in a transaction
    of its own, which then rolls back: one bad spec still writes nothing. ``queues`` is
    filled with the jobs' queues as they are validated, for the wake-ups after."""
    body = _plan_stream(specs, prepare, now, queues)
    if notify:
        notified: list[Enqueued] = yield from plan_notify(body, queues)
        return notified
    return (yield from body)


def plan_for_many(specs: Iterable[JobSpec], prepare: Callable[[JobSpec], JobRow],
                  now: datetime | None, *, own: bool
                  ) -> tuple[Callable[..., Plan], Collection[str] | None]:
    """The plan of an ``enqueue_many`` and the queues it wakes (None: nothing to do).
    ``own``: on pgq's own connection, jobs without unique keys are validated while COPY
    streams them (``plan_enqueue_stream``); in the caller's transaction, whose other
    work an aborted COPY would lose, all are validated first."""
    specs = list(specs)
    if not specs:
        return partial(plan_enqueue_many, [], now), None
    if own and all(type(s) is JobSpec and s.unique_key is None for s in specs):
        queues: set[str] = set()
        return partial(plan_enqueue_stream, specs, prepare, now, queues), queues
    rows = [prepare(spec) for spec in specs]
    return partial(plan_enqueue_many, rows, now), [r.queue for r in rows]


def _plan_stream(specs: Sequence[JobSpec], prepare: Callable[[JobSpec], JobRow],
                 now: datetime | None, queues: set[str]) -> Generator[Step, Any, list[Enqueued]]:
    ((db_now, ids),) = yield Exec("clock_now_and_ids", {"now": now, "n": len(specs)})
    rows = _validated(specs, prepare, queues)
    # prepare may add meta the specs do not have: tracing adds its context to every row
    # of a call or to none (pgq.client.tracing), so the first row says which.
    if now is None and all(map(_plain_spec, specs)) and _due_plain(prepare(specs[0])):
        yield Copy("job_copy_now", _copy_rows_now(rows, ids))
    else:
        yield Copy("job_copy", _copy_rows(rows, ids, db_now))
    return [Enqueued(job_id) for job_id in ids]


def _validated(specs: Iterable[JobSpec], prepare: Callable[[JobSpec], JobRow],
               queues: set[str]) -> Iterator[JobRow]:
    for spec in specs:
        row = prepare(spec)
        queues.add(row.queue)
        yield row


def _plain_spec(spec: JobSpec) -> bool:
    """A spec whose row ``_due_plain`` will accept, told before validating it."""
    return (spec.run_at is None and spec.delay is None and spec.meta is None
            and isinstance(spec.tags, tuple | list) and not spec.tags)


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
        copied = [rows[i] for i in keyless]
        if now is None and all(map(_due_plain, copied)):
            yield Copy("job_copy_now", _copy_rows_now(copied, ids))
        else:
            yield Copy("job_copy", _copy_rows(copied, ids, db_now))

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


def _copy_rows(rows: Iterable[JobRow], ids: Sequence[int], db_now: datetime
               ) -> Iterator[tuple[str, ...]]:
    now_text = db_now.isoformat()
    for job_id, r in zip(ids, rows, strict=True):
        if r.run_at is None and not r.delay:
            state, run_at = "available", now_text
        else:
            at = r.run_at if r.run_at is not None else db_now + r.delay
            state, run_at = ("scheduled" if at > db_now else "available"), at.isoformat()
        yield job_copy_row(job_id, r, state, run_at, now_text)


def _due_plain(r: JobRow) -> bool:
    """Due now, no tags, no meta: ``job_copy_now`` can leave those columns to defaults."""
    return r.run_at is None and not r.delay and not r.tags and r.meta == "{}"


def _copy_rows_now(rows: Iterable[JobRow], ids: Sequence[int]) -> Iterator[tuple[str, ...]]:
    """The fields of ``job_copy_now`` for each job."""
    for job_id, r in zip(ids, rows, strict=True):
        yield (str(job_id), r.queue, r.task, str(r.priority), str(r.max_attempts),
               _copy_text(r.args), _NULL if r.timeout_seconds is None else repr(r.timeout_seconds))


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
