"""A database for demos and first steps, on any machine that has Python.

``demo_database_url()`` picks, in order: ``PGQ_DATABASE_URL`` if set (used as it is);
a PostgreSQL answering on localhost:5432; else an embedded PostgreSQL from the
``pgserver`` package (real PostgreSQL binaries shipped in a wheel: ``pip install
'pgq-jobs[embedded]'``), with its data under the user's cache directory, stopped when
the process exits. On the last two, the demo gets a fresh ``pgq_demo`` database each
run (dropped and recreated), so it never writes into your own databases and always
starts from the same state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo

from pgq.core.errors import ConfigError
from pgq.core.settings import ENV_DATABASE_URL

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
    if _answers(LOCAL_URL):
        return fresh_demo_database(LOCAL_URL), f"local PostgreSQL on localhost:5432, database {DEMO_DATABASE}"
    server = start_embedded()
    return fresh_demo_database(server), (
        f"embedded PostgreSQL (data in {cache_dir() / 'embedded'}), database {DEMO_DATABASE}")


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def fresh_demo_database(server_url: str) -> str:
    """Drop and recreate ``pgq_demo`` on the server of ``server_url``; its URL."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DEMO_DATABASE}")
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    info["dbname"] = DEMO_DATABASE
    return _as_url(info)


def _as_url(info: dict[str, Any]) -> str:
    host = str(info.get("host") or "")
    user = str(info.get("user") or "")
    port = f":{info['port']}" if info.get("port") else ""
    if host.startswith("/"):  # a socket directory: libpq takes it as a query parameter
        return f"postgresql://{user}@/{info['dbname']}?host={host}"
    return f"postgresql://{user}@{host}{port}/{info['dbname']}"


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
