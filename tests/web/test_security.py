"""The security acceptance points, over every route the app has (enumerated from the
app itself, so a route added later is covered without editing this file): no route
answers without credentials, no state change passes without the CSRF token, filters are
bound parameters, and no secret is ever rendered."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import psycopg
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

import pgq
from pgq.client.jobfilter import JobFilter
from tests.web.conftest import _HASHES, TOKEN, web_config

PUBLIC = {("GET", "/login"), ("POST", "/login"), ("GET", "/api/health")}
"""The only routes open to anyone (auth.public): the sign-in form and the health probe."""
SAMPLE = {"job_id": "1", "queue": "default", "name": "default", "action": "retry"}


def routes(web: FastAPI) -> Iterator[tuple[str, str, APIRoute]]:
    """(method, path with sample parameters, route) for every route of the app,
    including those of included routers."""
    def walk(items: list[Any]) -> Iterator[APIRoute]:
        for item in items:
            if isinstance(item, APIRoute):
                yield item
            elif hasattr(item, "original_router"):  # FastAPI's lazily included router
                yield from walk(item.original_router.routes)
    for route in walk(list(web.routes)):
        path = re.sub(r"{(\w+)}", lambda m: SAMPLE[m.group(1)], route.path)
        for method in sorted(route.methods - {"HEAD"}):
            yield method, path, route


def test_the_route_walk_finds_pages_and_api(web: FastAPI) -> None:
    found = {(m, r.path) for m, _, r in routes(web)}
    assert {("GET", "/"), ("GET", "/jobs/{job_id}"), ("POST", "/jobs/{job_id}/{action}"),
            ("POST", "/api/jobs"), ("GET", "/api/openapi.json")} <= found
    assert len(found) >= 25


def test_no_route_answers_without_credentials(web: FastAPI) -> None:
    checked = 0
    with TestClient(web, follow_redirects=False) as client:
        for method, path, route in routes(web):
            if (method, route.path) in PUBLIC:
                continue
            answer = client.request(method, path)
            if path.startswith("/api"):
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
                assert answer.json()["type"] == "NotAuthenticated"
            else:
                assert answer.status_code == 303, (method, path)
                assert answer.headers["location"].startswith("/login?next=")
            checked += 1
            # A wrong bearer is refused too, never treated as no credentials plus a cookie.
            wrong = client.request(method, path, headers={"Authorization": "Bearer wrong-token"})
            assert wrong.status_code in (401, 303), (method, path)
    assert checked >= 25


def test_no_state_change_without_the_csrf_token(operator: tuple[TestClient, str],
                                                web: FastAPI, pgq_app: pgq.App) -> None:
    client, csrf = operator
    job = pgq_app.enqueue("t.secure", {}).id
    sample = {**SAMPLE, "job_id": str(job)}
    posts = [(m, re.sub(r"{(\w+)}", lambda g: sample[g.group(1)], r.path)) for m, _, r in routes(web)
             if m != "GET" and (m, r.path) not in PUBLIC]
    assert len(posts) >= 10
    for method, path in posts:
        for forged in ({}, {"csrf_token": "forged"}):
            answer = client.request(method, path, data=forged)
            assert answer.status_code == 403, (method, path, forged, answer.status_code)
    # Nothing happened: the job is untouched, the queue not paused, still signed in.
    record = pgq_app.jobs.get(job)
    assert record is not None and record.state == "available"
    assert pgq_app.jobs.actions(job) == []
    assert not any(q.paused for q in pgq_app.queues.list())
    assert client.get("/").status_code == 200
    # And the same post with the token does act (the check is not refusing everything).
    done = client.post(f"/jobs/{job}/cancel", data={"csrf_token": csrf})
    assert done.status_code == 303
    assert pgq_app.jobs.get(job).state == "cancelled"  # type: ignore[union-attr]


def test_the_proxy_header_needs_the_csrf_token_too(pgq_app: pgq.App) -> None:
    web = _proxy_web(pgq_app)
    job = pgq_app.enqueue("t.secure", {}).id
    with TestClient(web, follow_redirects=False, headers={"X-Forwarded-User": "paula"}) as client:
        page = client.get(f"/jobs/{job}")
        assert page.status_code == 200 and "paula" in page.text
        assert client.post(f"/jobs/{job}/cancel").status_code == 403
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        assert client.post(f"/jobs/{job}/cancel", data={"csrf_token": csrf}).status_code == 303
    assert pgq_app.jobs.actions(job)[0].actor == "paula"


def test_a_proxy_user_not_listed_as_operator_reads_only(pgq_app: pgq.App) -> None:
    web = _proxy_web(pgq_app)
    job = pgq_app.enqueue("t.secure", {}).id
    with TestClient(web, follow_redirects=False, headers={"X-Forwarded-User": "rob"}) as client:
        page = client.get(f"/jobs/{job}")
        assert page.status_code == 200 and "Cancel" not in page.text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        assert client.post(f"/jobs/{job}/cancel", data={"csrf_token": csrf}).status_code == 403
    assert pgq_app.jobs.get(job).state == "available"  # type: ignore[union-attr]


def _proxy_web(app: pgq.App) -> FastAPI:
    from pgq.web import create_app

    return create_app(app, web_config(token=None, users={}, proxy_header="X-Forwarded-User",
                                      proxy_operators=frozenset({"paula"})))


HOSTILE = ["' OR '1'='1", "x'); DROP TABLE pgq_jobs; --", "%(states)s", "\\x00'--"]


def test_filters_are_bound_parameters(operator: tuple[TestClient, str], api: TestClient,
                                      pgq_app: pgq.App, conn: psycopg.Connection) -> None:
    client, _ = operator
    pgq_app.enqueue("t.secure", {}, tags=["plain"], unique_key="plain", meta={"k": "v"})
    for text in HOSTILE:
        page = client.get("/jobs", params={"tag": text, "unique_key": text, "meta": f"k={text}",
                                           "queue": "default"})
        assert page.status_code in (200, 422), (text, page.text)
        assert 'href="/jobs/' not in page.text.split("<tbody>")[-1], text  # no job matched
        listed = api.get("/api/jobs", params={"tag": text, "unique_key": text, "task": "t.secure"})
        assert listed.status_code == 200 and listed.json()["jobs"] == [], text
        # A filter matching the hostile text literally finds nothing (not everything).
        assert pgq_app.jobs.count(JobFilter(tag=text)) == 0
    assert conn.execute("SELECT count(*) FROM pgq_jobs").fetchone() == (1,)


def test_no_secret_is_ever_rendered(operator: tuple[TestClient, str], api: TestClient,
                                    web: FastAPI, pgq_app: pgq.App) -> None:
    client, _ = operator
    key, secret = pgq_app.api_keys.create("ci", ["read"], actor="test")
    job = pgq_app.enqueue("t.secure", {"password": "hunter2", "api_token": "tok-123456"}).id
    secrets_ = [TOKEN, secret, "hunter2", "tok-123456", web_config().secret,
                *(h.split("$")[-1] for h in _HASHES.values())]
    bodies: list[str] = []
    sample = {**SAMPLE, "job_id": str(job)}
    for method, _, route in routes(web):
        if method != "GET":
            continue
        path = re.sub(r"{(\w+)}", lambda g: sample[g.group(1)], route.path)
        who = api if path.startswith("/api") else client
        answer = who.get(path)
        assert answer.status_code < 500, (path, answer.text)
        bodies.append(answer.text)
    bodies.append(json.dumps(api.get("/api/jobs", params={"task": "t.secure"}).json()))
    everything = "\n".join(bodies)
    assert "t.secure" in everything and str(job) in everything  # the job was shown
    for value in secrets_:
        assert value not in everything, f"a secret was rendered: {value[:6]}…"
    assert key.name == "ci"
