"""The dead letters page (being built)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from pgq.web.render import render

router = APIRouter(include_in_schema=False)


@router.get("/dead-letters", name="dead_letters")
async def page(request: Request) -> HTMLResponse:
    return render(request, "stub.html", active="dead_letters", title="Dead letters")
