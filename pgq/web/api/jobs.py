"""``/api/jobs``: enqueue, read, list, act on jobs, and wait for a result. Each route
parses, authorises and calls the operations API (``app.enqueue_async``, ``app.jobs``):
the same code, and the same checks, as Python callers and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from pgq.client.app import App
from pgq.client.display import redacted
from pgq.client.idempotent import aenqueue_idempotent
from pgq.client.jobfilter import JobFilter, JobRecord
from pgq.core.errors import (
    InvalidOptionError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    ResultTimeout,
)
from pgq.web.api.common import ApiRoute, Enqueuer, Operator, Reader, errors
from pgq.web.api.models import Action, Enqueued, EnqueueRequest, Job, JobList, Result

router = APIRouter(prefix="/api", tags=["jobs"], route_class=ApiRoute)

JobId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The job's id.")]
MAX_WAIT = 60.0
MAX_IDEMPOTENCY_KEY = 128
"""Characters of an Idempotency-Key; stored after the principal's name (<= 105), within
the 255 the store takes."""
"""The longest ``wait`` of a result request: a longer one belongs in a loop of requests
(proxies cut idle connections at about a minute)."""


def _writer(request: Request) -> App:
    app: App = request.app.state.pgq
    return app


def _reads(request: Request) -> App:
    app: App = request.app.state.reads
    return app


def _no_nul(value: str | None, what: str) -> str | None:
    # PostgreSQL text cannot hold NUL: refused here with a line, not by the driver.
    if value is not None and "\x00" in value:
        raise InvalidOptionError(f"{what} must not contain NUL characters")
    return value


def _fingerprint(body: EnqueueRequest) -> str:
    """What an Idempotency-Key's request asked for: the body's fields as sent, in a
    canonical JSON form (key order and spacing do not make two requests differ)."""
    # Every field, defaults filled in: {"task": "t"} and {"task": "t", "args": {}} ask for
    # the same thing, so a retry that spells out a default is no conflict.
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@router.post("/jobs", status_code=201, response_model=Enqueued, responses={
    **errors(403, 422),
    200: {"model": Enqueued, "description": "Not enqueued again: duplicate is true and id "
          "is the first job's (its unique key is still held, or the Idempotency-Key was "
          "used before with the same body)."}},
    summary="Enqueue a job")
async def enqueue(body: EnqueueRequest, request: Request, response: Response, who: Enqueuer,
                  idempotency_key: Annotated[str | None, Header(
                      description="Enqueue once per key (24 hours): a repeat with the same "
                      "body answers 200 with the first job's id; with another body, 422 "
                      "IdempotencyConflict.")] = None) -> Enqueued:
    """201 and the new job's id; 200 with ``duplicate: true`` when nothing was enqueued
    because of a unique key or a repeated Idempotency-Key. Bad input: 422 with pgq's
    one-line message (``InvalidJobError`` and its subclasses)."""
    app = _writer(request)
    options: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"task", "args"})
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            # Checked here: the stored key is longer (the principal's name goes first).
            raise InvalidOptionError(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} "
                                     f"characters, got {len(idempotency_key)}")
        # Keys are per principal: another client's key can neither block this one's
        # request for a day nor reveal the id of the job it made.
        done, _replayed = await aenqueue_idempotent(
            app, f"{who.name}\x1f{idempotency_key}", _fingerprint(body), body.task, body.args,
            **options)
    else:
        done = await app.enqueue_async(body.task, body.args, **options)
    if done.duplicate:
        response.status_code = 200
    return Enqueued(id=done.id, duplicate=done.duplicate)


async def _job(app: App, job_id: int) -> JobRecord:
    job = await app.jobs.aget(job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    return job


@router.get("/jobs/{job_id}", response_model=Job, responses=errors(403, 404, 422),
            summary="One job")
async def get_job(job_id: JobId, request: Request,
                  _: Reader) -> Job:
    """Every field of the job, args and errors redacted, with its attempts."""
    app = _reads(request)
    return Job.of(redacted(app, await _job(app, job_id)))


@router.get("/jobs", response_model=JobList, responses=errors(403, 422), summary="List jobs")
async def list_jobs(
        request: Request, _: Reader,
        state: Annotated[list[str] | None, Query(description="Repeat for any of several.")] = None,
        queue: str | None = None, task: str | None = None, tag: str | None = None,
        unique_key: str | None = None,
        since: Annotated[datetime | None, Query(description="Created at or after (ISO 8601 "
                                                "with an offset).")] = None,
        until: Annotated[datetime | None, Query(description="Created before.")] = None,
        error_type: Annotated[str | None, Query(description="The type of the job's last "
                                                "error.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous "
                                            "page.")] = None) -> JobList:
    """Newest first, one page of at most ``limit``; every filter given must match."""
    texts = {"queue": queue, "task": task, "tag": tag, "unique_key": unique_key,
             "error_type": error_type, "cursor": cursor}
    for what, value in texts.items():
        _no_nul(value, what)
    for value in state or ():
        _no_nul(value, "state")
    if error_type is not None and state != ["failed"]:
        # Only failed jobs have an index by error type (migration 0012); across other
        # states a rare type would walk the table until the read timeout.
        raise InvalidOptionError("error_type needs state=failed (dead letters are what is "
                                 "grouped by error type)")
    where = JobFilter(state=state, queue=queue, task=task, tag=tag, unique_key=unique_key,
                      since=since, until=until, error_type=error_type)
    app = _reads(request)
    page = await app.jobs.alist(where, limit=limit, after=cursor)
    return JobList(jobs=[Job.of(redacted(app, j)) for j in page.jobs],
                   next_cursor=page.next_cursor)


@router.post("/jobs/{job_id}/retry", response_model=Action, responses=errors(403, 422),
             summary="Retry a job")
async def retry(job_id: JobId, request: Request,
                principal: Operator) -> Action:
    """Run a failed, cancelled, retryable or scheduled job again now. A job in another
    state (or none) is left alone: ``changed`` 0, ``skipped`` says why."""
    return Action.of(await _writer(request).jobs.aretry(job_id, actor=principal.name))


@router.post("/jobs/{job_id}/cancel", response_model=Action, responses=errors(403, 422),
             summary="Cancel a job")
async def cancel(job_id: JobId, request: Request,
                 principal: Operator) -> Action:
    """Cancel a waiting job, or tell a running one's worker to stop it."""
    return Action.of(await _writer(request).jobs.acancel(job_id, actor=principal.name))


@router.delete("/jobs/{job_id}", response_model=Action, responses=errors(403, 422),
               summary="Delete a job")
async def delete(job_id: JobId, request: Request,
                 principal: Operator) -> Action:
    """Delete a job that is not running (the action is still recorded)."""
    return Action.of(await _writer(request).jobs.adelete(job_id, actor=principal.name))


@router.get("/jobs/{job_id}/result", response_model=Result, responses={
    **errors(403, 404, 422),
    202: {"model": Result, "description": "Not finished within wait: the current state."}},
    summary="A job's result")
async def result(job_id: JobId, request: Request, _: Reader,
                 wait: Annotated[float, Query(ge=0, le=MAX_WAIT, description="Seconds to "
                                              "wait for the job to finish.")] = 0
                 ) -> Result | JSONResponse:
    """200 with the result (completed) or the last error (failed, cancelled); 202 with
    the current state if it has not finished within ``wait``. The wait is woken by the
    job's finish (LISTEN/NOTIFY), it does not poll."""
    app = _writer(request)  # the replica's copy could lag behind the NOTIFY
    waits: asyncio.Semaphore = request.app.state.result_waits
    if wait > 0 and not waits.locked():
        # Each wait holds a LISTEN connection of its own: at most MAX_WAITERS at once
        # per process, so readers cannot use up the server's connections (the workers'
        # too). Past that the answer is the current state at once (202 if unfinished),
        # and the client asks again. Whatever the wait ends with, the answer is read
        # from the stored job, so result and error go through the redaction hook.
        async with waits:
            with contextlib.suppress(ResultTimeout, JobFailed, JobCancelled):
                await app.jobs.aresult(job_id, timeout=wait)
    job = redacted(app, await _job(app, job_id))
    if job.state.value == "completed":
        return Result(state="completed", result=job.result)
    if job.state.value in ("failed", "cancelled"):
        error = job.errors[-1] if job.errors and isinstance(job.errors[-1], dict) else None
        return Result(state=job.state.value, error=error)
    return JSONResponse(Result(state=job.state.value).model_dump(mode="json"), 202)

