"""Signing in, roles, CSRF and the refusal to start without credentials."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import pgq
from pgq.core.errors import ConfigError
from pgq.web import WebConfig, create_app
from tests.web.conftest import (
    OPERATOR,
    OPERATOR_PASSWORD,
    TOKEN,
    csrf_of,
    sign_in,
)


def test_the_app_refuses_to_start_without_credentials(pgq_app: pgq.App) -> None:
    with pytest.raises(ConfigError, match="refuses to start without credentials"):
        create_app(pgq_app, WebConfig())


def test_a_page_without_a_session_redirects_to_sign_in(client: TestClient) -> None:
    answer = client.get("/?x=1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2F%3Fx%3D1"


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(client: TestClient) -> None:
    token = csrf_of(client.get("/login").text)
    wrong = client.post("/login", data={"username": OPERATOR, "password": "nope",
                                        "csrf_token": token})
    unknown = client.post("/login", data={"username": "mallory", "password": "nope",
                                          "csrf_token": token})
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong user name or password." in wrong.text and "Wrong user name" in unknown.text
    assert client.get("/").status_code == 303  # still not signed in


def test_sign_in_with_a_password_then_sign_out(client: TestClient) -> None:
    token = sign_in(client, OPERATOR, OPERATOR_PASSWORD)
    page = client.get("/")
    assert page.status_code == 200 and OPERATOR in page.text
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/").status_code == 303


def test_sign_in_with_the_token(client: TestClient) -> None:
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"password": TOKEN, "csrf_token": token})
    assert answer.status_code == 303
    assert client.get("/").status_code == 200


def test_sign_in_never_redirects_off_site(client: TestClient) -> None:
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"username": OPERATOR, "password": OPERATOR_PASSWORD,
                                         "csrf_token": token, "next": "//evil.example/x"})
    assert answer.headers["location"] == "/"


def test_a_forged_post_without_the_csrf_token_is_refused(
        operator: tuple[TestClient, str]) -> None:
    client, _ = operator
    assert client.post("/logout").status_code == 403
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 403
    assert client.get("/").status_code == 200  # still signed in: nothing happened


def test_sign_in_itself_needs_the_csrf_token(client: TestClient) -> None:
    answer = client.post("/login", data={"username": OPERATOR, "password": OPERATOR_PASSWORD})
    assert answer.status_code == 403
    assert client.get("/").status_code == 303


def test_security_headers_on_every_answer(client: TestClient) -> None:
    for path in ("/login", "/", "/static/pgq.css", "/no-such-page"):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_mounted_under_a_prefix(pgq_app: pgq.App) -> None:
    from fastapi import FastAPI

    from tests.web.conftest import web_config

    outer = FastAPI()
    outer.mount("/pgq", create_app(pgq_app, web_config()))
    with TestClient(outer, follow_redirects=False) as client:
        answer = client.get("/pgq/")
        assert answer.headers["location"] == "/pgq/login?next=%2Fpgq%2F"
        page = client.get("/pgq/login").text
        assert 'href="/pgq/static/pgq.css"' in page and 'action="/pgq/login"' in page


@pytest.mark.parametrize("path", ["/", "/queues", "/jobs", "/jobs?state=failed",
                                  "/dead-letters", "/cron", "/workers"])
def test_every_page_refreshes_its_live_part_alone(operator: tuple[TestClient, str],
                                                  path: str) -> None:
    client, _ = operator
    full = client.get(path)
    part = client.get(path, headers={"X-PGQ-Partial": "1"})
    assert full.status_code == part.status_code == 200, part.text
    assert full.text.lstrip().startswith("<!doctype html>") and "<header" in full.text
    assert "<header" not in part.text and "<!doctype" not in part.text
    heading = full.text.split("<h1>")[1].split("</h1>")[0]
    assert f"<h1>{heading}</h1>" in part.text
