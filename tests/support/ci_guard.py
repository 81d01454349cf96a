"""A pytest plugin for CI: a test that needs Docker Engine or PostgreSQL and was skipped fails the run.

On a developer's machine a Docker or PostgreSQL test without its service is skipped, with the reason. On CI
(`CI=true`, which `.ci/run` sets) `scripts/services.sh` has started both, so such a skip means the test did not
check what it should have (a service that died, an environment variable lost on the way), and a green run
would hide it. The run then ends with exit code 1 and a list of those tests.

Loaded by tests/conftest.py; tests/test_ci_guard.py runs it against a small suite of its own.
"""

from __future__ import annotations

import os

import pytest

GUARDED_MARKERS = ("docker", "postgres")


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


class CiSkipGuard:
    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        if not any(marker in report.keywords for marker in GUARDED_MARKERS):
            return
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        self.skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.skipped and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:  # type: ignore[no-untyped-def]
        if not self.skipped:
            return
        terminalreporter.section("skipped under CI", sep="=", red=True, bold=True)
        terminalreporter.write_line(
            f"{len(self.skipped)} test(s) that need Docker Engine or PostgreSQL were skipped with CI=true; "
            "the run fails (scripts/services.sh should have started both):"
        )
        for nodeid, reason in self.skipped:
            terminalreporter.write_line(f"  {nodeid}: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    if on_ci():
        config.pluginmanager.register(CiSkipGuard(), "byoi-ci-skip-guard")
