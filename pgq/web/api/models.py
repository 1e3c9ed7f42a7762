"""The HTTP API's bodies, as pydantic models: they give the OpenAPI document its schemas
and check only the *shape* of a request (an integer where an integer goes). The rules
(queue names, priority range, aware datetimes, payload size) are pgq's own, checked by
the same code as ``app.enqueue``, so the API answers with pgq's one-line messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pgq.client.jobfilter import ActionResult, Attempt, JobRecord, QueueInfo
from pgq.client.reads import WorkerInfo


class Error(BaseModel):
    """Every error the API answers with: one line, and the pgq error class's name
    (``RequestValidationError`` for a body or parameter of the wrong type)."""

    error: str
    type: str


class EnqueueRequest(BaseModel):
    """``POST /api/jobs``: a task, its args, and ``app.enqueue``'s options by their
    Python names. Unknown fields are refused (a misspelt option would be ignored
    otherwise)."""

    model_config = ConfigDict(extra="forbid")

    task: str
    args: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = None
    priority: int | None = Field(None, description="-100..100; lower runs first.")
    delay: float | None = Field(None, description="Seconds from now (not with run_at).")
    run_at: datetime | None = Field(None, description="ISO 8601 with an offset.")
    max_attempts: int | None = None
    timeout: float | None = Field(None, description="Seconds one attempt may take.")
    unique_key: str | None = Field(None, description="One active job per (task, key).")
    unique_for: float | None = Field(
        None, description="Seconds after enqueue during which a completed job with the "
        "same key still counts as a duplicate (needs unique_key).")
    tags: list[str] = Field(default_factory=list)
    meta: dict[str, Any] | None = None


class Enqueued(BaseModel):
    id: int
    duplicate: bool = Field(description="True: the id is an earlier job's (a unique key "
                            "still held, or an Idempotency-Key seen before).")


class AttemptOut(BaseModel):
    attempt: int | None
    at: datetime | None
    type: str
    message: str
    traceback: str
    worker: str | None
    actor: str | None
    charged: bool

    @classmethod
    def of(cls, a: Attempt) -> AttemptOut:
        return cls(attempt=a.attempt, at=a.at, type=a.type, message=a.message,
                   traceback=a.traceback, worker=a.worker, actor=a.actor, charged=a.charged)


JobStateName = Literal["scheduled", "available", "running", "retryable", "completed",
                       "failed", "cancelled"]


class Job(BaseModel):
    """A job as an operator sees it: args, result and errors through the redaction hook;
    ``attempts`` is its error history, oldest first."""

    id: int
    queue: str
    task: str
    state: JobStateName
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
    tags: list[str]
    meta: Any
    result: Any
    progress: Any
    attempts: list[AttemptOut]

    @classmethod
    def of(cls, job: JobRecord) -> Job:
        return cls(id=job.id, queue=job.queue, task=job.task, state=job.state.value,
                   priority=job.priority, attempt=job.attempt, max_attempts=job.max_attempts,
                   args=job.args, run_at=job.run_at, created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at,
                   lease_owner=job.lease_owner, lease_expires_at=job.lease_expires_at,
                   timeout_seconds=job.timeout_seconds, unique_key=job.unique_key,
                   unique_until=job.unique_until, tags=list(job.tags), meta=job.meta,
                   result=job.result, progress=job.progress,
                   attempts=[AttemptOut.of(a) for a in job.attempts])


class JobList(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null "
                                    "on the last one.")


class Action(BaseModel):
    """What an action did: ``changed`` jobs; ``skipped`` says why the job was left
    alone (its state, e.g. ``running``, or ``not found``)."""

    action: str
    changed: int
    skipped: dict[str, str]

    @classmethod
    def of(cls, result: ActionResult) -> Action:
        return cls(action=result.action, changed=result.changed,
                   skipped={str(k): v for k, v in result.skipped.items()})


class Result(BaseModel):
    """A finished job's outcome: ``result`` when completed, ``error`` (its last error
    entry) when failed or cancelled; only ``state`` while it is not finished (202)."""

    state: JobStateName
    result: Any = None
    error: dict[str, Any] | None = None


class Stats(BaseModel):
    """The stats leader's document (docs/observability.md), with where it came from
    (``redis``, ``postgres`` or ``direct``: computed for this request) and its age."""

    model_config = ConfigDict(extra="allow")

    source: str
    age_seconds: float
    computed_at: datetime
    refresh_seconds: float
    queues: dict[str, dict[str, Any]]
    unserved: list[str] = Field(default_factory=list)


class Queue(BaseModel):
    name: str
    paused: bool
    paused_at: datetime | None
    paused_by: str | None
    pause_reason: str | None

    @classmethod
    def of(cls, q: QueueInfo) -> Queue:
        return cls(name=q.name, paused=q.paused, paused_at=q.paused_at,
                   paused_by=q.paused_by, pause_reason=q.pause_reason)


class Queues(BaseModel):
    queues: list[Queue]


class Worker(BaseModel):
    id: str
    host: str
    pid: int
    queues: dict[str, Any]
    concurrency: int
    version: str
    started_at: datetime
    last_seen: datetime
    running: int
    tasks: list[str]
    lease_seconds: float
    alive: bool

    @classmethod
    def of(cls, w: WorkerInfo) -> Worker:
        return cls(id=w.id, host=w.host, pid=w.pid, queues=dict(w.queues),
                   concurrency=w.concurrency, version=w.version, started_at=w.started_at,
                   last_seen=w.last_seen, running=w.running, tasks=list(w.tasks),
                   lease_seconds=w.lease_seconds, alive=w.alive)


class Workers(BaseModel):
    workers: list[Worker]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
