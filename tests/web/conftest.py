"""Fixtures for the web app: an app on a fresh database with a token, an operator and a
read-only user; a TestClient (in-process ASGI) and a real uvicorn server for browsers."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

import pgq
from pgq.web import User, WebConfig, create_app, hash_password

TOKEN = "t0ken-for-the-web-tests-only"
OPERATOR, OPERATOR_PASSWORD = "olivia", "olivia's long password"
READER, READER_PASSWORD = "rita", "rita's long password"
_HASHES = {OPERATOR: hash_password(OPERATOR_PASSWORD), READER: hash_password(READER_PASSWORD)}


def web_config(**changes: object) -> WebConfig:
    values: dict[str, object] = {
        "token": TOKEN,
        "users": {OPERATOR: User(OPERATOR, "operator", _HASHES[OPERATOR]),
                  READER: User(READER, "read", _HASHES[READER])},
        "secret": "a-fixed-secret-for-the-web-tests",
    }
    values.update(changes)
    return WebConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def pgq_app(make_app: Callable[..., pgq.App]) -> pgq.App:
    """The application's App on a fresh database (any task name may be enqueued)."""
    return make_app(strict=False)


@pytest.fixture
def web(pgq_app: pgq.App) -> FastAPI:
    return create_app(pgq_app, web_config())


@pytest.fixture
def client(web: FastAPI) -> Iterator[TestClient]:
    """A browser-like client that is not signed in."""
    with TestClient(web, follow_redirects=False) as c:
        yield c


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def sign_in(client: TestClient, user: str, password: str) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"username": user, "password": password,
                                         "csrf_token": token, "next": "/"})
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/").text)


@pytest.fixture
def operator(client: TestClient) -> tuple[TestClient, str]:
    """The client signed in as the operator, and its CSRF token."""
    return client, sign_in(client, OPERATOR, OPERATOR_PASSWORD)


@pytest.fixture
def reader(client: TestClient) -> tuple[TestClient, str]:
    return client, sign_in(client, READER, READER_PASSWORD)


@pytest.fixture
def api(web: FastAPI) -> Iterator[TestClient]:
    """An API client with the operator token."""
    with TestClient(web, headers={"Authorization": f"Bearer {TOKEN}"},
                    follow_redirects=False) as c:
        yield c


@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server


@pytest.fixture
def live_server(web: FastAPI) -> Iterator[LiveServer]:
    """The app under a real uvicorn on a free port (for browsers). The socket listens
    before the thread starts, so a request made at once waits in the backlog."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(web, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{sock.getsockname()[1]}", server)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
