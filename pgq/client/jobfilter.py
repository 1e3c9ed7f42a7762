"""The values of the operations API (``app.jobs``, ``app.queues``): which jobs an
operation applies to (``JobFilter``), what a job looks like to an operator
(``JobRecord`` and its decoded ``Attempt`` history), a page of a listing with its keyset
cursor, the outcome of an action, and a queue's settings.

Everything here is checked before any SQL runs: a bad state, a negative limit or a
cursor pgq did not make raises ``pgq.InvalidOptionError`` with one line saying which.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pgq.core.errors import InvalidOptionError
from pgq.core.states import JobState
from pgq.core.validation import check_queue, check_task_name

MAX_LIMIT = 10_000
"""The largest page ``list`` returns."""


def _strings(value: str | Iterable[str] | None, what: str) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items or not all(isinstance(v, str) for v in items):
        raise InvalidOptionError(f"{what} must be a non-empty string or list of strings, got {value!r}")
    return items


def _states(value: str | JobState | Iterable[str | JobState] | None) -> list[str] | None:
    items = _strings([value] if isinstance(value, JobState) else value, "state")
    if items is None:
        return None
    known = {s.value for s in JobState}
    for item in items:
        if item not in known:
            raise InvalidOptionError(
                f"unknown job state {item!r} (one of: {', '.join(s.value for s in JobState)})")
    return [str(JobState(item)) for item in items]


def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidOptionError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidOptionError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    return value


@dataclass(frozen=True)
class JobFilter:
    """Which jobs: every field given must match (AND); a list means any of its values.
    ``tag``: the job carries this tag; ``meta``: the job's meta contains these pairs;
    ``since`` / ``until``: ``since <= created_at < until``; ``error_type``: the ``type``
    of the job's last ``errors`` entry ("" for a job without one: a dead-letter group of
    ``app.jobs.dead_letter_groups``). All None matches every job."""

    state: str | JobState | Sequence[str | JobState] | None = None
    queue: str | Sequence[str] | None = None
    task: str | Sequence[str] | None = None
    tag: str | None = None
    meta: Mapping[str, Any] | None = None
    unique_key: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    error_type: str | None = None

    def params(self) -> dict[str, Any]:
        """The filter as the statements' parameters, validated (NULL: any)."""
        queues = _strings(self.queue, "queue")
        tasks = _strings(self.task, "task")
        if self.tag is not None and not isinstance(self.tag, str):
            raise InvalidOptionError(f"tag must be a string, got {self.tag!r}")
        if self.unique_key is not None and not isinstance(self.unique_key, str):
            raise InvalidOptionError(f"unique_key must be a string, got {self.unique_key!r}")
        if self.error_type is not None and not isinstance(self.error_type, str):
            raise InvalidOptionError(f"error_type must be a string, got {self.error_type!r}")
        if self.meta is not None and not isinstance(self.meta, Mapping):
            raise InvalidOptionError(f"meta must be a mapping of key to value, got {self.meta!r}")
        since, until = _aware(self.since, "since"), _aware(self.until, "until")
        if since is not None and until is not None and until <= since:
            raise InvalidOptionError(f"until ({until.isoformat()}) must be after since "
                                     f"({since.isoformat()})")
        try:
            meta = None if self.meta is None else json.dumps(dict(self.meta))
        except (TypeError, ValueError) as exc:
            raise InvalidOptionError(f"meta filter is not JSON: {exc}") from None
        return {
            "states": _states(self.state),
            "queues": [check_queue(q) for q in queues] if queues is not None else None,
            "tasks": [check_task_name(t) for t in tasks] if tasks is not None else None,
            "tag": self.tag, "meta": meta, "unique_key": self.unique_key,
            "since": since, "until": until, "error_type": self.error_type,
        }


NO_FILTER: dict[str, Any] = JobFilter().params()


def check_ids(ids: int | Iterable[int]) -> list[int]:
    """One id or several, as a sorted list without duplicates."""
    items = [ids] if isinstance(ids, int) else list(ids)
    for item in items:
        if not isinstance(item, int) or isinstance(item, bool) or item < 1:
            raise InvalidOptionError(f"job ids are positive integers, got {item!r}")
    return sorted(set(items))


def check_limit(limit: object) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidOptionError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


def check_actor(actor: object, reason: object) -> tuple[str, str | None]:
    if not isinstance(actor, str) or not actor.strip():
        raise InvalidOptionError(f"actor must be a non-empty string, got {actor!r}")
    if reason is not None and not isinstance(reason, str):
        raise InvalidOptionError(f"reason must be a string, got {reason!r}")
    return actor, reason


# --- keyset cursors --------------------------------------------------------------------

_CURSOR_PREFIX = "pgq1:"


def encode_cursor(last_id: int) -> str:
    """An opaque cursor: the next page starts below this id."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if isinstance(cursor, str):
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            digits = text[len(_CURSOR_PREFIX):]
            if text.startswith(_CURSOR_PREFIX) and digits.isascii() and digits.isdigit() \
                    and 0 < int(digits) < 2**63:  # a bigint id: no driver error later
                return int(digits)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            pass
    raise InvalidOptionError(f"bad cursor {cursor!r}: pass the next_cursor of a page list() returned")


# --- records -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Attempt:
    """One entry of a job's ``errors`` history: a failed attempt, a lost worker, or an
    operator's cancel (``actor`` set). ``raw`` is the entry as stored."""

    attempt: int | None
    at: datetime | None
    type: str
    message: str
    traceback: str
    worker: str | None
    actor: str | None
    charged: bool
    raw: Mapping[str, Any]

    @classmethod
    def decode(cls, entry: Mapping[str, Any]) -> Attempt:
        at = entry.get("at")
        try:
            when = datetime.fromisoformat(at) if isinstance(at, str) else None
        except ValueError:
            when = None
        if when is not None and when.tzinfo is None:  # a hand-written or old entry: UTC,
            when = when.replace(tzinfo=UTC)  # so it sorts and subtracts with aware times
        attempt = entry.get("attempt")
        return cls(attempt if isinstance(attempt, int) else None, when,
                   str(entry.get("type") or ""), str(entry.get("message") or ""),
                   str(entry.get("traceback") or ""), entry.get("worker"), entry.get("actor"),
                   entry.get("charged") is not False, entry)


@dataclass(frozen=True)
class JobRecord:
    """Every column of one ``pgq_jobs`` row (docs/schema.md), and ``attempts``: the
    ``errors`` history decoded, oldest first."""

    id: int
    queue: str
    task: str
    state: JobState
    priority: int
    attempt: int
    max_attempts: int
    args: Any
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    timeout_seconds: float | None
    unique_key: str | None
    unique_until: datetime | None
    unique_held: bool
    tags: tuple[str, ...]
    meta: Any
    errors: tuple[Any, ...]
    result: Any
    progress: Any
    isolated: bool
    notify_done: bool
    """Someone waits for its final state (``result()``); its finish sends NOTIFY pgq_done."""
    attempts: tuple[Attempt, ...] = field(default=())

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> JobRecord:
        values = list(row)
        values[3] = JobState(values[3])
        values[18] = tuple(values[18])
        errors = values[20] if isinstance(values[20], list) else []
        values[20] = tuple(errors)
        attempts = tuple(Attempt.decode(e) for e in errors if isinstance(e, Mapping))
        return cls(*values, attempts)  # type: ignore[call-arg]  # 25 columns, then attempts


@dataclass(frozen=True)
class Page:
    """One page of ``list``: jobs newest first; ``next_cursor`` is None on the last page."""

    jobs: tuple[JobRecord, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class ActionResult:
    """What an action did: ``changed`` jobs; for an id list, ``skipped`` says why each
    other id was left alone (its current state, e.g. ``"running"``, or ``"not found"``)."""

    action: str
    changed: int
    skipped: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueInfo:
    """A queue and its settings (``pgq_queues``; defaults for a queue without a row)."""

    name: str
    paused: bool
    paused_at: datetime | None = None
    paused_by: str | None = None
    pause_reason: str | None = None
