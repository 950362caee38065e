"""The whole test run is scanned for canary secrets.

Every secret a test configures (API keys, tokens, passwords, tool credentials) is a *canary*: a value
containing ``canary-`` (see ``tests/http_fixtures.py``, ``tests/test_logs.py`` …). Whatever any test
writes to a log — every record at ``DEBUG`` and above from any logger, in-process — and whatever it
prints (the captured stdout and stderr, into which the subprocess tests copy the output of the
``serve`` and ``worker`` processes they start) is scanned after each test. A canary found anywhere
fails the run at its end with the test and the line, the canary itself masked as ``[canary]``.

Assertion messages of failed tests are not scanned: they show what the test compared.
"""

from __future__ import annotations

import re

import pytest

#: what every test secret contains, and nothing else does
CANARY = re.compile(r"canary-[0-9a-z-]*", re.IGNORECASE)
#: how many findings the summary shows
SHOWN = 20


class CanaryScan:
    def __init__(self) -> None:
        self.found: list[tuple[str, str, str]] = []
        self.scanned_lines = 0

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for section, text in report.sections:
            if not section.startswith(("Captured log", "Captured stdout", "Captured stderr")):
                continue
            for line in text.splitlines():
                self.scanned_lines += 1
                if CANARY.search(line):
                    masked = CANARY.sub("[canary]", line)
                    self.found.append((report.nodeid, section, masked[:300]))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.found and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.found:
            terminalreporter.write_line(f"canary scan: no secret in {self.scanned_lines} captured log and "
                                        f"output lines")
            return
        terminalreporter.section("canary secrets found in logs or output", sep="=", red=True)
        for nodeid, section, line in self.found[:SHOWN]:
            terminalreporter.write_line(f"{nodeid} [{section}]: {line}")
        if len(self.found) > SHOWN:
            terminalreporter.write_line(f"… and {len(self.found) - SHOWN} more")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(CanaryScan(), "agentrunner-canary-scan")
