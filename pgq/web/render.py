"""Rendering pages: one Jinja2 environment (autoescaping on for every template, and no
job data is ever marked safe), the context every page gets, partial refreshes, and
flash messages.

A page's live part is its ``live`` block. ``static/pgq.js`` re-fetches the page every
few seconds with ``X-PGQ-Partial: 1``, and ``render`` then answers with that block
alone (``base.html`` renders nothing else when ``partial`` is set), so pages refresh
without a reload and without a second set of templates.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import URL

from pgq.web.auth import CSRF_FIELD, Principal, csrf_token

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("pgq.web", "templates"),
    autoescape=True,  # every template, whatever its extension
    undefined=jinja2.StrictUndefined,  # a typo in a template fails its test, not silently
    trim_blocks=True, lstrip_blocks=True,
)

NAV = [("overview", "Overview"), ("queues", "Queues"), ("jobs", "Jobs"),
       ("dead_letters", "Dead letters"), ("cron", "Cron"), ("workers", "Workers")]


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """``3m 20s ago`` / ``in 5s``: how operators read times at a glance (the full time
    is in the element's title)."""
    if moment is None:
        return "—"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 1:
        return "now"
    units = [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")]
    parts: list[str] = []
    for size, unit in units:
        if seconds >= size and len(parts) < 2:
            parts.append(f"{int(seconds // size)}{unit}")
            seconds %= size
    return ("in " + " ".join(parts)) if future else (" ".join(parts) + " ago")


def iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def pretty(value: Any) -> str:
    """JSON for display (escaped by the template like any other text)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


ENV.filters.update(ago=ago, iso=iso, pretty=pretty)


def url(request: Request, name: str, /, query: dict[str, Any] | None = None,
        **params: Any) -> str:
    """The path of a named route, under whatever prefix the app is mounted at."""
    path = str(request.url_for(name, **params).path)
    if query:
        path += "?" + str(URL("").include_query_params(
            **{k: v for k, v in query.items() if v not in (None, "", [])}).query)
    return path


def flash(request: Request, message: str, kind: str = "ok") -> None:
    """A message shown once, on the next page (post/redirect/get)."""
    request.session.setdefault("flash", []).append([kind, message])


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    principal: Principal | None = getattr(request.state, "principal", None)
    page = ENV.get_template(template)
    values = {
        "request": request, "principal": principal, "nav": NAV,
        "csrf_field": CSRF_FIELD, "csrf": csrf_token(request),
        "url": lambda name, query=None, **params: url(request, name, query, **params),
        "now": datetime.now(UTC), **context,
    }
    values["partial"] = request.headers.get("x-pgq-partial") == "1"
    # A flash waits for the next full page: a refresh must not swallow it unseen.
    values["flashes"] = [] if values["partial"] else request.session.pop("flash", [])
    return HTMLResponse(page.render(values), status_code=status_code)


def back(request: Request, name: str, /, query: dict[str, Any] | None = None,
         **params: Any) -> RedirectResponse:
    """303 to a page after an action (post/redirect/get)."""
    return RedirectResponse(url(request, name, query, **params), status_code=303)
