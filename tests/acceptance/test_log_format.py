"""``pgq worker --log-format json`` (and ``PGQ_LOG_FORMAT=json``) as operators run it:
every line the supervisor and its child write to stderr is one JSON object, a job's
lines carry its fields, and the failing job's token and card number are masked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import psycopg
import pytest

import pgq
from tests.conftest import Databases, url_for
from tests.support.redaction_app import CARD, TOKEN
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_workers_json_lines(how: str, databases: Databases, migrated_template: str,
                              tmp_path: Path) -> None:
    url = url_for(databases.create(template=migrated_template, prefix="pgq_h15l"))
    with pgq.App(pgq.Settings(database_url=url), strict=False) as app:
        failing = app.enqueue("pay.charge", {"card_number": CARD, "token": TOKEN, "amount": 5,
                                             "ssn": "123-45-6789"}, max_attempts=1).id
        fine = app.enqueue("pay.ok", {"amount": 1}).id
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_")}
    env["PGQ_DATABASE_URL"] = url
    command = [sys.executable, "-m", "pgq", "worker", "--app", "tests.support.redaction_app:app",
               "--concurrency", "2", "--poll-interval", "0.05", "--log-level", "DEBUG",
               "--no-maintenance"]
    if how == "option":
        command += ["--log-format", "json"]
    else:
        env["PGQ_LOG_FORMAT"] = "json"
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                   stderr=out, text=True, start_new_session=True)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            wait_until(lambda: conn.execute(
                "SELECT count(*) FROM pgq_jobs WHERE state IN ('failed', 'completed')"
            ).fetchone() == (2,), 60, "both jobs to finish")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    text = log.read_text()
    docs = [json.loads(line) for line in text.splitlines()]  # every line is one object
    assert {d["logger"] for d in docs} >= {"pgq.supervisor", "pgq.worker"}
    assert all({"time", "level", "logger", "message"} <= d.keys() for d in docs)
    (failed,) = [d for d in docs if d.get("job_id") == failing and d.get("outcome")]
    masked = "gateway refused card [redacted] (token=[redacted]) for 5"
    assert {k: failed[k] for k in ("task", "queue", "attempt", "max_attempts", "outcome",
                                   "level", "error_type", "error_message")} == {
        "task": "pay.charge", "queue": "default", "attempt": 1, "max_attempts": 1,
        "outcome": "failed", "level": "WARNING", "error_type": "RuntimeError",
        "error_message": masked}
    (done,) = [d for d in docs if d.get("job_id") == fine and d.get("outcome")]
    assert (done["outcome"], done["task"], done["level"]) == ("completed", "pay.ok", "DEBUG")
    assert isinstance(done["duration"], float)
    assert "ssn" in text, "the args line is there (DEBUG)"
    for secret in (TOKEN, "4111", "123-45-6789"):
        assert secret not in text, secret  # "ssn" is the app's extra key


def test_the_schedulers_json_lines(databases: Databases, migrated_template: str,
                                   tmp_path: Path) -> None:
    url = url_for(databases.create(template=migrated_template, prefix="pgq_h15l"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_")}
    env["PGQ_DATABASE_URL"] = url
    log = tmp_path / "scheduler.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pgq", "scheduler", "--app", "tests.support.redaction_app:app",
             "--log-format", "json"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=out,
            text=True, start_new_session=True)
    try:
        wait_until(lambda: "maintenance: " in log.read_text(), 60, "the maintenance leader")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    docs = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"pgq.scheduler", "pgq.leader"} <= {d["logger"] for d in docs}
    assert any(d["message"].startswith("maintenance: ") and d["level"] == "INFO" for d in docs)
