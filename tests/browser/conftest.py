"""Browser fixtures: Debian's Chromium driven by Playwright (one browser per session, a
fresh context per test), the web app under a real uvicorn (tests/web/conftest.py), and a
real worker in a thread with a stats leader that refreshes every second.

The browser is never downloaded: ``.ci/run`` installs Debian's ``chromium`` when it is
absent, and these tests fail (not skip) without it.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

import pgq
from pgq.scheduling.stats import StatsService
from pgq.worker import WorkerConfig
from tests.integration.test_worker import Background
from tests.web import conftest as web_fixtures
from tests.web.conftest import OPERATOR, OPERATOR_PASSWORD, LiveServer

# The web tests' fixtures, here by name: the app on a fresh database and its live server.
pgq_app = web_fixtures.pgq_app
web = web_fixtures.web
live_server = web_fixtures.live_server

TIMEOUT_MS = 15_000
"""How long a page may take to show what a test waits for: a stats refresh (1 s here)
plus the page's live refresh (3 s), with room for a loaded CI machine."""

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    found = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        pytest.fail("Debian's chromium is not installed (.ci/run installs it: "
                    "apt-get install chromium); the browser tests need it", pytrace=False)
    return found


# Package scope, not session: sync Playwright runs an event loop in this thread while it
# is open, and every later test calling asyncio.run() failed with "cannot be called from
# a running event loop" (tests/integration runs after tests/browser).
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # As root, Chromium refuses to start with its sandbox (CI containers run as root).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    b = playwright.chromium.launch(executable_path=chromium_path(), args=args)
    expect.set_options(timeout=TIMEOUT_MS)
    yield b
    b.close()


@pytest.fixture
def new_page(browser: Browser, live_server: LiveServer) -> Iterator[Callable[..., Page]]:
    """``new_page(viewport=...)``: a page in a context of its own (its own cookies), on
    the live server; closed after the test."""
    contexts = []

    def make(viewport: dict[str, int] = DESKTOP) -> Page:
        context = browser.new_context(base_url=live_server.url, viewport=viewport)  # type: ignore[arg-type]
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Page:
    return new_page()


def sign_in(page: Page, user: str = OPERATOR, password: str = OPERATOR_PASSWORD) -> None:
    """What a person does: open the dashboard, get sent to the form, sign in."""
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in to pgq")).to_be_visible()
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()


def csrf_of(page: Page) -> str:
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token, "the page has no CSRF meta tag"
    return token


class RunningWorker:
    """A real worker in a thread, on an App of its own (its own pools and event loop;
    the web app's App serves uvicorn's loop), with a stats leader refreshing every second
    instead of every 5 s (WorkerConfig has no interval option, so the test runs the
    service itself, as a worker would)."""

    def __init__(self, app: pgq.App, queues: tuple[str, ...]) -> None:
        # shutdown_seconds bounds a stop that finds a job running (tasks here heed
        # ctx.cancelled or the release event, set before the stop).
        self.app = app
        self.stats = StatsService(app, holder="browser-tests-stats", every=1.0).start()
        self.background = Background(pgq.Worker(app, WorkerConfig(
            queues=tuple(pgq.QueueSpec(q) for q in queues), concurrency=4, poll_seconds=0.05,
            shutdown_seconds=5, stats=False, maintenance=False)),
            stop_when=None)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.background.worker.request_stop()
        self.background.join()
        self.stats.stop()


@pytest.fixture
def worker_app(make_app: Callable[..., pgq.App]) -> pgq.App:
    """The App the worker runs: register the test's tasks on it before ``start_worker``."""
    return make_app()


@pytest.fixture
def release() -> threading.Event:
    """Set when the test ends, before its worker stops: what a task that holds its job
    (to be seen running) waits on."""
    return threading.Event()


@pytest.fixture
def start_worker(worker_app: pgq.App, release: threading.Event,
                 ) -> Iterator[Callable[..., RunningWorker]]:
    """``start_worker("default", "mail")``: a worker serving those queues, stopped after
    the test."""
    started: list[RunningWorker] = []

    def start(*queues: str) -> RunningWorker:
        started.append(RunningWorker(worker_app, queues or ("default",)))
        return started[-1]

    yield start
    release.set()
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where screenshots go: ``$PGQ_SCREENSHOTS`` or /tmp/pgq-screenshots, never the
    repository."""
    where = Path(os.environ.get("PGQ_SCREENSHOTS") or "/tmp/pgq-screenshots")  # noqa: S108
    where.mkdir(parents=True, exist_ok=True)
    return where
