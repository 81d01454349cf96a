"""Sessions survive a crashed server: a SIGKILL during launches, then a restart on the same data dir, leaves
every app InService or Failed (never Pending for ever) and no container that no app claims.

RStudio Server here is the STAND-IN image (tests/images/rstudio-standin), a TEST DOUBLE for the IDE binary
only; `rserver-hangs` is an image whose "rserver" never listens. Docker Engine, the registry and R are real.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import sessions as s
from tests.support.docker_images import docker_available, docker_client, ensure_base_image

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)"),
]

ENV = {
    "BYOI_SESSION_RECONCILE_SECONDS": "1",
    "BYOI_SESSION_START_TIMEOUT": "20",  # the good stand-in must answer within it on a loaded machine
    "BYOI_SESSION_STOP_TIMEOUT": "1",
    "BYOI_LEASE_SECONDS": "3",
}


@pytest.fixture(autouse=True)
def _no_leftover_sessions(tmp_path: Path) -> Any:
    yield
    for data_dir in tmp_path.iterdir():
        if data_dir.is_dir():
            s.remove_sessions_of(data_dir)


def _installation(data_dir: Path) -> str:
    found = s.installation_of(data_dir)  # from the server's store
    assert found, f"no installation id in the store of {data_dir}"
    return found


def test_sigkill_during_launch_then_restart_settles_every_app(
    server_factory: Any, registry: str, tmp_path: Path, shared_inspection: Path
) -> None:
    # The run's layer cache (tests/conftest.py `shared_inspection`): the stand-in's layers are read once.
    data_dir = tmp_path / "crashy"
    srv = server_factory([f"http://{registry}"], data_dir=data_dir, env=ENV, inspection_config=shared_inspection)
    sm = srv.client()
    standin, hangs = s.unique("standin"), s.unique("hangs")
    s.register(sm, registry, standin, "rstudio-standin", "v1")
    s.register(sm, registry, hangs, "rserver-hangs", "v1")
    s.ensure_config(sm)
    domain = s.rstudio_domain(
        sm,
        [{"ImageName": standin, "AppImageConfigName": s.CONFIG}, {"ImageName": hangs, "AppImageConfigName": s.CONFIG}],
    )
    sm.create_user_profile(DomainId=domain, UserProfileName="carol")
    for app, image in (("never-answers", hangs), ("answers", standin)):
        sm.create_app(
            DomainId=domain,
            UserProfileName="carol",
            AppType="RSessionGateway",
            AppName=app,
            ResourceSpec={"SageMakerImageArn": sm.describe_image(ImageName=image)["ImageArn"]},
        )
    installation = _installation(data_dir)
    deadline = time.monotonic() + 60
    while not any(c.status == "running" for c in s.containers_of(installation)):
        assert time.monotonic() < deadline, "no session container started"
        time.sleep(0.05)
    srv.kill()  # SIGKILL while at least one launch is in progress
    left = s.containers_of(installation)
    assert left, "the crash should leave containers behind for the restarted server to sort out"

    again = server_factory([f"http://{registry}"], data_dir=data_dir, env=ENV, inspection_config=shared_inspection)
    sm = again.client()
    hung = s.wait_app(sm, domain, "carol", "never-answers", ("Failed", "InService"), timeout=90)
    good = s.wait_app(sm, domain, "carol", "answers", ("Failed", "InService"), timeout=90)
    assert (
        hung["Status"] == "Failed"
        and f"did not answer within {ENV['BYOI_SESSION_START_TIMEOUT']} seconds" in hung["FailureReason"]
    )
    assert "not listening on purpose" in hung["FailureReason"]
    assert good["Status"] == "InService", good

    # An orphan: a container with this installation's labels that no app claims is removed by the reconciler.
    ensure_base_image()
    orphan = docker_client().containers.run(
        "byoi-test/debian:bookworm",
        ["sleep", "600"],
        name=f"byoi-{installation}-0000000000000000-1",
        labels={"byoi.managed": "true", "byoi.installation": installation},
        detach=True,
    )
    deadline = time.monotonic() + 30
    while True:
        names = sorted(c.name for c in s.containers_of(installation))
        if orphan.name not in names:
            break
        assert time.monotonic() < deadline, f"orphan {orphan.name} was not removed: {names}"
        time.sleep(0.3)
    # Exactly the InService app's container is left.
    ext = s.extension(again)
    expected = s.progress(ext, domain, "carol", "answers")["ContainerName"]
    assert [c.name for c in s.containers_of(installation)] == [expected]

    sm.delete_app(DomainId=domain, UserProfileName="carol", AppType="RSessionGateway", AppName="answers")
    s.wait_app(sm, domain, "carol", "answers", ("Deleted",), timeout=60)
    assert s.containers_of(installation) == []


def test_a_running_session_is_adopted_after_a_restart(
    server_factory: Any, registry: str, tmp_path: Path, shared_inspection: Path
) -> None:
    """SIGTERM stops byoi, not its sessions: the server started again on the same data dir finds the running
    container and keeps the app InService on it (same container, not re-created)."""
    data_dir = tmp_path / "adopt"
    srv = server_factory([f"http://{registry}"], data_dir=data_dir, env=ENV, inspection_config=shared_inspection)
    sm = srv.client()
    image = s.unique("standin")
    s.register(sm, registry, image, "rstudio-standin", "v1")
    s.ensure_config(sm)
    domain = s.rstudio_domain(sm, [{"ImageName": image, "AppImageConfigName": s.CONFIG}])
    sm.create_user_profile(DomainId=domain, UserProfileName="dave")
    sm.create_app(
        DomainId=domain,
        UserProfileName="dave",
        AppType="RSessionGateway",
        AppName="kept",
        ResourceSpec={"SageMakerImageArn": sm.describe_image(ImageName=image)["ImageArn"]},
    )
    assert s.wait_app(sm, domain, "dave", "kept", ("InService", "Failed"), timeout=90)["Status"] == "InService"
    before = s.progress(s.extension(srv), domain, "dave", "kept")
    container_id = docker_client().api.inspect_container(before["ContainerName"])["Id"]

    srv.stop()  # SIGTERM: a clean stop
    assert srv.proc is not None and srv.proc.returncode is not None
    assert docker_client().api.inspect_container(container_id)["State"]["Running"]  # sessions outlive byoi
    restarted_at = time.time()
    again = server_factory([f"http://{registry}"], data_dir=data_dir, env=ENV, inspection_config=shared_inspection)
    sm = again.client()
    # Several reconciler passes (one a second): still InService, with a health check from the new server.
    deadline = time.monotonic() + 30
    while True:
        described = s.app_status(sm, domain, "dave", "kept")
        assert described["Status"] == "InService", described
        if described["LastHealthCheckTimestamp"].timestamp() > restarted_at + 2:
            break
        assert time.monotonic() < deadline, f"no health check since the restart: {described}"
        time.sleep(0.3)
    after = s.progress(s.extension(again), domain, "dave", "kept")
    assert (after["ContainerName"], after.get("HostPort"), after["Endpoint"]) == (
        before["ContainerName"],
        before.get("HostPort"),
        before["Endpoint"],
    )
    assert [c.id for c in s.containers_of(_installation(data_dir))] == [container_id]  # not re-created
    assert s.evaluate(after["Endpoint"], "1 + 1") == 2  # and it still serves R


@pytest.mark.postgres
def test_app_records_on_postgresql(server_factory: Any, registry: str, postgres_url: str) -> None:
    """Row locks, re-create in place and paging of app records on PostgreSQL (RStudioServerPro: no container)."""
    from tests.conftest import fresh_postgres_database

    srv = server_factory([f"http://{registry}"], database_url=fresh_postgres_database(postgres_url), env=ENV)
    sm = srv.client()
    domains = [s.rstudio_domain(sm) for _ in range(3)]  # each with its RStudioServerPro app, made with it
    pages = list(sm.get_paginator("list_apps").paginate(PaginationConfig={"PageSize": 2}))
    mine = [a for p in pages for a in p["Apps"] if a["DomainId"] in domains]
    assert [a["DomainId"] for a in mine] == domains and {a["Status"] for a in mine} == {"InService"}
    d = domains[0]
    sm.delete_app(DomainId=d, UserProfileName="domain-shared", AppType="RStudioServerPro", AppName="default")
    deadline = time.monotonic() + 20
    while s.app_status(sm, d, "domain-shared", "default", "RStudioServerPro")["Status"] != "Deleted":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    arn = sm.create_app(DomainId=d, UserProfileName="domain-shared", AppType="RStudioServerPro", AppName="default")
    assert arn["AppArn"].endswith(f":app/{d}/domain-shared/RStudioServerPro/default")
    sm.delete_app(DomainId=d, UserProfileName="domain-shared", AppType="RStudioServerPro", AppName="default")
    deadline = time.monotonic() + 20
    while s.app_status(sm, d, "domain-shared", "default", "RStudioServerPro")["Status"] != "Deleted":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    sm.delete_domain(DomainId=d, RetentionPolicy={"HomeEfsFileSystem": "Delete"})
