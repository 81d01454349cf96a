"""RStudio sessions (CreateApp and friends) on a real Docker Engine, from images in a real registry.

RStudio Server here is the STAND-IN image (tests/images/rstudio-standin): a TEST DOUBLE for the IDE binary
only. The registry, the images, inspection, Docker Engine, the containers and R are all real. One server and
a few sessions are shared by the tests of this module (in file order) to keep the wall time down.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support import sessions as s
from tests.support.docker_images import docker_available, docker_client
from tests.support.processes import ByoiServer

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)"),
]

SESSION_ENV = {"BYOI_SESSION_RECONCILE_SECONDS": "1", "BYOI_SESSION_START_TIMEOUT": "60", "BYOI_SESSION_STOP_TIMEOUT": "2"}


@pytest.fixture(scope="module")
def server(registry: str, tmp_path_factory: pytest.TempPathFactory):
    srv = ByoiServer(data_dir=tmp_path_factory.mktemp("byoi"), registries=[f"http://{registry}"], env=SESSION_ENV)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def world(server: ByoiServer, registry: str) -> dict[str, Any]:
    """A domain with RStudio on, users alice and bob, and the image `standin`: version 1 is the plain stand-in,
    version 2 the stand-in plus an R package only it has. The image is attached without a version."""
    sm = server.client()
    image = s.unique("standin")
    v1 = s.register(sm, registry, image, "rstudio-standin", "v1")
    v2 = s.register(sm, registry, image, "rstudio-standin-extra", "v2", create=False)
    s.ensure_config(sm)
    domain = s.rstudio_domain(sm, [{"ImageName": image, "AppImageConfigName": s.CONFIG}])
    for user in ("alice", "bob"):
        sm.create_user_profile(DomainId=domain, UserProfileName=user)
    other = s.unique("unattached")
    s.register(sm, registry, other, "rstudio-standin", "v1")
    arn = sm.describe_image(ImageName=image)["ImageArn"]
    return {"sm": sm, "domain": domain, "image": image, "image_arn": arn, "v1": v1, "v2": v2, "other": other}


def version_arn(world: dict[str, Any], version: int) -> str:
    return world["image_arn"].replace(":image/", ":image-version/").lower() + f"/{version}"


def launch(world: dict[str, Any], user: str, name: str, version: int | None = None, **spec: Any) -> str:
    resource = {"SageMakerImageArn": world["image_arn"], **spec}
    if version is not None:
        resource["SageMakerImageVersionArn"] = version_arn(world, version)
    world["sm"].create_app(
        DomainId=world["domain"], UserProfileName=user, AppType="RSessionGateway", AppName=name, ResourceSpec=resource
    )
    return name


@pytest.fixture(scope="module")
def alice(world: dict[str, Any], server: ByoiServer) -> dict[str, Any]:
    """Alice's session on version 2 (the stand-in with the extra package), InService."""
    name = launch(world, "alice", "alice-extra", world["v2"])
    described = s.wait_app(world["sm"], world["domain"], "alice", name, ("InService", "Failed"))
    assert described["Status"] == "InService", described
    ext = server.extension_client() if hasattr(server, "extension_client") else _ext(server)
    prog = s.progress(ext, world["domain"], "alice", name)
    return {"name": name, "described": described, "progress": prog, "ext": ext}


def _ext(server: ByoiServer) -> Any:
    import os

    from byoi.cli.client import extension_client

    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(server.credentials_file)
    return extension_client(server.endpoint, "byoi")


def test_session_answers_and_describes_as_modeled(world: dict[str, Any], alice: dict[str, Any]) -> None:
    d = alice["described"]
    assert d["AppArn"].endswith(f":app/{world['domain']}/alice/RSessionGateway/alice-extra")
    assert d["ResourceSpec"] == {
        "SageMakerImageArn": world["image_arn"],
        "SageMakerImageVersionArn": version_arn(world, world["v2"]),
        "InstanceType": "ml.t3.medium",
    }
    assert d["LastHealthCheckTimestamp"] and "FailureReason" not in d
    p = alice["progress"]
    assert p["Phase"] == "ready" and p["Endpoint"].startswith("http://127.0.0.1:")
    assert p["Endpoint"].endswith(f"/sessions/{p['SessionId']}/")
    info = s.evaluate(p["Endpoint"], "jsonlite::toJSON(list(user = Sys.info()[['user']], uid = system('id -u', intern = TRUE)))")
    assert "1000" in str(info)
    listed = world["sm"].list_apps(DomainIdEquals=world["domain"], UserProfileNameEquals="alice")["Apps"]
    assert [a["AppName"] for a in listed] == ["alice-extra"] and listed[0]["Status"] == "InService"


def test_r_sees_the_custom_image_package_and_the_domain_environment(alice: dict[str, Any], world: dict[str, Any]) -> None:
    endpoint = alice["progress"]["Endpoint"]
    assert s.evaluate(endpoint, 'requireNamespace("byoitestpkg", quietly = TRUE)') is True
    assert s.evaluate(endpoint, "byoitestpkg::greeting()") == "hello from byoitestpkg"
    assert s.evaluate(endpoint, 'Sys.getenv("RSTUDIO_CONNECT_URL")') == s.CONNECT_URL
    assert s.evaluate(endpoint, 'Sys.getenv("BYOI_DOMAIN_ID")') == world["domain"]
    # R started the way RStudio starts rsessions, without the container's environment, reads Renviron.site:
    clean = s.evaluate(
        endpoint,
        "system2('env', c('-i', file.path(R.home('bin'), 'Rscript'), '-e', "
        "shQuote('cat(Sys.getenv(c(\"RSTUDIO_PACKAGE_MANAGER_URL\", \"BYOI_USER_PROFILE_NAME\", \"R_LIBS_SITE\")), sep = \"|\")')), "
        "stdout = TRUE)",
    )
    pm, user, libs = str(clean).split("|")
    assert pm == s.PACKAGE_MANAGER_URL and user == "alice"
    assert "site-library" in libs  # the image's own Renviron.site lines are kept
