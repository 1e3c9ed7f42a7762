"""One status per failure, for pages and the API alike: not signed in → 401 (the API)
or a redirect to the sign-in page (pages); not allowed → 403; bad input → 422 with the
one-line message pgq's validation wrote; an unknown job → 404; the database down → 503.
API errors are ``{"error": message, "type": name}``.
"""

from __future__ import annotations

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from pgq.core.errors import (
    ConfigError,
    DatabaseUnavailable,
    InvalidJobError,
    JobNotFound,
    PgqError,
)
from pgq.web.auth import Forbidden, NotAuthenticated
from pgq.web.render import render, url


def is_api(request: Request) -> bool:
    root = request.scope.get("root_path", "")
    path = request.url.path
    return (path[len(root):] if root and path.startswith(root) else path).startswith("/api")


def status_of(exc: Exception) -> int:
    if isinstance(exc, NotAuthenticated):
        return 401
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, JobNotFound):
        return 404
    if isinstance(exc, InvalidJobError | ConfigError):
        return 422
    if isinstance(exc, DatabaseUnavailable | ReadTimeout):
        return 503
    return 400


def error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
        # The store reports a cancelled statement as DatabaseUnavailable; here it is the
        # read timeout (reads_app), and the operator can do something about it.
        exc = ReadTimeout("the read took longer than the dashboard allows "
                          f"({request.app.state.web_config.read_timeout:g} s) and was cancelled: "
                          "narrow it (a state, a queue, a time range)")
    status = status_of(exc)
    message = exc.message if isinstance(exc, Forbidden) else (
        "authentication required" if isinstance(exc, NotAuthenticated) else str(exc))
    if is_api(request):
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message, "type": type(exc).__name__}, status,
                            headers=headers)
    if status == 401:
        if request.headers.get("x-pgq-partial") == "1":  # the refresh script reloads
            return Response(status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(url(request, "login", {"next": target}), status_code=303)
    return render(request, "error.html", status_code=status, status=status, message=message)


class ReadTimeout(PgqError):
    """A read cancelled by the web app's statement timeout (``WebConfig.read_timeout``)."""


def install(web: FastAPI) -> None:
    for kind in (NotAuthenticated, Forbidden, PgqError):
        web.add_exception_handler(kind, error_response)
