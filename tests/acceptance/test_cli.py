"""The `pgq` command, run as a subprocess the way operators run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgq.store import migrate

ROOT = Path(__file__).resolve().parents[2]


def pgq_cmd(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pgq", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=120, check=False)


def test_help_describes_exactly_what_exists() -> None:
    out = pgq_cmd("--help")
    assert out.returncode == 0
    lines = out.stdout.split("Commands:")[1].strip().splitlines()
    assert [line.split()[0] for line in lines] == ["api-keys", "check", "cron", "enqueue",
                                                   "hash-password", "health", "jobs",
                                                   "metrics", "migrate",
                                                   "queues", "scheduler", "stats", "web",
                                                   "worker", "workers"]
    for sub in (["migrate"], ["enqueue"], ["worker"], ["scheduler"], ["check"], ["cron", "list"],
                ["metrics"], ["health"], ["web"], ["api-keys", "create"]):
        help_text = pgq_cmd(*sub, "--help").stdout
        if sub[0] not in ("check", "cron"):  # these two never touch the database
            assert "PGQ_DATABASE_URL" in help_text, f"{sub} --help must name its env var"
        options = " ".join(help_text.split("Options:")[1].split("-h, --help")[0].split())
        # --json is how one invocation prints, not configuration: it has no variable.
        options = options.replace("--json Print one JSON document on stdout instead of text.", "")
        # every option's help names its PGQ_* variable
        assert options.count(" --") + options.startswith("--") == options.count("env var: PGQ_"), options


def test_version() -> None:
    out = pgq_cmd("--version")
    assert out.returncode == 0 and out.stdout.startswith("pgq, version ")


def test_migrate_twice_then_enqueue(empty_db_url: str) -> None:
    env = {"PGQ_DATABASE_URL": empty_db_url}
    first = pgq_cmd("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert f"base -> {migrate.head()}" in first.stdout
    second = pgq_cmd("migrate", env=env)
    assert second.returncode == 0 and "nothing to do" in second.stdout

    out = pgq_cmd("enqueue", "report.build", "--args", '{"day": "2026-11-24"}', "--queue",
                  "bulk", "--delay", "60", "--priority", "5", "--tag", "ops", env=env)
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout.split()[-1])
    with psycopg.connect(empty_db_url) as c:
        row = c.execute("SELECT task, args, queue, state, priority, tags FROM pgq_jobs WHERE id = %s",
                        [job_id]).fetchone()
    assert row == ("report.build", {"day": "2026-11-24"}, "bulk", "scheduled", 5, ["ops"])

    dup1 = pgq_cmd("enqueue", "x.y", "--unique-key", "k", env=env)
    dup2 = pgq_cmd("enqueue", "x.y", "--unique-key", "k", env=env)
    assert dup1.returncode == dup2.returncode == 0
    assert dup2.stdout.startswith("duplicate: job " + dup1.stdout.split()[-1])

    down = pgq_cmd("migrate", "--downgrade", "base", env=env)
    assert down.returncode == 0 and "removed" in down.stdout


def test_flag_wins_over_env(empty_db_url: str) -> None:
    out = pgq_cmd("migrate", "--database-url", empty_db_url,
                  env={"PGQ_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing"})
    assert out.returncode == 0, out.stderr


def test_enqueue_with_app_uses_its_registry_and_defaults(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "myjobs.py").write_text(
        "import pgq\napp = pgq.App(strict=True)\n"
        "@app.task(name='mail.send', queue='critical', max_attempts=3)\n"
        "def send(to: str) -> None: ...\n")
    env = {"PGQ_DATABASE_URL": db_url}
    ok = pgq_cmd("enqueue", "mail.send", "--args", '{"to": "a@b.c"}', "--app", "myjobs:app",
                 env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "note" not in ok.stderr
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT queue, max_attempts FROM pgq_jobs").fetchall() == [("critical", 3)]
    # Without --app the same command says, once and on stderr, that these defaults are
    # not applied (issue 14 item 8: a new user's job sat in 'default' with 25 attempts).
    bare = pgq_cmd("enqueue", "mail.send", "--args", '{"to": "a@b.c"}', env=env, cwd=tmp_path)
    assert bare.returncode == 0 and bare.stdout.startswith("enqueued job "), bare.stderr
    assert bare.stderr.count("note:") == 1 and len(bare.stderr.strip().splitlines()) == 1
    assert "no --app, so mail.send's registered defaults are not applied" in bare.stderr
    assert "queue, priority and max attempts are pgq's (default, 0, 25)" in bare.stderr
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT queue, max_attempts FROM pgq_jobs ORDER BY id").fetchall() == [
            ("critical", 3), ("default", 25)]
    typo = pgq_cmd("enqueue", "mail.sned", "--app", "myjobs:app", env=env, cwd=tmp_path)
    assert typo.returncode == 1 and "unknown task 'mail.sned'" in typo.stderr
    bad_app = pgq_cmd("enqueue", "mail.send", "--app", "nosuchmodule:app", env=env, cwd=tmp_path)
    assert bad_app.returncode == 1 and "cannot import 'nosuchmodule'" in bad_app.stderr


@pytest.mark.parametrize(("args", "env", "message"), [
    (["migrate"], {"PGQ_DATABASE_URL": "postgresql://admin:hunter2@127.0.0.1:1/db"},
     "cannot connect to PostgreSQL at postgresql://admin:***@127.0.0.1:1/db"),
    (["migrate"], {"PGQ_DATABASE_URL": "mysql://admin:hunter2@localhost/db"},
     "database URL must start with postgresql://"),
    (["migrate"], {"PGQ_DATABASE_URL": "postgresql://admin:hunter2@localhost:notaport/db"},
     "invalid database URL"),
    (["enqueue", "a.b", "--database-url", "postgresql://admin:hunter2@127.0.0.1:1/db"], {},
     "cannot connect to PostgreSQL"),
    (["enqueue", "bad name!"], {"PGQ_DATABASE_URL": "postgresql://admin:hunter2@127.0.0.1:1/db"},
     "invalid task name"),
    (["enqueue", "a.b", "--args", "[1, 2]"], {"PGQ_DATABASE_URL": "postgresql://x:hunter2@127.0.0.1:1/db"},
     "args must be a dict"),
    (["enqueue", "a.b", "--args", "{not json"], {}, "not valid JSON"),
    (["enqueue", "a.b", "--priority", "500"], {"PGQ_DATABASE_URL": "postgresql://x:hunter2@127.0.0.1:1/d"},
     "priority must be between -100"),
])
def test_errors_are_one_line_without_traceback_or_secret(args: list[str], env: dict[str, str],
                                                         message: str) -> None:
    out = pgq_cmd(*args, env=env)
    assert out.returncode in (1, 2)
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert "hunter2" not in out.stderr + out.stdout
    if out.returncode == 1:
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


# Hostile --args, each a one-line error and exit 1 (issue 12, defect 11: a 5,000-digit
# integer printed a 40-line traceback; -0.0 was stored as 0.0). No database is reached:
# port 1 refuses at once, and the message named is the input's, not the connection's.
NOWHERE = {"PGQ_DATABASE_URL": "postgresql://x:hunter2@127.0.0.1:1/db"}
HOSTILE_ARGS = [
    pytest.param('{"n": ' + "9" * 5000 + "}",
                 "--args has an integer of 5000 digits; at most 4300 can be converted from text",
                 id="5000-digit-int"),
    pytest.param('{"x": ' + "[" * 50_000 + "]" * 50_000 + "}",
                 "--args nests too deeply to decode as JSON", id="50000-deep"),
    pytest.param('{"x": ' + "[" * 300 + "]" * 300 + "}",
                 "args nests deeper than 256 levels of objects and arrays", id="300-deep"),
    pytest.param('{"x": -0.0}', "args['x'] is -0.0; PostgreSQL jsonb has no negative zero",
                 id="negative-zero"),
    pytest.param('{"x": 1e400}', "--args has the number 1e400, too large for a float", id="1e400"),
    pytest.param('{"x": NaN}', "--args has NaN, which is not JSON", id="nan"),
    pytest.param('{"x": "\\ud800"}', "args['x'] is not valid Unicode (lone surrogate)",
                 id="lone-surrogate"),
    pytest.param('{"x": "a\\u0000b"}', "args['x'] contains a NUL character", id="nul"),
    pytest.param('{"a": 1, "a": 2}', "--args has the key 'a' twice in one object",
                 id="duplicate-key"),
    pytest.param("{not json", "--args is not valid JSON: Expecting property name", id="syntax"),
]


@pytest.mark.parametrize(("args_json", "message"), HOSTILE_ARGS)
def test_hostile_args_are_one_line_errors(args_json: str, message: str) -> None:
    # Through the environment: 100,000 brackets are too long for one argv string.
    out = pgq_cmd("enqueue", "a.b", env={**NOWHERE, "PGQ_ENQUEUE_ARGS": args_json})
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"error: {message}"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_undecodable_bytes_on_the_command_line_are_one_line_errors() -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates: refused, in one line."""
    for argv, message in [([b"--args", b'{"x": "\xff"}'], "args['x'] is not valid Unicode"),
                          ([b"--unique-key", b"k\xff"], "unique_key is not valid Unicode"),
                          ([b"--tag", b"\xfe"], "tag is not valid Unicode")]:
        out = subprocess.run([sys.executable, "-m", "pgq", "enqueue", "a.b", *argv],
                             capture_output=True, timeout=120, check=False,
                             env={**{k: v for k, v in os.environ.items()
                                     if not k.startswith("PGQ_")}, **NOWHERE})
        stderr = out.stderr.decode()
        assert out.returncode == 1 and stderr.startswith(f"error: {message}"), stderr
        assert len(stderr.strip().splitlines()) == 1, stderr


def test_big_floats_arrive_as_floats(db_url: str) -> None:
    out = pgq_cmd("enqueue", "a.b", "--args", '{"f": 1e16, "g": -2.5e300, "h": 0.1}',
                  env={"PGQ_DATABASE_URL": db_url})
    assert out.returncode == 0, out.stderr
    with psycopg.connect(db_url) as c:
        (args,) = c.execute("SELECT args FROM pgq_jobs").fetchone()
    assert args == {"f": 1e16, "g": -2.5e300, "h": 0.1}
    assert {type(v) for v in args.values()} == {float}


def test_worker_refuses_an_unmigrated_database(empty_db_url: str) -> None:
    out = pgq_cmd("worker", "--app", "tests.support.jobs:app", env={"PGQ_DATABASE_URL": empty_db_url})
    assert out.returncode == 1
    assert "run `pgq migrate` first" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--queues", "a=0"], "weight and cap must be at least 1"),
    (["--queues", "bad queue"], "bad queue spec"),
    ([], None),
])
def test_worker_config_errors(args: list[str], message: str | None, db_url: str) -> None:
    if message is None:  # no --app at all
        out = pgq_cmd("worker", env={"PGQ_DATABASE_URL": db_url})
        assert out.returncode == 1 and "needs --app" in out.stderr
        return
    out = pgq_cmd("worker", "--app", "tests.support.jobs:app", *args,
                  env={"PGQ_DATABASE_URL": db_url})
    assert out.returncode == 1 and message in out.stderr, out.stderr
