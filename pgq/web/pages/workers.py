"""The workers page: the worker registry (``app.queues.aworkers()``), live workers
first; a dead one stays listed until maintenance prunes its row (3 leases old)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from pgq.client.app import App
from pgq.web.render import render

router = APIRouter(include_in_schema=False)


@router.get("/workers", name="workers")
async def workers(request: Request) -> HTMLResponse:
    reads: App = request.app.state.reads
    found = await reads.queues.aworkers()
    found.sort(key=lambda w: (not w.alive, w.id))
    return render(request, "workers.html", active="workers", refresh=5, workers=found,
                  live=sum(1 for w in found if w.alive))
