"""Unit tests of pure logic: image references, registry-client checks a real registry cannot provoke."""

from __future__ import annotations

import base64
import hashlib
import json

import httpx2 as httpx
import pytest

from byoi.api.protocol import snake
from byoi.config import RegistryConfig
from byoi.metrics import outcome_class
from byoi.registry.client import Credentials, RegistryClient, docker_config_credentials
from byoi.registry.errors import RegistryBadContent, RegistryNotFound
from byoi.registry.reference import InvalidReference, Reference, parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rstudio", Reference(None, "rstudio")),
        ("team/rstudio:4.2", Reference(None, "team/rstudio", "4.2")),
        ("127.0.0.1:5000/team/r:v1", Reference("127.0.0.1:5000", "team/r", "v1")),
        ("localhost/r", Reference("localhost", "r")),
        (
            "123.dkr.ecr.us-east-1.amazonaws.com/rstudio-custom:tag",
            Reference("123.dkr.ecr.us-east-1.amazonaws.com", "rstudio-custom", "tag"),
        ),
        ("r@sha256:" + "a" * 64, Reference(None, "r", None, "sha256:" + "a" * 64)),
        ("h:1/r:t@sha256:" + "b" * 64, Reference("h:1", "r", "t", "sha256:" + "b" * 64)),
    ],
)
def test_reference_parsing(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        (" r", "spaces"),
        ("Team/R", "not a valid repository"),
        ("r:bad tag", "not a valid tag"),
        ("r@sha256:xyz", "sha256:<64 hex digits>"),
        ("a..b", "not a valid repository"),
        ("r/../x", "not a valid"),
    ],
)
def test_reference_errors_say_what_is_wrong(text, words):
    with pytest.raises(InvalidReference) as e:
        parse(text)
    assert words in str(e.value)


def test_snake_case_of_wire_names():
    assert snake("CreateImageVersion") == "create_image_version"
    assert snake("MLFramework") == "ml_framework"
    assert snake("SageMakerImageVersionAliases") == "sage_maker_image_version_aliases"


# The cases below need a registry that lies about content, which the real Distribution never does;
# httpx2's MockTransport stands in for such a broken registry.
async def _resolve_against(handler) -> None:
    client = RegistryClient([RegistryConfig("http://reg.test")], transport=httpx.MockTransport(handler))
    try:
        await client.resolve(Reference("reg.test", "r", "v1"))
    finally:
        await client.close()


async def test_announced_digest_mismatch_is_refused():
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}).encode()

    def handler(request):
        return httpx.Response(
            200,
            content=body,
            headers={
                "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                "Docker-Content-Digest": "sha256:" + "0" * 64,
            },
        )

    with pytest.raises(RegistryBadContent, match="announced digest"):
        await _resolve_against(handler)


async def test_platform_manifest_not_matching_its_digest_is_refused():
    child_digest = "sha256:" + hashlib.sha256(b"expected").hexdigest()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"digest": child_digest, "platform": {"os": "linux", "architecture": "amd64"}}],
        }
    ).encode()

    def handler(request):
        if request.url.path.endswith("/v1"):
            return httpx.Response(
                200, content=index, headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}
            )
        return httpx.Response(200, content=b'{"something": "else"}')

    with pytest.raises(RegistryBadContent, match="when asked for"):
        await _resolve_against(handler)


async def test_non_image_artifact_is_refused():
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.example.thing+json"}).encode()

    with pytest.raises(RegistryBadContent, match="is not a container image"):
        await _resolve_against(lambda request: httpx.Response(200, content=body))


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("ok", "ok"),
        ("ResourceNotFound", "client_error"),
        ("ValidationException", "client_error"),
        ("InvalidSignatureException", "client_error"),  # 403
        ("ConcurrentModification", "client_error"),  # 409
        ("InternalFailure", "server_error"),  # 500: the only server-side error a request can end with
        ("SomethingNobodyDefined", "server_error"),
    ],
)
def test_latency_outcome_class_follows_the_error_status(outcome, expected):
    """Latency is labelled by outcome class (bounded), by the HTTP status AWS answers the code with."""
    assert outcome_class(outcome) == expected


@pytest.mark.parametrize("token_body", [b"[1, 2]", b'"a string"', b'{"token": 5}', b"not json"])
async def test_a_token_service_answering_something_else_than_a_token_object_is_bad_content(token_body):
    def handler(request):
        if request.url.path == "/token":
            return httpx.Response(200, content=token_body, headers={"Content-Type": "application/json"})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="http://reg.test/token"'})

    with pytest.raises(RegistryBadContent, match="returned no token"):
        await _resolve_against(handler)


@pytest.mark.parametrize("error_body", [b'{"errors": 5}', b'{"errors": [5, {"code": 7}]}', b"[]", b"<html>"])
async def test_a_404_with_an_odd_error_body_is_still_not_found(error_body):
    def handler(request):
        return httpx.Response(404, content=error_body, headers={"Content-Type": "application/json"})

    with pytest.raises(RegistryNotFound, match="reg.test"):
        await _resolve_against(handler)


@pytest.mark.parametrize(
    "config",
    [
        "[]",
        '{"auths": 5}',
        '{"auths": {"reg.test": 5}}',
        '{"auths": {"reg.test": {"auth": "%%%not-base64"}}}',
        '{"auths": {"reg.test": {"auth": 7}}}',
        '{"auths": {"reg.test": {"auth": "' + base64.b64encode(b"\xff\xfe").decode() + '"}}}',
    ],
)
def test_unreadable_docker_config_entries_are_skipped(tmp_path, config):
    path = tmp_path / "config.json"
    path.write_text(config)
    good = {"auth": base64.b64encode(b"alice:pw").decode()}
    assert docker_config_credentials(path) == {}
    mixed = json.loads(config) if config.startswith('{"auths": {') else None
    if mixed is not None:  # a bad entry does not spoil the good ones next to it
        path.write_text(json.dumps({"auths": {**mixed["auths"], "good.test": good}}))
        assert docker_config_credentials(path) == {"good.test": Credentials("alice", "pw")}
