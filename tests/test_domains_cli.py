"""The AWS documentation's RStudio BYOI create, attach and clean-up steps with the AWS CLI, end to end;
the `byoi domains|users|attach|detach` commands; and concurrent attaches that must not lose each other."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from byoi.cli.client import extension_client
from byoi.cli.domains import compare_and_swap
from tests.support.attach import created_version, entry, gone, new_domain, unique, wait_for
from tests.support.processes import ByoiServer, byoi_cli

AWS = str(Path(sys.executable).parent / "aws")
BYOI = str(Path(sys.executable).parent / "byoi")
ROLE = "arn:aws:iam::000000000000:role/service-role/AmazonSageMaker-ExecutionRole"


@pytest.fixture(scope="module")
def server(catalog_server: ByoiServer) -> ByoiServer:
    return catalog_server  # shared with the other catalog, CLI and build modules (tests/conftest.py)


def aws(server, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**server.aws_env(), "AWS_DEFAULT_REGION": "us-east-1", "AWS_PAGER": ""}
    env.pop("AWS_ENDPOINT_URL_SAGEMAKER")  # the documented commands pass --endpoint-url
    proc = subprocess.run(
        [AWS, "sagemaker", *args, "--endpoint-url", server.endpoint, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def aws_json(server, *args: str) -> dict:
    out = aws(server, *args).stdout
    return json.loads(out) if out.strip() else {}


def byoi(server, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """`byoi ARGS` in-process (tests/support/processes.py `byoi_cli`); the concurrent attaches below start
    real `byoi` processes."""
    proc = byoi_cli(list(args), {**server.aws_env(), "COLUMNS": "200"})
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def settled(boto3_says, aws_says) -> None:
    """Wait until `boto3_says()` (no process per poll), then the AWS CLI must say the same (`aws_says()`)."""
    wait_for(boto3_says)
    assert aws_says()


@pytest.mark.slow
def test_aws_documentation_create_attach_cleanup(server, sm, registry, pusher, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    image, config = f"rstudio-custom-image-{suffix}", f"rstudio-custom-config-{suffix}"
    # Create (rstudio-byoi-create): a pushed container image, then image, version, app image config.
    tag = f"build-{suffix}"  # "use a unique tag"
    repository_uri = f"{registry}/rstudio-custom"
    pusher.image("rstudio-custom", tag)
    arn = aws_json(server, "create-image", "--image-name", image, "--role-arn", ROLE)["ImageArn"]
    assert arn.endswith(f":image/{image}")
    version_arn = aws_json(
        server, "create-image-version", "--image-name", image, "--base-image", f"{repository_uri}:{tag}"
    )["ImageVersionArn"]
    assert version_arn.endswith(f"image-version/{image}/1")
    settled(
        lambda: sm.describe_image_version(ImageName=image, Version=1)["ImageVersionStatus"] == "CREATED",
        lambda: (
            aws_json(server, "describe-image-version", "--image-name", image, "--version-number", "1")[
                "ImageVersionStatus"
            ]
            == "CREATED"
        ),
    )
    (tmp_path / "app-image-config-input.json").write_text(json.dumps({"AppImageConfigName": config}))
    aws_json(
        server, "create-app-image-config", "--cli-input-json", f"file://{tmp_path / 'app-image-config-input.json'}"
    )

    # Attach, A: a new domain created with the image attached.
    create_input = {
        "DomainName": f"domain-with-custom-r-image-{suffix}",
        "VpcId": "vpc-0123456789",
        "SubnetIds": ["subnet-0123456789"],
        "DomainSettings": {"RStudioServerProDomainSettings": {"DomainExecutionRoleArn": ROLE}},
        "DefaultUserSettings": {
            "ExecutionRole": ROLE,
            "RSessionAppSettings": {"CustomImages": [{"AppImageConfigName": config, "ImageName": image}]},
        },
        "AuthMode": "IAM",
    }
    (tmp_path / "create-domain-input.json").write_text(json.dumps(create_input))
    created = aws_json(server, "create-domain", "--cli-input-json", f"file://{tmp_path / 'create-domain-input.json'}")
    new_id = created["DomainId"]
    assert created["DomainArn"].endswith(f":domain/{new_id}") and created["Url"].startswith(server.endpoint)

    # Attach, B: an existing domain; save DefaultUserSettings from describe-domain, add the image, update.
    existing = aws_json(
        server,
        "create-domain",
        "--domain-name",
        f"existing-{suffix}",
        "--auth-mode",
        "IAM",
        "--default-user-settings",
        json.dumps(
            {"ExecutionRole": ROLE, "KernelGatewayAppSettings": {"DefaultResourceSpec": {"InstanceType": "system"}}}
        ),
    )["DomainId"]
    described = aws_json(server, "describe-domain", "--domain-id", existing)
    settings = described["DefaultUserSettings"]
    settings["RSessionAppSettings"] = {"CustomImages": [{"ImageName": image, "AppImageConfigName": config}]}
    (tmp_path / "update-domain-input.json").write_text(json.dumps({"DefaultUserSettings": settings}))
    updated = aws_json(
        server,
        "update-domain",
        "--domain-id",
        existing,
        "--cli-input-json",
        f"file://{tmp_path / 'update-domain-input.json'}",
    )
    assert updated["DomainArn"].endswith(f":domain/{existing}")
    for domain_id in (new_id, existing):
        attached = aws_json(server, "describe-domain", "--domain-id", domain_id)["DefaultUserSettings"]
        assert attached["RSessionAppSettings"]["CustomImages"] == [{"ImageName": image, "AppImageConfigName": config}]
    assert attached["KernelGatewayAppSettings"] == {"DefaultResourceSpec": {"InstanceType": "system"}}

    # A user, as in rstudio-create-user.
    aws_json(
        server,
        "create-user-profile",
        "--domain-id",
        new_id,
        "--user-profile-name",
        "rstudio-user",
        "--user-settings",
        "RStudioServerProAppSettings={UserGroup=R_STUDIO_USER}",
    )
    listed = aws_json(server, "list-user-profiles", "--domain-id-equals", new_id)["UserProfiles"]
    assert [u["UserProfileName"] for u in listed] == ["rstudio-user"]

    # byoi refuses to delete an image that is still attached (its own choice; documented).
    refused = aws(server, "delete-image", "--image-name", image, ok=False)
    assert refused.returncode != 0 and "ResourceInUse" in refused.stderr and new_id in refused.stderr

    # Clean up (rstudio-byoi-sdk-cleanup): detach, delete the app image config, delete the image.
    for domain_id in (new_id, existing):
        cur = aws_json(server, "describe-domain", "--domain-id", domain_id)["DefaultUserSettings"]
        cur["RSessionAppSettings"] = {"CustomImages": [], "DefaultResourceSpec": {}}
        (tmp_path / "update-domain-input.json").write_text(json.dumps({"DefaultUserSettings": cur}))
        aws_json(
            server,
            "update-domain",
            "--domain-id",
            domain_id,
            "--cli-input-json",
            f"file://{tmp_path / 'update-domain-input.json'}",
        )
    aws_json(server, "delete-app-image-config", "--app-image-config-name", config)
    aws_json(server, "delete-image", "--image-name", image)
    settled(
        lambda: gone(lambda: sm.describe_image(ImageName=image)),
        lambda: "ResourceNotFound" in aws(server, "describe-image", "--image-name", image, ok=False).stderr,
    )

    # And the domains: profiles first (a domain with profiles cannot be deleted).
    blocked = aws(server, "delete-domain", "--domain-id", new_id, ok=False)
    assert "ResourceInUse" in blocked.stderr and "rstudio-user" in blocked.stderr
    aws(server, "delete-user-profile", "--domain-id", new_id, "--user-profile-name", "rstudio-user")
    settled(
        lambda: sm.list_user_profiles(DomainIdEquals=new_id)["UserProfiles"] == [],
        lambda: aws_json(server, "list-user-profiles", "--domain-id-equals", new_id)["UserProfiles"] == [],
    )
    for domain_id in (new_id, existing):
        aws(server, "delete-domain", "--domain-id", domain_id, "--retention-policy", "HomeEfsFileSystem=Delete")
    for domain_id in (new_id, existing):
        settled(
            lambda d=domain_id: gone(lambda: sm.describe_domain(DomainId=d)),
            lambda d=domain_id: "ResourceNotFound" in aws(server, "describe-domain", "--domain-id", d, ok=False).stderr,
        )
    ids = [d["DomainId"] for d in aws_json(server, "list-domains")["Domains"]]
    assert new_id not in ids and existing not in ids


@pytest.mark.slow
def test_byoi_cli_domains_users_attach_detach(server, sm, pusher):
    image = unique("cli")
    created_version(sm, pusher, image)
    dom = unique("clidom")
    out = byoi(server, "domains", "create", dom).stdout
    domain_id = out.split()[0]
    assert domain_id.startswith("d-") and server.endpoint in out
    assert domain_id in byoi(server, "domains", "list").stdout
    described = json.loads(byoi(server, "domains", "describe", dom).stdout)  # by name
    assert described["DomainId"] == domain_id
    assert described["DomainSettings"]["RStudioServerProDomainSettings"]["DomainExecutionRoleArn"]

    byoi(server, "users", "create", "ana", "--domain", dom, "--user-group", "R_STUDIO_ADMIN")
    assert "ana" in byoi(server, "users", "list", "--domain", domain_id).stdout
    user = json.loads(byoi(server, "users", "describe", "ana", "--domain", dom).stdout)
    assert user["UserSettings"]["RStudioServerProAppSettings"]["UserGroup"] == "R_STUDIO_ADMIN"

    # Attach to the domain (creating the default app image config), then to the user with a pinned version.
    assert "attached" in byoi(server, "attach", image, "--domain", dom).stdout
    assert "already attached" in byoi(server, "attach", image, "--domain", dom).stdout
    byoi(server, "attach", f"{image}:1", "--domain", dom, "--user", "ana")
    assert sm.describe_app_image_config(AppImageConfigName="byoi-rstudio")["AppImageConfigName"] == "byoi-rstudio"
    rs = sm.describe_domain(DomainId=domain_id)["DefaultUserSettings"]["RSessionAppSettings"]
    assert rs["CustomImages"] == [entry(image, "byoi-rstudio")]
    for group in ("images", "domains"):  # the issue names `byoi images available`; `domains available` is its twin
        out = byoi(server, group, "available", "--domain", dom, "--user", "ana", "-o", "json").stdout
        avail = json.loads(out)
        assert avail["Source"] == "UserProfile"
        assert [(e["ImageName"], e["ResolvedVersionNumber"]) for e in avail["EffectiveImages"]] == [(image, 1)]
    table = byoi(server, "domains", "available", "--domain", dom).stdout
    assert image in table and "latest" in table

    # Errors are one readable line and exit status 1.
    missing = byoi(server, "attach", "no-such-image", "--domain", dom, ok=False)
    assert missing.returncode == 5 and "ResourceNotFound" in missing.stderr and "no-such-image" in missing.stderr
    assert "Traceback" not in missing.stderr
    nodom = byoi(server, "attach", image, "--domain", "no-such-domain", ok=False)
    assert nodom.returncode == 5 and "no domain with the id or name no-such-domain" in nodom.stderr
    bracketed = byoi(server, "attach", image, "--domain", "[team]", ok=False)  # the name as typed, not markup
    assert bracketed.returncode == 5 and "no domain with the id or name [team]" in bracketed.stderr
    bad = byoi(server, "attach", "bad:ref:x", "--domain", dom, ok=False)
    assert bad.returncode == 2 and "IMAGE:VERSION" in bad.stderr
    blocked = byoi(server, "domains", "delete", dom, ok=False)
    assert blocked.returncode == 1 and "ResourceInUse" in blocked.stderr and "ana" in blocked.stderr

    byoi(server, "detach", image, "--domain", dom, "--user", "ana")
    byoi(server, "detach", image, "--domain", dom)
    assert sm.describe_domain(DomainId=domain_id)["DefaultUserSettings"]["RSessionAppSettings"]["CustomImages"] == []
    again = byoi(server, "detach", image, "--domain", dom, ok=False)
    assert again.returncode == 5 and "is not attached" in again.stderr
    byoi(server, "users", "delete", "ana", "--domain", dom)
    assert "deleted" in byoi(server, "domains", "delete", dom).stdout
    assert gone(lambda: sm.describe_domain(DomainId=domain_id))
    sm.delete_image(ImageName=image)


@pytest.mark.slow
def test_concurrent_byoi_attach_keeps_every_image(server, sm, pusher):
    images = [unique("conc") for _ in range(4)]
    for image in images:
        created_version(sm, pusher, image)
    domain_id = new_domain(sm)
    env = {**server.aws_env(), "COLUMNS": "200"}
    procs = [
        subprocess.Popen(
            [BYOI, "attach", image, "--domain", domain_id],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for image in images
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    attached = sm.describe_domain(DomainId=domain_id)["DefaultUserSettings"]["RSessionAppSettings"]["CustomImages"]
    assert sorted(e["ImageName"] for e in attached) == sorted(images)


def test_compare_and_swap_retries_a_forced_conflict(server, sm, pusher):
    """Two writers read the same revision (held at a barrier), both write: one wins, the other is told
    ConcurrentModification, reads again and writes on top. Both images end up attached."""
    a, b = unique("race"), unique("race")
    for image in (a, b):
        created_version(sm, pusher, image)
    config = unique("cfg")
    sm.create_app_image_config(AppImageConfigName=config)
    domain_id = new_domain(sm)
    server.session()
    barrier = threading.Barrier(2)
    conflicts: list[str] = []
    unexpected: list[BaseException] = []

    class Racing:
        """The real extension client; the first read of each writer waits for the other writer's read."""

        def __init__(self) -> None:
            self.client = extension_client(server.endpoint, "byoi")
            self.reads = 0

        def describe_attached_images(self, **kw):
            result = self.client.describe_attached_images(**kw)
            self.reads += 1
            if self.reads == 1:
                barrier.wait(timeout=30)
            return result

        def update_attached_images(self, **kw):
            try:
                return self.client.update_attached_images(**kw)
            except ClientError as exc:
                error = exc.response["Error"]
                status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
                if error["Code"] == "ConcurrentModification" and status == 409 and "revision" in error["Message"]:
                    conflicts.append(error["Code"])
                else:
                    unexpected.append(exc)
                raise
            except Exception as exc:
                unexpected.append(exc)
                raise

    results: list[object] = []

    def writer(image: str) -> None:
        _, written = compare_and_swap(Racing(), {"DomainId": domain_id}, lambda cur: cur + [entry(image, config)])
        results.append(written)

    threads = [threading.Thread(target=writer, args=(img,)) for img in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert unexpected == []
    assert results == [True, True]
    assert conflicts == ["ConcurrentModification"]  # exactly one writer lost the race and retried
    attached = sm.describe_domain(DomainId=domain_id)["DefaultUserSettings"]["RSessionAppSettings"]["CustomImages"]
    assert sorted(e["ImageName"] for e in attached) == sorted([a, b])
