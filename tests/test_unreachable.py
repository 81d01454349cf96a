"""What byoi says when Docker Engine or the registry goes away under a running server, and when it comes back.

A real `byoi server` reaches the real Docker Engine through a Unix-socket relay (its DOCKER_HOST) and the real
registry through a loopback TCP relay (its only registry, so the Engine pushes through it too); the tests take a
relay down and bring it back (tests/support/relay.py), so the Engine and the registry themselves never stop.
Asserted: a build's and a launch's FailureReason, version creation's, /healthz, and the server's log (one warning
when a part goes away, one line when it is back, no traceback). The units at the end need no server.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.support.attach import ROLE, created_version, unique, wait_for
from tests.support.docker_images import docker_available
from tests.support.oci import Pusher
from tests.support.processes import ByoiServer
from tests.support.relay import Relay

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)"),
]

DOCKER_SOCKET = Path("/var/run/docker.sock")
BYOI = Path(sys.executable).parent / "byoi"
CONFIG = "unreachable-config"


class Setup:
    def __init__(self, server: ByoiServer, docker: Relay, registry: Relay, domain: str, image: str) -> None:
        self.server, self.docker, self.registry = server, docker, registry
        self.domain, self.image = domain, image
        self.sm = server.client()
        self.log = server.data_dir / "server.log"

    def log_from(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def health(self) -> tuple[int, dict[str, str]]:
        r = httpx.get(self.server.endpoint + "/healthz", timeout=30)
        return r.status_code, r.json()["checks"]

    def build(self, context: Path, repository: str) -> subprocess.CompletedProcess[str]:
        env = {**self.server.aws_env(), "COLUMNS": "1000"}
        args = [str(BYOI), "build", str(context), "--image", repository, "--tag", "v1", "--quiet"]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)

    def last_build(self, repository: str) -> dict[str, Any]:
        from tests.support.sessions import extension

        builds = extension(self.server).list_image_builds()["ImageBuilds"]
        mine = [b for b in builds if b["ImageUri"].endswith(f"/{repository}:v1")]
        return extension(self.server).describe_image_build(BuildId=mine[0]["BuildId"])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, registry: str) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("unreachable")
    docker = Relay(DOCKER_SOCKET, listen=tmp / "docker.sock")
    reg = Relay(int(registry.rsplit(":", 1)[1]))
    env = {"DOCKER_HOST": docker.docker_host, "BYOI_SESSION_RECONCILE_SECONDS": "0.3"}
    server = ByoiServer(data_dir=tmp / "data", registries=[f"http://{reg.host}"], env=env).start()
    try:
        sm = server.client()
        image = unique("unreach")
        created_version(sm, Pusher(f"http://{registry}"), image)  # pushed to the registry, resolved through the relay
        sm.create_app_image_config(AppImageConfigName=CONFIG)
        domain = sm.create_domain(
            DomainName=unique("unreach"),
            AuthMode="IAM",
            DefaultUserSettings={
                "ExecutionRole": ROLE,
                "RSessionAppSettings": {"CustomImages": [{"ImageName": image, "AppImageConfigName": CONFIG}]},
            },
            DomainSettings={"RStudioServerProDomainSettings": {"DomainExecutionRoleArn": ROLE}},
        )["DomainId"]
        sm.create_user_profile(DomainId=domain, UserProfileName="alice")
        wait_for(lambda: sm.describe_domain(DomainId=domain)["Status"] == "InService")
        yield Setup(server, docker, reg, domain, image)
    finally:
        server.stop()
        docker.stop()
        reg.stop()


@pytest.fixture
def scratch_context(tmp_path: Path) -> Path:
    """A build context that needs no base image (FROM scratch): its build works without any registry."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY note.txt /note.txt\n")
    (tmp_path / "note.txt").write_text(f"{time.time()}\n")  # a new image each run: the push has a layer to send
    return tmp_path


def lines_with(text: str, *needles: str) -> list[str]:
    return [line for line in text.splitlines() if all(n in line for n in needles)]


def outage_warnings(text: str, gone: str) -> list[str]:
    """Warnings about the part itself: all but those of resources that failed because of it (one each)."""
    return [line for line in lines_with(text, gone, '"level": "warning"') if " failed: " not in line]


def test_healthz_checks_docker_engine_and_the_registry(setup: Setup) -> None:
    status, checks = setup.health()
    assert status == 200
    assert checks == {"store": "ok", "docker": "ok", f"registry {setup.registry.host}": "ok"}


def test_docker_engine_going_away_fails_builds_and_launches_with_the_reason(
    setup: Setup, scratch_context: Path
) -> None:
    address = setup.docker.docker_host
    gone = f"Docker Engine is not reachable at {address}: connection refused"
    start = setup.log.stat().st_size
    setup.docker.close()
    try:
        status, checks = setup.health()
        assert status == 503
        assert checks["docker"].startswith(f"error: {gone}; is Docker Engine running?"), checks
        assert "sudo systemctl start docker" in checks["docker"]
        assert checks["store"] == "ok" and checks[f"registry {setup.registry.host}"] == "ok"

        built = setup.build(scratch_context, "unreach/engine-down")
        assert built.returncode == 7, built.stdout + built.stderr
        assert f"FAILED: {gone}" in built.stderr
        assert "Internal error" not in built.stderr and "Traceback" not in built.stderr
        assert setup.last_build("unreach/engine-down")["FailureReason"].startswith(gone)

        sm = setup.sm
        app = {"DomainId": setup.domain, "UserProfileName": "alice", "AppType": "RSessionGateway", "AppName": "down"}
        sm.create_app(**app, ResourceSpec={"SageMakerImageArn": sm.describe_image(ImageName=setup.image)["ImageArn"]})
        wait_for(lambda: sm.describe_app(**app)["Status"] != "Pending", timeout=30)
        described = sm.describe_app(**app)
        assert described["Status"] == "Failed"
        assert described["FailureReason"].startswith(gone), described["FailureReason"]

        time.sleep(1.5)  # several reconciler passes (every 0.3 s) meet the same outage
        while_down = setup.log_from(start)
        warnings = outage_warnings(while_down, f"Docker Engine is not reachable at {address}: ")
        assert len(warnings) == 1 and "logged once" in warnings[0], while_down
    finally:
        setup.docker.open()
    back = f"Docker Engine at {address} answers again"
    wait_for(lambda: lines_with(setup.log_from(start), back), timeout=10)
    time.sleep(1)  # more passes: still one line
    after = setup.log_from(start)
    assert len(lines_with(after, back)) == 1 and '"level": "info"' in lines_with(after, back)[0]
    assert len(outage_warnings(after, f"Docker Engine is not reachable at {address}: ")) == 1
    assert "Traceback" not in after
    assert setup.health()[0] == 200


def test_the_registry_going_away_fails_pushes_and_versions_with_the_reason(setup: Setup, scratch_context: Path) -> None:
    host = setup.registry.host
    gone = f"The registry {host} is not reachable"
    start = setup.log.stat().st_size
    setup.registry.close()
    try:
        status, checks = setup.health()
        assert status == 503 and checks["docker"] == "ok"
        assert checks[f"registry {host}"] == f"error: {gone}: connection refused (http://{host})"

        built = setup.build(scratch_context, "unreach/registry-down")
        assert built.returncode == 7, built.stdout + built.stderr
        reason = setup.last_build("unreach/registry-down")["FailureReason"]
        assert reason.startswith(f"Push to {host}/unreach/registry-down:v1 failed: {gone}: "), reason
        assert "connection refused" in reason

        sm = setup.sm
        sm.create_image_version(ImageName=setup.image, BaseImage=f"domains/{setup.image.lower()}:v1")
        wait_for(lambda: sm.describe_image_version(ImageName=setup.image)["ImageVersionStatus"] != "CREATING")
        version = sm.describe_image_version(ImageName=setup.image)
        assert version["ImageVersionStatus"] == "CREATE_FAILED"
        assert f"{gone}: connection refused" in version["FailureReason"]
        assert "gave up after 2 attempts" in version["FailureReason"]

        setup.health()  # asked again: still one warning
        warnings = outage_warnings(setup.log_from(start), gone)
        assert len(warnings) == 1 and "logged once" in warnings[0], setup.log_from(start)
    finally:
        setup.registry.open()
    assert setup.health()[0] == 200  # the first answer since: the recovery line
    setup.health()
    after = setup.log_from(start)
    assert len(lines_with(after, f"The registry {host} answers again")) == 1, after
    assert "Traceback" not in after


# -- units: no server ------------------------------------------------------------------------------------


def test_no_docker_socket_at_all_is_said_in_words(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DOCKER_HOST and no socket where aiodocker looks (Docker Engine installed, never started): aiodocker
    asserts; byoi says what is missing and how to start it, for the runtime and the builder alike."""
    import asyncio

    import aiodocker.docker

    from byoi.build.base import BuilderUnavailable
    from byoi.build.docker import DockerBuilder
    from byoi.runtime.base import Unreachable
    from byoi.runtime.docker import DockerRuntime

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.docker context either
    monkeypatch.setattr(aiodocker.docker, "_sock_search_paths", [tmp_path / "docker.sock"])
    want = "Docker Engine is not reachable at unix:///var/run/docker.sock: no socket there and DOCKER_HOST is not set"

    async def check() -> None:
        with pytest.raises(Unreachable) as runtime_error:
            await DockerRuntime().ping()
        with pytest.raises(BuilderUnavailable) as builder_error:
            await DockerBuilder().ping()
        for error in (runtime_error, builder_error):
            assert str(error.value).startswith(want)
            assert "sudo systemctl start docker" in str(error.value)

    asyncio.run(check())


def test_reachability_logs_one_warning_and_one_recovery(caplog: pytest.LogCaptureFixture) -> None:
    from byoi.reachability import Reachability

    now = [100.0]
    reach = Reachability("Docker Engine at unix:///x", clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="byoi.reachability"):
        reach.answered()  # reachable already: nothing to say
        for _ in range(5):
            reach.lost("Docker Engine is not reachable at unix:///x: connection refused")
        assert not reach.reachable
        now[0] = 112.0
        reach.answered()
        reach.answered()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("WARNING", "Docker Engine is not reachable at unix:///x: connection refused (logged once; byoi logs again "
         "when it answers)"),
        ("INFO", "Docker Engine at unix:///x answers again, after 12 s"),
    ]  # fmt: skip
    assert reach.reachable


def test_connection_failures_in_words() -> None:
    import socket

    from byoi.docker_engine import registry_failure
    from byoi.reachability import connection_failure

    def chained(outer: Exception, inner: BaseException) -> Exception:
        outer.__cause__ = inner
        return outer

    assert connection_failure(chained(RuntimeError("All connection attempts failed"), ConnectionRefusedError())) == (
        "connection refused"
    )
    assert connection_failure(socket.gaierror(-2, "Name or service not known")).startswith("the host name does not")
    assert connection_failure(FileNotFoundError(2, "No such file")) == "the socket does not exist"
    assert connection_failure(RuntimeError("odd")) == "odd"
    engine = 'Get "http://127.0.0.1:9/v2/": dial tcp 127.0.0.1:9: connect: connection refused'
    assert registry_failure("127.0.0.1:9", engine) == f"The registry 127.0.0.1:9 is not reachable: {engine}"
    assert registry_failure("127.0.0.1:9", "denied: requested access to the resource is denied") == (
        "denied: requested access to the resource is denied"
    )
