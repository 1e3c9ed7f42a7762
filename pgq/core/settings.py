"""pgq's one settings object: built once (from the environment, or from CLI flags that
default to the same ``PGQ_*`` variables), validated, frozen, and passed explicitly.

Every field says its default and what it changes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg.conninfo

from pgq.core.errors import ConfigError

DEFAULT_DATABASE_URL = "postgresql://postgres@localhost:5432/postgres"
"""Where pgq looks when ``PGQ_DATABASE_URL`` is unset: the usual local development server."""

_PG_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}

ENV_DATABASE_URL = "PGQ_DATABASE_URL"
ENV_REDIS_URL = "PGQ_REDIS_URL"
ENV_MAX_PAYLOAD_BYTES = "PGQ_MAX_PAYLOAD_BYTES"
ENV_POOL_MAX_SIZE = "PGQ_POOL_MAX_SIZE"
ENV_CONNECT_TIMEOUT = "PGQ_CONNECT_TIMEOUT"
ENV_DEAD_PEER_TIMEOUT = "PGQ_DEAD_PEER_TIMEOUT"


def normalize_database_url(url: str) -> str:
    """Return ``url`` as a libpq URL (``postgresql://…``) or raise ``ConfigError``.

    Accepts the three spellings users bring: ``postgresql://`` (libpq), ``postgres://``
    (Heroku and friends) and ``postgresql+psycopg://`` (SQLAlchemy), including socket
    (``postgresql:///db?host=/run/postgresql``) and multi-host URLs. No error message
    ever contains the password.
    """
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _PG_SCHEMES:
        raise ConfigError(
            f"database URL must start with postgresql://, postgres:// or "
            f"postgresql+psycopg://, got {redact_url(url)!r}"
        )
    span = _password_span(url)
    if span is not None and any(c in url[span[0]:span[1]] for c in "@/?#"):
        # libpq and SQLAlchemy split such URLs differently (or at the wrong '@'), which
        # would send the password's tail as a host name into logs.
        raise ConfigError(
            f"invalid database URL {redact_url(url)}: percent-encode '@ / ? #' in the "
            "password (e.g. '@' as %40)"
        )
    libpq = f"postgresql://{rest}"  # string surgery: urlunsplit would drop an empty authority
    try:
        params = psycopg.conninfo.conninfo_to_dict(libpq)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"invalid database URL {redact_url(url)}: {_scrub(str(exc), url)}"
        ) from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"invalid database URL {redact_url(url)}: port must be 1-65535")
    return libpq


def normalize_redis_url(url: str) -> str:
    url = url.strip()
    scheme, sep, _rest = url.partition("://")
    if not sep or scheme.lower() not in _REDIS_SCHEMES:
        raise ConfigError(
            f"Redis URL must start with redis://, rediss:// or unix://, got {redact_url(url)!r}"
        )
    try:
        port = urlsplit(url).port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"invalid Redis URL {redact_url(url)}: port must be 1-65535")
    return url


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the userinfo password is in ``url``, read leniently: the user part runs to
    the first ':' and the password to the *last* '@', so a password containing '@', '#'
    or '/' (invalid unless percent-encoded, but users write them) is still found."""
    start = url.find("://")
    start = start + 3 if start != -1 else 0
    rest = url[start:]
    colon = rest.find(":")
    if colon < 0 or any(c in rest[:colon] for c in "/@?#"):
        return None
    at = rest.rfind("@")
    if at <= colon + 1:
        return None
    return start + colon + 1, start + at


_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)([^&#]*)")


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***`` (in the userinfo and in a
    ``password=`` query parameter): the only form pgq ever prints or logs."""
    span = _password_span(url)
    if span is not None:
        url = f"{url[:span[0]]}***{url[span[1]:]}"
    return _QUERY_PASSWORD.sub(r"\1***", url)


def _scrub(message: str, url: str) -> str:
    """Remove any password of ``url`` from ``message`` (libpq quotes bad tokens)."""
    span = _password_span(url)
    secrets = [url[span[0]:span[1]]] if span else []
    secrets += [m.group(2) for m in _QUERY_PASSWORD.finditer(url) if m.group(2)]
    for secret in secrets:
        message = message.replace(secret, "***").replace(unquote(secret), "***")
    return " ".join(message.split())


DAY = 86400.0
RETENTION_FIELDS = ("retain_completed", "retain_failed", "retain_cancelled")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}


def parse_duration(raw: str, what: str) -> float | None:
    """``3600``, ``90s``, ``30m``, ``12h``, ``7d`` -> seconds; ``forever`` -> None."""
    text = raw.strip().lower()
    if text in ("forever", "never", "none"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{what} must be a positive duration such as 3600, 30m, 12h, 7d "
                          f"or 'forever', got {raw!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def sqlalchemy_url(database_url: str) -> str:
    """The SQLAlchemy spelling of a normalized libpq URL (psycopg 3 dialect)."""
    return "postgresql+psycopg" + database_url[len("postgresql") :]


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    """libpq URL of the PostgreSQL database holding the pgq tables (``PGQ_DATABASE_URL``).
    Stored normalized; print it only through :func:`redact_url`."""

    redis_url: str | None = None
    """Redis URL (``PGQ_REDIS_URL``). ``None`` runs pgq on PostgreSQL alone: every Redis
    role has a PostgreSQL fallback, so this changes speed and load, never correctness."""

    redis_prefix: str = "pgq:"
    """Prefix of every Redis key and channel pgq uses (``PGQ_REDIS_PREFIX``), so several
    applications can share one Redis."""

    max_payload_bytes: int = 1024 * 1024
    """Cap on a job's encoded args plus meta, in bytes (``PGQ_MAX_PAYLOAD_BYTES``, default
    1 MiB). Large blobs belong in object storage; the job should carry their key."""

    pool_max_size: int = 4
    """Connections in pgq's own pool, used by enqueues that bring no ``conn=``
    (``PGQ_POOL_MAX_SIZE``, default 4). Enqueues into your transaction use your connection."""

    connect_timeout: float = 5.0
    """Seconds to wait for a PostgreSQL connection before failing with
    ``DatabaseUnavailable`` (``PGQ_CONNECT_TIMEOUT``, default 5)."""

    dead_peer_timeout: float = 5.0
    """Seconds after which an open connection whose server stopped answering is declared
    dead and fails with ``DatabaseUnavailable`` (``PGQ_DEAD_PEER_TIMEOUT``, default 5). A
    network that silently drops packets (a failed switch, a cloud network blip) sends no
    reset: without this, such a connection waits out the kernel's retransmissions, about
    15 minutes. Every connection pgq opens sets TCP keepalives and ``tcp_user_timeout``
    from it (``pgq.store.database.liveness_params``); a worker's own connections use at most a
    quarter of its lease (:meth:`for_lease`). docs/resilience.md has the details."""

    retain_completed: float | None = 7 * DAY
    """Seconds a completed job is kept before retention deletes it (``PGQ_RETAIN_COMPLETED``:
    seconds or ``30m``/``12h``/``7d``, or ``forever``). Default 7 days."""

    retain_failed: float | None = None
    """Seconds a failed (dead-letter) job is kept (``PGQ_RETAIN_FAILED``). Default: until
    someone handles it (retries or deletes it). Silent dead-letter accumulation is one of
    the failures pgq exists to prevent, and deleting dead letters nobody looked at is the
    same failure; set a retention only where something else keeps them (docs/operations.md)."""

    retain_cancelled: float | None = 7 * DAY
    """Seconds a cancelled job is kept (``PGQ_RETAIN_CANCELLED``). Default 7 days."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "database_url", normalize_database_url(self.database_url))
        for name in RETENTION_FIELDS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or value <= 0):
                raise ConfigError(f"{name} must be a positive number of seconds or None, "
                                  f"got {value!r}")
        if self.redis_url is not None:
            object.__setattr__(self, "redis_url", normalize_redis_url(self.redis_url))
        if not re.fullmatch(r"[A-Za-z0-9_.:\-]{0,64}", self.redis_prefix):
            raise ConfigError(f"redis_prefix must be up to 64 of [A-Za-z0-9_.:-], got {self.redis_prefix!r}")
        for name in ("max_payload_bytes", "pool_max_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an int, got {value!r}")
        for name in ("connect_timeout", "dead_peer_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        if not 1024 <= self.max_payload_bytes <= 256 * 1024 * 1024:
            raise ConfigError(
                f"max_payload_bytes must be between 1024 and 268435456, got {self.max_payload_bytes}"
            )
        if not 1 <= self.pool_max_size <= 1000:
            raise ConfigError(f"pool_max_size must be between 1 and 1000, got {self.pool_max_size}")
        if not 0 < self.connect_timeout <= 600:
            raise ConfigError(
                f"connect_timeout must be in (0, 600] seconds, got {self.connect_timeout}"
            )
        if not 0.1 <= self.dead_peer_timeout <= 600:
            raise ConfigError(
                f"dead_peer_timeout must be in [0.1, 600] seconds, got {self.dead_peer_timeout}"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from ``PGQ_*`` variables; keyword overrides that are not ``None``
        (typically CLI flags) win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if url := env.get(ENV_DATABASE_URL):
            values["database_url"] = url
        if url := env.get(ENV_REDIS_URL):
            values["redis_url"] = url
        if (prefix := env.get("PGQ_REDIS_PREFIX")) is not None:
            values["redis_prefix"] = prefix
        for key, var, conv in (
            ("max_payload_bytes", ENV_MAX_PAYLOAD_BYTES, int),
            ("pool_max_size", ENV_POOL_MAX_SIZE, int),
            ("connect_timeout", ENV_CONNECT_TIMEOUT, float),
            ("dead_peer_timeout", ENV_DEAD_PEER_TIMEOUT, float),
        ):
            if raw := env.get(var):
                try:
                    values[key] = conv(raw)
                except ValueError:
                    raise ConfigError(f"{var} must be a number, got {raw!r}") from None
        for key in RETENTION_FIELDS:
            var = "PGQ_" + key.upper()
            if raw := env.get(var):
                values[key] = parse_duration(raw, var)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def retention(self) -> dict[str, float | None]:
        """Seconds to keep finished jobs, per terminal state (None: forever)."""
        return {name.removeprefix("retain_"): getattr(self, name) for name in RETENTION_FIELDS}

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def for_lease(self, lease_seconds: float) -> Settings:
        """These settings for connections that keep leases of ``lease_seconds`` alive (a
        worker's, its supervisor's): a dead peer is declared within a quarter of the lease
        (at least 1 s, and never later than ``dead_peer_timeout``), so a heartbeat cut
        off by a silent network fails, reconnects and tries again before the lease runs
        out. With the default 12 s lease: 3 s."""
        bound = min(self.dead_peer_timeout, max(1.0, lease_seconds / 4))
        return self if bound == self.dead_peer_timeout else replace(self, dead_peer_timeout=bound)

    @property
    def sqlalchemy_url(self) -> str:
        return sqlalchemy_url(self.database_url)

    def __repr__(self) -> str:
        redis = redact_url(self.redis_url) if self.redis_url else None
        return (
            f"Settings(database_url={redact_url(self.database_url)!r}, redis_url={redis!r}, "
            f"max_payload_bytes={self.max_payload_bytes}, pool_max_size={self.pool_max_size}, "
            f"connect_timeout={self.connect_timeout})"
        )
