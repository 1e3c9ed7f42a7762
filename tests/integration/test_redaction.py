"""Redaction and structured logs through a real worker and database (issue 15 items 4
and 6, acceptance: "a job's JSON log lines ... and its redacted error entry are checked
by tests"): a job failing with a token and a card number in its message has them masked
in its stored ``errors`` entries, its human and JSON log lines and its DEBUG lines,
while its stored args stay as enqueued; a task's own redactor replaces the app's; a
redactor whose hooks raise costs no outcome; operator displays mask args and errors."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import pgq
from pgq.cli.commands import cli
from pgq.core.logs import JsonFormatter
from pgq.core.redaction import MASK
from pgq.worker import WorkerConfig
from tests.conftest import REDIS_URL, Databases, url_for
from tests.integration.test_worker import run

pytestmark = pytest.mark.timeout(120)

FAST = WorkerConfig(concurrency=2, poll_seconds=0.05, maintenance=False)
CARD = "4111 1111 1111 1111"
TOKEN = "tok_live_9f8e7d6c5b4a"
SECRETS = (TOKEN, "4111", "hunter2", "123-45-6789")
NOW = pgq.Backoff(steps=[0], jitter=0)


@pytest.fixture
def url(databases: Databases, migrated_template: str) -> str:
    return url_for(databases.create(template=migrated_template, prefix="pgq_h15l"))


@pytest.fixture
def make(url: str) -> Iterator[Callable[..., pgq.App]]:
    apps: list[pgq.App] = []

    def make_app(**kwargs: Any) -> pgq.App:
        apps.append(pgq.App(pgq.Settings(database_url=url, redis_url=REDIS_URL), **kwargs))
        return apps[-1]

    yield make_app
    for app in apps:
        app.close()


@pytest.fixture
def json_lines(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """What ``--log-format json`` writes for pgq.worker at DEBUG (and caplog, the records)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("pgq.worker")
    logger.addHandler(handler)
    caplog.set_level(logging.DEBUG, logger="pgq.worker")
    yield out
    logger.removeHandler(handler)


def _errors(url: str, job_id: int) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT errors FROM pgq_jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return list(row[0])


def _docs(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_failing_jobs_entry_and_log_lines_mask_its_secrets(
        make: Callable[..., pgq.App], url: str, json_lines: io.StringIO,
        caplog: pytest.LogCaptureFixture) -> None:
    app = make()

    @app.task(name="pay.charge", max_attempts=2, backoff=NOW)
    def charge(card_number: str, token: str, amount: int) -> None:
        raise RuntimeError(f"gateway refused card {card_number} (token={token}) for {amount}")

    @app.task(name="pay.ok")
    def ok(amount: int) -> int:
        return amount

    args = {"card_number": CARD, "token": TOKEN, "amount": 12}
    failing = app.enqueue("pay.charge", args).id
    fine = app.enqueue("pay.ok", {"amount": 3}).id
    run(app, FAST, stop_when="done")

    masked = f"gateway refused card {MASK} (token={MASK}) for 12"
    entries = _errors(url, failing)
    assert [(e["attempt"], e["type"], e["message"]) for e in entries] == [
        (1, "RuntimeError", masked), (2, "RuntimeError", masked)]
    assert all(e["traceback"].endswith(f"RuntimeError: {masked}\n") for e in entries)
    job = app.jobs.get(failing)
    assert job is not None and job.state.value == "failed"
    assert job.args == args, "stored args are the task's: never redacted"

    human = [r.getMessage() for r in caplog.records
             if r.name == "pgq.worker" and r.getMessage().startswith(f"job={failing} ")
             and hasattr(r, "outcome")]
    assert [m.split(" outcome=")[1].split()[0] for m in human] == ["retryable", "failed"]
    assert all(m.endswith(f"error=RuntimeError: {masked}") for m in human), human
    (args_line,) = {r.getMessage() for r in caplog.records
                    if r.getMessage().startswith(f"job={failing} task=pay.charge args=")}
    assert json.loads(args_line.split(" args=", 1)[1]) == {
        "card_number": MASK, "token": MASK, "amount": 12}, "the DEBUG args line"
    for secret in SECRETS:
        assert secret not in caplog.text and secret not in json_lines.getvalue(), secret

    docs = _docs(json_lines)
    lines = [d for d in docs if d.get("job_id") == failing and "outcome" in d]
    assert [(d["outcome"], d["level"], d["attempt"], d["max_attempts"]) for d in lines] == [
        ("retryable", "INFO", 1, 2), ("failed", "WARNING", 2, 2)]
    for d in lines:
        assert (d["task"], d["queue"], d["logger"]) == ("pay.charge", "default", "pgq.worker")
        assert (d["error_type"], d["error_message"]) == ("RuntimeError", masked)
        assert d["duration"] >= 0 and d["time"].endswith("Z") and "trace_id" not in d
        assert d["message"] in human
    (done,) = [d for d in docs if d.get("job_id") == fine and "outcome" in d]
    assert (done["outcome"], done["level"], done["task"]) == ("completed", "DEBUG", "pay.ok")
    assert "error_type" not in done
    traces = [d for d in docs if d["message"].startswith(f"job={failing} attempt=")]
    assert len(traces) == 2 and all(d["job_id"] == failing for d in traces)


def test_a_tasks_own_redactor_replaces_the_apps(
        make: Callable[..., pgq.App], url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pgq.worker")
    app = make(redact=pgq.Redactor(extra_keys=["ssn"]))

    @app.task(name="kyc.check", max_attempts=1)
    def check(ssn: str, password: str) -> None:
        raise ValueError(f"ssn={ssn} rejected")

    @app.task(name="kyc.note", max_attempts=1,
              redact=pgq.Redactor(keys=("body",), text=lambda t: t.replace("ACME", "[client]")))
    def note(body: str, ssn: str) -> None:
        raise ValueError(f"ACME refused body={body} ssn={ssn} card {CARD}")

    by_app = app.enqueue("kyc.check", {"ssn": "123-45-6789", "password": "hunter2"}).id
    by_task = app.enqueue("kyc.note", {"body": "hello", "ssn": "987-65-4321"}).id
    run(app, FAST, stop_when="done")

    assert _errors(url, by_app)[0]["message"] == f"ssn={MASK} rejected"
    assert _errors(url, by_task)[0]["message"] == (
        f"[client] refused body={MASK} ssn=987-65-4321 card {MASK}"), "its own, not the app's"
    shown = {m.split(" ", 1)[0]: json.loads(m.split(" args=", 1)[1]) for m in
             (r.getMessage() for r in caplog.records) if " args=" in m}
    assert shown[f"job={by_app}"] == {"ssn": MASK, "password": MASK}
    assert shown[f"job={by_task}"] == {"body": MASK, "ssn": "987-65-4321"}
    assert "123-45-6789" not in caplog.text and "hunter2" not in caplog.text


def test_a_raising_hook_costs_no_outcome_and_is_logged_once(
        make: Callable[..., pgq.App], url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = make()

    def broken(_: Any) -> Any:
        raise LookupError("the hook is broken")

    @app.task(name="pay.broken", max_attempts=1, redact=pgq.Redactor(args=broken, text=broken))
    def pay(token: str) -> None:
        raise RuntimeError(f"refused token={token}")

    ids = [app.enqueue("pay.broken", {"token": f"{TOKEN}{n}"}).id for n in range(3)]
    run(app, FAST, stop_when="done")
    for job_id in ids:
        job = app.jobs.get(job_id)
        assert job is not None and job.state.value == "failed"
        (entry,) = _errors(url, job_id)
        assert entry["message"] == f"refused token={MASK}", "the default masking"
    (complaint,) = [r for r in caplog.records if r.name == "pgq.redaction"]
    assert complaint.levelno == logging.ERROR
    assert "LookupError: the hook is broken" in complaint.getMessage()
    assert TOKEN not in caplog.text


def test_operator_displays_mask_args_and_errors(make: Callable[..., pgq.App], url: str) -> None:
    app = make(strict=False)
    args = {"user": "bob", "password": "hunter2", "card": {"card_number": CARD}}
    job_id = app.enqueue("ops.any", args).id
    # An errors entry stored raw (before redaction existed, or by hand).
    raw = {"attempt": 1, "type": "RuntimeError", "message": f"refused token={TOKEN}",
           "traceback": f"Traceback ...\nRuntimeError: refused token={TOKEN}\n", "worker": "w"}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE pgq_jobs SET errors = jsonb_build_array(%s::jsonb) WHERE id = %s",
                     [json.dumps(raw), job_id])
    stored = app.jobs.get(job_id)
    assert stored is not None and stored.args == args, "the API returns what is stored"

    runner = CliRunner()
    shown = runner.invoke(cli, ["jobs", "show", str(job_id), "--json", "--database-url", url])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.output)
    assert doc["args"] == {"user": "bob", "password": MASK, "card": {"card_number": MASK}}
    assert doc["attempts"][0]["message"] == f"refused token={MASK}"
    assert doc["errors"][0]["message"] == f"refused token={MASK}"
    text = runner.invoke(cli, ["jobs", "show", str(job_id), "--database-url", url])
    listed = runner.invoke(cli, ["jobs", "list", "--json", "--database-url", url])
    listed_text = runner.invoke(cli, ["jobs", "list", "--database-url", url])
    for result in (shown, text, listed, listed_text):
        assert result.exit_code == 0, result.output
        for secret in SECRETS:
            assert secret not in result.output, (secret, result.output)
    assert f"refused token={MASK}" in text.output and '"user": "bob"' in text.output
    assert json.loads(listed.output)["jobs"][0]["args"]["password"] == MASK
