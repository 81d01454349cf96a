"""Sessions and builds on registries that want credentials: a launch pulls with byoi's own credentials from the
Basic-auth (htpasswd) and the token-auth (`auth.token`) registry, and a build pushes to the token-auth registry.

RStudio Server here is the STAND-IN image (tests/images/rstudio-standin): a TEST DOUBLE for the IDE binary only.
The registries, the token server, Docker Engine, the byoi server and its clients (boto3, the `byoi` CLI) are real.

Docker Engine keeps no login of its own: `docker login` only writes the client's config.json, and every pull or
push carries its credentials in X-Registry-Auth. The stand-in is pushed to the Basic registry by Docker with the
credentials in that header (nothing is written to a config.json) and copied from there to the token registry
over the registry API (one compression of its 400 MB, not two). So a pull made while launching succeeds only with
the credentials byoi sends, as the launches with wrong or missing credentials at the end show; every launch is of
a repository and digest the Engine has never pulled (it would pull those again without asking the registry). The
tests share one server and run in file order: the last two restart it with those bad credentials.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from byoi.cli.client import extension_client
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import sessions as s
from tests.support.docker_images import BASE_IMAGE, build_test_image, docker_available, docker_client
from tests.support.oci import Pusher, digest_of
from tests.support.processes import ByoiServer
from tests.support.token_server import TokenIssuer

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)"),
]

BYOI = str(Path(sys.executable).parent / "byoi")
SESSION_ENV = {"BYOI_SESSION_START_TIMEOUT": "60", "BYOI_SESSION_STOP_TIMEOUT": "2"}
MANIFESTS = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
CREDENTIALS = {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD}


def write_registries(path: Path, entries: dict[str, str | None]) -> None:
    """registries.toml with one entry per host: REGISTRY_USER and the given password (None: no credentials)."""
    lines: list[str] = []
    for host, password in entries.items():
        lines += ["[[registry]]", f'url = "http://{host}"']
        if password is not None:
            lines += [f'username = "{REGISTRY_USER}"', f'password = "{password}"']
    path.write_text("\n".join(lines) + "\n")


def push_with_credentials(host: str, repo: str, tag: str) -> str:
    """Push the stand-in to host/repo:tag with Docker, the credentials in X-Registry-Auth; return the pinned
    reference (host/repo@digest)."""
    client = docker_client()
    target = f"{host}/{repo}"
    client.images.get(build_test_image("rstudio-standin")).tag(target, tag=tag)
    digest = ""
    for chunk in client.api.push(target, tag=tag, stream=True, decode=True, auth_config=CREDENTIALS):
        if "error" in chunk:
            raise RuntimeError(f"pushing {target}:{tag} failed: {chunk['error']}")
        digest = (chunk.get("aux") or {}).get("Digest", digest)
    assert digest, f"pushing {target}:{tag} reported no digest"
    client.images.remove(f"{target}:{tag}")
    return f"{target}@{digest}"


def pusher_for(kind: str, host: str, issuer: TokenIssuer) -> Pusher:
    """Registry API access with the right credentials: Basic, or a bearer token from the issuer."""
    if kind == "basic":
        return Pusher(f"http://{host}", auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    return Pusher(f"http://{host}", token_for=lambda scope: issuer.token(REGISTRY_USER, [scope]))


def copy_image(source: str, target: Pusher, repo: str, tag: str) -> tuple[bytes, str]:
    """Copy the image pinned by `source` (in the Basic registry) to repo:tag of `target`, blob by blob and the
    manifest byte for byte over the registry API; return the manifest and its media type."""
    src_host, _, rest = source.partition("/")
    src_repo, _, digest = rest.partition("@")
    base, auth = f"http://{src_host}/v2/{src_repo}", (REGISTRY_USER, REGISTRY_PASSWORD)
    manifest = httpx.get(f"{base}/manifests/{digest}", headers={"Accept": MANIFESTS}, auth=auth)
    manifest.raise_for_status()
    body = manifest.json()
    for blob in [body["config"], *body["layers"]]:
        data = httpx.get(f"{base}/blobs/{blob['digest']}", auth=auth, follow_redirects=True, timeout=120)
        data.raise_for_status()
        assert target.blob(repo, data.content) == blob["digest"]
    media_type = manifest.headers["content-type"]
    assert target.manifest(repo, tag, manifest.content, media_type).digest == digest
    return manifest.content, media_type


def make_absent(pinned: str) -> None:
    """Drop the pinned reference from Docker Engine (the stand-in's layers stay): a launch has to pull it."""
    import docker.errors

    client = docker_client()
    try:
        client.images.remove(pinned)
    except docker.errors.ImageNotFound:
        pass  # untagged with its tag already  # noqa: S110
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(pinned)


def bearer(issuer: TokenIssuer, repo: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.token(REGISTRY_USER, [f'repository:{repo}:pull'])}", "Accept": MANIFESTS}


@pytest.fixture(scope="module")
def hosts(basic_registry: str, token_registry: tuple[str, TokenIssuer]) -> dict[str, str]:
    return {"basic": basic_registry, "token": token_registry[0]}


@pytest.fixture(scope="module")
def registries_toml(hosts: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's --registries-file: the right credentials for both registries (until `rotated`)."""
    path = tmp_path_factory.mktemp("registries-file") / "registries.toml"
    write_registries(path, {hosts["basic"]: REGISTRY_PASSWORD, hosts["token"]: REGISTRY_PASSWORD})
    return path


@pytest.fixture(scope="module")
def server(registry: str, registries_toml: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = ByoiServer(
        data_dir=tmp_path_factory.mktemp("byoi-auth"),
        registries=[f"http://{registry}"],
        env=SESSION_ENV,
        extra_args=["--registries-file", str(registries_toml)],
    ).start()
    yield srv
    srv.stop()
    s.remove_sessions_of(srv.data_dir)


@pytest.fixture(scope="module")
def world(server: ByoiServer, hosts: dict[str, str], token_registry: tuple[str, TokenIssuer]) -> dict[str, Any]:
    """The stand-in pushed to both registries and registered (resolved with byoi's credentials) as one image per
    registry, attached to an RStudio domain with user alice.

    Each image has a version 2 for the launches after the credentials went bad: the same config and layers under
    a manifest of other bytes, so a digest Docker Engine has never pulled. (The Engine keeps the manifests it
    pulled by digest and pulls such a digest again from the same repository without asking the registry.)"""
    sm = server.client()
    names = {kind: s.unique(f"{kind}-standin") for kind in hosts}
    pushers = {kind: pusher_for(kind, host, token_registry[1]) for kind, host in hosts.items()}
    source = push_with_credentials(hosts["basic"], f"sessions/{names['basic']}", "v1")
    manifest, media_type = copy_image(source, pushers["token"], f"sessions/{names['token']}", "v1")
    other = json.dumps(json.loads(manifest), indent=1).encode()
    images: dict[str, dict[str, Any]] = {}
    for kind, host in hosts.items():
        name = names[kind]
        pushers[kind].manifest(f"sessions/{name}", "v2", other, media_type)
        versions = {}
        for tag, number in (("v1", 1), ("v2", 2)):
            assert s.register_as(sm, name, f"{host}/sessions/{name}:{tag}", create=number == 1) == number
            versions[number] = sm.describe_image_version(ImageName=name, Version=number)
        assert versions[1]["ContainerImage"] == f"{host}/sessions/{name}@{digest_of(manifest)}"
        assert versions[2]["ContainerImage"] == f"{host}/sessions/{name}@{digest_of(other)}"
        images[kind] = {"name": name, "arn": versions[1]["ImageArn"], "versions": versions}
    s.ensure_config(sm)
    attached = [{"ImageName": i["name"], "AppImageConfigName": s.CONFIG} for i in images.values()]
    domain = s.rstudio_domain(sm, attached)
    sm.create_user_profile(DomainId=domain, UserProfileName="alice")
    return {"sm": sm, "ext": s.extension(server), "domain": domain, "images": images}


def launch(world: dict[str, Any], kind: str, version: int) -> tuple[str, str, dict[str, Any]]:
    """CreateApp on that version of the image of `kind`, its pinned image absent from Docker Engine; wait for the
    outcome. Returns the app name, the pinned image and DescribeApp."""
    described = world["images"][kind]["versions"][version]
    pinned = described["ContainerImage"]
    make_absent(pinned)
    name = s.unique(kind)
    world["sm"].create_app(
        DomainId=world["domain"],
        UserProfileName="alice",
        AppType="RSessionGateway",
        AppName=name,
        ResourceSpec={
            "SageMakerImageArn": world["images"][kind]["arn"],
            "SageMakerImageVersionArn": described["ImageVersionArn"],
        },
    )
    return name, pinned, s.wait_app(world["sm"], world["domain"], "alice", name, ("InService", "Failed"))


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_a_session_launches_from_a_registry_that_wants_credentials(world: dict[str, Any], kind: str) -> None:
    name, pinned, described = launch(world, kind, 1)
    assert described["Status"] == "InService", described
    p = s.progress(world["ext"], world["domain"], "alice", name)
    # Pulled by this launch (BytesTotal is absent when the image was already on the host), by digest.
    assert p["Phase"] == "ready" and p["ContainerImage"] == pinned and "BytesTotal" in p, p
    assert pinned in docker_client().images.get(pinned).attrs["RepoDigests"]
    assert docker_client().api.inspect_container(p["ContainerName"])["Config"]["Image"] == pinned
    assert s.evaluate(p["Endpoint"], "1 + 1") == 2


def byoi(server: ByoiServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**server.aws_env(), "COLUMNS": "200"}
    return subprocess.run([BYOI, *args], env=env, capture_output=True, text=True, timeout=300)


def build_context(tmp_path: Path, marker: str) -> Path:
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo {marker} > /marker\n")
    return root


def test_a_build_pushes_to_the_token_auth_registry(
    server: ByoiServer, world: dict[str, Any], token_registry: tuple[str, TokenIssuer], tmp_path: Path
) -> None:
    host, issuer = token_registry
    marker = uuid.uuid4().hex[:10]
    repo = f"built/r-{marker}"
    result = byoi(server, "build", str(build_context(tmp_path, marker)), "--image", f"{host}/{repo}", "--tag", "v1")
    assert result.returncode == 0, result.stdout + result.stderr
    [build] = world["ext"].list_image_builds(RepositoryEquals=repo)["ImageBuilds"]
    d = world["ext"].describe_image_build(BuildId=build["BuildId"])
    assert d["BuildStatus"] == "SUCCEEDED" and d["PinnedImage"] == f"{host}/{repo}@{d['ImageDigest']}", d
    assert f"pushed {host}/{repo}:v1@{d['ImageDigest']}" in result.stdout
    # The registry wants a token for the manifest; with one from the issuer it has the digest the build reported.
    url = f"http://{host}/v2/{repo}/manifests/v1"
    assert httpx.head(url, headers={"Accept": MANIFESTS}).status_code == 401
    response = httpx.head(url, headers=bearer(issuer, repo))
    assert response.status_code == 200 and response.headers["docker-content-digest"] == d["ImageDigest"]


@pytest.fixture(scope="module")
def rotated(server: ByoiServer, world: dict[str, Any], hosts: dict[str, str], registries_toml: Path) -> dict[str, Any]:
    """The same server restarted after its credentials went bad: a wrong password for the Basic registry, and
    none for the token registry, still a configured registry (versions registered before stay CREATED)."""
    server.stop()
    write_registries(registries_toml, {hosts["basic"]: "wrong-password", hosts["token"]: None})
    server.start()
    return {**world, "sm": server.client(), "ext": s.extension(server)}


@pytest.mark.parametrize(
    "kind, wanted",
    [
        # Distribution's htpasswd refuses the wrong password byoi sent.
        ("basic", "unauthorized: authentication required"),
        # byoi sent no credentials, so Docker asked the token server anonymously, which refused (its words).
        ("token", "unauthorized: credentials required"),
    ],
    ids=["basic", "token"],
)
def test_a_launch_with_wrong_or_missing_credentials_fails_naming_the_pull(
    rotated: dict[str, Any], kind: str, wanted: str
) -> None:
    _, pinned, described = launch(rotated, kind, 2)
    assert described["Status"] == "Failed", described
    reason = described["FailureReason"]
    assert reason.startswith(f"Cannot pull {pinned}: ") and reason.endswith(wanted), reason
    assert "Traceback" not in reason and "Internal" not in reason
    import docker.errors

    with pytest.raises(docker.errors.ImageNotFound):
        docker_client().images.get(pinned)


def test_a_build_push_without_credentials_fails_naming_the_push(
    rotated: dict[str, Any], server: ByoiServer, token_registry: tuple[str, TokenIssuer], tmp_path: Path
) -> None:
    host, issuer = token_registry
    marker = uuid.uuid4().hex[:10]
    repo = f"built/r-{marker}"
    result = byoi(server, "build", str(build_context(tmp_path, marker)), "--image", f"{host}/{repo}", "--tag", "v1")
    assert result.returncode == 7, result.stdout + result.stderr
    server.session()
    [build] = extension_client(server.endpoint, "byoi").list_image_builds(RepositoryEquals=repo)["ImageBuilds"]
    assert build["BuildStatus"] == "FAILED", build
    reason = build["FailureReason"]
    assert reason.startswith(f"Push to {host}/{repo}:v1 failed: unauthorized: credentials required"), reason
    assert reason.split(" | ")[0] in result.stderr.replace("\n", "")
    # Nothing reached the registry.
    response = httpx.head(f"http://{host}/v2/{repo}/manifests/v1", headers=bearer(issuer, repo))
    assert response.status_code == 404
