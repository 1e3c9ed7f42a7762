"""The queues page: every queue with its pause state (``app.queues.asettings()``) beside its
figures from the stats cache, and, for operators, Pause (with a reason) and Resume.

The list and the actions go to the primary (``app.state.pgq``), not a replica: after a
pause the page must show the queue paused, whatever the replica's lag."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from pgq.client.app import App
from pgq.client.stats import QueueStats
from pgq.core.errors import InvalidJobError
from pgq.core.validation import check_queue
from pgq.web.auth import Principal, need
from pgq.web.render import back, flash, render

router = APIRouter(include_in_schema=False)

MAX_REASON = 500
"""Characters a pause reason may have: a sentence for the next operator, not a log."""


async def _page(request: Request, error: str | None = None,
                status_code: int = 200) -> HTMLResponse:
    app: App = request.app.state.pgq
    reads: App = request.app.state.reads
    stats = await reads.astats()
    # The cache's queues plus those with settings: no scan of pgq_jobs on a refresh.
    listed = await app.queues.asettings(stats.queues)
    names = sorted({q.name for q in listed} | set(stats.queues))
    infos = {q.name: q for q in listed}
    rows = [(name, infos.get(name), stats.queues.get(name, QueueStats(name))) for name in names]
    return render(request, "queues.html", status_code=status_code, active="queues",
                  refresh=5, rows=rows, error=error, max_reason=MAX_REASON)


@router.get("/queues", name="queues")
async def queues(request: Request) -> HTMLResponse:
    return await _page(request)


@router.post("/queues/{queue}/pause", name="queue_pause")
async def pause(request: Request, queue: str,
                principal: Annotated[Principal, Depends(need("operate"))],
                reason: Annotated[str, Form()] = "") -> Response:
    app: App = request.app.state.pgq
    try:
        name = check_queue(queue)
        if len(reason) > MAX_REASON:
            raise InvalidJobError(f"a pause reason is at most {MAX_REASON} characters, "
                                  f"got {len(reason)}")
        await app.queues.apause(name, actor=principal.name, reason=reason.strip() or None)
    except InvalidJobError as exc:
        return await _page(request, str(exc), 422)
    flash(request, f"Queue {name} paused: running jobs finish, no new claims.")
    return back(request, "queues")


@router.post("/queues/{queue}/resume", name="queue_resume")
async def resume(request: Request, queue: str,
                 principal: Annotated[Principal, Depends(need("operate"))]) -> Response:
    app: App = request.app.state.pgq
    try:
        name = check_queue(queue)
        await app.queues.aresume(name, actor=principal.name)
    except InvalidJobError as exc:
        return await _page(request, str(exc), 422)
    flash(request, f"Queue {name} resumed.")
    return back(request, "queues")
