"""Test-wide fixtures: real PostgreSQL and Redis by URL, never mocks.

The run fails at once, loudly, if either service is unreachable: a green run must mean
the tests ran. Each test that needs a database gets a fresh one, cloned from a migrated
template made once per session, and dropped afterwards.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

import pgq
from pgq.core.settings import Settings
from pgq.store import migrate

ADMIN_URL = os.environ.get("PGQ_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PGQ_REDIS_URL", "redis://127.0.0.1:6379/0")

TEST_PROCESSES = 2
"""Processes the suite runs in (pytest-xdist) unless ``-n`` says otherwise. Most tests
wait on PostgreSQL, subprocesses and timers rather than on the CPU, so two processes
nearly halve the run on 2 cores. ``-n 0`` or ``-p no:xdist`` runs in this process (for
``-s``, ``--pdb``, one file). Set here rather than as ``-n 2`` in ``addopts``: an ``-n``
in addopts makes ``-p no:xdist`` a usage error."""


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Runs before xdist's own hook, which turns ``numprocesses`` into worker processes.
    ``loadgroup`` keeps tests marked ``xdist_group`` in one process (see below)."""
    if not config.pluginmanager.has_plugin("xdist") or hasattr(config, "workerinput"):
        return
    if config.option.numprocesses is None and not config.option.collectonly \
            and not config.getoption("usepdb", False):
        config.option.numprocesses = TEST_PROCESSES
    if config.option.numprocesses and config.option.dist == "no":
        config.option.dist = "loadgroup"


GROUPS = {
    # Worker subprocesses by the dozen, kill -9, own PostgreSQL and Redis servers, up to
    # 60+ connections a test: two of these at once ran the shared server out of
    # connections and starved each other's timing, so they take turns in one process.
    # (test_metrics: with --processes 2, one child started late and drained all 105 jobs
    # alone, failing "every process ran some of the jobs", beside a crash test.)
    "processes": ("acceptance/test_worker_processes.py", "acceptance/test_worker_crashes.py",
                  "acceptance/test_redis_fallback.py", "acceptance/test_metrics.py", "faults/"),
    "browser": ("browser/",),  # one Chromium for them all (a session fixture per process)
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "serial: runs while no other test of the suite runs "
                            "(a timing bound a busy neighbour would break)")
    if not config.pluginmanager.has_plugin("xdist"):  # -p no:xdist: the marks stay valid
        config.addinivalue_line("markers", "xdist_group(name): tests run in one process")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        where = Path(str(item.path)).relative_to(root).as_posix()
        for group, paths in GROUPS.items():
            if where.startswith(paths):
                item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def _serial_tests_run_alone(request: pytest.FixtureRequest,
                            tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Under xdist, a ``serial`` test holds a lock file exclusively, every other test
    holds it shared. A turnstile (taken exclusively on the way in) makes a waiting
    serial test block new entrants, so a stream of short tests cannot starve it. The
    files live in the run's base temporary directory (each worker's is inside it)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    base = tmp_path_factory.getbasetemp().parent / "serial"
    serial = request.node.get_closest_marker("serial") is not None
    with open(f"{base}.turnstile", "a") as turnstile, open(f"{base}.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Unit tests do no I/O and run anywhere; anything else needs both services, and a
    missing one stops the run with a non-zero exit instead of skipping tests."""
    unit = Path(__file__).parent / "unit"
    if all(Path(str(item.path)).is_relative_to(unit) for item in session.items):
        return
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.exit(f"PostgreSQL is unreachable at {ADMIN_URL}: {exc}".strip(), returncode=3)
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.exit(f"Redis is unreachable at {REDIS_URL}: {exc}", returncode=3)


def url_for(database: str) -> str:
    """ADMIN_URL pointed at another database on the same server."""
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{database}"))


class Databases:
    """Creates uniquely named databases on the test server and drops them at the end."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self, template: str | None = None, prefix: str = "pgq_test") -> str:
        name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            clause = f" TEMPLATE {template}" if template else ""
            conn.execute(f"CREATE DATABASE {name}{clause}")
        self.created.append(name)
        return name

    def drop_all(self) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            for name in reversed(self.created):
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.created.clear()


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    dbs = Databases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def migrated_template(databases: Databases) -> str:
    name = databases.create(prefix="pgq_tpl")
    migrate.upgrade(Settings(database_url=url_for(name)))
    return name


@pytest.fixture
def empty_db_url(databases: Databases) -> str:
    """A fresh database with nothing in it."""
    return url_for(databases.create())


@pytest.fixture
def db_url(databases: Databases, migrated_template: str) -> str:
    """A fresh database with the pgq schema at head."""
    return url_for(databases.create(template=migrated_template))


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url, redis_url=REDIS_URL)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection for looking at the database from outside."""
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture
def make_app(settings: Settings) -> Iterator[Callable[..., pgq.App]]:
    """Apps on the test database (``make_app(strict=False)``), closed afterwards."""
    apps: list[pgq.App] = []

    def make(**kwargs: Any) -> pgq.App:
        app = pgq.App(settings, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
