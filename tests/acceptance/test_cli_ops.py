"""The operator commands (issue 14 item 6), run as subprocesses the way operators run
them: pgq jobs list|show|retry|cancel|delete|reschedule|priority, pgq queues, pgq
workers. Every --json output parses; exit codes are those docs/operations.md names
(0 done, 1 error, 2 usage, 3 no such job, 4 nothing to change)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import pgq
from pgq.cli.commands import cli
from pgq.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = "postgresql://x:hunter2@127.0.0.1:1/db"


def run(db_url: str, *args: str, stdin: str | None = None,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_")}
    env.update({"PGQ_DATABASE_URL": db_url, "USER": "tester", **(extra_env or {})})
    return subprocess.run([sys.executable, "-m", "pgq", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, check=False, input=stdin)


def doc(out: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document on stdout."""
    return json.loads(out.stdout)


@pytest.fixture
def app(db_url: str) -> Iterator[pgq.App]:
    with pgq.App(Settings(database_url=db_url), strict=False) as app:
        yield app


def enqueue(app: pgq.App, n: int, **options: Any) -> list[int]:
    return [e.id for e in app.enqueue_many([pgq.JobSpec("mail.send", {"i": i}, **options)
                                            for i in range(n)])]


def fail(db_url: str, ids: list[int]) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("UPDATE pgq_jobs SET state = 'failed', finished_at = now(), attempt = max_attempts, "
                  "errors = '[{\"attempt\": 1, \"at\": \"2030-01-01T00:00:00+00:00\", \"type\": "
                  "\"SMTPError\", \"message\": \"421 try later\", \"traceback\": "
                  "\"Traceback (most recent call last):\\n  File \\\"mail.py\\\"\\nSMTPError\", "
                  "\"worker\": \"w1\"}]' WHERE id = ANY(%s)", (ids,))


def test_list_filters_pages_and_json(db_url: str, app: pgq.App) -> None:
    mail = enqueue(app, 5, queue="mail", tags=["ops"], meta={"tenant": "c7", "n": 5})
    bulk = enqueue(app, 3, queue="bulk")
    fail(db_url, mail[:2])
    out = run(db_url, "jobs", "list", "--queue", "mail", "--json")
    assert out.returncode == 0, out.stderr
    assert [j["id"] for j in doc(out)["jobs"]] == mail[::-1] and doc(out)["next_cursor"] is None

    pages, cursor = [], None
    while True:
        page = doc(run(db_url, "jobs", "list", "--limit", "3", "--json",
                       *(["--cursor", cursor] if cursor else [])))
        pages.append([j["id"] for j in page["jobs"]])
        if (cursor := page["next_cursor"]) is None:
            break
    every = [job_id for p in pages for job_id in p]
    assert [len(p) for p in pages] == [3, 3, 2] and every == sorted(mail + bulk)[::-1]

    for args, expected in [(["--state", "failed", "--tag", "ops"], mail[:2]),
                           (["--meta", "tenant=c7", "--meta", "n:=5"], mail),
                           (["--meta", "n=5"], []),  # the string "5" is not the number 5
                           (["--since", "1h", "--task", "mail.send", "--queue", "bulk"], bulk),
                           (["--until", "1h"], [])]:
        got = [j["id"] for j in doc(run(db_url, "jobs", "list", "--json", *args))["jobs"]]
        assert got == expected[::-1], args
    text = run(db_url, "jobs", "list", "--state", "failed")
    assert text.returncode == 0
    assert text.stdout.splitlines()[0].split() == ["ID", "STATE", "QUEUE", "TASK", "ATTEMPT",
                                                   "CREATED", "LAST", "ERROR"]
    assert "SMTPError: 421 try later" in text.stdout
    empty = run(db_url, "jobs", "list", "--queue", "nothing")
    assert empty.returncode == 0 and empty.stdout == "no jobs match\n"


def test_show_timeline_attempts_and_operator_actions(db_url: str, app: pgq.App) -> None:
    (job_id,) = enqueue(app, 1, queue="mail")
    fail(db_url, [job_id])
    app.jobs.retry(job_id, actor="alice", reason="SMTP is back")
    out = run(db_url, "jobs", "show", str(job_id))
    assert out.returncode == 0, out.stderr
    for needed in (f"job {job_id}: mail.send on queue mail", '"i": 0', "timeline", "created",
                   "#1  2030-01-01 00:00:00Z  SMTPError: 421 try later  [worker w1]",
                   "Traceback (most recent call last):", "operator actions (1)",
                   "alice  retry  from failed  reason: SMTP is back"):
        assert needed in out.stdout, out.stdout
    shown = doc(run(db_url, "jobs", "show", str(job_id), "--json"))
    assert shown["state"] == "available" and shown["args"] == {"i": 0}
    assert shown["attempts"][0]["type"] == "SMTPError" and "raw" not in shown["attempts"][0]
    assert [(a["actor"], a["action"], a["detail"]["from"]) for a in shown["actions"]] == [
        ("alice", "retry", "failed")]

    missing = run(db_url, "jobs", "show", str(job_id + 100), "--json")
    assert (missing.returncode, doc(missing)) == (3, None)
    assert missing.stderr == f"error: no job {job_id + 100}\n"


def test_bulk_retry_by_filter_confirms_dry_runs_and_reruns(db_url: str, app: pgq.App) -> None:
    ids = enqueue(app, 150, queue="dead")
    fail(db_url, ids)
    asked = run(db_url, "jobs", "retry", "--queue", "dead")
    assert asked.returncode == 1 and "pass --yes" in asked.stderr
    assert len(asked.stderr.splitlines()) == 1 and asked.stderr.startswith("error: retry 150 jobs?")

    dry = run(db_url, "jobs", "retry", "--queue", "dead", "--dry-run", "--json")
    assert dry.returncode == 0
    assert doc(dry) == {"action": "retry", "dry_run": True, "count": 150,
                        "sample": sorted(ids)[::-1][:10]}
    text = run(db_url, "jobs", "retry", "--queue", "dead", "--dry-run")
    assert text.stdout.startswith("would retry 150 jobs: ") and text.stdout.endswith(", ...\n")
    assert app.jobs.count(queue="dead", state="failed") == 150  # a dry run changes nothing

    done = run(db_url, "jobs", "retry", "--queue", "dead", "--yes", "--json", "--actor", "bob",
               "--reason", "provider back")
    assert done.returncode == 0, done.stderr
    assert doc(done) == {"action": "retry", "dry_run": False, "changed": 150, "skipped": {}}
    again = run(db_url, "jobs", "retry", "--queue", "dead", "--yes")
    assert again.returncode == 4 and again.stdout == "retried 0 jobs\n"
    assert "nothing to retry" in again.stderr
    nothing_dry = run(db_url, "jobs", "retry", "--queue", "dead", "--dry-run", "--json")
    assert nothing_dry.returncode == 4 and doc(nothing_dry)["count"] == 0
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*), count(DISTINCT job_id), min(actor), min(reason) "
                         "FROM pgq_job_actions").fetchone() == (150, 150, "bob", "provider back")


def test_actions_on_ids(db_url: str, app: pgq.App) -> None:
    a, b, c = enqueue(app, 3, queue="mail")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE pgq_jobs SET state = 'running' WHERE id = %s", (b,))
    out = run(db_url, "jobs", "reschedule", str(a), str(b), str(c + 50), "--at", "1h", "--json")
    assert out.returncode == 0, out.stderr
    assert doc(out) == {"action": "reschedule", "dry_run": False, "changed": 1,
                        "skipped": {str(b): "running", str(c + 50): "not found"}}
    assert run(db_url, "jobs", "show", str(a), "--json").stdout.count('"actor": "tester"') == 1

    gone = run(db_url, "jobs", "retry", str(c + 50))
    assert gone.returncode == 3 and gone.stderr == f"error: no such job: {c + 50}\n"
    waiting = run(db_url, "jobs", "delete", str(c))
    assert waiting.returncode == 4 and f"skipped job {c}: available" in waiting.stdout

    assert run(db_url, "jobs", "priority", str(c), "--to", "-7").returncode == 0
    assert run(db_url, "jobs", "reschedule", str(c), "--at", "2h", "--json").returncode == 0
    job = app.jobs.get(c)
    assert job is not None and (job.priority, job.state) == (-7, pgq.JobState.SCHEDULED)
    assert doc(run(db_url, "jobs", "cancel", str(a), "--json"))["changed"] == 1
    assert doc(run(db_url, "jobs", "delete", str(a), "--json"))["changed"] == 1
    shown = run(db_url, "jobs", "show", str(a))
    assert shown.returncode == 3 and shown.stderr == f"error: no job {a} (it was deleted by tester)\n"


def test_queues_and_workers(db_url: str, app: pgq.App) -> None:
    enqueue(app, 1, queue="mail")
    paused = run(db_url, "queues", "pause", "mail", "--reason", "outage", "--json")
    assert paused.returncode == 0, paused.stderr
    assert {k: doc(paused)[k] for k in ("name", "paused", "paused_by", "pause_reason")} == {
        "name": "mail", "paused": True, "paused_by": "tester", "pause_reason": "outage"}
    listed = run(db_url, "queues", "list")
    assert listed.stdout.splitlines()[1].split()[:2] == ["mail", "paused"]
    assert run(db_url, "queues", "resume", "mail").stdout == "resumed queue mail\n"
    assert doc(run(db_url, "queues", "list", "--json")) == {"queues": [
        {"name": "mail", "paused": False, "paused_at": doc(paused)["paused_at"],
         "paused_by": "tester", "pause_reason": "outage"}]}

    empty = run(db_url, "workers")
    assert empty.returncode == 0 and empty.stdout.startswith("no workers registered")
    assert doc(run(db_url, "workers", "--json")) == {"workers": []}
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO pgq_workers (id, host, pid, queues, concurrency, version) "
                     "VALUES ('h1:9:a', 'h1', 9, '{\"mail\": 2}', 4, '0.1.0')")
    (worker,) = doc(run(db_url, "workers", "--json"))["workers"]
    assert (worker["host"], worker["queues"]) == ("h1", {"mail": 2})
    assert "mail=2" in run(db_url, "workers").stdout


def test_progress_bar_on_a_terminal(db_url: str, app: pgq.App) -> None:
    ids = enqueue(app, 30, queue="dead")
    fail(db_url, ids)
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_")}
    with os.fdopen(leader, "rb", buffering=0) as terminal:
        proc = subprocess.run([sys.executable, "-m", "pgq", "jobs", "retry", "--queue", "dead",
                               "--database-url", db_url], stdout=subprocess.PIPE,
                              stderr=follower, env=env, cwd=ROOT, timeout=120, check=False)
        os.close(follower)
        seen = b""
        try:
            while chunk := terminal.read(4096):
                seen += chunk
        except OSError:  # the terminal's other end closed: all is read
            pass
    assert proc.returncode == 0 and proc.stdout == b"retried 30 jobs\n"
    assert b"retried" in seen and b"100%" in seen, seen


@pytest.mark.parametrize(("args", "code", "message"), [
    (["jobs", "list", "--since", "2x"], 1, "error: --since must be ISO 8601"),
    (["jobs", "list", "--meta", "tenant"], 1, "error: --meta must look like KEY=VALUE"),
    (["jobs", "list", "--meta", "n:=five"], 1, "error: --meta n:= needs a JSON value"),
    (["jobs", "list", "--state", "dead"], 1, "error: unknown job state 'dead'"),
    (["jobs", "list", "--queue", "bad queue!"], 1, "error: "),
    (["jobs", "list", "--since", "1h", "--until", "2h"], 1, "error: until ("),
    (["jobs", "list", "--cursor", "bogus"], 1, "error: bad cursor 'bogus'"),
    (["jobs", "retry"], 1, "error: retry needs job ids or at least one filter"),
    (["jobs", "cancel", "5", "--state", "failed"], 1, "error: give job ids or filters, not both"),
    (["jobs", "retry", "5", "--extra-attempts", "0"], 1, "error: extra_attempts must be"),
    (["jobs", "priority", "5", "--to", "500"], 1, "error: priority must be between -100"),
    (["jobs", "retry", "5", "--actor", " "], 1, "error: actor must be a non-empty string"),
    (["jobs", "reschedule", "5", "--at", "soon"], 1, "error: --at must be ISO 8601"),
    (["queues", "pause", "bad queue!"], 1, "error: "),
    (["jobs", "show", "abc"], 2, "is not a valid integer"),
    (["jobs", "list", "--limit", "0"], 2, "0 is not in the range"),
    (["jobs", "reschedule", "5"], 2, "Missing option '--at'"),
])
def test_bad_input_is_one_line_and_an_exit_code(db_url: str, args: list[str], code: int,
                                                message: str) -> None:
    out = run(db_url, *args)
    assert out.returncode == code, out.stderr
    assert message in out.stderr, out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    if code == 1:
        assert out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1, out.stderr


@pytest.mark.parametrize("args", [["jobs", "list"], ["jobs", "show", "1"], ["queues", "list"],
                                  ["workers"], ["jobs", "retry", "1"]])
def test_an_unreachable_database_is_one_line(args: list[str]) -> None:
    # The pool retries a refused connection until the connect timeout (5 s by default):
    # 1 s is as good a proof and keeps these five cases from costing 25 s.
    out = run(NOWHERE, *args, extra_env={"PGQ_CONNECT_TIMEOUT": "1"})
    assert out.returncode == 1 and out.stderr.startswith("error: cannot connect to PostgreSQL")
    assert len(out.stderr.splitlines()) == 1 and "hunter2" not in out.stderr


def test_help_names_exit_codes_and_filters() -> None:
    # In this process (help text is the same text in a subprocess): eight interpreter
    # starts cost about 10 s of the suite's budget for nothing.
    def help_of(*sub: str) -> Any:
        return CliRunner().invoke(cli, [*sub, "--help"], env={"PGQ_DATABASE_URL": NOWHERE})

    for sub in (["jobs", "retry"], ["jobs", "cancel"], ["jobs", "delete"], ["jobs", "list"],
                ["jobs", "show"], ["queues", "pause"], ["workers"]):
        out = help_of(*sub)
        assert out.exit_code == 0 and "Exit codes: 0" in " ".join(out.output.split()), sub
    retry = " ".join(help_of("jobs", "retry").output.split())
    for option in ("--state", "--queue", "--task", "--tag", "--meta", "--since", "--until",
                   "--yes", "--dry-run", "--json", "--actor", "--reason", "2h, 7d"):
        assert option in retry, option


def test_jobs_result_prints_the_result_or_exits_with_the_end(db_url: str, app: pgq.App) -> None:
    done, failed, waiting = enqueue(app, 3)
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("UPDATE pgq_jobs SET state = 'completed', finished_at = now(), "
                  "result = '{\"sent\": 3}' WHERE id = %s", (done,))
    fail(db_url, [failed])
    out = run(db_url, "jobs", "result", str(done))
    assert (out.returncode, json.loads(out.stdout)) == (0, {"sent": 3})
    assert doc(run(db_url, "jobs", "result", str(done), "--json")) == {
        "id": done, "state": "completed", "result": {"sent": 3}}
    out = run(db_url, "jobs", "result", str(failed), "--wait", "5")
    assert out.returncode == 5 and "SMTPError: 421 try later" in out.stderr
    assert doc(run(db_url, "jobs", "result", str(failed), "--json"))["error"]["type"] == "SMTPError"
    out = run(db_url, "jobs", "result", str(waiting), "--wait", "0.2")
    assert out.returncode == 7 and "did not finish within 0.2s" in out.stderr
    app.jobs.cancel(waiting, actor="tester")
    assert run(db_url, "jobs", "result", str(waiting)).returncode == 6
    assert run(db_url, "jobs", "result", str(waiting + 100)).returncode == 3
