"""Build, cache and push the test images in tests/images/ (tests and fixtures only; uses the `docker` SDK).

    ensure_base_image()                       -> "byoi-test/debian:bookworm" (scripts/make-base-image.sh)
    build_test_image("rstudio-standin")       -> "byoi-test/rstudio-standin:latest"
    push_test_image("plain-r", "127.0.0.1:5000", "team/plain-r", "v1") -> "sha256:..."

Images are cached: a build is skipped when the local image carries a label with the hash of its folder's
files (Dockerfile and anything it copies). Only the base image comes from debootstrap; the rest are built
FROM it, with `apt-get install` reaching Debian's archive from the Docker bridge.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "tests" / "images"
BASE_IMAGE = "byoi-test/debian:bookworm"
HASH_LABEL = "org.byoi.test-image.hash"
NAMES = ("plain-r", "r-extra", "run-fails", "syntax-error", "rstudio-standin", "rstudio-standin-old")


@cache
def docker_client():
    """A docker SDK client, or pytest.skip with the reason when the Engine is not reachable."""
    try:
        import docker

        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except Exception as exc:  # any failure means "no engine here": the tests that need it are skipped
        if os.environ.get("BYOI_TEST_DOCKER") == "1":
            raise RuntimeError(f"BYOI_TEST_DOCKER=1 but the Docker Engine does not answer: {exc}") from exc
        pytest.skip(f"Docker Engine is not reachable ({exc}); start it with scripts/services.sh")


def containers(all: bool = True, **filters: str) -> list[Any]:
    """Containers matching the Engine filters. One that is removed while being listed is left out: sessions and
    builds remove their containers concurrently, and listing without that raced (NotFound on the inspect)."""
    return list(docker_client().containers.list(all=all, ignore_removed=True, filters=filters))


def docker_available() -> bool:
    """Whether the Docker tests can run. With BYOI_TEST_DOCKER=1 (scripts/services.sh started the Engine, as
    on CI) an Engine that does not answer is an error, not a reason to skip every Docker test silently."""
    try:
        import docker

        docker.from_env(timeout=30).ping()
        return True
    except Exception as exc:
        if os.environ.get("BYOI_TEST_DOCKER") == "1":
            raise RuntimeError(f"BYOI_TEST_DOCKER=1 but the Docker Engine does not answer: {exc}") from exc
        return False


def ensure_base_image() -> str:
    """Make the debootstrapped Debian base image unless it exists already; returns its tag."""
    import docker.errors

    client = docker_client()
    try:
        client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except docker.errors.ImageNotFound:
        pass  # make it below  # noqa: S110
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "make-base-image.sh"), BASE_IMAGE], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/make-base-image.sh failed:\n{proc.stdout}\n{proc.stderr}")
    return BASE_IMAGE


def context_hash(name: str) -> str:
    """Hash of every file in tests/images/<name>/ (paths and contents), so edits invalidate the cache.

    An image built FROM another test image also hashes that image's context, so editing the parent rebuilds it.
    """
    folder = IMAGES / name
    if not (folder / "Dockerfile").is_file():
        raise ValueError(f"no test image {name!r} (expected {folder}/Dockerfile)")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    for parent in _test_image_parents(folder / "Dockerfile"):
        digest.update(b"FROM\0" + context_hash(parent).encode())
    return digest.hexdigest()[:16]


def _test_image_parents(dockerfile: Path) -> list[str]:
    """Names of the tests/images/ images a Dockerfile is built FROM (byoi-test/<name>:latest)."""
    parents = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].upper() == "FROM" and words[1].startswith("byoi-test/"):
            name = words[1].removeprefix("byoi-test/").split(":")[0]
            if (IMAGES / name / "Dockerfile").is_file():
                parents.append(name)
    return parents


def local_tag(name: str) -> str:
    return f"byoi-test/{name}:latest"


def build_test_image(name: str) -> str:
    """Build tests/images/<name> (cached by context hash) and return its local tag.

    `run-fails` and `syntax-error` are meant to fail: building them raises RuntimeError with the log.
    """
    import docker.errors

    client = docker_client()
    ensure_base_image()
    for parent in _test_image_parents(IMAGES / name / "Dockerfile"):
        build_test_image(parent)
    tag, wanted = local_tag(name), context_hash(name)
    try:
        if client.images.get(tag).labels.get(HASH_LABEL) == wanted:
            return tag
    except docker.errors.ImageNotFound:
        pass  # not built yet  # noqa: S110

    log: list[str] = []
    try:
        for chunk in client.api.build(
            path=str(IMAGES / name), tag=tag, labels={HASH_LABEL: wanted}, rm=True, forcerm=True, decode=True
        ):
            if "stream" in chunk:
                log.append(chunk["stream"])
            if "error" in chunk:
                raise RuntimeError(f"building test image {name} failed: {chunk['error']}\n{''.join(log[-30:])}")
    except docker.errors.APIError as exc:  # e.g. a Dockerfile parse error is a 400 before any step runs
        raise RuntimeError(f"building test image {name} failed: {exc.explanation or exc}") from exc
    return tag


def push_test_image(name: str, registry_host: str, repo: str, tag: str = "latest") -> str:
    """Build (cached), tag as registry_host/repo:tag, push to that (insecure, loopback) registry.

    Returns the manifest digest the registry reported ("sha256:..."). Pushing needs the daemon to treat the
    registry as insecure; Docker does so for 127.0.0.0/8 by default.
    """
    client = docker_client()
    source = build_test_image(name)
    target = f"{registry_host}/{repo}"
    client.images.get(source).tag(target, tag=tag)
    digest = ""
    for chunk in client.api.push(target, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise RuntimeError(f"pushing {target}:{tag} failed: {chunk['error']}")
        aux = chunk.get("aux") or {}
        digest = aux.get("Digest", digest)
    if not digest:
        raise RuntimeError(f"pushing {target}:{tag} reported no digest")
    return digest
