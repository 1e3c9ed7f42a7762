"""The jobs pages: the filtered, keyset-paged list (``/jobs``), one job's detail with its
timeline (``/jobs/{id}``), and the operator actions on one job (retry, cancel, delete,
run now), each one call of the operations API.

The list's filter form uses GET, so a filtered page is a URL an operator can share, and
the live refresh re-fetches that same URL: the cursor in it keeps the operator on the
page they were reading while new jobs arrive on the first one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from pgq.client.app import App
from pgq.client.display import redacted
from pgq.client.jobfilter import ActionResult, JobFilter, JobRecord
from pgq.client.reads import ActionRecord
from pgq.core.errors import InvalidJobError, InvalidOptionError, JobNotFound
from pgq.core.states import JobState
from pgq.web.auth import Principal, need
from pgq.web.render import back, flash, render

router = APIRouter(include_in_schema=False)

PAGE = 50
MAX_PAGE = 200
"""A page is bounded whatever the URL says (``?limit=``)."""

STATES = [s.value for s in JobState]

# Which buttons a job's state gets. The operations API fences on its own source states
# (pgq.client.admin.SOURCES), so a stale page only gets a "skipped" answer; these lists
# only choose what is worth offering: "run now" is for jobs waiting on a time, "retry"
# for those that stopped.
BUTTONS: dict[str, tuple[str, ...]] = {
    "retry": ("failed", "cancelled"),
    "run-now": ("scheduled", "retryable"),
    "cancel": ("available", "scheduled", "retryable", "running"),
    "delete": ("completed", "failed", "cancelled"),
}
PAST = {"retry": "retried", "run-now": "set to run now", "cancel": "cancelled",
        "delete": "deleted"}

_RELATIVE = re.compile(r"^(\d{1,6})\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_moment(text: str, what: str, now: datetime) -> datetime | None:
    """A filter's time: relative (``1h``, ``7d``: that long ago), a datetime-local
    value (``2026-12-03T19:00``, read as UTC) or an ISO time with its offset."""
    text = text.strip()
    if not text:
        return None
    relative = _RELATIVE.match(text)
    if relative:
        try:
            return now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        except OverflowError:  # 999999d: before year 1
            raise InvalidOptionError(f"{what} {text!r} reaches back too far") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidOptionError(f"{what} {text!r} is not a time: use 1h, 7d, "
                                 "2026-12-03T19:00 (UTC) or an ISO time with an offset") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_meta(pairs: list[str]) -> dict[str, Any] | None:
    """``key=value`` pairs; a value that is JSON (``5``, ``true``, ``"5"``) is that
    value, anything else the string as typed (``tenant=acme``)."""
    meta: dict[str, Any] = {}
    for pair in (p.strip() for p in pairs):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidOptionError(f"meta filter {pair!r} must be key=value")
        try:
            meta[key.strip()] = json.loads(value)
        except ValueError:
            meta[key.strip()] = value
    return meta or None


@dataclass
class ListQuery:
    """The list page's query string, as the form shows it back."""

    state: list[str]
    queue: str
    task: str
    tag: str
    meta: str
    unique_key: str
    since: str
    until: str
    limit: int
    error_type: str = ""
    """The last error's type: only with state=failed (the one state indexed by it)."""

    def filter(self, now: datetime) -> JobFilter:
        where = JobFilter(
            state=self.state or None, queue=self.queue.strip() or None,
            task=self.task.strip() or None, tag=self.tag.strip() or None,
            meta=parse_meta(self.meta.split(",")) if self.meta.strip() else None,
            unique_key=self.unique_key or None,
            since=parse_moment(self.since, "since", now),
            until=parse_moment(self.until, "until", now),
            error_type=self.error_type if self.error_type else None)
        if self.error_type and self.state != ["failed"]:
            raise InvalidOptionError("an error type filter needs state failed (and only it)")
        where.params()  # validates every field now, so the page shows the one error
        return where

    def query(self) -> dict[str, Any]:
        """The filters as URL parameters (for the next page and newest links)."""
        values: dict[str, Any] = {"state": self.state, "queue": self.queue, "task": self.task,
                                  "tag": self.tag, "meta": self.meta,
                                  "unique_key": self.unique_key, "since": self.since,
                                  "until": self.until, "error_type": self.error_type}
        if self.limit != PAGE:
            values["limit"] = self.limit
        return values


def last_error(job: JobRecord) -> str:
    if not job.attempts:
        return ""
    last = job.attempts[-1]
    text = f"{last.type}: {last.message}" if last.message else last.type
    return text if len(text) <= 120 else text[:119] + "…"


@router.get("/jobs", name="jobs")
async def jobs_list(
    request: Request,
    state: Annotated[list[str] | None, Query()] = None,
    queue: str = "", task: str = "", tag: str = "", meta: str = "", unique_key: str = "",
    since: str = "", until: str = "", q: str = "", after: str | None = None,
    limit: int = PAGE, error_type: str = "",
) -> Response:
    q = q.strip()
    if q.isascii() and q.isdigit():  # a job id: straight to the job ("²" is a digit too)
        return back(request, "job", job_id=int(q))
    if q:
        unique_key = q
    form = ListQuery([s for s in state or () if s], queue, task, tag, meta, unique_key, since, until,
                     limit, error_type)
    reads: App = request.app.state.reads
    jobs: list[JobRecord] = []
    next_cursor: str | None = None
    error: str | None = None
    try:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidOptionError(f"limit must be from 1 to {MAX_PAGE}, got {limit}")
        page = await reads.jobs.alist(form.filter(datetime.now(UTC)), limit=limit, after=after)
        jobs = [redacted(reads, job) for job in page.jobs]
        next_cursor = page.next_cursor
    except InvalidJobError as exc:  # InvalidOptionError, or a bad queue or task name
        error = str(exc)
    return render(request, "jobs.html", status_code=422 if error else 200, active="jobs",
                  refresh=0 if error else 5, form=form, states=STATES, jobs=jobs,
                  next_cursor=next_cursor, paged=after is not None, error=error,
                  last_error=last_error)


@dataclass(frozen=True)
class Entry:
    """One line of a job's timeline: an attempt's end or an operator's action."""

    at: datetime | None
    kind: str  # "attempt" or "action"
    attempt: Any = None
    action: ActionRecord | None = None


def timeline(job: JobRecord, actions: list[ActionRecord]) -> list[Entry]:
    """Attempts and operator actions in time order (an entry without a time, from an old
    or hand-written row, keeps its place among the attempts, before the actions)."""
    entries = [Entry(a.at, "attempt", attempt=a) for a in job.attempts]
    entries += [Entry(r.at, "action", action=r) for r in actions]
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(entries, key=lambda e: e.at or epoch)  # stable: ties keep their order


@router.get("/jobs/{job_id}", name="job")
async def job_detail(request: Request, job_id: int) -> HTMLResponse:
    # The primary, not a replica: after an action the 303 lands here, and the page must
    # show what the action did (one primary-key read and the job's actions).
    reads: App = request.app.state.pgq
    job = await reads.jobs.aget(job_id) if 0 < job_id < 2**63 else None
    if job is None:
        raise JobNotFound(f"no job {job_id} (never enqueued, or deleted)")
    job = redacted(reads, job)
    actions = await reads.jobs.aactions(job_id)
    buttons = [name for name, states in BUTTONS.items() if job.state in states]
    return render(request, "job.html", active="jobs",
                  refresh=0 if job.state in ("completed", "failed", "cancelled") else 5,
                  job=job, timeline=timeline(job, actions), buttons=buttons)


def outcome(job_id: int, action: str, result: ActionResult) -> tuple[str, str]:
    """The flash for one job's action: what happened, or why nothing did."""
    if result.changed:
        return "ok", f"job {job_id} {PAST[action]}"
    reason = result.skipped.get(job_id, "not in a state this action takes")
    verb = PAST[action]
    if reason == "not found":
        return "error", f"job {job_id} not found: not {verb}"
    return "error", f"job {job_id} is {reason}: not {verb}"


@router.post("/jobs/{job_id}/{action}", name="job_action")
async def job_action(request: Request, job_id: int, action: str,
                     principal: Annotated[Principal, Depends(need("operate"))]) -> Response:
    if action not in BUTTONS:
        return render(request, "error.html", status_code=404, status=404,
                      message=f"no action {action!r} (one of: {', '.join(BUTTONS)})")
    if not 0 < job_id < 2**63:  # not an id the database could hold: no SQL at all
        raise JobNotFound(f"no job {job_id}")
    app: App = request.app.state.pgq
    actor = principal.name
    if action == "retry":
        result = await app.jobs.aretry(job_id, actor=actor)
    elif action == "cancel":
        result = await app.jobs.acancel(job_id, actor=actor)
    elif action == "delete":
        result = await app.jobs.adelete(job_id, actor=actor)
    else:
        result = await app.jobs.areschedule(job_id, app.clock.now() or datetime.now(UTC),
                                            actor=actor)
    kind, message = outcome(job_id, action, result)
    flash(request, message, kind)
    if action == "delete" and result.changed:
        return back(request, "jobs")
    return back(request, "job", job_id=job_id)
