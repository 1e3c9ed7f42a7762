"""``/api/stats``, ``/api/queues`` (list, pause, resume), ``/api/workers`` and
``/api/health``, the one API route open without credentials (for load balancers)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from pgq.client.app import App
from pgq.core.errors import PgqError
from pgq.store.plan import Exec, Plan
from pgq.web.api.common import ApiRoute, Operator, Reader, errors
from pgq.web.api.models import Health, Queue, Queues, Stats, Workers
from pgq.web.api.models import Worker as WorkerOut
from pgq.web.auth import public

router = APIRouter(prefix="/api", tags=["system"], route_class=ApiRoute)

QueueName = Annotated[str, Path(description="The queue's name.")]
HEALTH_TIMEOUT = 5.0
"""A health check that takes longer than this says unavailable: a load balancer's probe
gives up at about this time anyway, and a hung database is not a healthy one."""


def _writer(request: Request) -> App:
    app: App = request.app.state.pgq
    return app


def _reads(request: Request) -> App:
    app: App = request.app.state.reads
    return app


@router.get("/stats", response_model=Stats, responses=errors(403), summary="Queue stats")
async def stats(request: Request, _: Reader) -> Stats:
    """The stats leader's cached document (counts, lag, throughput, runtimes per queue),
    or one computed now if none is fresh; ``source`` and ``age_seconds`` say which."""
    found = await _reads(request).astats()
    return Stats.model_validate({**found.document, "source": found.source,
                                 "age_seconds": found.age_seconds})


@router.get("/queues", response_model=Queues, responses=errors(403), summary="Queues")
async def list_queues(request: Request, _: Reader) -> Queues:
    """Every queue the stats know of (those with jobs) or with settings, and whether it
    is paused."""
    reads = _reads(request)
    # The stats cache's names, not queue_list's scan of pgq_jobs (a call anyone with the
    # read scope can repeat).
    known = (await reads.astats()).queues
    return Queues(queues=[Queue.of(q) for q in await reads.queues.asettings(known)])


@router.post("/queues/{name}/pause", response_model=Queue, responses=errors(403, 422),
             summary="Pause a queue")
async def pause(name: QueueName, request: Request,
                principal: Operator) -> Queue:
    """Workers stop claiming the queue's jobs within a poll interval; running jobs finish."""
    return Queue.of(await _writer(request).queues.apause(name, actor=principal.name))


@router.post("/queues/{name}/resume", response_model=Queue, responses=errors(403, 422),
             summary="Resume a queue")
async def resume(name: QueueName, request: Request,
                 principal: Operator) -> Queue:
    """Workers claim the queue's jobs again, woken at once."""
    return Queue.of(await _writer(request).queues.aresume(name, actor=principal.name))


@router.get("/workers", response_model=Workers, responses=errors(403), summary="Workers")
async def workers(request: Request, _: Reader) -> Workers:
    """The worker registry: each process's queues, concurrency, running jobs, liveness."""
    found = await _reads(request).queues.aworkers()
    return Workers(workers=[WorkerOut.of(w) for w in found])


def plan_ping() -> Plan:
    # The cheapest statement the catalogue has: no table is read.
    yield Exec("clock_now", {"now": None})


@router.get("/health", response_model=Health, summary="Health (no credentials)", responses={
    503: {"model": Health, "description": "The database did not answer."}})
@public
async def health(request: Request) -> Health | JSONResponse:
    """``ok`` when the database answers one trivial statement through the pool, else 503
    ``unavailable``. The one API route open without credentials (load balancers), so it
    says nothing else."""
    try:
        await asyncio.wait_for(_writer(request).jobs._arun(plan_ping()), HEALTH_TIMEOUT)
    except (PgqError, TimeoutError):
        return JSONResponse({"status": "unavailable"}, 503)
    return Health(status="ok")
