"""Prints the fault suite's figures (one line per fault) at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import REPORTS, RUNS


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    yield
    while RUNS:
        RUNS.pop().stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTS:
        terminalreporter.section("fault suite")
        for report in REPORTS:
            terminalreporter.write_line(report.line())
