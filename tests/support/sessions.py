"""Helpers for the session (CreateApp) tests: RStudio domains, images registered from the test images,
waiting for app statuses, and evaluating R in a running stand-in over its WebSocket.

The RStudio Server used here is the STAND-IN (tests/images/rstudio-standin): a TEST DOUBLE for the IDE binary
only; the registry, the image, the container, Docker Engine and R are real.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from botocore.exceptions import ClientError

from tests.support.docker_images import containers, push_test_image

ROLE = "arn:aws:iam::000000000000:role/byoi-test"
CONFIG = "rstudio-config"
CONNECT_URL = "https://connect.example.test/team"
PACKAGE_MANAGER_URL = "https://packages.example.test/cran/__linux__/bookworm/latest"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def rstudio_domain(sm: Any, images: list[dict[str, Any]] | None = None) -> str:
    settings = {
        "ExecutionRole": ROLE,
        "RSessionAppSettings": {"CustomImages": images or []},
    }
    domain = sm.create_domain(
        DomainName=unique("sessions"),
        AuthMode="IAM",
        DefaultUserSettings=settings,
        DomainSettings={
            "RStudioServerProDomainSettings": {
                "DomainExecutionRoleArn": ROLE,
                "RStudioConnectUrl": CONNECT_URL,
                "RStudioPackageManagerUrl": PACKAGE_MANAGER_URL,
            }
        },
    )
    return str(domain["DomainId"])


def ensure_config(sm: Any) -> None:
    try:
        sm.create_app_image_config(AppImageConfigName=CONFIG)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUse":
            raise


def register(sm: Any, registry: str, image: str, test_image: str, tag: str, create: bool = True) -> int:
    """Push tests/images/<test_image> as <image>:<tag> and register it as a new CREATED version of <image>."""
    push_test_image(test_image, registry, f"sessions/{image}", tag)
    if create:
        sm.create_image(ImageName=image, RoleArn=ROLE)
    arn = sm.create_image_version(ImageName=image, BaseImage=f"{registry}/sessions/{image}:{tag}")["ImageVersionArn"]
    number = int(arn.rsplit("/", 1)[1])
    sm.get_waiter("image_version_created").wait(
        ImageName=image, Version=number, WaiterConfig={"Delay": 0.5, "MaxAttempts": 240}
    )
    return number


def app_status(sm: Any, domain: str, user: str, name: str, app_type: str = "RSessionGateway") -> dict[str, Any]:
    return sm.describe_app(DomainId=domain, UserProfileName=user, AppType=app_type, AppName=name)  # type: ignore[no-any-return]


def wait_app(
    sm: Any, domain: str, user: str, name: str, statuses: tuple[str, ...], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        described = app_status(sm, domain, user, name)
        if described["Status"] in statuses:
            return described
        if time.monotonic() > deadline:
            raise TimeoutError(f"app {name} is {described['Status']}, not {statuses}: {described}")
        time.sleep(0.3)


def progress(ext: Any, domain: str, user: str, name: str) -> dict[str, Any]:
    return ext.describe_app_progress(DomainId=domain, UserProfileName=user, AppName=name)  # type: ignore[no-any-return]


def evaluate(endpoint: str, code: str, timeout: float = 30) -> Any:
    """Evaluate R in a running stand-in through its WebSocket (its protocol: {"code"} -> {"result","error"})."""
    from websockets.sync.client import connect

    url = endpoint.replace("http://", "ws://").rstrip("/") + "/websocket"
    with connect(url, open_timeout=timeout, close_timeout=2) as ws:
        ws.send(json.dumps({"code": code, "id": 1}))
        answer = json.loads(ws.recv(timeout=timeout))
    if answer.get("error"):
        raise RuntimeError(f"R error: {answer['error']}")
    return answer["result"]


def containers_of(installation_label: str) -> list[Any]:
    return containers(label=f"byoi.installation={installation_label}")


def extension(server: Any) -> Any:
    """The Byoi.* client (botocore, from byoi's extension model) signed with the server's administrator key."""
    import os

    from byoi.cli.client import extension_client

    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(server.credentials_file)
    return extension_client(server.endpoint, "byoi")


def remove_sessions_of(data_dir: Any) -> None:
    """Test teardown: sessions outlive their server by design, so remove the containers a test server started."""
    from pathlib import Path

    marker = Path(data_dir) / "installation-id"
    if marker.exists():
        import docker.errors

        for c in containers_of(marker.read_text().strip()):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass  # removed meanwhile (the server's own stop or reconciler)  # noqa: S110
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: a removal is already in progress
                    raise
