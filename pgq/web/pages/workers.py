"""The workers page (being built)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from pgq.web.render import render

router = APIRouter(include_in_schema=False)


@router.get("/workers", name="workers")
async def page(request: Request) -> HTMLResponse:
    return render(request, "stub.html", active="workers", title="Workers")
