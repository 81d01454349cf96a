"""The build-result cache: a build with the same inputs as an earlier successful one tags that build's image
instead of building (services/build_reuse.py), and every input that decides the result makes it build again.

The Dockerfile reader is tested as a pure function; the cache itself through the `byoi build` CLI and the
Byoi.* API against a real server, the real Docker Engine and the real registry (Distribution)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import regex

from byoi.build.dockerfile import Facts, Unsure, instructions, read, triggers_are_plain
from byoi.services.build_reuse import inputs_digest
from tests.support.docker_images import BASE_IMAGE, docker_available, docker_client, ensure_base_image
from tests.support.processes import ByoiServer, byoi_cli

# -- what a Dockerfile builds from ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, args, expected",
    [
        ("FROM debian:12\nRUN true\n", {}, ["debian:12"]),
        ("from debian:12 as base\nFROM base\nCOPY --from=base /a /b\n", {}, ["debian:12"]),
        ("FROM scratch\nCOPY a /a\n", {}, []),
        (
            "FROM a AS one\nFROM b\nCOPY --from=0 /x /x\nCOPY --from=one /y /y\nCOPY --from=tools:1 /z /z\n",
            {},
            ["a", "b", "tools:1"],
        ),
        ("ARG BASE=debian:12\nFROM $BASE\n", {}, ["debian:12"]),
        ("ARG BASE=debian:12\nFROM ${BASE}\n", {"BASE": "ubuntu:24.04"}, ["ubuntu:24.04"]),
        ("ARG TAG\nFROM r:${TAG:-4.4}\n", {}, ["r:4.4"]),
        ("ARG TAG\nFROM r:${TAG:-4.4}\n", {"TAG": "4.3"}, ["r:4.3"]),
        ('ARG REG="reg:5000" NAME=img\nFROM ${REG}/${NAME}\n', {}, ["reg:5000/img"]),
        ("ARG A=x\nARG B=${A}y\nFROM ${B}\n", {}, ["xy"]),
        # a build argument no ARG declares does not reach FROM
        ("FROM img:${TAG:-1}\n", {"TAG": "2"}, ["img:1"]),
        ("FROM \\\n  debian:12 \\\n  AS base\nRUN echo \\\n# a comment in a continuation\n  done\n", {}, ["debian:12"]),
        ("# escape=`\nFROM debian:12 `\n  AS b\nRUN dir c:\\\n", {}, ["debian:12"]),
        ("FROM --platform=$BUILDPLATFORM debian:12 AS b\n", {}, ["debian:12"]),
        ("FROM debian:12\nONBUILD RUN make\n", {}, ["debian:12"]),
        ("FROM scratch\nENV A=b\\\\\nFROM img\n", {}, ["img"]),  # an escaped escape does not continue the line
        ("  # escape=`\nFROM scratch\nRUN dir c:\\\nFROM img\n", {}, ["img"]),  # an indented directive counts
        ('FROM scratch\nLABEL "x\fFROM scratch AS helper\f"=y\nCOPY --from=helper /a /b\n', {}, ["helper"]),
        ("FROM scratch AS golang\nCOPY --from=golang /a /b\n", {}, ["golang"]),  # its own name: not yet a stage
        (
            "FROM a@sha256:" + "0" * 64 + "\nCOPY --from=b:1@sha256:" + "1" * 64 + " /x /y\n",
            {},
            ["a@sha256:" + "0" * 64, "b:1@sha256:" + "1" * 64],
        ),
        ("FROM debian:12\nADD local.tar /x\n", {}, ["debian:12"]),
        ("\ufeffFROM a\r\nFROM b\r\n", {}, ["a", "b"]),  # a byte order mark and CRLF line ends
    ],
)
def test_the_base_images_are_found_as_the_classic_builder_reads_them(text, args, expected):
    assert read(text, args) == Facts(expected, None)  # and nothing else decides the result


@pytest.mark.parametrize(
    "text, why",
    [
        ("RUN true\n", "no FROM"),
        ("FROM debian:12\nADD https://example.invalid/x.tgz /x\n", "URL"),
        ("FROM debian:12\nADD git@example.invalid:a/b.git /src\n", "URL"),
        ("ARG V=1\nFROM img:${V:?unset}\n", "expansion"),
        ("ARG V\nFROM ${V}\n", "image reference"),  # empty: the Engine refuses it; the cache does not guess
        ("FROM a\nCOPY --from=$STAGE /x /x\n", "--from"),
        ("FROM a b\n", "FROM"),
        ("# escape=|\nFROM a\n", "escape"),
        ('ARG A="x y"\nFROM $A\n', "quotes"),
        ("FROM scratch AS a\nONBUILD COPY --from=img /f /g\nFROM a\n", "ONBUILD"),
        ("FROM scratch\nARG URL=http://x.invalid/f\nADD $URL /f\n", "ADD"),
        ('FROM a\nADD ["http:\\/\\/x.invalid/f", "/f"]\n', "ADD"),
        ("FROM a\nRUN <<EOF\nFROM x AS n\nEOF\n", "heredoc"),
        ("FROM ../containers\n", "image reference"),
        ("FROM a\nCOPY --from=\u00b2 /x /y\n", "image reference"),
    ],
)
def test_anything_it_cannot_be_sure_of_means_build(text, why):
    try:
        reason = read(text, {}).not_reusable  # the images are known, but something else decides the result
    except Unsure as exc:  # not even the images are
        reason = str(exc)
    assert reason is not None and regex.search(why, reason), reason


def test_a_base_images_triggers_are_plain_unless_they_reach_outside_the_context():
    assert triggers_are_plain(["RUN make", "COPY . /src", "ADD local.tar /x"])
    for trigger in ("COPY --from=img /a /b", "ADD $U /x", "ADD https://x.invalid/f /f", 'ADD ["a", "/b"]'):
        assert not triggers_are_plain([trigger]), trigger


def test_instructions_join_continuations_and_drop_comments():
    text = '# syntax=docker/dockerfile:1\nFROM a\n\n# c\nRUN one \\\n\n    two\nCMD ["x"]'
    assert instructions(text) == [("FROM", "a"), ("RUN", "one     two"), ("CMD", '["x"]')]


def test_every_input_changes_the_key():
    spec = {"Dockerfile": "Dockerfile", "BuildArgs": {"A": "1"}, "Labels": {}, "Target": None, "Platform": None}
    bases = {"debian:12": "sha256:" + "1" * 64}
    key = inputs_digest("c" * 64, spec, bases, "docker")
    assert key == inputs_digest("c" * 64, dict(spec), dict(bases), "docker")
    changed = [
        inputs_digest("d" * 64, spec, bases, "docker"),
        inputs_digest("c" * 64, {**spec, "Dockerfile": "other/Dockerfile"}, bases, "docker"),
        inputs_digest("c" * 64, {**spec, "BuildArgs": {"A": "2"}}, bases, "docker"),
        inputs_digest("c" * 64, {**spec, "Labels": {"k": "v"}}, bases, "docker"),
        inputs_digest("c" * 64, {**spec, "Target": "base"}, bases, "docker"),
        inputs_digest("c" * 64, {**spec, "Platform": "linux/arm64"}, bases, "docker"),
        inputs_digest("c" * 64, spec, {"debian:12": "sha256:" + "2" * 64}, "docker"),
        inputs_digest("c" * 64, spec, bases, "buildkit"),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


# -- the cache on a real server -----------------------------------------------------------------------

docker = pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)")


@pytest.fixture(scope="module")
def server(catalog_server: ByoiServer) -> ByoiServer:
    ensure_base_image()
    return catalog_server


def build(server: ByoiServer, root: Path, repo: str, tag: str, *extra: str) -> dict[str, Any]:
    """`byoi build` through the CLI; its JSON answer (the build's description) with its log as `_log`."""
    result = byoi_cli(
        ["build", str(root), "--image", repo, "--tag", tag, "--output", "json", *extra],
        {**server.aws_env(), "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {**json.loads(result.stdout), "_log": result.stderr}


def manifest_digest(registry: str, repo: str, tag: str) -> str:
    accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    response = httpx.get(f"http://{registry}/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    return response.headers["docker-content-digest"]


def context(tmp_path: Path, dockerfile: str) -> Path:
    root = tmp_path / "ctx"
    root.mkdir(exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    (root / "data.txt").write_text(uuid.uuid4().hex)  # new content: no earlier test's build has these inputs
    return root


@docker
@pytest.mark.docker
@pytest.mark.slow
def test_an_unchanged_build_tags_the_earlier_image_and_each_input_builds_again(server, registry, tmp_path):
    repo = f"reuse/{uuid.uuid4().hex[:8]}"
    root = context(tmp_path, f"ARG NOTE=one\nFROM {BASE_IMAGE}\nCOPY data.txt /data.txt\nRUN cat /data.txt\n")
    first = build(server, root, repo, "first")
    assert first["BuildStatus"] == "SUCCEEDED" and not first.get("ReusedBuildId")
    assert "RUN cat /data.txt" in first["_log"]

    again = build(server, root, repo, "again")
    assert again["ReusedBuildId"] == first["BuildId"]
    assert again["ImageDigest"] == first["ImageDigest"]
    assert "tagged without building again" in again["_log"] and "Step " not in again["_log"]
    # the registry holds the new tag, naming the earlier image
    assert manifest_digest(registry, repo, "again") == first["ImageDigest"]

    # a build argument: built (whatever the Dockerfile makes of it)
    with_arg = build(server, root, repo, "arg", "--build-arg", "NOTE=two")
    assert not with_arg.get("ReusedBuildId") and "Step " in with_arg["_log"]
    # --no-cache: built, and that build is the one reused next
    fresh = build(server, root, repo, "fresh", "--no-cache")
    assert not fresh.get("ReusedBuildId") and "RUN cat /data.txt" in fresh["_log"]
    after = build(server, root, repo, "after")
    assert after["ReusedBuildId"] == fresh["BuildId"] and after["ImageDigest"] == fresh["ImageDigest"]
    # a changed file in the context: built
    (root / "data.txt").write_text("changed")
    changed = build(server, root, repo, "changed")
    assert not changed.get("ReusedBuildId") and changed["ImageDigest"] != first["ImageDigest"]
    # another repository: built there (an image is only tagged in the repository that holds it)
    (root / "data.txt").write_text(uuid.uuid4().hex)
    elsewhere_first = build(server, root, repo, "e1")
    other = build(server, root, repo + "-other", "e2")
    assert not other.get("ReusedBuildId") and elsewhere_first["BuildStatus"] == other["BuildStatus"] == "SUCCEEDED"


@docker
@pytest.mark.docker
@pytest.mark.slow
def test_a_base_tag_that_moved_builds_again(server, tmp_path):
    engine = docker_client()
    base = f"byoi-test/reuse-base:{uuid.uuid4().hex[:8]}"
    engine.images.get(BASE_IMAGE).tag(base)
    repo = f"reuse/{uuid.uuid4().hex[:8]}"
    root = context(tmp_path, f"FROM {base}\nCOPY data.txt /data.txt\n")
    try:
        first = build(server, root, repo, "one")
        assert build(server, root, repo, "two")["ReusedBuildId"] == first["BuildId"]
        # the tag now names another image (as after a pull of a newer one): built on it
        moved, _ = engine.images.build(
            fileobj=_dockerfile(f"FROM {BASE_IMAGE}\nLABEL moved={uuid.uuid4().hex}\n"), custom_context=False, rm=True
        )
        moved.tag(base)
        third = build(server, root, repo, "three")
        assert not third.get("ReusedBuildId") and third["ImageDigest"] != first["ImageDigest"]
        # and the base image missing from the Engine (the build would pull it): not reused either, it fails
        # as the Engine's build does
        engine.images.remove(base, force=True)
        result = byoi_cli(["build", str(root), "--image", repo, "--tag", "four"], server.aws_env())
        assert result.returncode == 7 and "Step 1/2" in result.stdout + result.stderr
    finally:
        subprocess.run(["docker", "rmi", "-f", base], capture_output=True)


def _dockerfile(text: str) -> Any:
    import io

    return io.BytesIO(text.encode())


@docker
@pytest.mark.docker
@pytest.mark.slow
def test_an_earlier_image_deleted_from_the_registry_is_built_again(server, registry, registry_root, tmp_path):
    """The earlier build's manifest is gone (garbage collected, deleted by hand): the build runs and pushes."""
    import shutil

    repo = f"reuse/{uuid.uuid4().hex[:8]}"
    root = context(tmp_path, f"FROM {BASE_IMAGE}\nCOPY data.txt /data.txt\n")
    first = build(server, root, repo, "one")
    revisions = registry_root / "anon/storage/docker/registry/v2/repositories" / repo / "_manifests/revisions/sha256"
    shutil.rmtree(revisions / first["ImageDigest"].split(":", 1)[1])
    second = build(server, root, repo, "two")
    assert second["BuildStatus"] == "SUCCEEDED" and not second.get("ReusedBuildId")
    assert "cannot be tagged again" in second["_log"] and "Step " in second["_log"]
    assert manifest_digest(registry, repo, "two") == second["ImageDigest"]


def test_a_build_gets_the_credentials_of_the_registries_its_dockerfile_pulls_from_only(tmp_path):
    """On Kubernetes the pull credentials sit in the build's pod, within reach of its steps: a build gets those of
    the registries its images come from, none of the others byoi has (and Docker Hub's under the key the Engine
    and BuildKit look up)."""
    import base64
    from types import SimpleNamespace

    from byoi.config import RegistryConfig
    from byoi.services.build_runner import BuildRunner

    docker_config = tmp_path / "config.json"
    hub = base64.b64encode(b"hubuser:hubpass").decode()
    docker_config.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": hub}}}))
    registries = [
        RegistryConfig("https://private.test", "alice", "pw"),
        RegistryConfig("https://other.test:5000", "bob", "secret"),
    ]
    runner = BuildRunner.__new__(BuildRunner)
    runner.ctx = SimpleNamespace(settings=SimpleNamespace(registries=registries, docker_config=docker_config))
    assert runner._pull_auths(["private.test/base:1", "private.test/tools", "debian:12"]) == {
        "private.test": {"username": "alice", "password": "pw"},
        "https://index.docker.io/v1/": {"username": "hubuser", "password": "hubpass"},
    }
    assert runner._pull_auths([]) == {}  # a Dockerfile byoi could not read: none
