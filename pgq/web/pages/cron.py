"""The cron page: each entry declared on the App the web app serves (``pgq web --app
mod:app``) with its schedule, zone, next fires (UTC and the zone's local time) and its
latest fires with the jobs they enqueued and those jobs' states
(``pgq.client.cronreads.acron_status``).

The entries are read from the primary App, not the read replica: ``app.schedules`` is
declared in code on the App that was passed in, and a replica App has none."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from pgq.client.app import App
from pgq.client.cronreads import acron_status
from pgq.web.render import render

router = APIRouter(include_in_schema=False)

NEXT_FIRES = 5
LAST_FIRES = 5


def local(moment: datetime, zone: str) -> str:
    """``moment`` as a wall-clock time in ``zone`` (the entry's own, already checked
    when it was declared)."""
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


@router.get("/cron", name="cron")
async def cron(request: Request) -> HTMLResponse:
    app: App = request.app.state.pgq
    entries = await acron_status(app, next_count=NEXT_FIRES, last_count=LAST_FIRES)
    return render(request, "cron.html", active="cron", refresh=10, entries=entries,
                  local=local)
