"""Who is asking, and may they: every route is authenticated unless its endpoint is
marked ``@public`` (the sign-in page, static files, ``/api/health``), so a route added
later without thinking about it is closed, not open.

How a request authenticates, first match wins:

1. ``Authorization: Bearer <token or API key>``: the configured operator token, or an
   API key (``pgq api-keys``; looked up by its SHA-256). A bearer that matches nothing
   is a 401, never a fall-through to a cookie.
2. The trusted proxy header, when configured: the proxy has authenticated the user.
3. The session cookie the sign-in form set (signed with the config's secret).

Roles map to scopes: ``read`` reads; ``operator`` also acts (``operate``) and enqueues;
an API key has the scopes it was created with. CSRF: a state-changing request that a
browser could send on its own (cookie or proxy authenticated) must carry the session's
CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``); a bearer request
cannot be forged cross-site (browsers never add that header themselves), so it needs none.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request

from pgq.web.config import Role, WebConfig

Scope = Literal["read", "operate", "enqueue"]
SCOPES: tuple[Scope, ...] = ("read", "operate", "enqueue")
ROLE_SCOPES: dict[Role, frozenset[str]] = {
    "read": frozenset({"read"}),
    "operator": frozenset({"read", "operate", "enqueue"}),
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_PUBLIC = "__pgq_public__"

Via = Literal["session", "token", "key", "proxy"]


@dataclass(frozen=True)
class Principal:
    name: str
    """Recorded as the actor of every action this principal takes."""
    scopes: frozenset[str]
    via: Via

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def operator(self) -> bool:
        return self.can("operate")


class NotAuthenticated(Exception):  # a control-flow signal, mapped to 401/303
    pass


class Forbidden(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def public(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a route's endpoint as open to anyone (the sign-in page, health)."""
    setattr(endpoint, _PUBLIC, True)
    return endpoint


def token_fingerprint(token: str) -> str:
    """What a session remembers of the token or password hash it signed in with: a
    changed token, or a user's new password, ends it."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(24)
    return token


async def check_csrf(request: Request) -> None:
    expected = request.session.get("csrf")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not isinstance(expected, str) or sent is None or not hmac.compare_digest(
            sent.encode(), expected.encode()):  # bytes: a str with non-ASCII raises
        raise Forbidden("CSRF token missing or wrong: reload the page and try again")


async def authenticate(request: Request) -> Principal | None:
    config: WebConfig = request.app.state.web_config
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return None
        if config.token is not None and hmac.compare_digest(credential.encode(),
                                                            config.token.encode()):
            return Principal("token", ROLE_SCOPES["operator"], "token")
        verify: Callable[[str], Awaitable[Any]] = request.app.state.pgq.api_keys.averify
        key = await verify(credential)
        return None if key is None else Principal(f"key:{key.name}", frozenset(key.scopes), "key")
    if config.proxy_header is not None:
        name = request.headers.get(config.proxy_header, "").strip()
        if name:
            role: Role = "operator" if name in config.proxy_operators else "read"
            return Principal(name, ROLE_SCOPES[role], "proxy")
    return session_principal(request, config)


def session_principal(request: Request, config: WebConfig) -> Principal | None:
    session = request.session
    name = session.get("user")
    if not isinstance(name, str):
        return None
    if session.get("via") == "token":
        if config.token is None or session.get("tok") != token_fingerprint(config.token):
            return None
        return Principal(name, ROLE_SCOPES["operator"], "session")
    user = config.users.get(name)
    # The role is read from the config on every request: a demoted user is demoted now.
    if user is None or session.get("pw") != token_fingerprint(user.password_hash):
        return None
    return Principal(user.name, ROLE_SCOPES[user.role], "session")


async def guard(request: Request) -> None:
    """The app-wide dependency: authenticate (unless the endpoint is public) and check
    CSRF on state-changing requests a browser could send on its own."""
    if getattr(request.scope.get("endpoint"), _PUBLIC, False):
        return
    principal = await authenticate(request)
    if principal is None:
        raise NotAuthenticated()
    request.state.principal = principal
    if request.method not in SAFE_METHODS and principal.via in ("session", "proxy"):
        await check_csrf(request)


def need(scope: Scope) -> Callable[[Request], Principal]:
    """A route dependency: the principal, if it has ``scope`` (else 403)."""
    def dependency(request: Request) -> Principal:
        principal: Principal = request.state.principal
        if not principal.can(scope):
            raise Forbidden(f"{principal.name} may not {scope}: that needs the "
                            f"{'operator role' if scope == 'operate' else scope + ' scope'}")
        return principal
    return dependency
