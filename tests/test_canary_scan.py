"""The run's canary scan (conftest.py at the root) fails a run whose logs or output show a secret."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def run_with_scan(pytester, body: str):
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    pytester.makeini("[pytest]\nlog_level = DEBUG\n")
    pytester.makepyfile(test_leaky=body)
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-p", "no:agentrunner")


def test_a_secret_in_a_log_line_fails_the_run_and_is_not_shown(pytester):
    result = run_with_scan(pytester, """
        import logging

        def test_leaks():
            logging.getLogger("some.library").debug("connecting with password canary-0b5e-password")

        def test_quiet():
            logging.getLogger("some.library").debug("connecting")
        """)
    assert result.ret == 1  # both tests passed: the scan failed the run
    result.stdout.fnmatch_lines(["*canary secrets found in logs or output*",
                                 "test_leaky.py::test_leaks [[]Captured log call[]]: *password [[]canary[]]"])
    assert "canary-0b5e" not in result.stdout.str()


def test_a_secret_printed_by_a_subprocess_fails_the_run(pytester):
    result = run_with_scan(pytester, """
        import subprocess, sys

        def test_child_prints():
            subprocess.run([sys.executable, "-c", "print('token canary-77aa-token')"])
        """)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["test_leaky.py::test_child_prints [[]Captured stdout call[]]: token [[]canary[]]"])


def test_a_clean_run_passes(pytester):
    result = run_with_scan(pytester, """
        import logging

        def test_fine():
            logging.getLogger("x").warning("nothing secret here")
        """)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["canary scan: no secret in * captured log and output lines"])
