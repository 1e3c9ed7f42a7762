"""The shipped Prometheus alert rules (issue 15 item 3): `promtool check rules` accepts
deploy/prometheus/pgq-alerts.yml, `promtool test rules` passes
deploy/prometheus/pgq-alerts.test.yml, every alert has at least one test case in which
it fires and one in which it stays quiet, and every alert has its runbook section in
docs/alerts.md, named by its runbook_url. The Grafana dashboard deploy/grafana/pgq.json
is checked too: every query in it is PromQL that promtool accepts.

promtool is required, like PostgreSQL and Redis: without it these tests FAIL with the
way to install it; they never skip. The README promises that the tests never skip, and a
skipped rules test would pass a broken rule on any machine that lacks promtool, CI
included. `.ci/run` installs it when absent (Debian's `prometheus` package);
PGQ_PROMTOOL=/path/to/promtool overrides the lookup on PATH. The decision is written
down in docs/alerts.md, "How the rules are tested".

The rules and tests are YAML, but PyYAML is not a dependency of pgq; both files are
read line by line in the layout they are written in (an alert block per `- alert:`, an
`exp_alerts:` line after each `alertname:`), and the parse is checked against promtool's
own count of rules so that a layout it does not understand fails instead of passing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/pgq-alerts.yml"
RULE_TESTS = ROOT / "deploy/prometheus/pgq-alerts.test.yml"
RUNBOOKS = ROOT / "docs/alerts.md"
DASHBOARD = ROOT / "deploy/grafana/pgq.json"
SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = os.environ.get("PGQ_PROMTOOL") or shutil.which("promtool")
    if not found:
        pytest.fail("promtool is not installed, and the alert-rule tests need it (they fail "
                    "rather than skip, see docs/alerts.md): apt-get install prometheus "
                    "(Debian/Ubuntu), or put promtool from a Prometheus release on PATH, or "
                    "set PGQ_PROMTOOL=/path/to/promtool", pytrace=False)
    return found


def alert_blocks() -> dict[str, str]:
    """Each alert's name and the text of its rule, up to the next rule."""
    parts = re.split(r"^\s*- (?:alert|record): *(\S+) *$", RULES.read_text(), flags=re.M)
    blocks = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert len(blocks) == len(parts) // 2, "an alert name is used twice"
    return blocks


def unit_test_cases() -> dict[str, dict[str, int]]:
    """Per alert name in the unit tests: how many cases expect it firing and how many
    expect it quiet (`exp_alerts: []`)."""
    lines = [line for line in RULE_TESTS.read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    cases: dict[str, dict[str, int]] = {}
    for i, line in enumerate(lines):
        named = re.fullmatch(r"\s*alertname: *(\S+)\s*", line)
        if not named:
            continue
        expected = re.fullmatch(r"\s*exp_alerts: *(\[\])?\s*", lines[i + 1])
        assert expected, f"the line after `{line.strip()}` must be its exp_alerts: {lines[i + 1]!r}"
        if expected.group(1):
            kind = "quiet"
        else:
            assert re.fullmatch(r"\s*- exp_labels:.*", lines[i + 2]), lines[i + 2]
            kind = "fires"
        counts = cases.setdefault(named.group(1), {"fires": 0, "quiet": 0})
        counts[kind] += 1
    return cases


def test_promtool_check_rules_passes(promtool: str) -> None:
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                         text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # promtool's count must match the line parse, or the other checks read the wrong file
    assert f"SUCCESS: {len(alert_blocks())} rules found" in out.stdout, out.stdout


def test_promtool_test_rules_passes(promtool: str) -> None:
    out = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], cwd=RULE_TESTS.parent,
                         capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout and "FAILED" not in out.stdout, out.stdout


def test_every_alert_fires_and_stays_quiet_in_the_unit_tests() -> None:
    alerts, cases = set(alert_blocks()), unit_test_cases()
    assert set(cases) <= alerts, f"tests of alerts that do not exist: {set(cases) - alerts}"
    missing = {name: cases.get(name, {"fires": 0, "quiet": 0}) for name in sorted(alerts)
               if not all(cases.get(name, {}).get(kind) for kind in ("fires", "quiet"))}
    assert missing == {}, f"alerts without a firing and a quiet test case: {missing}"


def test_every_alert_has_labels_annotations_and_a_runbook_section() -> None:
    sections = set(re.findall(r"^## (Pgq\w+)\s*$", RUNBOOKS.read_text(), flags=re.M))
    blocks = alert_blocks()
    assert sections == set(blocks), (
        f"alerts without a runbook section: {set(blocks) - sections}; "
        f"runbook sections without an alert: {sections - set(blocks)}")
    for name, block in blocks.items():
        severity = re.search(r"^\s*severity: *(\S+)", block, flags=re.M)
        assert severity and severity.group(1) in SEVERITIES, f"{name}: severity label"
        for annotation in ("summary", "description"):
            assert re.search(rf"^\s*{annotation}: *\S", block, flags=re.M), f"{name}: {annotation}"
        url = re.search(r'^\s*runbook_url: *"([^"]+)"', block, flags=re.M)
        assert url and url.group(1) == f"docs/alerts.md#{name.lower()}", f"{name}: runbook_url"
        if name != "PgqStatsMissing":  # absent() has no labels to name
            assert "$labels." in block, f"{name}: its annotations should name what it is about"


def test_grafana_dashboard_queries_are_promql(promtool: str, tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables given values, becomes a recording rule
    that `promtool check rules` parses: a typo in a query fails here, not on a screen."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    assert exprs and all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    rules = "groups:\n  - name: dashboard\n    rules:\n" + "".join(
        f"      - record: dashboard:query_{i}\n        expr: {json.dumps(expr)}\n"
        for i, expr in enumerate(
            e.replace("$__rate_interval", "5m").replace("$queue", ".*") for e in exprs))
    (tmp_path / "dashboard-rules.yml").write_text(rules)
    out = subprocess.run([promtool, "check", "rules", str(tmp_path / "dashboard-rules.yml")],
                         capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in out.stdout, out.stdout
