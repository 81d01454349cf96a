"""`byoi doctor`: each check as a unit (the clock, the disk, the server's health from what was found), and the
real command against the shared catalog server, the real registry and the real Docker Engine: all pass on a
healthy setup, and each part broken on purpose (a wrong endpoint, bad credentials, a registry on a closed port,
DOCKER_HOST at a dead socket, a clock 5 minutes off) is named, with what to fix, and a non-zero exit status."""

from __future__ import annotations

import email.utils
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from byoi.cli import doctor
from byoi.cli.admin import write_profile
from byoi.cli.doctor import Server, Status, check_clock, check_disk, check_health, check_server, registry_url
from tests.support.docker_images import docker_available
from tests.support.processes import ByoiServer, byoi_cli, free_port

BYOI = str(Path(sys.executable).parent / "byoi")

# -- the checks as units ---------------------------------------------------------------------------------


def _date(at: float) -> str:
    return email.utils.formatdate(at, usegmt=True)


@pytest.mark.parametrize(
    ("server_ahead_by", "status", "says"),
    [
        (0.4, Status.ok, "within a second or two"),
        (30, Status.ok, "30 s behind the server's"),
        (-75, Status.warn, "75 s ahead of the server's (SigV4 refuses 5 minutes)"),
        (241, Status.fail, "241 s behind the server's: SigV4 refuses requests signed 5 minutes off"),
        (-400, Status.fail, "400 s ahead of the server's"),
    ],
)
def test_clock_check_warns_from_a_minute_and_fails_from_four(server_ahead_by, status, says):
    local = 1_800_000_000.0
    check = check_clock(_date(local + server_ahead_by), local - 0.05, local + 0.05)
    assert (check.status, check.name) == (status, "clock")
    assert says in check.detail
    assert ("timedatectl" in check.fix) == (status != Status.ok)


def test_clock_check_skips_without_a_date():
    assert check_clock(None, 0, 0).status == Status.skip
    assert check_clock("yesterday-ish", 0, 0).status == Status.skip


@pytest.mark.parametrize(("free", "status"), [(0.5e9, Status.fail), (3e9, Status.warn), (80e9, Status.ok)])
def test_disk_check_fails_under_1_gb_and_warns_under_5(tmp_path, free, status):
    check = check_disk(Server("http://127.0.0.1:1"), tmp_path, usage=lambda _p: SimpleNamespace(free=free))
    assert check.status == status and f"{free / 1e9:.1f} GB free in {tmp_path}" in check.detail
    assert bool(check.fix) == (status != Status.ok)


def test_disk_check_is_for_a_server_on_this_machine(tmp_path):
    assert check_disk(Server("https://byoi.example.test"), tmp_path).status == Status.skip
    assert check_disk(Server("http://localhost:8080"), tmp_path / "none").status == Status.skip


def test_health_and_server_checks_from_what_was_found():
    server = Server("http://127.0.0.1:1", answered=True, info={"Version": "0.0.1"})
    server.health = {"checks": {"store": "ok", "docker": "error: Docker Engine is not reachable at unix:///x: gone"}}
    health = check_health(server)
    assert health.status == Status.fail and health.detail == "docker: Docker Engine is not reachable at unix:///x: gone"
    mismatch = check_server(server)
    assert mismatch.status == Status.warn
    assert "byoi 0.0.1 at http://127.0.0.1:1, but this CLI is byoi" in mismatch.detail
    assert check_health(Server("http://127.0.0.1:1")).status == Status.skip  # it did not answer


def test_the_registry_checked_is_the_servers_default_unless_named():
    server = Server(
        "http://127.0.0.1:1", info={"DefaultRegistry": "r:5000", "Registries": ["http://o:1", "http://r:5000"]}
    )
    assert registry_url(server, None) == "http://r:5000"
    assert registry_url(server, "other:443") == "https://other:443"
    assert registry_url(Server("http://127.0.0.1:1"), None) is None


# -- the real command --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(catalog_server: ByoiServer) -> ByoiServer:
    return catalog_server  # shared with the other catalog, CLI and build modules (tests/conftest.py)


@pytest.fixture(scope="module")
def env(server: ByoiServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The administrator's environment, and a profile `bad` whose secret is wrong."""
    credentials = tmp_path_factory.mktemp("doctor") / "credentials"
    credentials.write_text(server.credentials_file.read_text())
    key_id = next(line.split("=", 1)[1].strip() for line in credentials.read_text().splitlines() if "key_id" in line)
    write_profile(credentials, "bad", key_id, "not-the-secret", "us-east-1")
    return {
        **server.aws_env(),
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "BYOI_DATA_DIR": str(server.data_dir),
        "COLUMNS": "250",
    }


def run_doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    """`byoi doctor -o json ARGS` in-process: exit status, {check name: check}, stderr."""
    result = byoi_cli(["doctor", "-o", "json", *args], env)
    assert "Traceback" not in result.stderr, result.stderr
    found = json.loads(result.stdout)
    checks = {c["Name"]: c for c in found["Checks"]}
    assert found["Ok"] == (result.returncode == 0)
    return result.returncode, checks, result.stderr


needs_docker = pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)")


@pytest.mark.docker
@needs_docker
def test_doctor_passes_on_a_healthy_setup(server, env, registry):
    run = subprocess.run([BYOI, "doctor", "-o", "json"], env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr  # the console script's exit status, as a shell sees it
    checks = {c["Name"]: c for c in json.loads(run.stdout)["Checks"]}
    assert list(checks) == ["server", "server health", "credentials", "clock", "docker", "registry", "disk"]
    not_ok = {name: c for name, c in checks.items() if c["Status"] != "ok"}
    assert not_ok == {}, not_ok
    assert checks["server"]["Detail"].startswith(f"byoi 0.1.0 at {server.endpoint}")
    assert checks["credentials"]["Detail"].startswith("admin (role admin), key ")
    assert "storage driver" in checks["docker"]["Detail"]
    assert "ran `true` in a container of" in checks["docker"]["Detail"]
    assert checks["registry"]["Detail"].startswith(f"{registry}: pushed and pulled a ")
    assert str(server.data_dir) in checks["disk"]["Detail"]


def _failed(checks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: c for name, c in checks.items() if c["Status"] == "fail"}


def test_a_wrong_endpoint_is_named(env):
    closed = f"http://127.0.0.1:{free_port()}"
    status, checks, _ = run_doctor(env, "--endpoint-url", closed)
    assert status == 1 and list(_failed(checks)) == ["server"]
    assert checks["server"]["Detail"] == f"byoi does not answer at {closed}: connection refused"
    assert "byoi up" in checks["server"]["Fix"]
    assert checks["credentials"]["Status"] == checks["clock"]["Status"] == "skip"


def test_bad_credentials_are_named(env):
    status, checks, _ = run_doctor(env, "--profile", "bad", "--registry", "http://127.0.0.1:9")
    assert status == 1 and "credentials" in _failed(checks)
    assert "InvalidSignatureException" in checks["credentials"]["Detail"]
    assert checks["server"]["Status"] == "ok"  # it answers; only the version is unknown then


def test_a_registry_on_a_closed_port_is_named(env):
    port = free_port()
    status, checks, _ = run_doctor(env, "--registry", f"http://127.0.0.1:{port}")
    assert status == 1 and "registry" in _failed(checks)
    assert checks["registry"]["Detail"] == f"The registry 127.0.0.1:{port} is not reachable: connection refused"
    assert "--registry" in checks["registry"]["Fix"]


def test_docker_host_at_a_dead_socket_is_named(env, tmp_path):
    dead = tmp_path / "docker.sock"
    status, checks, stderr = run_doctor({**env, "DOCKER_HOST": f"unix://{dead}"})
    assert status == 1 and "docker" in _failed(checks)
    assert checks["docker"]["Detail"] == f"Docker Engine is not reachable at unix://{dead}: the socket does not exist"
    assert "systemctl start docker" in checks["docker"]["Fix"]
    assert stderr == ""  # said once, in the table: no log line besides it


@pytest.mark.parametrize(("behind", "status"), [(90, "warn"), (300, "fail")])
def test_a_clock_off_is_named(env, monkeypatch, behind, status):
    """This machine's clock, as the check reads it, set back (requests are still signed with the real one)."""
    monkeypatch.setattr(doctor, "now", lambda: time.time() - behind)
    code, checks, _ = run_doctor(env)
    assert checks["clock"]["Status"] == status
    measured = re.search(r"this machine's clock is (\d+) s behind the server's", checks["clock"]["Detail"])
    assert measured and abs(int(measured[1]) - behind) <= 2, checks["clock"]  # the Date header has whole seconds
    assert "timedatectl" in checks["clock"]["Fix"]
    assert ("clock" in _failed(checks)) == (status == "fail") and (code == 1) == bool(_failed(checks))
