"""Prints the fault suite's figures (one line per fault) at the end of the run."""

from __future__ import annotations

import pytest

from tests.faults.harness import REPORTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTS:
        terminalreporter.section("fault suite")
        for report in REPORTS:
            terminalreporter.write_line(report.line())
