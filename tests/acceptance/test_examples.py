"""Every example runs, the README shows them verbatim, and the demo works both against
a server and, with no server at all, on an embedded PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(script: Path, env: dict[str, str], prefix: list[str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_")}
    return subprocess.run([*(prefix or []), sys.executable, str(script)], capture_output=True,
                          text=True, env={**base, **env}, cwd=ROOT, timeout=300, check=False)


def test_every_example_is_covered() -> None:
    names = {p.name for p in EXAMPLES}
    assert names == {"demo.py", "quickstart_psycopg.py", "quickstart_sqlalchemy.py"}, (
        "a new example needs a test here")


@pytest.mark.parametrize("name", ["quickstart_sqlalchemy.py", "quickstart_psycopg.py"])
def test_quickstart_runs_and_is_in_the_readme(name: str, db_url: str) -> None:
    source = (ROOT / "examples" / name).read_text()
    assert source.strip() in (ROOT / "README.md").read_text(), f"README shows a stale {name}"
    out = run(ROOT / "examples" / name, {"PGQ_DATABASE_URL": db_url})
    assert out.returncode == 0, out.stderr
    with psycopg.connect(db_url) as c:
        jobs = c.execute("SELECT task, state FROM pgq_jobs ORDER BY id").fetchall()
    expected = {"quickstart_sqlalchemy.py": [("email.welcome", "available")],
                "quickstart_psycopg.py": [("email.receipt", "available"),
                                          ("report.daily", "scheduled")]}[name]
    assert jobs == expected


def check_demo_output(stdout: str) -> None:
    assert "SQLAlchemy session committed" in stdout
    assert re.search(r"enqueue with the same unique key: duplicate=True", stdout)
    assert "enqueue_many: 1000 jobs" in stdout
    assert "a typo is refused: unknown task 'email.reciept'" in stdout
    assert "(3 rows: the receipt completed" in stdout
    assert re.search(r"\| api\.sync\s+\| completed\s+\| 2 ", stdout), stdout
    assert re.search(r"\| report\.broken\s+\| failed\s+\| 2 .*ValueError", stdout), stdout
    assert "worker finished: {" in stdout


def test_demo_against_a_server(empty_db_url: str) -> None:
    out = run(ROOT / "examples" / "demo.py", {"PGQ_DATABASE_URL": empty_db_url})
    assert out.returncode == 0, out.stderr
    assert "database: PGQ_DATABASE_URL" in out.stdout
    check_demo_output(out.stdout)
    with psycopg.connect(empty_db_url) as c:
        assert c.execute("SELECT count(*) FROM pgq_jobs").fetchone() == (1003,)
        assert c.execute("SELECT count(*) FROM pgq_jobs WHERE state NOT IN ('completed', 'failed')"
                         ).fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM demo_orders").fetchone() == (1,)


def test_demo_on_a_machine_without_a_server(tmp_path: Path) -> None:
    """A fresh network namespace has no PostgreSQL on localhost:5432 and no way out:
    the demo must fall back to the embedded server."""
    unshare = shutil.which("unshare")
    assert unshare, "util-linux's unshare is needed to simulate a machine without a server"
    script = ROOT / "examples" / "demo.py"
    shell = f"ip link set lo up 2>/dev/null; exec {sys.executable} {script}"
    out = subprocess.run([unshare, "--net", "sh", "-c", shell], capture_output=True, text=True,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("PGQ_")},
                              "XDG_CACHE_HOME": str(tmp_path)},
                         cwd=ROOT, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert "database: embedded PostgreSQL" in out.stdout
    check_demo_output(out.stdout)
    assert (tmp_path / "pgq" / "embedded" / "PG_VERSION").exists()
