"""scripts/start-docker.sh, the one place Docker Engine is started (scripts/up.sh and scripts/services.sh run it).

The real Engine is never stopped: the paths where it is not running use the overrides the script documents
(BYOI_DOCKER: the CLI that checks whether it answers, BYOI_DOCKERD: the daemon, BYOI_UID: who we are), pointing
at small stand-in programs written here.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.docker_images import docker_available

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "start-docker.sh"
SYSTEMD = Path("/run/systemd/system").is_dir()


def program(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def run(script: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BYOI_") and k != "DOCKER_HOST"}
    return subprocess.run(["bash", str(script)], env={**base, **env}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def fakes(tmp_path: Path) -> dict[str, Path]:
    """A docker CLI that answers only once `up` exists, and a dockerd that makes it exist (then stays, as a
    daemon does), each leaving a trace of having run."""
    up, ran = tmp_path / "up", tmp_path / "dockerd-ran"
    return {
        "up": up,
        "ran": ran,
        "docker": program(tmp_path / "docker", f'[ "$1" = info ] && [ -e {up} ]'),
        "dockerd": program(tmp_path / "dockerd", f"echo fake dockerd here; touch {ran} {up}; exec sleep 60"),
        "log": tmp_path / "log" / "dockerd.log",
    }


@pytest.mark.docker
@pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)")
def test_a_running_engine_is_left_alone(fakes: dict[str, Path]) -> None:
    done = run(SCRIPT, {"BYOI_DOCKERD": str(fakes["dockerd"]), "BYOI_UID": "0"})
    assert done.returncode == 0, done.stderr
    assert "Docker Engine is running" in done.stderr and "nothing to start" in done.stderr
    assert done.stdout == ""  # services.sh's stdout is evaluated: nothing of this script may land there
    assert not fakes["ran"].exists()


def test_not_root_is_refused_at_once_with_the_command(fakes: dict[str, Path]) -> None:
    done = run(SCRIPT, {"BYOI_DOCKER": str(fakes["docker"]), "BYOI_DOCKERD": str(fakes["dockerd"]), "BYOI_UID": "1000"})
    assert done.returncode == 1
    command = "sudo systemctl start docker" if SYSTEMD else f"sudo bash {SCRIPT}"
    assert f"Docker Engine is installed but not running, and starting it needs root. Run: {command}" in done.stderr
    assert not fakes["ran"].exists()


def test_not_installed_says_how_to_install(fakes: dict[str, Path], tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-dockerd")
    for uid, command in (("1000", "sudo apt-get install docker.io"), ("0", "apt-get install docker.io")):
        done = run(SCRIPT, {"BYOI_DOCKER": str(fakes["docker"]), "BYOI_DOCKERD": missing, "BYOI_UID": uid})
        assert done.returncode == 1
        assert done.stderr.strip().endswith(f"Docker Engine is not installed. Run: {command}"), done.stderr


def test_root_starts_dockerd_with_its_log_and_waits_for_it(fakes: dict[str, Path]) -> None:
    env = {
        "BYOI_DOCKER": str(fakes["docker"]),
        "BYOI_DOCKERD": str(fakes["dockerd"]),
        "BYOI_UID": "0",
        "BYOI_DOCKERD_LOG": str(fakes["log"]),
    }
    done = run(SCRIPT, env)
    pid = int(done.stderr.split("(pid ", 1)[1].split(",", 1)[0]) if "(pid " in done.stderr else None
    try:
        assert done.returncode == 0, done.stderr
        assert f"Docker Engine started (pid {pid}, log: {fakes['log']})" in done.stderr
        assert fakes["log"].read_text() == "fake dockerd here\n"
        assert os.getsid(pid) == pid  # in a session of its own: a Ctrl-C in the terminal does not reach it
        again = run(SCRIPT, env)  # now it answers: nothing more is started
        assert again.returncode == 0 and "nothing to start" in again.stderr
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)


def test_a_dockerd_that_exits_is_reported_with_its_log(fakes: dict[str, Path], tmp_path: Path) -> None:
    dying = program(tmp_path / "dying-dockerd", "echo 'failed to start daemon: pid file found'; exit 1")
    env = {"BYOI_DOCKER": str(fakes["docker"]), "BYOI_DOCKERD": str(dying), "BYOI_UID": "0"}
    done = run(SCRIPT, {**env, "BYOI_DOCKERD_LOG": str(fakes["log"])})
    assert done.returncode == 2
    assert f"dockerd exited before it answered; the end of {fakes['log']}:" in done.stderr
    assert "failed to start daemon: pid file found" in done.stderr


@pytest.mark.docker
@pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)")
def test_an_engine_elsewhere_is_not_started_here(fakes: dict[str, Path], tmp_path: Path) -> None:
    """The real docker CLI, pointed by DOCKER_HOST at a socket where nothing listens."""
    nowhere = f"unix://{tmp_path / 'nothing.sock'}"
    done = run(SCRIPT, {"DOCKER_HOST": nowhere, "BYOI_DOCKERD": str(fakes["dockerd"]), "BYOI_UID": "0"})
    assert done.returncode == 1
    assert f"Docker Engine at DOCKER_HOST={nowhere} does not answer" in done.stderr
    assert "run: unset DOCKER_HOST" in done.stderr
    assert not fakes["ran"].exists()


def test_services_sh_fails_on_ci_when_docker_engine_does_not_start(fakes: dict[str, Path], tmp_path: Path) -> None:
    """services.sh starts Docker Engine through start-docker.sh; on CI one that does not start fails the run, and
    outside CI the tests are told to skip (its stdout is the env the tests evaluate: only export/echo lines)."""
    dying = program(tmp_path / "dying-dockerd", "echo 'dockerd: cannot start'; exit 1")
    env = {
        "BYOI_DOCKER": str(fakes["docker"]),
        "BYOI_DOCKERD": str(dying),
        "BYOI_UID": "0",
        "BYOI_TEST_LOGDIR": str(tmp_path / "logs"),
        "BYOI_TEST_PGPORT": os.environ.get("BYOI_TEST_PGPORT", "54329"),
    }
    on_ci = run(REPO / "scripts" / "services.sh", {**env, "CI": "true"})
    assert on_ci.returncode == 1
    assert "dockerd: cannot start" in on_ci.stderr
    assert f"Docker Engine did not start (see {tmp_path / 'logs' / 'dockerd.log'})" in on_ci.stderr
    assert "BYOI_TEST_DOCKER" not in on_ci.stdout
    local = run(REPO / "scripts" / "services.sh", {**env, "CI": "false"})
    assert "echo 'Docker Engine is not running: docker tests will be skipped' >&2" in local.stdout.splitlines()
    assert all(line.startswith(("export ", "echo ")) for line in local.stdout.splitlines()), local.stdout
