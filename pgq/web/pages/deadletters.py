"""The dead letters page: failed jobs grouped by task and the type of their last error
(``app.jobs.dead_letter_groups``), each group retried or deleted as a whole after a
confirmation page that shows how many jobs that is, counted just before.

A group is a ``JobFilter`` (failed, task, error type), so the action on it is one call
of the operations API with that filter: the jobs it changes are those failed in that
group when it runs (a job that failed since the count is included; one retried by
someone else meanwhile is not).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from pgq.client.app import App
from pgq.client.deadgroups import DeadLetterGroup
from pgq.client.jobfilter import JobFilter
from pgq.core.errors import InvalidOptionError
from pgq.core.redaction import redact_text
from pgq.web.auth import Principal, need
from pgq.web.render import back, flash, render

router = APIRouter(include_in_schema=False)

ACTIONS = ("retry", "delete")
SAMPLE = 20


def group_filter(task: str, error_type: str, action: str) -> JobFilter:
    if action not in ACTIONS:
        raise InvalidOptionError(f"unknown group action {action!r} (one of: retry, delete)")
    where = JobFilter(state="failed", task=task, error_type=error_type)
    where.params()  # a bad task name is the page's one-line 422, before any statement
    return where


@router.get("/dead-letters", name="dead_letters")
async def page(request: Request) -> HTMLResponse:
    reads: App = request.app.state.reads
    groups = [DeadLetterGroup(g.task, g.error_type, g.count, g.latest_at, g.sample_id,
                              redact_text(reads, g.message, g.task))
              for g in await reads.jobs.adead_letter_groups()]
    return render(request, "dead_letters.html", active="dead_letters", refresh=10,
                  groups=groups)


@router.get("/dead-letters/confirm", name="dead_letters_confirm")
async def confirm(request: Request, principal: Annotated[Principal, Depends(need("operate"))],
                  task: str = "", error_type: str = "", action: str = "") -> HTMLResponse:
    where = group_filter(task, error_type, action)
    reads: App = request.app.state.reads
    preview = await reads.jobs.apreview(action, where, sample=SAMPLE)
    return render(request, "dead_letters_confirm.html", active="dead_letters", task=task,
                  error_type=error_type, action=action, preview=preview)


@router.post("/dead-letters/{action}", name="dead_letters_act")
async def act(request: Request, action: str,
              principal: Annotated[Principal, Depends(need("operate"))],
              task: Annotated[str, Form()] = "",
              error_type: Annotated[str, Form()] = "") -> Response:
    where = group_filter(task, error_type, action)
    app: App = request.app.state.pgq
    if action == "retry":
        result = await app.jobs.aretry(where, actor=principal.name)
    else:
        result = await app.jobs.adelete(where, actor=principal.name)
    verb = "Retried" if action == "retry" else "Deleted"
    flash(request, f"{verb} {result.changed} job{'' if result.changed == 1 else 's'} "
                   f"of {task} ({error_type or 'no error type'})")
    return back(request, "dead_letters")
