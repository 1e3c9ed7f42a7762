"""`pgq check`, `pgq cron list`, and how `pgq worker` / `pgq scheduler` treat an app whose
cron entries are invalid: run as subprocesses, the way operators run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pgq.core.cron import CronEntry

UNREACHABLE = "postgresql://nobody:hunter2@127.0.0.1:1/nothing"
"""Commands that must not touch the database get this URL: connecting would fail loudly."""

GOOD = '''\
import pgq

app = pgq.App(strict=True)


@app.task(name="reports.build")
def build(day: str = "today") -> None: ...


@app.task(name="cache.warm")
def warm() -> None: ...


app.cron("@yearly", "reports.build", name="reports.yearly")
app.cron("30 2 * * *", "reports.build", {"day": "yesterday"}, name="reports.nightly",
         timezone="Europe/Berlin", catch_up="backfill")
app.cron("*/15 9-17 * * MON-FRI", "cache.warm", timezone="America/New_York", queue="bulk")
'''

EMPTY = "import pgq\napp = pgq.App()\n"

BAD_CASES = {
    "minute": ('"60 * * * *"', "UTC", "invalid minute field '60'"),
    "four_fields": ('"* * * *"', "UTC", "has 4 fields; expected 5"),
    "alias": ('"@yearlyy"', "UTC", "unknown alias '@yearlyy'"),
    "huge": ('"x" * 10_240', "UTC", "cron expression longer than 200 characters"),
    "zone": ('"@daily"', "Mars/Base", "unknown time zone 'Mars/Base'"),
}


def bad_app(expression: str, timezone: str) -> str:
    """A valid app, one valid entry, then one invalid entry named ``cleanup.broken``."""
    return (f"{GOOD}\n\n@app.task(name='cleanup.run')\ndef cleanup() -> None: ...\n\n\n"
            f"app.cron({expression}, 'cleanup.run', name='cleanup.broken', timezone={timezone!r})\n")


def run(*args: str, cwd: Path, db_url: str = UNREACHABLE) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_")}
    env["PGQ_DATABASE_URL"] = db_url
    # A refusal happens at import, before anything runs; 60 s is only a hang guard.
    return subprocess.run([sys.executable, "-m", "pgq", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=60, check=False)


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    (tmp_path / "goodjobs.py").write_text(GOOD)
    (tmp_path / "emptyjobs.py").write_text(EMPTY)
    for case, (expression, timezone, _) in BAD_CASES.items():
        (tmp_path / f"bad_{case}.py").write_text(bad_app(expression, timezone))
    return tmp_path


def test_check_accepts_a_valid_app_without_touching_the_database(apps: Path) -> None:
    out = run("check", "--app", "goodjobs:app", cwd=apps)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok: 2 tasks, 3 cron entries"
    assert out.stderr == ""


def test_check_needs_an_app(apps: Path) -> None:
    out = run("check", cwd=apps)
    assert out.returncode == 1
    assert out.stderr.strip() == "error: this command needs --app module:attribute (or PGQ_APP)"


@pytest.mark.parametrize(("command", "case"), [
    *((["check"], case) for case in BAD_CASES),
    *((["worker"], case) for case in BAD_CASES),
    *((["scheduler"], case) for case in BAD_CASES),
    (["worker", "--scheduler", "--processes", "2"], "alias"),
    (["cron", "list"], "zone"),
])
def test_an_invalid_entry_stops_every_command_at_load(apps: Path, command: list[str], case: str) -> None:
    message = BAD_CASES[case][2]
    out = run(*command, "--app", f"bad_{case}:app", cwd=apps)
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # one line, no traceback, no log noise
    assert lines[0].startswith("error: cron entry 'cleanup.broken': "), lines[0]
    assert message in lines[0], lines[0]
    assert len(lines[0]) < 400
    # Refused before any connection: the unreachable database was never mentioned.
    assert "connect" not in out.stderr and "hunter2" not in out.stderr + out.stdout
    assert out.stdout == ""


def test_a_valid_app_does_get_as_far_as_the_database(apps: Path) -> None:
    """The counterpart of the test above: with a valid app, the same commands go on to
    connect, so the refusals above really happened at load."""
    for command in (["worker"], ["scheduler"]):
        out = run(*command, "--app", "goodjobs:app", cwd=apps)
        assert out.returncode == 1, out.stderr
        assert "cannot connect to PostgreSQL" in out.stderr, out.stderr


FIRE = re.compile(r"^    (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)Z  \((\d{4}-\d\d-\d\d \d\d:\d\d) (\S+)\)$")


def test_cron_list_shows_each_entry_and_its_next_fires(apps: Path) -> None:
    before = datetime.now(UTC)
    out = run("cron", "list", "--app", "goodjobs:app", cwd=apps)
    after = datetime.now(UTC)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 * 4, out.stdout
    headers = lines[::4]
    assert headers == [
        "reports.yearly  '0 0 1 1 *' UTC  task=reports.build catch_up=latest",
        "reports.nightly  '30 2 * * *' Europe/Berlin  task=reports.build catch_up=backfill",
        "cache.warm  '*/15 9-17 * * MON-FRI' America/New_York  task=cache.warm catch_up=latest",
    ]
    entries = [CronEntry("reports.yearly", "@yearly", "t"),
               CronEntry("reports.nightly", "30 2 * * *", "t", timezone="Europe/Berlin"),
               CronEntry("cache.warm", "*/15 9-17 * * MON-FRI", "t", timezone="America/New_York")]
    for k, e in enumerate(entries):
        shown = []
        for line in lines[4 * k + 1: 4 * k + 4]:
            match = FIRE.match(line)
            assert match, line
            instant = datetime.fromisoformat(match[1]).replace(tzinfo=UTC)
            local = instant.astimezone(ZoneInfo(e.timezone))
            assert (match[2], match[3]) == (f"{local:%Y-%m-%d %H:%M}", f"{local:%Z}"), line
            shown.append(instant)
        # the next three fires as of some moment during the command
        assert shown in (list(islice(e.fires_after(before), 3)), list(islice(e.fires_after(after), 3)))
        assert before < shown[0] and shown[0] < shown[1] < shown[2]


def test_cron_list_next_and_empty(apps: Path) -> None:
    out = run("cron", "list", "--app", "goodjobs:app", "--next", "5", cwd=apps)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 3 * 6
    yearly = [datetime.fromisoformat(m[1]) for line in out.stdout.splitlines()[1:6]
              if (m := FIRE.match(line))]
    assert [d.year for d in yearly] == [yearly[0].year + k for k in range(5)]
    assert all((d.month, d.day, d.hour, d.minute) == (1, 1, 0, 0) for d in yearly)
    assert yearly[0] - datetime.now(UTC).replace(tzinfo=None) < timedelta(days=367)
    empty = run("cron", "list", "--app", "emptyjobs:app", cwd=apps)
    assert (empty.returncode, empty.stdout) == (0, "no cron entries\n")
    bad = run("cron", "list", "--app", "goodjobs:app", "--next", "0", cwd=apps)
    assert bad.returncode == 2 and "--next" in bad.stderr
