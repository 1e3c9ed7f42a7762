"""HTTP API keys (``app.api_keys``): made, listed, revoked and checked here, stored in
``pgq_api_keys`` as the SHA-256 of the secret only. The secret is ``pgq_`` and 32
random bytes (URL-safe base64), returned once by ``create``: random enough that a fast
hash is the right one (there is nothing to brute-force), so each request's check is one
index probe. A key has scopes: ``enqueue``, ``read``, ``operate``.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from pgq.client.admin import _Runner, default_actor
from pgq.core.clock import Clock
from pgq.core.errors import InvalidOptionError
from pgq.store.database import Pools
from pgq.store.plan import Exec, Plan

SCOPES = ("enqueue", "read", "operate")
"""What a key may do: enqueue jobs, read (jobs, queues, stats), operate (actions)."""
PREFIX = "pgq_"
"""Every secret starts so (secret scanners and people can tell what it is)."""
MAX_NAME = 100


@dataclass(frozen=True)
class ApiKey:
    """One key as stored, without its hash."""

    id: int
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str | None
    last_used_at: datetime | None
    """The latest accepted use, to within a minute (written at most once a minute)."""
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        return cls(row[0], row[1], tuple(row[2]), row[3], row[4], row[5], row[6])


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidOptionError(f"api key name must be 1 to {MAX_NAME} printable characters, "
                                 f"got {name!r}")
    return name


def check_scopes(scopes: object) -> list[str]:
    items = [scopes] if isinstance(scopes, str) else scopes
    if not isinstance(items, Iterable) or not (items := list(items)):
        raise InvalidOptionError(f"scopes must be a non-empty list of {', '.join(SCOPES)}, "
                                 f"got {scopes!r}")
    for scope in items:
        if scope not in SCOPES:
            raise InvalidOptionError(f"unknown scope {scope!r} (one of: {', '.join(SCOPES)})")
    return sorted(set(items), key=SCOPES.index)


def key_hash(secret: str) -> str:
    """The stored form of a secret: hex SHA-256 (see the module docstring for why fast)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def plan_create(name: str, scopes: object, actor: str | None, now: datetime | None) -> Plan:
    checked, wanted = check_name(name), check_scopes(scopes)
    secret = PREFIX + secrets.token_urlsafe(32)
    rows = yield Exec("api_key_create", {"name": checked, "scopes": wanted,
                                         "key_hash": key_hash(secret), "actor": actor,
                                         "now": now})
    if not rows:
        raise InvalidOptionError(f"api key {checked!r} exists already (revoke it, or pick "
                                 "another name)")
    return ApiKey.from_row(rows[0]), secret


def plan_list() -> Plan:
    rows = yield Exec("api_key_list", {})
    return [ApiKey.from_row(r) for r in rows]


def plan_revoke(name: str, actor: str | None, now: datetime | None) -> Plan:
    rows = yield Exec("api_key_revoke", {"name": check_name(name), "actor": actor, "now": now})
    if not rows:
        raise InvalidOptionError(f"no api key named {name!r}")
    return ApiKey.from_row(rows[0])


def plan_verify(secret: object, now: datetime | None) -> Plan:
    # Not one of ours: refused without a query (a client sending junk costs nothing).
    if not isinstance(secret, str) or not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    rows = yield Exec("api_key_verify", {"key_hash": key_hash(secret), "now": now})
    return ApiKey.from_row(rows[0]) if rows else None


class ApiKeys(_Runner):
    """``app.api_keys``: the HTTP API's keys."""

    def create(self, name: str, scopes: Iterable[str], *,
               actor: str | None = None) -> tuple[ApiKey, str]:
        """A new key named ``name`` with ``scopes``; returns it and its secret, which is
        shown this once (only its hash is stored)."""
        result: tuple[ApiKey, str] = self._run(
            plan_create(name, scopes, actor or default_actor(), self._clock.now()))
        return result

    def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, by name (never a hash)."""
        result: builtins.list[ApiKey] = self._run(plan_list())
        return result

    def revoke(self, name: str, *, actor: str | None = None) -> ApiKey:
        """Refuse the key from now on (``InvalidOptionError`` if there is none)."""
        result: ApiKey = self._run(plan_revoke(name, actor or default_actor(),
                                               self._clock.now()))
        return result

    def verify(self, secret: str) -> ApiKey | None:
        """The live key this secret is, or None (unknown, revoked, malformed). Records
        the use at most once a minute per key."""
        result: ApiKey | None = self._run(plan_verify(secret, self._clock.now()))
        return result

    async def acreate(self, name: str, scopes: Iterable[str], *,
                      actor: str | None = None) -> tuple[ApiKey, str]:
        result: tuple[ApiKey, str] = await self._arun(
            plan_create(name, scopes, actor or default_actor(), self._clock.now()))
        return result

    async def alist(self) -> builtins.list[ApiKey]:
        result: builtins.list[ApiKey] = await self._arun(plan_list())
        return result

    async def arevoke(self, name: str, *, actor: str | None = None) -> ApiKey:
        result: ApiKey = await self._arun(plan_revoke(name, actor or default_actor(),
                                                      self._clock.now()))
        return result

    async def averify(self, secret: str) -> ApiKey | None:
        result: ApiKey | None = await self._arun(plan_verify(secret, self._clock.now()))
        return result


class ApiKeyAccess:
    """``App.api_keys`` (a base of ``App``, so the App class stays within its size)."""

    _pools: Pools
    clock: Clock

    @cached_property
    def api_keys(self) -> ApiKeys:
        """The HTTP API's keys: create, list, revoke, verify (docs/operations.md)."""
        return ApiKeys(self._pools, self.clock)
