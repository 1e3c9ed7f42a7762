"""The HTTP JSON API: enqueue with every option and each refusal as one line, the
unique-key and Idempotency-Key answers, reads, actions, results, scopes of API keys,
and `pgq api-keys`."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient

import pgq
from pgq.cli.commands import cli
from pgq.web import create_app
from tests.integration.test_worker import FAST, run
from tests.support.waiting import wait_until
from tests.web.conftest import web_config

NOW = datetime.now(UTC).replace(microsecond=0)


def post(api: TestClient, body: object, **headers: str) -> tuple[int, dict]:
    answer = api.post("/api/jobs", json=body, headers=headers)
    return answer.status_code, answer.json()


def test_enqueue_with_every_option_is_stored(api: TestClient, pgq_app: pgq.App) -> None:
    run_at = NOW + timedelta(hours=1)
    status, body = post(api, {
        "task": "mail.send", "args": {"to": "a@example.com"}, "queue": "mail", "priority": -5,
        "run_at": run_at.isoformat(), "max_attempts": 7, "timeout": 30.5,
        "unique_key": "u-1", "unique_for": 600, "tags": ["t1", "t2"], "meta": {"tenant": 3}})
    assert status == 201 and body["duplicate"] is False
    job = pgq_app.jobs.get(body["id"])
    assert job is not None
    assert (job.task, job.args, job.queue, job.priority, job.run_at, job.max_attempts,
            job.timeout_seconds, job.unique_key, job.tags, job.meta) == (
        "mail.send", {"to": "a@example.com"}, "mail", -5, run_at, 7, 30.5, "u-1",
        ("t1", "t2"), {"tenant": 3})
    assert job.unique_until is not None and job.state == "scheduled"
    status, delayed = post(api, {"task": "mail.send", "delay": 90})
    job = pgq_app.jobs.get(delayed["id"])
    assert status == 201 and job is not None
    assert job.run_at - job.created_at == timedelta(seconds=90)


@pytest.mark.parametrize(("body", "kind", "words"), [
    ({"task": "x", "queue": "bad queue!"}, "InvalidIdentifierError", "queue"),
    ({"task": "bad task name with spaces"}, "InvalidIdentifierError", "task"),
    ({"task": "x", "priority": 101}, "InvalidOptionError", "priority must be between"),
    ({"task": "x", "run_at": "2030-01-01T00:00:00"}, "InvalidOptionError", "naive"),
    ({"task": "x", "delay": 5, "run_at": "2030-01-01T00:00:00+00:00"}, "InvalidOptionError",
     "either delay or run_at"),
    ({"task": "x", "delay": -1}, "InvalidOptionError", "negative"),
    ({"task": "x", "max_attempts": 0}, "InvalidOptionError", "max_attempts"),
    ({"task": "x", "timeout": 0}, "InvalidOptionError", "timeout"),
    ({"task": "x", "unique_for": 60}, "InvalidOptionError", "needs a unique_key"),
    ({"task": "x", "tags": [""]}, "InvalidIdentifierError", "tag"),
    ({"task": "x", "args": [1, 2]}, "RequestValidationError", "args: Input should be a valid "
     "dictionary"),
    ({"task": "x", "priority": "high"}, "RequestValidationError", "priority:"),
    ({"task": "x", "priorty": 1}, "RequestValidationError", "priorty: Extra inputs"),
    ({"args": {}}, "RequestValidationError", "task: Field required"),
    ([1], "RequestValidationError", "body:"),
])
def test_bad_input_answers_422_with_one_line(api: TestClient, pgq_app: pgq.App, body: object,
                                             kind: str, words: str) -> None:
    status, answer = post(api, body)
    assert status == 422, answer
    assert answer["type"] == kind and words in answer["error"], answer
    assert "\n" not in answer["error"] and set(answer) == {"error", "type"}
    assert pgq_app.jobs.count() == 0


def test_a_payload_over_the_cap_is_refused(settings: pgq.Settings) -> None:
    with pgq.App(settings.with_changes(max_payload_bytes=1024), strict=False) as small, \
            TestClient(create_app(small, web_config()),
                       headers={"Authorization": f"Bearer {web_config().token}"}) as api:
        status, answer = post(api, {"task": "x", "args": {"blob": "x" * 2000}})
    assert (status, answer["type"]) == (422, "PayloadTooLargeError"), answer


def test_a_strict_app_refuses_an_unknown_task(make_app: Callable[..., pgq.App]) -> None:
    strict = make_app()
    with TestClient(create_app(strict, web_config()),
                    headers={"Authorization": f"Bearer {web_config().token}"}) as api:
        status, answer = post(api, {"task": "nobody.registered.this"})
    assert (status, answer["type"]) == (422, "UnknownTaskError"), answer


def test_the_same_unique_key_twice_is_one_job(api: TestClient, pgq_app: pgq.App) -> None:
    first = post(api, {"task": "report", "unique_key": "daily-42"})
    second = post(api, {"task": "report", "unique_key": "daily-42"})
    assert first == (201, {"id": first[1]["id"], "duplicate": False})
    assert second == (200, {"id": first[1]["id"], "duplicate": True})
    assert pgq_app.jobs.count() == 1


def test_an_idempotency_key_replays_and_refuses_another_body(api: TestClient,
                                                              pgq_app: pgq.App) -> None:
    first = post(api, {"task": "charge", "args": {"n": 1}}, **{"Idempotency-Key": "k-1"})
    again = post(api, {"args": {"n": 1}, "task": "charge"}, **{"Idempotency-Key": "k-1"})
    assert first[0] == 201 and again == (200, {"id": first[1]["id"], "duplicate": True})
    status, conflict = post(api, {"task": "charge", "args": {"n": 2}},
                            **{"Idempotency-Key": "k-1"})
    assert (status, conflict["type"]) == (422, "IdempotencyConflict"), conflict
    other = post(api, {"task": "charge", "args": {"n": 1}}, **{"Idempotency-Key": "k-2"})
    assert other[0] == 201 and other[1]["id"] != first[1]["id"]
    assert pgq_app.jobs.count() == 2


def test_get_a_job_redacted_and_404(api: TestClient, pgq_app: pgq.App) -> None:
    job_id = pgq_app.enqueue("login", {"user": "a", "password": "hunter2"}).id
    answer = api.get(f"/api/jobs/{job_id}")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["id"], body["task"], body["state"], body["attempts"]) == (
        job_id, "login", "available", [])
    assert "hunter2" not in answer.text, "args go through the redactor"
    missing = api.get(f"/api/jobs/{job_id + 1000}")
    assert (missing.status_code, missing.json()) == (
        404, {"error": f"no job {job_id + 1000}", "type": "JobNotFound"})


def test_list_with_filters_and_cursor(api: TestClient, pgq_app: pgq.App) -> None:
    ids = [pgq_app.enqueue("a", {}, queue="q1", tags=["x"]).id for _ in range(3)]
    pgq_app.enqueue("b", {}, queue="q2")
    first = api.get("/api/jobs", params={"queue": "q1", "limit": 2}).json()
    assert [j["id"] for j in first["jobs"]] == ids[:0:-1] and first["next_cursor"]
    rest = api.get("/api/jobs", params={"queue": "q1", "limit": 2,
                                        "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in rest["jobs"]] == [ids[0]] and rest["next_cursor"] is None
    assert len(api.get("/api/jobs", params={"tag": "x", "task": "a",
                                            "state": ["available", "failed"]}).json()["jobs"]) == 3
    assert api.get("/api/jobs", params={"state": "failed"}).json()["jobs"] == []
    for params, words in [({"state": "done"}, "unknown job state"),
                          ({"limit": 501}, "limit:"), ({"cursor": "nope"}, "bad cursor"),
                          ({"since": "2020-01-01T00:00:00"}, "timezone-aware"),
                          ({"queue": "a\x00b"}, "NUL")]:
        answer = api.get("/api/jobs", params=params)
        assert answer.status_code == 422 and words in answer.json()["error"], answer.text


def test_retry_cancel_delete_record_the_actor(api: TestClient, pgq_app: pgq.App) -> None:
    job_id = pgq_app.enqueue("a", {}).id
    assert api.post(f"/api/jobs/{job_id}/retry").json() == {
        "action": "retry", "changed": 0, "skipped": {str(job_id): "available"}}
    assert api.post(f"/api/jobs/{job_id}/cancel").json() == {
        "action": "cancel", "changed": 1, "skipped": {}}
    assert api.post(f"/api/jobs/{job_id}/retry").json()["changed"] == 1
    assert api.post(f"/api/jobs/{job_id}/cancel").json()["changed"] == 1
    assert api.delete(f"/api/jobs/{job_id}").json()["changed"] == 1
    assert pgq_app.jobs.get(job_id) is None
    assert {a.actor for a in pgq_app.jobs.actions(job_id)} == {"token"}
    assert api.post("/api/jobs/0/retry").status_code == 422


def test_result_completed_pending_and_woken_by_a_cancel(api: TestClient,
                                                        pgq_app: pgq.App) -> None:
    @pgq_app.task(name="api.double")
    def double(n: int) -> dict[str, int]:
        return {"n": n * 2}

    done = pgq_app.enqueue("api.double", {"n": 21}).id
    run(pgq_app, FAST, stop_when="done")
    assert api.get(f"/api/jobs/{done}/result").json() == {
        "state": "completed", "result": {"n": 42}, "error": None}
    waiting = pgq_app.enqueue("api.double", {"n": 1}, delay=3600).id
    pending = api.get(f"/api/jobs/{waiting}/result")
    assert (pending.status_code, pending.json()["state"]) == (202, "scheduled")

    def cancel_once_watched() -> None:
        wait_until(lambda: (j := pgq_app.jobs.get(waiting)) and j.notify_done, 10, "the mark")
        pgq_app.jobs.cancel(waiting, actor="someone")
    canceller = threading.Thread(target=cancel_once_watched)
    canceller.start()
    answer = api.get(f"/api/jobs/{waiting}/result", params={"wait": 20})
    canceller.join()
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    assert answer.json()["error"]["actor"] == "someone"
    assert api.get("/api/jobs/999999/result", params={"wait": 1}).status_code == 404
    assert api.get(f"/api/jobs/{done}/result", params={"wait": 61}).status_code == 422


def test_stats_queues_workers(api: TestClient, pgq_app: pgq.App) -> None:
    pgq_app.enqueue("a", {}, queue="q1")
    stats = api.get("/api/stats").json()
    assert stats["source"] in ("redis", "postgres", "direct") and "q1" in stats["queues"]
    assert api.post("/api/queues/q1/pause").json()["paused_by"] == "token"
    assert api.get("/api/queues").json()["queues"][0]["paused"] is True
    assert api.post("/api/queues/q1/resume").json()["paused"] is False
    assert api.post("/api/queues/bad name/pause").status_code == 422
    assert api.get("/api/workers").json() == {"workers": []}


def test_health_is_public_and_says_unavailable(client: TestClient) -> None:
    assert (client.get("/api/health").status_code, client.get("/api/health").json()) == (
        200, {"status": "ok"})
    down = pgq.App(pgq.Settings(database_url="postgresql://postgres@127.0.0.1:1/none",
                                connect_timeout=1), strict=False)
    with down, TestClient(create_app(down, web_config())) as c:
        answer = c.get("/api/health")
    assert (answer.status_code, answer.json()) == (503, {"status": "unavailable"})


def api_routes(web: FastAPI) -> list[tuple[str, str]]:
    """Every API operation, from the document the app generates from its routes (so a
    route added later is covered without touching this test; every API route is in the
    schema: pgq.web.api's routers are)."""
    return [(method.upper(), re.sub(r"\{[^}]+\}", "1", path))
            for path, operations in web.openapi()["paths"].items() for method in operations]


def test_every_api_route_but_health_needs_credentials(web: FastAPI, client: TestClient) -> None:
    routes = api_routes(web)
    assert len(routes) >= 12
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer pgq_not-a-key"}, {"Authorization": "Basic x"}):
            answer = client.request(method, path, headers=headers)
            if path == "/api/health":
                assert answer.status_code == 200
                continue
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["type"] == "NotAuthenticated"


def test_api_key_scopes(web: FastAPI, pgq_app: pgq.App) -> None:
    _, enqueue_only = pgq_app.api_keys.create("svc", ["enqueue"])
    _, reader = pgq_app.api_keys.create("dash", ["read"])
    with TestClient(web) as c:
        def as_(secret: str, method: str, path: str, **kw: object) -> int:
            return c.request(method, path, headers={"Authorization": f"Bearer {secret}"},
                             **kw).status_code  # type: ignore[arg-type]
        assert as_(enqueue_only, "POST", "/api/jobs", json={"task": "a"}) == 201
        job = f"/api/jobs/{pgq_app.jobs.list().jobs[0].id}"
        assert as_(enqueue_only, "GET", "/api/jobs") == 403
        assert as_(enqueue_only, "GET", job) == 403
        assert as_(enqueue_only, "POST", f"{job}/retry") == 403
        assert as_(reader, "GET", "/api/jobs") == 200
        assert as_(reader, "GET", job) == 200
        assert as_(reader, "POST", f"{job}/cancel") == 403
        assert as_(reader, "POST", "/api/jobs", json={"task": "a"}) == 403
        assert as_(reader, "POST", "/api/queues/default/pause") == 403
        pgq_app.api_keys.revoke("svc")
        assert as_(enqueue_only, "POST", "/api/jobs", json={"task": "a"}) == 401


def test_a_signed_in_session_needs_the_csrf_header(operator: tuple[TestClient, str]) -> None:
    client, csrf = operator
    assert client.post("/api/jobs", json={"task": "a"}).status_code == 403
    assert client.post("/api/jobs", json={"task": "a"},
                       headers={"X-CSRF-Token": csrf}).status_code == 201


def test_api_keys_cli(settings: pgq.Settings, pgq_app: pgq.App, web: FastAPI) -> None:
    runner = CliRunner()
    env = {"PGQ_DATABASE_URL": settings.database_url}
    made = runner.invoke(cli, ["api-keys", "create", "ci", "--scope", "read", "--scope",
                               "enqueue"], env=env)
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert secret.startswith("pgq_") and "shown once" in made.stderr
    with TestClient(web, headers={"Authorization": f"Bearer {secret}"}) as c:
        assert c.get("/api/jobs").status_code == 200
    listed = runner.invoke(cli, ["api-keys", "list", "--json"], env=env)
    keys = json.loads(listed.stdout)["keys"]
    assert [(k["name"], k["scopes"], k["revoked_at"]) for k in keys] == [
        ("ci", ["enqueue", "read"], None)]
    assert secret not in listed.stdout
    assert runner.invoke(cli, ["api-keys", "revoke", "ci"], env=env).exit_code == 0
    listed = runner.invoke(cli, ["api-keys", "list"], env=env).stdout
    assert listed.splitlines()[1].split()[0] == "ci" and listed.splitlines()[1].split()[-1] != "-"
    again = runner.invoke(cli, ["api-keys", "create", "ci", "--scope", "fly"], env=env)
    assert again.exit_code != 0 and "fly" in again.output
    with TestClient(web, headers={"Authorization": f"Bearer {secret}"}) as c:
        assert c.get("/api/jobs").status_code == 401


def test_error_type_lists_failed_jobs_only(api: TestClient, pgq_app: pgq.App,
                                           conn: object) -> None:
    job = pgq_app.enqueue("t.fails", {}).id
    conn.execute(  # type: ignore[attr-defined]
        "UPDATE pgq_jobs SET state = 'failed', finished_at = now(), "
        "errors = '[{\"type\": \"KeyError\", \"message\": \"k\"}]' WHERE id = %s", (job,))
    found = api.get("/api/jobs", params={"state": "failed", "error_type": "KeyError"})
    assert [j["id"] for j in found.json()["jobs"]] == [job]
    for params in ({"error_type": "KeyError"},
                   {"error_type": "KeyError", "state": ["failed", "retryable"]}):
        refused = api.get("/api/jobs", params=params)
        assert refused.status_code == 422 and "needs state=failed" in refused.json()["error"]
