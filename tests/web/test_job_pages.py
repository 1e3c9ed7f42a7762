"""The jobs list, a job's detail page and its actions, and the dead letters page, as an
operator and as a read-only user, through the in-process client."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
from fastapi.testclient import TestClient

import pgq
from tests.web.conftest import OPERATOR

EVIL = "<script>alert(1)</script> '; DROP TABLE pgq_jobs; --"
TRACEBACK = 'Traceback (most recent call last):\n  File "t.py", line 3, in work\nValueError: boom'


def enqueue(app: pgq.App, n: int, task: str = "t.work", **options: Any) -> list[int]:
    return [e.id for e in app.enqueue_many([pgq.JobSpec(task, {"i": i}, **options)
                                            for i in range(n)])]


def fail(conn: psycopg.Connection, ids: list[int], error_type: str = "ValueError",
         message: str = "boom", traceback: str = TRACEBACK) -> None:
    """The jobs failed for good after one attempt (the row a worker's last failure writes)."""
    errors = [{"attempt": 1, "at": "2030-01-01T00:00:00+00:00", "type": error_type,
               "message": message, "traceback": traceback, "worker": "w-1"}]
    conn.execute("UPDATE pgq_jobs SET state = 'failed', attempt = 1, finished_at = now(), "
                 "errors = %s::jsonb WHERE id = ANY(%s)", (json.dumps(errors), ids))


def ids_on(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-job="(\d+)"', html)]


def state_of(conn: psycopg.Connection, job_id: int) -> str | None:
    row = conn.execute("SELECT state FROM pgq_jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else str(row[0])


def test_the_list_filters_and_pages_by_keyset(operator: tuple[TestClient, str],
                                              pgq_app: pgq.App, conn: psycopg.Connection) -> None:
    client, _ = operator
    mail = enqueue(pgq_app, 7, queue="mail", tags=["x"], meta={"tenant": "acme", "n": 5})
    other = enqueue(pgq_app, 2, task="t.other", queue="other")
    fail(conn, mail[:2])
    assert ids_on(client.get("/jobs").text) == (mail + other)[::-1]
    first = client.get("/jobs", params={"queue": "mail", "limit": 3})
    assert ids_on(first.text) == mail[::-1][:3] and "Newest" not in first.text
    seen, page = [], first
    while True:
        seen += ids_on(page.text)
        found = re.search(r'href="([^"]+)" rel="next"', page.text)
        if found is None:
            break
        page = client.get(found.group(1).replace("&amp;", "&"))
        assert 'rel="first"' in page.text and "limit=3" in found.group(1)
    assert seen == mail[::-1]
    assert ids_on(client.get("/jobs?state=failed&state=completed").text) == mail[:2][::-1]
    assert ids_on(client.get("/jobs", params={"task": "t.other"}).text) == other[::-1]
    assert ids_on(client.get("/jobs", params={"tag": "x", "meta": "tenant=acme, n=5"}).text) \
        == mail[::-1]
    assert ids_on(client.get("/jobs", params={"meta": 'n="5"'}).text) == []
    assert len(ids_on(client.get("/jobs", params={"since": "1h"}).text)) == 9
    assert ids_on(client.get("/jobs", params={"until": "1h"}).text) == []
    assert "ValueError: boom" in client.get("/jobs?state=failed").text


def test_search_by_id_goes_to_the_job_and_by_unique_key_lists_it(
        operator: tuple[TestClient, str], pgq_app: pgq.App) -> None:
    client, _ = operator
    (plain,) = enqueue(pgq_app, 1)
    keyed = pgq_app.enqueue("t.work", {}, unique_key="invoice-42").id
    answer = client.get("/jobs", params={"q": f" {plain} "})
    assert answer.status_code == 303 and answer.headers["location"] == f"/jobs/{plain}"
    assert ids_on(client.get("/jobs", params={"q": "invoice-42"}).text) == [keyed]
    assert client.get("/jobs", params={"q": "999999"}, follow_redirects=True).status_code == 404


BAD_FILTERS: list[tuple[dict[str, str], str]] = [
    ({"state": "bogus"}, "unknown job state &#39;bogus&#39;"),
    ({"since": "yesterday"}, "since &#39;yesterday&#39; is not a time"),
    ({"since": "1h", "until": "2h"}, "must be after since"),
    ({"meta": "tenant"}, "meta filter &#39;tenant&#39; must be key=value"),
    ({"task": "no spaces allowed"}, "task"),
    ({"queue": "x" * 300}, "queue"),
    ({"after": "not-a-cursor"}, "bad cursor"),
    ({"limit": "0"}, "limit must be from 1 to 200"),
]


def test_a_bad_filter_is_a_422_with_its_one_line_message(
        operator: tuple[TestClient, str]) -> None:
    client, _ = operator
    for params, message in BAD_FILTERS:  # one database and sign-in for every case
        answer = client.get("/jobs", params=params)
        assert answer.status_code == 422, params
        assert re.search(r'<p class="flash error" role="alert">[^<]*' + re.escape(message),
                         answer.text), (params, answer.text)
        assert 'name="queue"' in answer.text  # the form is still there to fix it


def test_the_detail_page_shows_the_attempts_traceback_and_404s_an_unknown_job(
        operator: tuple[TestClient, str], pgq_app: pgq.App, conn: psycopg.Connection) -> None:
    client, _ = operator
    (job_id,) = enqueue(pgq_app, 1, meta={"tenant": "acme"}, tags=["nightly"])
    fail(conn, [job_id])
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert '<pre class="traceback">' + TRACEBACK.replace('"', "&#34;") + "</pre>" in page.text
    assert "attempt 1" in page.text and "w-1" in page.text and "nightly" in page.text
    assert '"tenant": "acme"' in page.text.replace("&#34;", '"')
    for missing in (job_id + 1000, 0, 2**70):
        assert client.get(f"/jobs/{missing}").status_code == 404
    assert client.get("/jobs/abc").status_code == 422


def act(client: TestClient, csrf: str, job_id: int, action: str) -> tuple[str, str]:
    """Post an action; returns where it redirected and the flash shown there."""
    answer = client.post(f"/jobs/{job_id}/{action}", data={"csrf_token": csrf})
    assert answer.status_code == 303, answer.text
    shown = client.get(answer.headers["location"]).text
    found = re.search(r'<p class="flash (\w+)" role="status">([^<]*)</p>', shown)
    assert found, shown
    return answer.headers["location"], found.group(2)


def test_each_action_changes_the_job_and_records_the_operator(
        operator: tuple[TestClient, str], pgq_app: pgq.App, conn: psycopg.Connection) -> None:
    client, csrf = operator
    failed, running = enqueue(pgq_app, 2)
    fail(conn, [failed])
    conn.execute("UPDATE pgq_jobs SET state = 'running', attempt = 1, lease_owner = 'w-9', "
                 "started_at = now(), lease_expires_at = now() + interval '1 minute' "
                 "WHERE id = %s", (running,))
    later = pgq_app.enqueue("t.work", {}, delay=3600).id
    page = client.get(f"/jobs/{failed}").text
    assert "/retry" in page and "/delete" in page and "/cancel" not in page
    assert "cooperatively" not in page and "ctx.cancelled" in client.get(f"/jobs/{running}").text
    assert act(client, csrf, failed, "retry") == (f"/jobs/{failed}", f"job {failed} retried")
    assert state_of(conn, failed) == "available"
    assert act(client, csrf, failed, "retry")[1] == f"job {failed} is available: not retried"
    assert act(client, csrf, running, "cancel")[1] == f"job {running} cancelled"
    assert state_of(conn, running) == "cancelled"
    assert act(client, csrf, later, "run-now")[1] == f"job {later} set to run now"
    row = conn.execute("SELECT run_at <= now() FROM pgq_jobs WHERE id = %s", (later,)).fetchone()
    assert row == (True,)
    actions = pgq_app.jobs.actions(failed)
    assert [(a.action, a.actor) for a in actions] == [("retry", OPERATOR)]
    timeline = client.get(f"/jobs/{failed}").text
    assert re.search(r"<b>retry</b> by <b>olivia</b> \(was failed\)", timeline), timeline
    assert act(client, csrf, running, "delete") == ("/jobs", f"job {running} deleted")
    assert state_of(conn, running) is None
    assert [(a.action, a.actor) for a in pgq_app.jobs.actions(running)] == [
        ("cancel", OPERATOR), ("delete", OPERATOR)]
    assert act(client, csrf, running, "delete")[1] == f"job {running} not found: not deleted"
    assert client.post(f"/jobs/{failed}/explode", data={"csrf_token": csrf}).status_code == 404


def test_a_reader_sees_no_buttons_and_is_refused_when_posting(
        reader: tuple[TestClient, str], pgq_app: pgq.App, conn: psycopg.Connection) -> None:
    client, csrf = reader
    (job_id,) = enqueue(pgq_app, 1)
    fail(conn, [job_id])
    page = client.get(f"/jobs/{job_id}").text
    assert "ValueError" in page and "/retry" not in page and "<button" not in page.split("</header>")[1]
    groups = client.get("/dead-letters").text
    assert "t.work" in groups and "Retry group" not in groups
    assert client.post(f"/jobs/{job_id}/retry", data={"csrf_token": csrf}).status_code == 403
    assert client.post("/dead-letters/retry", data={"csrf_token": csrf, "task": "t.work",
                                                    "error_type": "ValueError"}).status_code == 403
    assert client.get("/dead-letters/confirm?task=t.work&error_type=ValueError&action=retry"
                      ).status_code == 403
    assert state_of(conn, job_id) == "failed"


def test_a_dead_letter_group_shows_its_count_then_retries_exactly_that_group(
        operator: tuple[TestClient, str], pgq_app: pgq.App, conn: psycopg.Connection) -> None:
    client, csrf = operator
    group = enqueue(pgq_app, 3, task="t.mail")
    other_type = enqueue(pgq_app, 1, task="t.mail")
    other_task = enqueue(pgq_app, 1, task="t.sms")
    fail(conn, group + other_task)
    fail(conn, other_type, error_type="KeyError", message="'to'")
    page = client.get("/dead-letters").text
    assert re.search(r'data-task="t.mail" data-error-type="ValueError">.*?<td class="num">3</td>',
                     page, re.S)
    assert "/jobs?state=failed&amp;task=t.mail" in page
    confirm = client.get("/dead-letters/confirm", params={"task": "t.mail",
                                                          "error_type": "ValueError",
                                                          "action": "retry"})
    assert confirm.status_code == 200 and "<b>3</b> failed jobs" in confirm.text
    assert all(f">{i}</a>" in confirm.text for i in group)
    answer = client.post("/dead-letters/retry", data={"csrf_token": csrf, "task": "t.mail",
                                                      "error_type": "ValueError"})
    assert answer.status_code == 303 and answer.headers["location"] == "/dead-letters"
    assert "Retried 3 jobs of t.mail (ValueError)" in client.get("/dead-letters").text
    assert [state_of(conn, i) for i in group + other_type + other_task] == [
        "available"] * 3 + ["failed", "failed"]
    assert {a.actor for i in group for a in pgq_app.jobs.actions(i)} == {OPERATOR}
    delete = client.get("/dead-letters/confirm", params={"task": "t.sms",
                                                         "error_type": "ValueError",
                                                         "action": "delete"})
    assert "<b>1</b> failed job " in delete.text
    client.post("/dead-letters/delete", data={"csrf_token": csrf, "task": "t.sms",
                                              "error_type": "ValueError"})
    assert state_of(conn, other_task[0]) is None
    assert client.get("/dead-letters/confirm", params={"task": "t.sms", "error_type": "",
                                                       "action": "explode"}).status_code == 422


def test_hostile_args_and_errors_render_as_inert_text(
        operator: tuple[TestClient, str], pgq_app: pgq.App, conn: psycopg.Connection) -> None:
    client, _ = operator
    job_id = pgq_app.enqueue("t.work", {"note": EVIL}).id
    fail(conn, [job_id], error_type="Evil<script>", message=EVIL, traceback=EVIL)
    pages = {"list": client.get("/jobs").text, "detail": client.get(f"/jobs/{job_id}").text,
             "dead letters": client.get("/dead-letters").text}
    for name, html in pages.items():
        assert "<script>alert" not in html and "Evil<script>" not in html, name
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &#39;; DROP TABLE pgq_jobs; --" in html, name
    assert pgq_app.jobs.count() == 1  # and the SQL fragment was only ever a value


def test_inputs_that_once_raised_are_one_line_errors(operator: tuple[TestClient, str],
                                                     pgq_app: pgq.App,
                                                     conn: psycopg.Connection) -> None:
    client, _ = operator
    far = client.get("/jobs", params={"since": "999999d"})
    assert far.status_code == 422 and "reaches back too far" in far.text
    assert client.get("/jobs", params={"q": "\u00b2"}).status_code == 200  # a digit, not an id
    needs = client.get("/jobs", params={"error_type": "KeyError"})
    assert needs.status_code == 422 and "needs state failed" in needs.text
    # An error entry whose time has no offset (hand-written, or from an old version).
    job = pgq_app.enqueue("t.old", {}).id
    conn.execute("UPDATE pgq_jobs SET errors = '[{\"type\": \"E\", \"message\": \"m\", "
                 "\"at\": \"2026-01-01T00:00:00\"}]' WHERE id = %s", (job,))
    assert client.get(f"/jobs/{job}").status_code == 200


def test_the_error_type_filter_lists_one_dead_letter_group(operator: tuple[TestClient, str],
                                                           pgq_app: pgq.App,
                                                           conn: psycopg.Connection) -> None:
    client, _ = operator
    keys, values = enqueue(pgq_app, 2), enqueue(pgq_app, 1)
    fail(conn, keys, "KeyError")
    fail(conn, values, "ValueError")
    page = client.get("/jobs", params={"state": "failed", "error_type": "KeyError"})
    assert page.status_code == 200 and sorted(ids_on(page.text)) == sorted(keys)
