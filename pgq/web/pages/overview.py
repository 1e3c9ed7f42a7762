"""The overview: per-queue counts by state, lag, dead letters, live workers, paused
queues, from the stats cache (never a count over the jobs table)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from pgq.client.app import App
from pgq.core.states import JobState
from pgq.web.render import render

router = APIRouter(include_in_schema=False)


@router.get("/", name="overview")
async def overview(request: Request) -> HTMLResponse:
    reads: App = request.app.state.reads
    stats = await reads.astats()
    return render(request, "overview.html", active="overview", refresh=3, stats=stats,
                  states=[s.value for s in JobState])
