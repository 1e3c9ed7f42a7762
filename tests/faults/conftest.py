"""Prints the fault suite's figures (one line per fault) at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import REPORTS, RUNS

SECTION = "fault suite"


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    before = len(REPORTS)
    yield
    while RUNS:
        RUNS.pop().stop()
    # Through the test's report, not this process's memory: under pytest-xdist the
    # summary is printed by the controller, which never sees a worker's REPORTS.
    request.node.user_properties.extend((SECTION, r.line()) for r in REPORTS[before:])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [value for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "teardown"
             for name, value in getattr(report, "user_properties", ()) if name == SECTION]
    if lines:
        terminalreporter.section(SECTION)
        for line in lines:
            terminalreporter.write_line(line)
