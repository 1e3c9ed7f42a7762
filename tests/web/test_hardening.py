"""Defences found by the security review of the web layer, one test each: what a
read-only or enqueue-only principal cannot do, what an anonymous client cannot make the
server spend, and what ends a session."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator

import psycopg
from fastapi import FastAPI
from fastapi.testclient import TestClient

import pgq
from pgq.web import User, hash_password
from tests.web.conftest import OPERATOR, OPERATOR_PASSWORD, csrf_of, sign_in


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_an_enqueue_only_key_reads_no_page(client: TestClient, pgq_app: pgq.App) -> None:
    _, secret = pgq_app.api_keys.create("svc", ["enqueue"])
    job = pgq_app.enqueue("t.x", {"note": "private"}).id
    for path in ("/", "/jobs", f"/jobs/{job}", "/queues", "/dead-letters", "/cron", "/workers",
                 "/api/openapi.json"):
        answer = client.get(path, headers=bearer(secret))
        assert answer.status_code == 403, path
        assert "private" not in answer.text
    assert client.post("/api/jobs", json={"task": "t.y"}, headers=bearer(secret)).status_code == 201


def test_result_waits_are_bounded(api: TestClient, web: FastAPI, pgq_app: pgq.App) -> None:
    job = pgq_app.enqueue("t.never", {}).id
    web.state.result_waits = asyncio.Semaphore(0)  # every waiting slot taken
    began = time.monotonic()
    answer = api.get(f"/api/jobs/{job}/result", params={"wait": 30})
    assert answer.status_code == 202 and answer.json()["state"] == "available"
    assert time.monotonic() - began < 10  # answered at once, not after the 30 s wait


def test_a_body_over_the_cap_is_refused_before_authentication(client: TestClient,
                                                              pgq_app: pgq.App) -> None:
    big = b'{"task": "t", "args": {"blob": "' + b"x" * (pgq_app.settings.max_payload_bytes
                                                           + 128 * 1024) + b'"}}'
    declared = client.post("/api/jobs", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and declared.json()["type"] == "PayloadTooLarge"
    assert "content-security-policy" in declared.headers

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]
    streamed = client.post("/api/jobs", content=chunks(),
                           headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert pgq_app.jobs.count() == 0
    # A body under the cap reaches the guard as before.
    assert client.post("/api/jobs", json={"task": "t"}).status_code == 401


def test_sign_ins_beyond_the_limit_answer_429(client: TestClient, web: FastAPI) -> None:
    token = csrf_of(client.get("/login").text)
    web.state.logins = asyncio.Semaphore(0)
    answer = client.post("/login", data={"username": OPERATOR, "password": OPERATOR_PASSWORD,
                                         "csrf_token": token})
    assert answer.status_code == 429 and "Too many sign-ins" in answer.text
    web.state.logins = asyncio.Semaphore(2)
    assert client.post("/login", data={"username": OPERATOR, "password": OPERATOR_PASSWORD,
                                       "csrf_token": token}).status_code == 303


def test_idempotency_keys_are_per_client(client: TestClient, pgq_app: pgq.App) -> None:
    _, first = pgq_app.api_keys.create("a", ["enqueue"])
    _, second = pgq_app.api_keys.create("b", ["enqueue"])
    key = {"Idempotency-Key": "order-42"}
    mine = client.post("/api/jobs", json={"task": "evil.noop"}, headers={**bearer(first), **key})
    theirs = client.post("/api/jobs", json={"task": "billing.charge"},
                         headers={**bearer(second), **key})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    again = client.post("/api/jobs", json={"task": "billing.charge"},
                        headers={**bearer(second), **key})
    assert (again.status_code, again.json()) == (200, {"id": theirs.json()["id"], "duplicate": True})


def test_a_non_ascii_csrf_token_is_a_403_not_a_500(operator: tuple[TestClient, str]) -> None:
    client, _ = operator
    assert client.post("/logout", data={"csrf_token": "é"}).status_code == 403
    assert client.post("/logout", headers={"X-CSRF-Token": "\u00e9".encode("latin-1")}
                       ).status_code == 403  # type: ignore[dict-item]


def test_a_new_password_ends_the_old_sessions(client: TestClient, web: FastAPI) -> None:
    sign_in(client, OPERATOR, OPERATOR_PASSWORD)
    assert client.get("/").status_code == 200
    config = web.state.web_config
    users = {**config.users, OPERATOR: User(OPERATOR, "operator", hash_password("a new one!"))}
    web.state.web_config = dataclasses.replace(config, users=users)
    assert client.get("/").status_code == 303


def test_an_action_on_an_impossible_id_is_a_404(operator: tuple[TestClient, str]) -> None:
    client, csrf = operator
    answer = client.post(f"/jobs/{2**70}/retry", data={"csrf_token": csrf})
    assert answer.status_code == 404 and "out of range" not in answer.text


def test_a_read_past_the_timeout_is_cancelled_with_a_clear_answer(
        make_app: object, db_url: str) -> None:
    from pgq.web import create_app
    from tests.web.conftest import TOKEN, web_config

    app = pgq.App(pgq.Settings(database_url=db_url), strict=False)
    web = create_app(app, web_config(read_timeout=0.2))
    with psycopg.connect(db_url) as locker, TestClient(web, headers=bearer(TOKEN)) as api:
        locker.execute("LOCK TABLE pgq_jobs IN ACCESS EXCLUSIVE MODE")  # held until rollback
        answer = api.get("/api/jobs")
        locker.rollback()
    app.close()
    assert answer.status_code == 503
    assert answer.json()["type"] == "ReadTimeout" and "0.2 s" in answer.json()["error"]


def test_hsts_only_when_served_over_https(pgq_app: pgq.App) -> None:
    from pgq.web import create_app
    from tests.web.conftest import web_config

    with TestClient(create_app(pgq_app, web_config())) as plain, \
            TestClient(create_app(pgq_app, web_config(secure_cookies=True))) as tls:
        assert "strict-transport-security" not in plain.get("/login").headers
        assert tls.get("/login").headers["strict-transport-security"] == "max-age=31536000"


def test_an_idempotency_key_too_long_is_one_line(api: TestClient) -> None:
    answer = api.post("/api/jobs", json={"task": "t"}, headers={"Idempotency-Key": "k" * 129})
    assert answer.status_code == 422
    assert answer.json() == {"error": "Idempotency-Key must be 1 to 128 characters, got 129",
                             "type": "InvalidOptionError"}
    assert api.post("/api/jobs", json={"task": "t"},
                    headers={"Idempotency-Key": "k" * 128}).status_code == 201


def test_a_cursor_past_bigint_is_a_422_not_a_driver_error(api: TestClient) -> None:
    import base64

    cursor = base64.urlsafe_b64encode(f"pgq1:{2**64}".encode()).decode().rstrip("=")
    answer = api.get("/api/jobs", params={"cursor": cursor})
    assert answer.status_code == 422 and answer.json()["type"] == "InvalidOptionError"


def test_an_idempotent_retry_that_spells_out_a_default_is_no_conflict(api: TestClient) -> None:
    key = {"Idempotency-Key": "same-request"}
    first = api.post("/api/jobs", json={"task": "t"}, headers=key)
    again = api.post("/api/jobs", json={"task": "t", "args": {}, "tags": []}, headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {"id": first.json()["id"], "duplicate": True}
