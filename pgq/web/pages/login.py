"""Signing in and out with the form (users with a password, or the operator token).

The answer to a failed sign-in is the same for an unknown user and a wrong password, and
costs the same (an unknown user still pays one scrypt), so the form does not tell which
user names exist.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pgq.web.auth import check_csrf, public, token_fingerprint
from pgq.web.config import WebConfig
from pgq.web.passwords import hash_password, verify_password
from pgq.web.render import render, url

router = APIRouter(include_in_schema=False)

_DUMMY_HASH = hash_password("an unknown user's password is checked against this")
FAILED = "Wrong user name or password."


def _local(next_path: str | None, request: Request) -> str:
    """Where to go after signing in: a path on this site only (no open redirect)."""
    if next_path and next_path.startswith("/") and not next_path.startswith(("//", "/\\")):
        return next_path
    return url(request, "overview")


@router.get("/login", name="login")
@public
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    config: WebConfig = request.app.state.web_config
    return render(request, "login.html", next=next or "", error=None,
                  has_users=bool(config.users), has_token=config.token is not None)


@router.post("/login")
@public
async def login(request: Request, username: Annotated[str, Form()] = "",
                password: Annotated[str, Form()] = "",
                next: Annotated[str, Form()] = "") -> Response:
    await check_csrf(request)  # login CSRF: no signing a victim in as the attacker
    config: WebConfig = request.app.state.web_config
    session: dict[str, object] = {}
    user = config.users.get(username) if username else None
    if username:
        logins: asyncio.Semaphore = request.app.state.logins
        if logins.locked():  # scrypt is the costly part: a flood waits for no one
            return render(request, "login.html", status_code=429, next=next,
                          error="Too many sign-ins at once: try again in a moment.",
                          has_users=bool(config.users), has_token=config.token is not None)
        async with logins:
            ok = await asyncio.to_thread(verify_password, password,
                                         user.password_hash if user else _DUMMY_HASH)
        if ok and user is not None:
            session = {"user": user.name, "via": "user",
                       "pw": token_fingerprint(user.password_hash)}
    elif config.token is not None and password and hmac.compare_digest(
            password.encode(), config.token.encode()):
        session = {"user": "token", "via": "token", "tok": token_fingerprint(config.token)}
    if not session:
        return render(request, "login.html", status_code=401, next=next, error=FAILED,
                      has_users=bool(config.users), has_token=config.token is not None)
    request.session.clear()  # a fresh session (and CSRF token) for the signed-in user
    request.session.update(session)
    return RedirectResponse(_local(next, request), status_code=303)


@router.post("/logout", name="logout")
async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse(url(request, "login"), status_code=303)
