"""Helpers for the domain tests: images with CREATED versions, domains, and waiting for statuses."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.processes import ByoiServer

ROLE = "arn:aws:iam::000000000000:role/byoi-test"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def created_version(sm: Any, pusher: Any, image: str, tag: str = "v1", create_image: bool = True) -> int:
    """Push a small image, register it as a version of `image` and wait until it is CREATED."""
    pusher.image(f"domains/{image.lower()}", tag)
    if create_image:
        sm.create_image(ImageName=image, RoleArn=ROLE)
    arn = sm.create_image_version(ImageName=image, BaseImage=f"domains/{image.lower()}:{tag}")["ImageVersionArn"]
    number = int(arn.rsplit("/", 1)[1])
    sm.get_waiter("image_version_created").wait(
        ImageName=image, Version=number, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
    )
    return number


def failed_version(sm: Any, image: str) -> int:
    """A version whose BaseImage does not exist, waited until CREATE_FAILED."""
    arn = sm.create_image_version(ImageName=image, BaseImage=f"domains/missing-{uuid.uuid4().hex[:8]}:v1")
    number = int(arn["ImageVersionArn"].rsplit("/", 1)[1])
    wait_for(
        lambda: sm.describe_image_version(ImageName=image, Version=number)["ImageVersionStatus"] == "CREATE_FAILED"
    )
    return number


def new_domain(sm: Any, name: str | None = None, **extra: Any) -> str:
    settings = extra.pop("DefaultUserSettings", {"ExecutionRole": ROLE})
    return str(
        sm.create_domain(DomainName=name or unique("dom"), AuthMode="IAM", DefaultUserSettings=settings, **extra)[
            "DomainId"
        ]
    )


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError("condition not met in time")


def gone(describe: Any) -> bool:
    try:
        describe()
    except ClientError as exc:
        return exc.response["Error"]["Code"] == "ResourceNotFound"
    return False


def rsession(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"RSessionAppSettings": {"CustomImages": list(entries)}}


def entry(image: str, config: str, version: int | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"ImageName": image, "AppImageConfigName": config}
    if version is not None:
        e["ImageVersionNumber"] = version
    return e


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], name="server")
def server_on_each_store(request: Any, registry: str, tmp_path_factory: Any) -> Iterator[ByoiServer]:
    """The module's byoi server, once on SQLite and once on PostgreSQL (skipped when none is configured):
    the domain rules lean on row locks and conditional updates, which the two stores do differently."""
    url = None
    if request.param == "postgres":
        base = os.environ.get("BYOI_TEST_POSTGRES_URL")
        if not base:
            pytest.skip("BYOI_TEST_POSTGRES_URL is not set (scripts/services.sh starts PostgreSQL)")
        from tests.conftest import fresh_postgres_database

        url = fresh_postgres_database(base)
    srv = ByoiServer(
        data_dir=tmp_path_factory.mktemp("byoi"), registries=[f"http://{registry}"], database_url=url
    ).start()
    yield srv
    srv.stop()
