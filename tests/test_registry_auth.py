"""Resolving versions in registries that want credentials: Basic (htpasswd), bearer tokens, Docker config.json."""

from __future__ import annotations

import base64
import json
import ssl

import pytest

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER, ROLE
from tests.support.oci import Pusher
from tests.test_versions import wait_version

pytestmark = pytest.mark.slow


def registries_file(tmp_path, url: str, password: str | None) -> str:
    path = tmp_path / "registries.toml"
    lines = ["[[registry]]", f'url = "{url}"', f'username = "{REGISTRY_USER}"']
    if password is not None:
        lines.append(f'password = "{password}"')
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def create_version(srv, base_image: str) -> dict:
    sm = srv.client()
    sm.create_image(ImageName="authimg", RoleArn=ROLE)
    sm.create_image_version(ImageName="authimg", BaseImage=base_image)
    return wait_version(sm, "authimg", 1)


def test_basic_auth_registry(server_factory, registry, basic_registry, tmp_path):
    pushed = Pusher(f"http://{basic_registry}", auth=(REGISTRY_USER, REGISTRY_PASSWORD)).image("private/r", "v1")
    cfg = registries_file(tmp_path, f"http://{basic_registry}", REGISTRY_PASSWORD)
    srv = server_factory([f"http://{registry}"], extra_args=["--registries-file", cfg])
    d = create_version(srv, f"{basic_registry}/private/r:v1")
    assert (d["ImageVersionStatus"], d["ContainerImage"]) == ("CREATED", f"{basic_registry}/private/r@{pushed.digest}")


def test_basic_auth_refused_and_missing_credentials(server_factory, registry, basic_registry, tmp_path):
    Pusher(f"http://{basic_registry}", auth=(REGISTRY_USER, REGISTRY_PASSWORD)).image("private/r", "v1")
    cfg = registries_file(tmp_path, f"http://{basic_registry}", "wrong-password")
    srv = server_factory([f"http://{registry}"], extra_args=["--registries-file", cfg])
    d = create_version(srv, f"{basic_registry}/private/r:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert f"registry {basic_registry} refused access to repository private/r" in d["FailureReason"]

    srv2 = server_factory([f"http://{registry}"])  # no credentials at all for that registry
    d = create_version(srv2, f"{basic_registry}/private/r:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "requires credentials and none are configured" in d["FailureReason"]


def test_credentials_from_docker_config(server_factory, registry, basic_registry, tmp_path):
    pushed = Pusher(f"http://{basic_registry}", auth=(REGISTRY_USER, REGISTRY_PASSWORD)).image("private/dc", "v1")
    config = tmp_path / "config.json"
    auth = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {basic_registry: {"auth": auth}}}))
    srv = server_factory([f"http://{registry}"], extra_args=["--docker-config", str(config)])
    d = create_version(srv, f"{basic_registry}/private/dc:v1")
    assert d["ContainerImage"] == f"{basic_registry}/private/dc@{pushed.digest}"
    # A registry named with --registry but without credentials of its own takes them from the Docker config.
    named = server_factory(
        [f"http://{registry}", f"http://{basic_registry}"], extra_args=["--docker-config", str(config)]
    )
    d = create_version(named, f"{basic_registry}/private/dc:v1")
    assert d["ContainerImage"] == f"{basic_registry}/private/dc@{pushed.digest}", d.get("FailureReason")


def test_bearer_token_registry(server_factory, registry, token_registry, tmp_path):
    host, issuer = token_registry
    pusher = Pusher(f"http://{host}", token_for=lambda scope: issuer.token(REGISTRY_USER, [scope]))
    pushed = pusher.image("team/tok", "v1")
    cfg = registries_file(tmp_path, f"http://{host}", REGISTRY_PASSWORD)
    srv = server_factory([f"http://{registry}"], extra_args=["--registries-file", cfg])
    d = create_version(srv, f"{host}/team/tok:v1")
    assert (d["ImageVersionStatus"], d["ContainerImage"]) == ("CREATED", f"{host}/team/tok@{pushed.digest}")

    bad = registries_file(tmp_path, f"http://{host}", "nope")
    srv2 = server_factory([f"http://{registry}"], extra_args=["--registries-file", bad])
    d = create_version(srv2, f"{host}/team/tok:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "token service of registry" in d["FailureReason"] and "refused" in d["FailureReason"]


def test_https_registry_with_private_ca(server_factory, registry, registry_root, tmp_path):
    from tests.support.processes import free_port, start_registry
    from tests.support.tls import make_ca_and_server_cert

    ca, cert, key = make_ca_and_server_cert(tmp_path / "tls")
    port = free_port()
    proc = start_registry(registry_root / f"tls-{port}", port, f"  tls:\n    certificate: {cert}\n    key: {key}\n")
    try:
        host = f"127.0.0.1:{port}"
        pushed = Pusher(f"https://{host}", verify=ssl.create_default_context(cafile=str(ca))).image("secure/r", "v1")
        cfg = tmp_path / "registries.toml"
        cfg.write_text(f'[[registry]]\nurl = "https://{host}"\nca_file = "{ca}"\n')
        srv = server_factory([f"http://{registry}"], extra_args=["--registries-file", str(cfg)])
        d = create_version(srv, f"{host}/secure/r:v1")
        assert (d["ImageVersionStatus"], d["ContainerImage"]) == ("CREATED", f"{host}/secure/r@{pushed.digest}")

        # Without the CA the certificate cannot be verified: a clear, permanent failure (no retries).
        cfg.write_text(f'[[registry]]\nurl = "https://{host}"\n')
        srv2 = server_factory([f"http://{registry}"], extra_args=["--registries-file", str(cfg)])
        d = create_version(srv2, f"{host}/secure/r:v1")
        assert d["ImageVersionStatus"] == "CREATE_FAILED"
        assert "TLS certificate of registry" in d["FailureReason"] and "ca_file" in d["FailureReason"]
        assert "gave up" not in d["FailureReason"]
    finally:
        proc.terminate()
        proc.wait()
