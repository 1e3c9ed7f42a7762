"""Project-level promises: CI runs the README's test command, and the code is lint- and
type-clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip().startswith("python3 -m venv")]


# A line of .ci/run that installs a system tool the tests need and does nothing where the
# tool is already there: group 1 is the tool, group 2 the Debian package that provides it.
INSTALL_IF_MISSING = re.compile(
    r"command -v ([\w-]+) >/dev/null \|\| \{[^{}]*apt-get install [^{}]* ([\w.+-]+); \}")
SYSTEM_TOOLS = {
    "promtool": "prometheus",  # checks and unit-tests the alert rules (test_alert_rules.py)
    "chromium": "chromium",  # the dashboard's browser tests (tests/browser, Playwright)
}
"""The system tools the tests need besides the services, and their Debian packages: CI
installs exactly these, each only when absent."""


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """.ci/run sets the shell up, installs missing system tools (each such line
    commented, and before the tests), and runs the README's test command: nothing
    else, so CI cannot pass on something a reader of the README would not run."""
    demo, tests = readme_commands()[:2]
    assert demo.endswith("examples/demo.py")
    assert tests.endswith("pytest")
    raw = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines() if line.strip()]
    ci = [line for line in raw if not line.startswith("#")]
    assert tests in ci, ".ci/run must call the README's test command"
    installs = [line for line in ci if INSTALL_IF_MISSING.fullmatch(line)]
    tools = {m.group(1): m.group(2) for m in map(INSTALL_IF_MISSING.fullmatch, installs) if m}
    assert tools == SYSTEM_TOOLS, ".ci/run installs the tools the tests need, and no others"
    assert all(line.startswith(("set ", "cd ")) or line == tests or line in installs
               for line in ci), (
        ".ci/run must do nothing but run the README's test command (and install missing tools)")
    for line in installs:
        assert raw[raw.index(line) - 1].startswith("#"), f"say why .ci/run installs: {line}"
        assert ci.index(line) < ci.index(tests), f"install before the tests run: {line}"
        assert not re.search(r"\b(pip|pytest|python3?)\b", line), line


def test_the_readme_names_the_distribution_to_install() -> None:
    """The import name is not the distribution's (issue 14 item 8): a new user must not
    have to guess, nor install another project called pgq."""
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert any(line.strip().startswith(f"pip install {name}")
               for block in blocks for line in block.splitlines())


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is a dev dependency; install with pip install -e '.[dev]'"
    return found


def test_ruff_clean() -> None:
    out = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_clean() -> None:
    out = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_pickle_code_path() -> None:
    """Job data is JSON only: nothing in the package may import or call pickle/marshal."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "pgq").rglob("*.py")
                 if re.search(r"\b(c?pickle|marshal|shelve|dill)\b", p.read_text())]
    assert offenders == []
