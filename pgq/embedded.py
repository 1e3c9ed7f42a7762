"""A database for demos and first steps, on any machine that has Python.

``demo_database_url()`` picks, in order: ``PGQ_DATABASE_URL`` if set; a PostgreSQL
answering on localhost:5432 (using a ``pgq_demo`` database there, created if missing,
so the demo never writes into your own databases); else an embedded PostgreSQL from
the ``pgserver`` package (real PostgreSQL binaries shipped in a wheel: ``pip install
'pgq-jobs[embedded]'``), with its data under the user's cache directory. The embedded
server stops when the process exits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg

from pgq.errors import ConfigError
from pgq.settings import ENV_DATABASE_URL

LOCAL_URL = "postgresql://postgres@localhost:5432/postgres"
DEMO_DATABASE = "pgq_demo"

_servers: list[Any] = []  # keep the embedded server referenced until exit


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pgq"


def demo_database_url() -> tuple[str, str]:
    """(url, description of where it points)."""
    configured = os.environ.get(ENV_DATABASE_URL)
    if configured:
        return configured, "PGQ_DATABASE_URL"
    local = _local_demo_database()
    if local is not None:
        return local, f"local PostgreSQL on localhost:5432, database {DEMO_DATABASE}"
    return start_embedded(), f"embedded PostgreSQL (data in {cache_dir() / 'embedded'})"


def _local_demo_database() -> str | None:
    try:
        with psycopg.connect(LOCAL_URL, connect_timeout=2, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [DEMO_DATABASE]
            ).fetchone()
            if not exists:
                try:
                    conn.execute(f"CREATE DATABASE {DEMO_DATABASE}")
                except psycopg.Error:
                    return LOCAL_URL  # no CREATEDB right: use the default database
    except psycopg.Error:
        return None
    return LOCAL_URL.rsplit("/", 1)[0] + f"/{DEMO_DATABASE}"


def start_embedded(data_dir: Path | None = None) -> str:
    """Start (or reuse) an embedded PostgreSQL and return its URL."""
    try:
        import pgserver
    except ImportError:
        raise ConfigError(
            "no database configured (PGQ_DATABASE_URL), none on localhost:5432, and the "
            "embedded server is not installed: pip install 'pgq-jobs[embedded]'"
        ) from None
    data_dir = data_dir or cache_dir() / "embedded"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")  # type: ignore[attr-defined]
    _servers.append(server)
    return str(server.get_uri())
