"""The app factory: ``create_app(app)`` is the dashboard and the HTTP API as one ASGI
application (FastAPI), to serve with ``pgq web`` or mount in your own ASGI app::

    outer.mount("/pgq", pgq.web.create_app(jobs_app))

Every route is authenticated (``pgq.web.auth``); every response carries the security
headers (``pgq.web.headers``); errors map to one status each (``pgq.web.errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.sessions import SessionMiddleware
from starlette.staticfiles import StaticFiles

import pgq
from pgq.client.app import App
from pgq.web import api, errors
from pgq.web.auth import guard, need
from pgq.web.config import WebConfig
from pgq.web.headers import BodyLimit, SecurityHeaders
from pgq.web.pages import cron, deadletters, jobs, login, overview, queues, workers

SESSION_COOKIE = "pgq_session"
MAX_RESULT_WAITS = 16
"""``GET /api/jobs/{id}/result?wait=`` calls waiting at once: each holds a connection."""
MAX_LOGINS = 2
"""Password checks at once (scrypt: ~50 ms of CPU and 32 MiB each); more answer 429."""
BODY_OVERHEAD = 64 * 1024
"""A request body may exceed the payload cap by this much (the JSON around the args)."""


def with_statement_timeout(url: str, seconds: float) -> str:
    """``url`` with ``options=-c statement_timeout=…`` added: every statement on its
    connections is cancelled past ``seconds`` (a bound on what a filter can cost)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    setting = f"-c statement_timeout={int(seconds * 1000)}"
    options = [v for k, v in query if k == "options"]
    query = [(k, v) for k, v in query if k != "options"]
    query.append(("options", " ".join([*options, setting])))
    # quote, not quote_plus: libpq reads "+" in a URL as a plus sign, not a space.
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def reads_app(app: App, config: WebConfig) -> App:
    """The App the pages and the API read through: the replica if one is configured, and
    in any case connections whose statements stop after ``config.read_timeout``, so no
    filter, however unselective, holds a backend for long. Actions use ``app`` itself."""
    url = with_statement_timeout(config.replica_url or app.settings.database_url,
                                 config.read_timeout)
    reads = App(app.settings.with_changes(database_url=url), strict=False, clock=app.clock)
    reads.registry = app.registry  # the tasks' redaction rules apply to what reads show
    reads.schedules = app.schedules
    return reads


@contextlib.asynccontextmanager
async def _closing_reads(web: FastAPI) -> AsyncIterator[None]:
    """When the server stops, close the async pools it opened and the reads App (the
    caller's ``App`` is the caller's to close). Mounted in another app, whose lifespan
    does not reach mounts, they close with the process."""
    yield
    reads: App = web.state.reads
    for owner in {id(a): a for a in (web.state.pgq, reads)}.values():
        # Async pools belong to this loop, which ends here: left open they would hold
        # their connections with no loop to serve them. A pool opened on another loop
        # (two test clients over one app) cannot be awaited from this one.
        with contextlib.suppress(ValueError, RuntimeError):
            await owner.arelease()
    reads.close()


def create_app(app: App, config: WebConfig | None = None) -> FastAPI:
    """The web app over ``app``'s database. ``config`` defaults to ``PGQ_WEB_*``; a
    config without any credentials is refused (``ConfigError``)."""
    config = (WebConfig.from_env() if config is None else config).check()
    # openapi_url=None: FastAPI would serve the document outside the app's dependencies,
    # i.e. to anyone; the route below serves it behind the guard like every other.
    web = FastAPI(title="pgq", version=pgq.__version__, openapi_url=None,
                  docs_url=None, redoc_url=None,  # their pages load scripts from a CDN
                  lifespan=_closing_reads,
                  dependencies=[Depends(guard)],
                  description="The pgq HTTP API: enqueue, inspect and operate jobs. "
                  "Authenticate with Authorization: Bearer <token or API key>.")
    web.state.pgq = app
    web.state.reads = reads_app(app, config)
    web.state.web_config = config
    web.state.result_waits = asyncio.Semaphore(MAX_RESULT_WAITS)
    web.state.logins = asyncio.Semaphore(MAX_LOGINS)
    web.add_middleware(SessionMiddleware, secret_key=config.secret, session_cookie=SESSION_COOKIE,
                       max_age=int(config.session_hours * 3600), same_site="strict",
                       https_only=config.secure_cookies)
    # Bodies are read before any route's dependencies (the guard too): cap them first.
    web.add_middleware(BodyLimit, limit=app.settings.max_payload_bytes + BODY_OVERHEAD)
    # Added last: outermost, so errors (and the 413) carry the headers too.
    web.add_middleware(SecurityHeaders, hsts=config.secure_cookies)
    web.mount("/static", StaticFiles(packages=[("pgq.web", "static")]), name="static")
    errors.install(web)
    web.include_router(login.router)
    web.include_router(api.router)  # each API route names its own scope
    for module in (overview, queues, jobs, deadletters, cron, workers):
        # Every page reads jobs: an enqueue-only API key may not (its routes add more).
        web.include_router(module.router, dependencies=[Depends(need("read"))])

    @web.get("/api/openapi.json", include_in_schema=False, name="openapi",
             dependencies=[Depends(need("read"))])
    async def openapi() -> JSONResponse:
        return JSONResponse(web.openapi())

    return web
