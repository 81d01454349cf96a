"""Image versions through boto3: digest pinning, idempotency, concurrency, aliases, registry failures."""

from __future__ import annotations

import contextlib
import threading
import uuid

import pytest
from botocore.exceptions import ClientError, WaiterError

from tests.conftest import ROLE
from tests.support.errors import code
from tests.support.oci import OCI_MANIFEST
from tests.support.processes import ByoiServer


@pytest.fixture(scope="module")
def server(catalog_server: ByoiServer) -> ByoiServer:
    return catalog_server  # shared with the other catalog, CLI and build modules (tests/conftest.py)


def wait_version(sm, image: str, version: int) -> dict:
    waiter = sm.get_waiter("image_version_created")
    with contextlib.suppress(WaiterError):  # it stops on CREATE_FAILED too; the caller asserts on the status
        waiter.wait(ImageName=image, Version=version, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150})
    return sm.describe_image_version(ImageName=image, Version=version)


def test_version_pinned_to_registry_digest_and_immutable(sm, name, pusher, registry):
    first = pusher.image("catalog/pin", "v1", {"a.txt": b"one"})
    sm.create_image(ImageName=name, RoleArn=ROLE)
    arn = sm.create_image_version(
        ImageName=name, BaseImage=f"{registry}/catalog/pin:v1", ReleaseNotes="first", Processor="CPU", Horovod=False
    )["ImageVersionArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:000000000000:image-version/{name}/1"
    d = wait_version(sm, name, 1)
    assert d["ImageVersionStatus"] == "CREATED"
    assert d["ContainerImage"] == f"{registry}/catalog/pin@{first.digest}"
    assert d["BaseImage"] == f"{registry}/catalog/pin:v1"
    assert (d["ReleaseNotes"], d["Processor"], d["Horovod"]) == ("first", "CPU", False)

    # Re-pushing the tag never changes an existing version; a new version picks up the new digest.
    second = pusher.image("catalog/pin", "v1", {"a.txt": b"two"})
    assert second.digest != first.digest
    sm.create_image_version(ImageName=name, BaseImage=f"{registry}/catalog/pin:v1")
    assert wait_version(sm, name, 2)["ContainerImage"] == f"{registry}/catalog/pin@{second.digest}"
    assert sm.describe_image_version(ImageName=name, Version=1)["ContainerImage"].endswith(first.digest)
    # Without Version or Alias, DescribeImageVersion answers for the newest version.
    assert sm.describe_image_version(ImageName=name)["Version"] == 2


def test_default_registry_digest_reference_and_oci_manifest(sm, name, pusher, registry):
    pushed = pusher.image("catalog/oci", "v1", media_type=OCI_MANIFEST)
    sm.create_image(ImageName=name, RoleArn=ROLE)
    sm.create_image_version(ImageName=name, BaseImage="catalog/oci:v1")  # no host: the default registry
    sm.create_image_version(ImageName=name, BaseImage=f"catalog/oci@{pushed.digest}")
    for v in (1, 2):
        assert wait_version(sm, name, v)["ContainerImage"] == f"{registry}/catalog/oci@{pushed.digest}"


def test_index_resolves_to_configured_platform(sm, name, pusher, registry):
    index, images = pusher.index("catalog/multi", "v1", ["linux/arm64", "linux/amd64"])
    sm.create_image(ImageName=name, RoleArn=ROLE)
    sm.create_image_version(ImageName=name, BaseImage="catalog/multi:v1")
    d = wait_version(sm, name, 1)
    assert d["ContainerImage"] == f"{registry}/catalog/multi@{images['linux/amd64'].digest}"

    pusher.index("catalog/armonly", "v1", ["linux/arm64"])
    sm.create_image_version(ImageName=name, BaseImage="catalog/armonly:v1")
    d = wait_version(sm, name, 2)
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "no image for platform linux/amd64" in d["FailureReason"] and "linux/arm64" in d["FailureReason"]


def test_missing_repository_and_tag_fail_with_reason(sm, name, pusher, registry):
    pusher.image("catalog/exists", "v1")
    sm.create_image(ImageName=name, RoleArn=ROLE)
    sm.create_image_version(ImageName=name, BaseImage="catalog/never-pushed:v1")
    sm.create_image_version(ImageName=name, BaseImage="catalog/exists:nope")
    d1, d2 = wait_version(sm, name, 1), wait_version(sm, name, 2)
    assert d1["ImageVersionStatus"] == d2["ImageVersionStatus"] == "CREATE_FAILED"
    assert "repository catalog/never-pushed does not exist" in d1["FailureReason"]
    assert "tag nope not found in repository catalog/exists" in d2["FailureReason"]
    assert "ContainerImage" not in d1


def test_unreachable_registry_retries_then_fails(sm, name):
    sm.create_image(ImageName=name, RoleArn=ROLE)
    sm.create_image_version(ImageName=name, BaseImage="127.0.0.1:9/catalog/down:v1")  # port 9: nothing listens
    d = wait_version(sm, name, 1)
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "The registry 127.0.0.1:9 is not reachable: connection refused" in d["FailureReason"]
    assert "gave up after 2 attempts" in d["FailureReason"]


def test_client_token_makes_create_idempotent(sm, name, pusher):
    pusher.image("catalog/token", "v1")
    sm.create_image(ImageName=name, RoleArn=ROLE)
    token = str(uuid.uuid4())
    a = sm.create_image_version(ImageName=name, BaseImage="catalog/token:v1", ClientToken=token)
    b = sm.create_image_version(ImageName=name, BaseImage="catalog/token:v1", ClientToken=token)
    assert a["ImageVersionArn"] == b["ImageVersionArn"]
    assert len(sm.list_image_versions(ImageName=name)["ImageVersions"]) == 1
    with pytest.raises(ClientError) as e:
        sm.create_image_version(ImageName=name, BaseImage="catalog/token:v2", ClientToken=token)
    assert code(e) == "ValidationException" and "ClientToken" in e.value.response["Error"]["Message"]


def test_twenty_concurrent_creates_get_distinct_consecutive_versions(server, name, pusher):
    pusher.image("catalog/concurrent", "v1")
    sm = server.client()
    sm.create_image(ImageName=name, RoleArn=ROLE)
    arns: list[str] = []
    errors: list[Exception] = []

    def create() -> None:
        try:
            client = server.client()
            arns.append(
                client.create_image_version(ImageName=name, BaseImage="catalog/concurrent:v1")["ImageVersionArn"]
            )
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(int(a.rsplit("/", 1)[1]) for a in arns) == list(range(1, 21))
    pages = sm.get_paginator("list_image_versions").paginate(ImageName=name, SortBy="VERSION", SortOrder="ASCENDING")
    assert [v["Version"] for p in pages for v in p["ImageVersions"]] == list(range(1, 21))


def test_aliases(sm, name, pusher):
    pusher.image("catalog/alias", "v1")
    sm.create_image(ImageName=name, RoleArn=ROLE)
    sm.create_image_version(ImageName=name, BaseImage="catalog/alias:v1", Aliases=["stable", "4.2"])
    sm.create_image_version(ImageName=name, BaseImage="catalog/alias:v1")
    assert sm.describe_image_version(ImageName=name, Alias="stable")["Version"] == 1
    assert sorted(sm.list_aliases(ImageName=name, Version=1)["SageMakerImageVersionAliases"]) == ["4.2", "stable"]

    with pytest.raises(ClientError) as e:  # unique within the image
        sm.update_image_version(ImageName=name, Version=2, AliasesToAdd=["stable"])
    assert code(e) == "ResourceInUse" and "version 1" in e.value.response["Error"]["Message"]
    sm.update_image_version(ImageName=name, Version=1, AliasesToDelete=["stable"], ReleaseNotes="moved")
    sm.update_image_version(ImageName=name, Version=2, AliasesToAdd=["stable"])
    assert sm.describe_image_version(ImageName=name, Alias="stable")["Version"] == 2
    assert sm.describe_image_version(ImageName=name, Version=1)["ReleaseNotes"] == "moved"
    assert sm.list_aliases(ImageName=name, Alias="stable")["SageMakerImageVersionAliases"] == ["stable"]
    assert sorted(sm.list_aliases(ImageName=name)["SageMakerImageVersionAliases"]) == ["4.2", "stable"]

    with pytest.raises(ClientError) as e:
        sm.describe_image_version(ImageName=name, Alias="nope")
    assert code(e) == "ResourceNotFound"
    with pytest.raises(ClientError) as e:
        sm.describe_image_version(ImageName=name, Version=1, Alias="stable")
    assert code(e) == "ValidationException"
    with pytest.raises(ClientError) as e:
        sm.create_image_version(ImageName=name, BaseImage="catalog/alias:v1", Aliases=["dup", "dup"])
    assert code(e) == "ValidationException"

    # Aliases work wherever the model allows: DeleteImageVersion by alias.
    sm.delete_image_version(ImageName=name, Alias="4.2")
    sm.get_waiter("image_version_deleted").wait(
        ImageName=name, Version=1, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
    )
    assert sm.list_aliases(ImageName=name)["SageMakerImageVersionAliases"] == ["stable"]


def test_version_numbers_never_reused_and_errors(sm, name, pusher):
    pusher.image("catalog/reuse", "v1")
    with pytest.raises(ClientError) as e:
        sm.create_image_version(ImageName=name, BaseImage="catalog/reuse:v1")
    assert code(e) == "ResourceNotFound"
    sm.create_image(ImageName=name, RoleArn=ROLE)
    with pytest.raises(ClientError) as e:
        sm.create_image_version(ImageName=name, BaseImage="Not A Reference!")
    assert code(e) == "ValidationException" and "BaseImage" in e.value.response["Error"]["Message"]
    sm.create_image_version(ImageName=name, BaseImage="catalog/reuse:v1")
    sm.create_image_version(ImageName=name, BaseImage="catalog/reuse:v1")
    wait_version(sm, name, 2)
    sm.delete_image_version(ImageName=name, Version=2)
    sm.get_waiter("image_version_deleted").wait(
        ImageName=name, Version=2, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
    )
    arn = sm.create_image_version(ImageName=name, BaseImage="catalog/reuse:v1")["ImageVersionArn"]
    assert arn.endswith("/3")
    with pytest.raises(ClientError) as e:
        sm.delete_image_version(ImageName=name, Version=99)
    assert code(e) == "ResourceNotFound"
    with pytest.raises(ClientError) as e:
        sm.delete_image_version(ImageName=name)
    assert code(e) == "ValidationException"


def test_list_image_versions_filters_and_errors(sm, name, pusher):
    pusher.image("catalog/list", "v1")
    sm.create_image(ImageName=name, RoleArn=ROLE)
    for _ in range(12):
        sm.create_image_version(ImageName=name, BaseImage="catalog/list:v1")
    first = sm.list_image_versions(ImageName=name)
    assert [v["Version"] for v in first["ImageVersions"]] == list(range(12, 2, -1))  # 10 per page, newest first
    rest = sm.list_image_versions(ImageName=name, NextToken=first["NextToken"])
    assert [v["Version"] for v in rest["ImageVersions"]] == [2, 1] and "NextToken" not in rest
    with pytest.raises(ClientError) as e:
        sm.list_image_versions(ImageName=name + "-missing")
    assert code(e) == "ResourceNotFound"


# -- give-up outcomes of the background work, on the real services in-process -------------------------


async def test_versions_whose_work_keeps_failing_end_in_their_failed_states(tmp_path, registry, pusher, monkeypatch):
    """The services with a real store, registry and worker; the failures are injected (a version check
    that raises, a tag cleanup that raises), standing for any bug below the service. Resolution gives up
    after BYOI_RESOLVE_ATTEMPTS failures with CREATE_FAILED, deletion with DELETE_FAILED, from which
    DeleteImageVersion may be called again."""
    import asyncio
    from dataclasses import replace

    import byoi.services.image_versions as image_versions
    from byoi.app import build_context
    from byoi.config import RegistryConfig, Settings
    from byoi.services.image_versions import ImageVersionService
    from byoi.services.images import ImageService
    from byoi.store.db import migrate

    settings = Settings(data_dir=tmp_path, registries=(RegistryConfig(f"http://{registry}"),))
    settings = replace(settings, resolve_attempts=3, retry_base_delay=0.05)
    pusher.image("catalog/giveup", "v1")
    ctx = build_context(settings)
    await asyncio.to_thread(migrate, ctx.db.url)
    ctx.worker.poll_seconds = 0.05
    ctx.worker.failure_delay = 0.02  # the default (5 s, doubling) for tasks that do not set their own
    images, versions = ImageService(ctx), ImageVersionService(ctx)
    checks = []

    async def broken_check(row, resolved) -> None:
        checks.append(row.version)
        raise RuntimeError("a check with a bug")

    ctx.version_checks.append(broken_check)
    for task in images.tasks() + versions.tasks():
        ctx.worker.register(task)
    ctx.worker.start()

    async def settled(version: int, status: str) -> dict:
        for _ in range(200):
            d = await versions.describe_image_version("giveup", version)
            if d["ImageVersionStatus"] != status:
                return d
            await asyncio.sleep(0.05)
        raise AssertionError(f"version {version} still {status}")

    try:
        await images.create_image("giveup", ROLE)
        await versions.create_image_version("giveup", f"{registry}/catalog/giveup:v1", "token-1")
        d = await settled(1, "CREATING")
        assert d["ImageVersionStatus"] == "CREATE_FAILED" and checks == [1, 1, 1]
        assert d["FailureReason"] == (
            "Internal error while resolving or inspecting the BaseImage: RuntimeError: a check with a bug "
            "(failed 3 times; see the server log)"
        )

        def broken_cleanup(*_args) -> None:
            raise RuntimeError("tag cleanup with a bug")

        monkeypatch.setattr(image_versions, "delete_all_tags", broken_cleanup)
        await versions.delete_image_version("giveup", 1)
        d = await settled(1, "DELETING")  # after the worker's default of 5 failures
        assert d["ImageVersionStatus"] == "DELETE_FAILED"
        assert d["FailureReason"].startswith(
            "Internal error while deleting the version: RuntimeError: tag cleanup with a bug (failed 5 times"
        )
        monkeypatch.undo()
        await versions.delete_image_version("giveup", 1)
        for _ in range(200):
            if not (await versions.list_image_versions("giveup"))["ImageVersions"]:
                break
            await asyncio.sleep(0.05)
        assert (await versions.list_image_versions("giveup"))["ImageVersions"] == []
    finally:
        await ctx.worker.stop()
        await ctx.registry.close()
        await ctx.db.close()
