"""Connection liveness without I/O: the libpq parameters derived from
``dead_peer_timeout``, the lease-bound settings of workers and supervisors, and an
inventory of every place pgq opens a PostgreSQL connection, so a new one cannot appear
without the liveness parameters (tests/integration/test_connection_liveness.py reads
them back from the kernel's sockets; tests/faults/test_partition.py proves the
behaviour under a real black hole)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pgq
from pgq.core.settings import Settings
from pgq.store.database import connection_params, liveness_params
from pgq.worker import WorkerConfig
from pgq.worker.supervisor import Supervisor

PGQ = Path(pgq.__file__).parent


@pytest.mark.parametrize("timeout", [0.1, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 12.0, 60.0, 600.0])
def test_a_dead_peer_is_declared_within_the_timeout(timeout: float) -> None:
    params = liveness_params(timeout)
    assert params["keepalives"] == 1
    # Data not acknowledged: exactly the timeout.
    assert params["tcp_user_timeout"] == max(1, round(timeout * 1000))
    # A connection waiting for a reply or idle: silence, then unanswered probes. libpq
    # counts whole seconds, so never under 2 s; never later than the timeout otherwise,
    # and not much sooner (a slow network is not a dead one).
    idle_bound = (params["keepalives_idle"]
                  + params["keepalives_interval"] * params["keepalives_count"])
    assert idle_bound <= max(timeout, 2.0)
    assert idle_bound >= min(timeout, 2.0) * 0.7
    assert all(isinstance(v, int) and v >= 1 for v in params.values())


def test_connection_params_carry_the_connect_timeout_and_liveness() -> None:
    settings = Settings(database_url="postgresql://u@db:5432/app", connect_timeout=2.4,
                        dead_peer_timeout=6.0)
    assert connection_params(settings) == {"connect_timeout": 2, **liveness_params(6.0)}


def test_a_parameter_the_database_url_sets_wins() -> None:
    settings = Settings(database_url="postgresql://u@db/app?keepalives_idle=30&tcp_user_timeout=9000")
    params = connection_params(settings)
    assert "keepalives_idle" not in params and "tcp_user_timeout" not in params
    assert params["keepalives"] == 1  # the rest still applies


def test_workers_and_supervisors_bound_their_connections_by_the_lease() -> None:
    app = pgq.App(Settings(dead_peer_timeout=5.0))
    app.task(name="noop")(lambda: None)
    for lease, expected in ((12.0, 3.0), (4.0, 1.0), (40.0, 5.0)):
        config = WorkerConfig(lease_seconds=lease)
        assert pgq.Worker(app, config).settings.dead_peer_timeout == expected
        supervisor = Supervisor(app, None, (), config, processes=1)
        assert supervisor._settings.dead_peer_timeout == expected
    assert app.settings.dead_peer_timeout == 5.0  # the app's own are untouched


# --- where pgq opens connections -------------------------------------------------------

OPENERS = {"psycopg.connect", "psycopg.Connection.connect", "psycopg.AsyncConnection.connect",
           "psycopg_pool.ConnectionPool", "psycopg_pool.AsyncConnectionPool", "create_engine",
           "ConnectionPool", "AsyncConnectionPool"}

EXPECTED = {
    # Every other module connects through these two, which pass connection_params.
    ("database.py", "connect_async", "psycopg.AsyncConnection.connect"),
    ("database.py", "connect", "psycopg.connect"),
    # The enqueue pools: kwargs=self._kwargs(), which holds connection_params.
    ("database.py", "Pools.connection", "psycopg_pool.ConnectionPool"),
    ("database.py", "Pools.async_connection", "psycopg_pool.AsyncConnectionPool"),
    # pgq migrate's engine: connect_args=connection_params(target).
    ("migrate.py", "_connection", "create_engine"),
    # The demo's one-shot setup (is a local server there; make a fresh demo database):
    # short-lived connections to localhost, closed before any pgq work starts.
    ("embedded.py", "_answers", "psycopg.connect"),
    ("embedded.py", "fresh_demo_database", "psycopg.connect"),
}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _openers(path: Path) -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Call) and _dotted(child.func) in OPENERS:
                found.add((path.name, ".".join(scope), _dotted(child.func)))
            visit(child, scope)

    visit(ast.parse(path.read_text()), [])
    return found


def test_every_place_pgq_opens_a_connection_is_known() -> None:
    """A new way of opening a connection must pass ``connection_params`` (or go through
    ``pgq.store.database.connect``) and be added here; otherwise a silent network can hang it
    for the kernel's 15 minutes."""
    found = set().union(*(_openers(p) for p in sorted(PGQ.rglob("*.py"))))
    assert found == EXPECTED

