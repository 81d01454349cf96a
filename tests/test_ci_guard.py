"""The CI guard (tests/support/ci_guard.py): with CI=true a skipped Docker or PostgreSQL test fails the run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.processes import REPO

SUITE = textwrap.dedent(
    """
    import pytest

    @pytest.mark.docker
    def test_needs_docker():
        pytest.skip("Docker Engine is not reachable")

    @pytest.mark.postgres
    def test_needs_postgres():
        pytest.skip("BYOI_TEST_POSTGRES_URL is not set")

    def test_plain_skip():
        pytest.skip("nothing to do with a service")

    @pytest.mark.docker
    def test_runs():
        assert True
    """
)


def run_suite(tmp_path: Path, ci: str | None, body: str = SUITE) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_guarded.py").write_text(body)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.support.ci_guard",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-o",
            "markers=docker\n postgres",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skipped_service_test_fails_the_run_on_ci(tmp_path):
    run = run_suite(tmp_path, "true")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 test(s) that need Docker Engine or PostgreSQL were skipped with CI=true" in run.stdout
    assert "test_guarded.py::test_needs_docker: Docker Engine is not reachable" in run.stdout
    assert "test_guarded.py::test_needs_postgres: BYOI_TEST_POSTGRES_URL is not set" in run.stdout
    assert "test_plain_skip" not in run.stdout.split("skipped under CI")[1]


@pytest.mark.parametrize("ci", [None, "false"])
def test_off_ci_a_skip_is_only_a_skip(tmp_path, ci):
    run = run_suite(tmp_path, ci)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 skipped" in run.stdout and "skipped under CI" not in run.stdout


def test_a_failing_run_keeps_its_own_exit_code(tmp_path):
    failing = SUITE + "\n@pytest.mark.docker\ndef test_fails():\n    assert False\n"
    run = run_suite(tmp_path, "true", failing)
    assert run.returncode == 1 and "1 failed" in run.stdout, run.stdout
    assert "skipped under CI" in run.stdout


def test_ci_run_sets_ci_itself():
    """`.ci/run` must not rely on the runner to set CI=true: services.sh and the guard both read it."""
    script = (REPO / ".ci" / "run").read_text()
    assert "export CI=true" in script
