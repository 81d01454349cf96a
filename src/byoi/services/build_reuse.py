"""The build-result cache: a build made from the same inputs as an earlier successful one gets that build's image.

Why: a `byoi build` of an unchanged directory is most of the edit-build-try loop, and with every step in the
Engine's layer cache it still cost the Engine's cached build (sending it the context, checking each step) and a
push that only finds every layer already there: 160 ms of a 0.6 s build here, against 0.14 s for `docker build`
plus `docker push` by hand. What that build would give is known: the image an earlier build made from the same
inputs. So the earlier build's manifest is put under the new tag and nothing is built.

The inputs are what decides the classic builder's result when every step is cached: the context's bytes (the
Dockerfile and .dockerignore are in it), the Dockerfile's path, the build arguments, labels, target and platform,
and the id of each base image (FROM, COPY --from) as the builder would use it now. A base tag that moved (pulled
again, rebuilt) names another id, so the build runs. The key is their SHA-256 (`inputs_digest`), recorded on the
build when it succeeds.

A build is answered from the cache only when:
- the Dockerfile can be read for its base images with certainty (build/dockerfile.py; otherwise it is built);
- the builder can name each base image's id (Docker Engine: the image it holds; an image it would pull first, or
  the Kubernetes builder, which resolves bases in the cluster: built);
- NoCache is not set (`--no-cache` builds afresh, and that build's result is the one reused next);
- an earlier SUCCEEDED build with the same key pushed to the same registry and repository, and its manifest is
  still there (otherwise built).

What the cache gives up: RUN steps that read the network (apt-get update) are not run again, as with the
Engine's layer cache; the difference is that pruning the Engine's cache does not make them run again: --no-cache
does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from byoi.build.base import Builder
from byoi.build.dockerfile import Facts, Unsure, read
from byoi.build.logstore import BuildLog
from byoi.registry.errors import RegistryError
from byoi.services.context import ServiceContext
from byoi.store.schema_builds import image_builds as builds_t

log = logging.getLogger(__name__)

KEY_VERSION = 1  # part of every key: a change to what goes into one makes earlier keys miss, never mislead
CONTEXT_DIGEST = "context.sha256"  # the uploaded context's SHA-256, left in the build's folder at upload
MAX_DOCKERFILE = 1 << 20


@dataclass(frozen=True)
class Reused:
    build_id: str  # the earlier build whose image was tagged
    digest: str


def inputs_digest(context_sha256: str, spec: dict[str, Any], bases: dict[str, str], builder: str) -> str:
    """The key of a build's result: the SHA-256 of everything that decides it (see the module's docstring)."""
    doc = {
        "v": KEY_VERSION,
        "builder": builder,
        "context": context_sha256,
        "dockerfile": spec["Dockerfile"],
        "build_args": spec.get("BuildArgs") or {},
        "labels": spec.get("Labels") or {},
        "target": spec.get("Target"),
        "platform": spec.get("Platform"),
        "bases": bases,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _context_digest(folder: Path) -> str:
    try:
        return (folder / CONTEXT_DIGEST).read_text().strip()
    except FileNotFoundError:  # a build restarted from a folder made before this was kept: hashed here
        digest = hashlib.sha256()
        with (folder / "raw.tar").open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


def _dockerfile(folder: Path, name: str) -> str | None:
    with tarfile.open(folder / "raw.tar", mode="r:") as tar:
        try:
            info = tar.getmember(name)
        except KeyError:
            return None
        fh = tar.extractfile(info) if info.isfile() and info.size <= MAX_DOCKERFILE else None
        return fh.read().decode() if fh else None


class BuildReuse:
    def __init__(self, ctx: ServiceContext, builder: Builder) -> None:
        self.ctx = ctx
        self.builder = builder

    async def read(self, row: Any, folder: Path, blog: BuildLog) -> Facts | None:
        """What the build's Dockerfile builds from; None when that cannot be known with certainty (the build runs,
        its log says why)."""
        spec = row.spec
        try:
            text = await asyncio.to_thread(_dockerfile, folder, spec["Dockerfile"])
            if text is None:
                return None  # a link, or larger than any Dockerfile: the builder says what it makes of it
            facts = read(text, spec.get("BuildArgs") or {})
        except (Unsure, UnicodeDecodeError, tarfile.TarError, OSError) as exc:
            blog.write("note", m=f"Built without the build-result cache: {exc or type(exc).__name__}")
            return None
        except Exception:  # a bug in the reading must cost the cache, never the build
            log.exception("build %s: reading its Dockerfile for the build-result cache failed", row.build_id)
            return None
        if facts.not_reusable:
            blog.write("note", m=f"Built without the build-result cache: {facts.not_reusable}")
        return facts

    async def key(self, row: Any, folder: Path, facts: Facts) -> str | None:
        """The build's inputs digest, or None when its result cannot be known from its inputs (and it is built)."""
        if facts.not_reusable:
            return None
        bases = await self.builder.base_image_ids(facts.images, row.spec.get("Platform"))
        if bases is None:
            return None
        try:
            context = await asyncio.to_thread(_context_digest, folder)
        except OSError as exc:  # the context is not readable: the build will say so
            log.warning("build %s: no build-result key: %s", row.build_id, exc)
            return None
        return inputs_digest(context, row.spec, bases, self.builder.name)

    async def retag(self, row: Any, key: str, blog: BuildLog) -> Reused | None:
        """Tag the image of the latest successful build with these inputs, in this build's repository, with this
        build's tag; None when there is none or it cannot be tagged (the build then runs)."""
        async with self.ctx.db.read() as conn:
            earlier = (
                await conn.execute(
                    sa.select(builds_t.c.build_id, builds_t.c.digest)
                    .where(
                        builds_t.c.inputs_digest == key,
                        builds_t.c.status == "SUCCEEDED",
                        builds_t.c.registry == row.registry,
                        builds_t.c.repository == row.repository,
                        builds_t.c.digest.is_not(None),
                    )
                    .order_by(builds_t.c.id.desc())
                    .limit(1)
                )
            ).first()
        if earlier is None:
            return None
        registry = self.ctx.registry
        try:
            digest, media_type, raw = await registry.get_manifest(row.registry, row.repository, earlier.digest)
            await registry.put_manifest(row.registry, row.repository, row.tag, media_type, raw)
        except RegistryError as exc:
            blog.write("note", m=f"The image of build {earlier.build_id} cannot be tagged again ({exc}): building")
            return None
        blog.write(
            "note",
            m=f"Same context, Dockerfile, options and base images as build {earlier.build_id}: its image is "
            f"tagged without building again (--no-cache builds anyway)",
        )
        return Reused(earlier.build_id, digest)
