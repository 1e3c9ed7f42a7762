"""The package's layout is its architecture (docs/architecture.md): layers that import
one way, SQL executed only by the store, redis imported only by coordination, and
modules small enough to read. These tests are what keeps it so."""

from __future__ import annotations

import ast
import os
import shutil
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PGQ = ROOT / "pgq"
CONTRACTS = len(tomllib.loads((ROOT / "pyproject.toml").read_text())
                ["tool"]["importlinter"]["contracts"])
"""How many contracts pyproject.toml declares: every one must be kept."""


def _lint_imports(cwd: Path, *, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert tool, "import-linter is a dev dependency; install with pip install -e '.[dev]'"
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([tool, "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


def test_the_import_contracts_hold() -> None:
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Contracts: {CONTRACTS} kept, 0 broken." in out.stdout


def test_a_wrong_import_fails_the_contracts_and_names_the_import(tmp_path: Path) -> None:
    """The same contracts on a copy of the package with five deliberate mistakes: the
    store importing the worker (a layer upwards), the vocabulary importing redis, the
    worker reading the SQL catalogue itself, the worker importing opentelemetry (only
    pgq.client.tracing may, lazily), and prometheus_client (only
    pgq.observability.metrics may)."""
    shutil.copytree(PGQ, tmp_path / "pgq", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for module, line in (("store/database.py", "from pgq.worker import Worker"),
                         ("core/errors.py", "import redis"),
                         ("worker/producer.py", "from pgq.store.queries import QUERIES"),
                         ("worker/held.py", "from opentelemetry import trace"),
                         ("worker/telemetry.py", "import prometheus_client")):
        path = tmp_path / "pgq" / module
        path.write_text(path.read_text() + f"\n{line}  # deliberately wrong\n")
    out = _lint_imports(tmp_path, pythonpath=tmp_path)
    assert out.returncode != 0
    assert f"Contracts: {CONTRACTS - 5} kept, 5 broken." in out.stdout, out.stdout
    for named in ("pgq.store.database -> pgq.worker", "pgq.core.errors -> redis",
                  "pgq.worker.producer -> pgq.store.queries", "pgq.worker.held -> opentelemetry",
                  "pgq.worker.telemetry -> prometheus_client"):
        assert named in out.stdout, out.stdout


def _sql_calls(path: Path) -> list[str]:
    """Calls like ``x.execute("...")`` with the SQL written in place (a literal or an
    f-string), instead of a named statement run through the store."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"execute", "executemany", "copy", "stream"}
                and node.args and isinstance(node.args[0], ast.Constant | ast.JoinedStr)):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_the_store_writes_sql() -> None:
    offenders = [hit for path in sorted(PGQ.rglob("*.py"))
                 if path.relative_to(PGQ).parts[0] != "store" for hit in _sql_calls(path)]
    assert offenders == []


def test_no_module_over_400_lines_no_class_over_300_median_80_to_250() -> None:
    lines: dict[str, int] = {}
    big_classes = []
    for path in sorted(PGQ.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(ROOT))
        lines[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None \
                    and node.end_lineno - node.lineno + 1 > 300:
                big_classes.append(f"{name}:{node.name}")
    assert {n: k for n, k in lines.items() if k > 400} == {}
    assert big_classes == []
    assert 80 <= statistics.median(lines.values()) <= 250
