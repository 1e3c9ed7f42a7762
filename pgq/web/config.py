"""What the web app is configured with: who may sign in and how, the session secret, an
optional read replica. ``WebConfig.from_env`` reads ``PGQ_WEB_*``; ``check`` refuses a
configuration that would let anyone in (no credentials at all).

Credentials, any combination:

* ``token``: one operator token, sent as ``Authorization: Bearer …`` (simple
  deployments, scripts) or typed into the sign-in form;
* ``users``: name, role and scrypt hash (``pgq hash-password``), for the sign-in form;
* ``proxy_header``: a reverse proxy that authenticates users names them in this header
  (e.g. ``X-Forwarded-User``); trusted as is, so only set it when every request passes
  through that proxy. Those users are read-only unless listed in ``proxy_operators``;
* API keys (``pgq api-keys create``), stored hashed in the database: always accepted.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pgq.core.errors import ConfigError
from pgq.web.passwords import check_hash

Role = Literal["read", "operator"]
ROLES: tuple[Role, ...] = ("read", "operator")

_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_USER = re.compile(r"^[^\s:,]{1,100}$")

NO_CREDENTIALS = ("pgq web refuses to start without credentials: set PGQ_WEB_TOKEN (--token), "
                  "PGQ_WEB_USERS (--user) or PGQ_WEB_PROXY_HEADER (--proxy-header); "
                  "see docs/web.md")


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password_hash: str

    def __repr__(self) -> str:  # the hash is not a secret, but it is no one's business
        return f"User({self.name!r}, {self.role!r})"


def parse_user(spec: str) -> User:
    """``name:role:hash`` (the form of ``--user`` and of each ``PGQ_WEB_USERS`` item)."""
    name, _, rest = spec.strip().partition(":")
    role, _, password_hash = rest.partition(":")
    if not _USER.match(name):
        raise ConfigError(f"web user {name!r}: a name is 1-100 characters without spaces, "
                          "':' or ','")
    if role not in ROLES:
        raise ConfigError(f"web user {name!r}: role must be read or operator, got {role!r}")
    return User(name, role, check_hash(password_hash))


@dataclass(frozen=True)
class WebConfig:
    token: str | None = field(default=None, repr=False)
    users: Mapping[str, User] = field(default_factory=dict)
    proxy_header: str | None = None
    proxy_operators: frozenset[str] = frozenset()
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    """Signs the session cookie. Random per process by default: set ``PGQ_WEB_SECRET``
    when several processes serve the dashboard, or sessions end on every restart."""
    secure_cookies: bool = False
    """Mark the session cookie Secure (HTTPS only); set it when served over TLS."""
    replica_url: str | None = field(default=None, repr=False)
    """Read the job lists from this PostgreSQL (a streaming replica)."""
    session_hours: float = 12.0
    read_timeout: float = 5.0
    """Seconds a read (a page's or the API's) may run before PostgreSQL cancels it."""

    def check(self) -> WebConfig:
        if not (self.token or self.users or self.proxy_header):
            raise ConfigError(NO_CREDENTIALS)
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("PGQ_WEB_TOKEN must be at least 16 characters (it is a password)")
        if self.proxy_header is not None and not _HEADER.match(self.proxy_header):
            raise ConfigError(f"PGQ_WEB_PROXY_HEADER {self.proxy_header!r} is not a header name")
        if not 0.1 <= self.read_timeout <= 600:
            raise ConfigError(f"PGQ_WEB_READ_TIMEOUT must be 0.1 to 600 seconds, got "
                              f"{self.read_timeout}")
        if len(self.secret) < 16:
            raise ConfigError("PGQ_WEB_SECRET must be at least 16 characters")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> WebConfig:
        """``PGQ_WEB_*`` variables, then ``overrides`` (the CLI's flags) where not None."""
        env = os.environ if environ is None else environ
        users = [parse_user(s) for s in re.split(r"[,\s]+", env.get("PGQ_WEB_USERS", "")) if s]
        values: dict[str, object] = {
            "token": env.get("PGQ_WEB_TOKEN") or None,
            "users": {u.name: u for u in users},
            "proxy_header": env.get("PGQ_WEB_PROXY_HEADER") or None,
            "proxy_operators": frozenset(
                n.strip() for n in env.get("PGQ_WEB_PROXY_OPERATORS", "").split(",") if n.strip()),
            "secure_cookies": env.get("PGQ_WEB_SECURE_COOKIES", "").lower() in ("1", "true", "yes"),
            "replica_url": env.get("PGQ_WEB_REPLICA_URL") or None,
        }
        if env.get("PGQ_WEB_READ_TIMEOUT"):
            try:
                values["read_timeout"] = float(env["PGQ_WEB_READ_TIMEOUT"])
            except ValueError:
                raise ConfigError("PGQ_WEB_READ_TIMEOUT must be a number of seconds, got "
                                  f"{env['PGQ_WEB_READ_TIMEOUT']!r}") from None
        if env.get("PGQ_WEB_SECRET"):
            values["secret"] = env["PGQ_WEB_SECRET"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).check()  # type: ignore[arg-type]
