"""The app factory: ``create_app(app)`` is the dashboard and the HTTP API as one ASGI
application (FastAPI), to serve with ``pgq web`` or mount in your own ASGI app::

    outer.mount("/pgq", pgq.web.create_app(jobs_app))

Every route is authenticated (``pgq.web.auth``); every response carries the security
headers (``pgq.web.headers``); errors map to one status each (``pgq.web.errors``).
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.sessions import SessionMiddleware
from starlette.staticfiles import StaticFiles

import pgq
from pgq.client.app import App
from pgq.web import api, errors
from pgq.web.auth import guard
from pgq.web.config import WebConfig
from pgq.web.headers import SecurityHeaders
from pgq.web.pages import cron, deadletters, jobs, login, overview, queues, workers

SESSION_COOKIE = "pgq_session"


def create_app(app: App, config: WebConfig | None = None) -> FastAPI:
    """The web app over ``app``'s database. ``config`` defaults to ``PGQ_WEB_*``; a
    config without any credentials is refused (``ConfigError``)."""
    config = (WebConfig.from_env() if config is None else config).check()
    # openapi_url=None: FastAPI would serve the document outside the app's dependencies,
    # i.e. to anyone; the route below serves it behind the guard like every other.
    web = FastAPI(title="pgq", version=pgq.__version__, openapi_url=None,
                  docs_url=None, redoc_url=None,  # their pages load scripts from a CDN
                  dependencies=[Depends(guard)],
                  description="The pgq HTTP API: enqueue, inspect and operate jobs. "
                  "Authenticate with Authorization: Bearer <token or API key>.")
    web.state.pgq = app
    web.state.reads = (App(app.settings.with_changes(database_url=config.replica_url),
                           strict=False) if config.replica_url else app)
    web.state.web_config = config
    web.add_middleware(SessionMiddleware, secret_key=config.secret, session_cookie=SESSION_COOKIE,
                       max_age=int(config.session_hours * 3600), same_site="strict",
                       https_only=config.secure_cookies)
    web.add_middleware(SecurityHeaders)  # added last: outermost, so errors carry them too
    web.mount("/static", StaticFiles(packages=[("pgq.web", "static")]), name="static")
    errors.install(web)
    for module in (login, overview, queues, jobs, deadletters, cron, workers, api):
        web.include_router(module.router)

    @web.get("/api/openapi.json", include_in_schema=False, name="openapi")
    async def openapi() -> JSONResponse:
        return JSONResponse(web.openapi())

    return web
