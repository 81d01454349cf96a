"""Image builds: from an uploaded build context to a pushed image and, optionally, a new image version.

A context is uploaded first (`accept_context`, behind the signed upload route) and checked without being
extracted; `StartImageBuild` then records a build `QUEUED`. The `run-image-build` task admits queued builds
in the order they were started, at most `concurrency` at once, and runs them (`build_runner`): `BUILDING`,
`PUSHING`, then `SUCCEEDED`, `FAILED` or `STOPPED`. A build whose server died is claimed again when its
lease runs out and restarted from the beginning (the Engine's layer cache makes finished steps cheap), at
most `resume_attempts` times, so no build is ever left `BUILDING`. An unexpected error in the runner (a bug)
is tried as often, then ends the build `FAILED` with the error as its FailureReason (the worker's give-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import regex
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from byoi.build.base import BUILD_ID, BUILD_ID_FORMAT, CONTEXT_ID, Builder
from byoi.build.context import ContextError, check_upload, clean_relative, context_has_file
from byoi.build.logstore import BuildLog
from byoi.build.settings import BuildSettings
from byoi.build.upload_pipe import BlockPipe, in_own_thread
from byoi.errors import ResourceNotFound, ValidationException
from byoi.jobs.worker import Task
from byoi.registry import reference
from byoi.services.build_reuse import CONTEXT_DIGEST
from byoi.services.build_runner import ACTIVE, BuildRunner
from byoi.services.context import ServiceContext
from byoi.services.image_versions import ImageVersionService
from byoi.services.images import ImageService
from byoi.store.paging import fetch_page, time_filters
from byoi.store.schema_builds import image_builds as builds_t

DEFAULT_PAGE = 20
_SHA256 = regex.compile(r"[0-9a-f]{64}")
_ARG_NAME = regex.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLATFORM = regex.compile(r"[a-z0-9_]+/[a-z0-9_]+(/[a-z0-9_]+)?")
_TARGET = regex.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_LABEL_KEY = regex.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,254}")


def _asked(registry: str, repository: str, tag: str, image_name: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    """What a StartImageBuild asked for, in wire names, to compare a retried call with the first."""
    return {"Registry": registry, "Repository": repository, "Tag": tag, "ImageName": image_name, **spec}


class BuildService:
    def __init__(
        self,
        ctx: ServiceContext,
        builder: Builder,
        images: ImageService,
        versions: ImageVersionService,
        settings: BuildSettings,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.builder = builder
        self.root = settings.dir or ctx.settings.data_dir / "builds"  # BYOI_BUILD_DIR: shared by replicas
        self.runner = BuildRunner(ctx, builder, images, versions, settings, self.root)

    def tasks(self) -> list[Task]:
        return [
            Task(
                "run-image-build",
                builds_t,
                ACTIVE,
                self.runner.run,
                concurrency=self.settings.concurrency,
                # An unexpected error ends the build FAILED with it. A build that failed while BUILDING is claimed
                # again as if its server had stopped, so giving up after as many tries as a restarted build gets
                # names the real error rather than "the server stopped".
                give_up=self.runner.give_up,
                max_failures=self.settings.resume_attempts + 1,
            )
        ]

    # -- files --------------------------------------------------------------------------------

    def log_path(self, build_id: str) -> Path:
        return self.root / build_id / "log.jsonl"

    def _context_dir(self, context_id: str) -> Path:
        return self.root / "contexts" / context_id

    def _used_marker(self, context_id: str) -> Path:
        """Left behind when a build takes a context: it names the build, for whoever tries the context next."""
        return self.root / "contexts" / f"{context_id}.used"

    def _cached_context(self, sha256: str, principal: str) -> Path:
        """Where a checked upload is kept for its uploader to reuse: keyed by who uploaded it and the SHA-256 they
        signed, so nobody starts a build from somebody else's context by knowing its digest."""
        key = hashlib.sha256(f"{principal}\n{sha256}".encode()).hexdigest()
        return self.root / "context-cache" / f"{key}.tar"

    def _sweep_contexts(self) -> None:
        """Uploaded contexts nobody started a build from, the markers of used ones, and kept uploads nobody reused
        go after `context_ttl`."""
        cutoff = time.time() - self.settings.context_ttl
        for base in (self.root / "contexts", self.root / "context-cache"):
            if base.is_dir():
                self._sweep(base, cutoff)

    @staticmethod
    def _sweep(base: Path, cutoff: float) -> None:
        for entry in base.iterdir():
            try:
                if entry.lstat().st_mtime < cutoff:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
            except FileNotFoundError:
                continue

    def _used_by(self, context_id: str) -> str | None:
        try:
            return self._used_marker(context_id).read_text().strip() or None
        except FileNotFoundError:
            return None

    def _already_used(self, context_id: str, build_id: str) -> ValidationException:
        return ValidationException(
            f"Build context {context_id} was already used by build {build_id}; a context starts one build only "
            "(upload it again to start another)"
        )

    def _claim_context(self, context_id: str, build_id: str) -> None:
        """Give the uploaded context to `build_id`, atomically: of two builds started from one context at the same
        time exactly one gets it (the link of the marker is the arbiter), and the other is told which did."""
        base = self.root / "contexts"
        marker = self._used_marker(context_id)
        pending = base / f".{context_id}.{build_id}"
        try:
            pending.write_text(build_id)  # whole before it is linked: readers never see an empty marker
            try:
                os.link(pending, marker)
            except FileExistsError:
                raise self._already_used(context_id, self._used_by(context_id) or "(unknown)") from None
            finally:
                pending.unlink(missing_ok=True)
            (base / context_id).rename(self.root / build_id)
        except FileNotFoundError:
            marker.unlink(missing_ok=True)
            raise self._missing_context(context_id) from None

    def _unclaim_context(self, context_id: str, build_id: str) -> None:
        """Undo `_claim_context` when the build's row could not be written."""
        try:
            (self.root / build_id).rename(self._context_dir(context_id))
        finally:
            self._used_marker(context_id).unlink(missing_ok=True)

    def _missing_context(self, context_id: str) -> ResourceNotFound:
        return ResourceNotFound(
            f"No build context {context_id}: upload it first (contexts are kept {self.settings.context_ttl:.0f}s)"
        )

    # -- the upload (called by the signed HTTP route in byoi.api.builds_http) ------------------

    async def accept_context(
        self, body: AsyncIterator[bytes], length: int | None, sha256: str, principal: str = ""
    ) -> dict[str, Any]:
        """Store an uploaded context (tar or tar.gz) after checking it, kept for `principal` to reuse by its
        SHA-256 within `context_ttl` (`reuse_context`); return its ContextId and size."""
        limit = self.settings.context_limit
        if length is not None and length > limit:
            raise ValidationException(f"build context upload of {length} bytes is larger than the limit of {limit}")
        await asyncio.to_thread(self._sweep_contexts)
        context_id = "ctx-" + uuid.uuid4().hex
        folder = self._context_dir(context_id)
        folder.mkdir(parents=True)
        # The body is checked as it arrives: a worker thread reads it through `pipe` and writes the checked copy,
        # so the upload is never written to disk as it came (that copy, written and read again, was half of a
        # 16 MB upload's time). The signed SHA-256 is compared once the whole body is in; on a mismatch, as on
        # any failure, the folder goes.
        pipe = BlockPipe()
        check = in_own_thread(self._check, pipe, folder / "raw.tar", limit)
        try:
            digest, received = hashlib.sha256(), 0
            async for chunk in body:
                received += len(chunk)
                if received > limit:
                    raise ValidationException(f"build context upload is larger than the limit of {limit} bytes")
                digest.update(chunk)
                await pipe.put(chunk)  # dropped once the check has ended (a refusal, or the archive's end)
            await pipe.close()
            if digest.hexdigest() != sha256:  # first: a damaged body is named as such, whatever its content
                raise ValidationException(
                    "the uploaded body does not match its signed X-Amz-Content-SHA256 (upload damaged or altered)"
                )
            summary = await check
            (folder / CONTEXT_DIGEST).write_text(sha256)  # a key of the build-result cache (build_reuse.py)
        except BaseException:
            pipe.abort()
            with contextlib.suppress(BaseException):
                await check
            shutil.rmtree(folder, ignore_errors=True)
            raise
        result = {"ContextId": context_id, "ContextSize": summary.size, "Files": summary.files}
        if principal:
            await asyncio.to_thread(self._keep, folder / "raw.tar", self._cached_context(sha256, principal), result)
        return result

    @staticmethod
    def _keep(raw: Path, cached: Path, summary: dict[str, Any]) -> None:
        """A second name for the checked context (a hard link: no copy; the build's own is removed when it settles)
        and its summary, each put in place whole; where it cannot be linked, nothing is kept."""
        cached.parent.mkdir(mode=0o700, exist_ok=True)
        staging = cached.with_name(f".{uuid.uuid4().hex}")
        try:
            staging.with_suffix(".json").write_text(
                json.dumps({"ContextSize": summary["ContextSize"], "Files": summary["Files"]})
            )
            os.replace(staging.with_suffix(".json"), cached.with_suffix(".json"))
            os.link(raw, staging)
            os.replace(staging, cached)
        except OSError:
            staging.unlink(missing_ok=True)
            staging.with_suffix(".json").unlink(missing_ok=True)

    async def reuse_context(self, sha256: str, principal: str) -> dict[str, Any]:
        """A new context from the one `principal` uploaded with this SHA-256 within `context_ttl`, not sent again;
        ResourceNotFound when there is none (the client then uploads)."""
        if not _SHA256.fullmatch(sha256):
            raise ValidationException(f"{sha256[:80]!r} is not a SHA-256 digest: 64 lower-case hexadecimal digits")
        await asyncio.to_thread(self._sweep_contexts)
        context_id = "ctx-" + uuid.uuid4().hex
        summary = await asyncio.to_thread(self._reuse, self._cached_context(sha256, principal), context_id, sha256)
        if summary is None:
            raise ResourceNotFound(
                f"No build context with SHA-256 {sha256} uploaded by you in the last "
                f"{self.settings.context_ttl:.0f}s: upload it"
            )
        return {"ContextId": context_id, **summary, "Reused": True}

    def _reuse(self, cached: Path, context_id: str, sha256: str) -> dict[str, Any] | None:
        folder = self._context_dir(context_id)
        try:
            kept = json.loads(cached.with_suffix(".json").read_text())
            summary = {"ContextSize": int(kept["ContextSize"]), "Files": int(kept["Files"])}
            folder.mkdir(parents=True)
            os.link(cached, folder / "raw.tar")
            (folder / CONTEXT_DIGEST).write_text(sha256)
            for name in (cached, cached.with_suffix(".json")):
                os.utime(name)  # kept another context_ttl from this use
        except (OSError, ValueError, KeyError, TypeError):  # gone, or a summary that is not one: uploaded again
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return summary

    @staticmethod
    def _check(upload: BlockPipe, raw: Path, limit: int) -> Any:
        try:
            return check_upload(cast(BinaryIO, upload), raw, limit)
        except ContextError as exc:
            raise ValidationException(f"build context rejected: {exc}") from None
        finally:
            upload.done_reading()

    # -- operations ------------------------------------------------------------------------------

    def _registry_for(self, registry: str | None, repository: str) -> tuple[str, str]:
        configured = [r.host for r in self.ctx.settings.registries]
        first, sep, rest = repository.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            if registry and registry != first:
                raise ValidationException(f"Repository names registry {first} but Registry is {registry}")
            registry, repository = first, rest
        registry = registry or configured[0]
        if registry not in configured:
            raise ValidationException(
                f"Registry {registry} is not one byoi is configured with ({', '.join(configured)})"
            )
        if not reference.REPOSITORY.fullmatch(repository) or len(repository) > 255:
            raise ValidationException(
                f"Repository {repository!r} is not a valid repository name: lower-case letters and digits, "
                "with '.', '_', '__' or '-' between them and '/' between path components"
            )
        return registry, repository

    @staticmethod
    def _check_options(
        tag: str, build_args: dict[str, str], labels: dict[str, str], platform: str | None, target: str | None
    ) -> None:
        if not reference.TAG.fullmatch(tag):
            raise ValidationException(f"Tag {tag!r} is not a valid tag: up to 128 letters, digits, '_', '.', '-'")
        for key in build_args:
            if not _ARG_NAME.fullmatch(key):
                raise ValidationException(f"BuildArgs name {key!r} is not valid: letters, digits and '_'")
        for key in labels:
            if not _LABEL_KEY.fullmatch(key):
                raise ValidationException(f"Labels key {key!r} is not valid")
        if platform is not None and not _PLATFORM.fullmatch(platform):
            raise ValidationException(f"Platform {platform!r} is not of the form os/arch[/variant]")
        if target is not None and not _TARGET.fullmatch(target):
            raise ValidationException(f"Target {target!r} is not a valid build stage name")

    async def start_image_build(
        self,
        context_id: str,
        repository: str,
        tag: str | None = None,
        registry: str | None = None,
        dockerfile: str | None = None,
        build_args: dict[str, str] | None = None,
        target: str | None = None,
        labels: dict[str, str] | None = None,
        platform: str | None = None,
        no_cache: bool | None = None,
        image_name: str | None = None,
        role_arn: str | None = None,
        client_token: str | None = None,
    ) -> dict[str, Any]:
        tag = tag or "latest"
        registry, repository = self._registry_for(registry, repository)
        self._check_options(tag, build_args or {}, labels or {}, platform, target)
        try:
            dockerfile = clean_relative(dockerfile or "Dockerfile", "Dockerfile")
        except ContextError as exc:
            raise ValidationException(str(exc)) from None
        if not CONTEXT_ID.fullmatch(context_id):
            raise ValidationException(f"ContextId {context_id!r} is not a context id returned by the upload")
        spec = {
            "ContextId": context_id,
            "Dockerfile": dockerfile,
            "BuildArgs": build_args or {},
            "Labels": labels or {},
            "Target": target,
            "Platform": platform,
            "NoCache": bool(no_cache),
            "RoleArn": role_arn,
        }
        values: dict[str, Any] = {
            "registry": registry,
            "repository": repository,
            "tag": tag,
            "image_name": image_name,
            "spec": {k: v for k, v in spec.items() if v is not None},
        }
        if client_token:
            earlier = await self._by_token(client_token)
            if earlier is not None:
                return self._retried(earlier, client_token, values)
        # With a ClientToken, a context another call just took may be this very request's (a retry racing the
        # first call): the store decides below, and the context is checked once this call has claimed it.
        context_size = await asyncio.to_thread(self._check_context, context_id, dockerfile, bool(client_token))
        build_id = "b-" + uuid.uuid4().hex[:16]
        now = time.time()
        claimed = False
        try:
            async with self.ctx.db.transaction() as conn:
                await conn.execute(
                    sa.insert(builds_t).values(
                        build_id=build_id,
                        status="QUEUED",
                        client_token=client_token,
                        context_size=context_size or 0,
                        created_at=now,
                        modified_at=now,
                        **values,
                    )
                )
                # Claimed inside the transaction: the row never exists without its context, nor the other way.
                await asyncio.to_thread(self._claim_context, context_id, build_id)
                claimed = True
                if context_size is None:
                    raw = self.root / build_id / "raw.tar"
                    size = await asyncio.to_thread(self._check_raw, raw, context_id, dockerfile)
                    await conn.execute(
                        sa.update(builds_t).where(builds_t.c.build_id == build_id).values(context_size=size)
                    )
        except IntegrityError:
            # The unique index on client_token: a call with the same token started its build meanwhile.
            earlier = await self._by_token(client_token) if client_token else None
            if earlier is None:
                raise
            return self._retried(earlier, client_token or "", values)
        except BaseException:
            if claimed:
                await asyncio.to_thread(self._unclaim_context, context_id, build_id)
            raise
        self.ctx.worker.wake(builds_t)
        return {"BuildId": build_id, "BuildStatus": "QUEUED"}

    async def _by_token(self, client_token: str) -> sa.Row[Any] | None:
        async with self.ctx.db.read() as conn:
            return (await conn.execute(sa.select(builds_t).where(builds_t.c.client_token == client_token))).first()

    @staticmethod
    def _retried(earlier: sa.Row[Any], client_token: str, values: dict[str, Any]) -> dict[str, Any]:
        """A repeated StartImageBuild (same ClientToken): the build it started if it asked for the same build,
        else an error naming what differs (as CreateImageVersion does with a reused token)."""
        spec = {k: v for k, v in earlier.spec.items() if k != "Resumes"}
        had = _asked(earlier.registry, earlier.repository, earlier.tag, earlier.image_name, spec)
        asked = _asked(values["registry"], values["repository"], values["tag"], values["image_name"], values["spec"])
        if "ContextId" not in had:  # builds recorded before contexts were remembered
            asked.pop("ContextId", None)
        differ = sorted(k for k in had.keys() | asked.keys() if had.get(k) != asked.get(k))
        if differ:
            raise ValidationException(
                f"ClientToken {client_token} was already used for build {earlier.build_id} with a different "
                f"{', '.join(differ)}"
            )
        return {"BuildId": earlier.build_id, "BuildStatus": earlier.status}

    def _check_context(self, context_id: str, dockerfile: str, may_be_taken: bool = False) -> int | None:
        """The context's size, after checking it is there, unused, and holds the Dockerfile; None when another
        call has just taken it and `may_be_taken`."""
        try:
            return self._check_raw(self._context_dir(context_id) / "raw.tar", context_id, dockerfile)
        except FileNotFoundError:
            used_by = self._used_by(context_id)
            if used_by is None:
                raise self._missing_context(context_id) from None
            if may_be_taken:
                return None
            raise self._already_used(context_id, used_by) from None

    @staticmethod
    def _check_raw(raw: Path, context_id: str, dockerfile: str) -> int:
        size = raw.stat().st_size
        if not context_has_file(raw, dockerfile):
            raise ValidationException(f"Dockerfile {dockerfile!r} is not in the build context {context_id}")
        return size

    async def _load(self, conn: Any, build_id: str) -> sa.Row[Any]:
        if not BUILD_ID.fullmatch(build_id):
            raise ValidationException(f"BuildId {build_id!r} is not a build id ({BUILD_ID_FORMAT})")
        row = (await conn.execute(sa.select(builds_t).where(builds_t.c.build_id == build_id))).first()
        if row is None:
            raise ResourceNotFound(f"No image build with the id {build_id} exists")
        return row

    def _summary(self, row: sa.Row[Any]) -> dict[str, Any]:
        ref = f"{row.registry}/{row.repository}"
        return {
            "BuildId": row.build_id,
            "BuildStatus": row.status,
            "ImageUri": f"{ref}:{row.tag}",
            "ImageDigest": row.digest,
            "PinnedImage": f"{ref}@{row.digest}" if row.digest else None,
            "ImageName": row.image_name,
            "ImageVersionArn": row.image_version_arn,
            "FailureReason": row.failure_reason,
            "CreationTime": row.created_at,
            "StartTime": row.started_at,
            "EndTime": row.ended_at,
            "LastModifiedTime": row.modified_at,
        }

    async def describe_image_build(self, build_id: str) -> dict[str, Any]:
        async with self.ctx.db.read() as conn:
            row = await self._load(conn, build_id)
            position = None
            if row.status == "QUEUED":
                position = (
                    await conn.execute(
                        sa.select(sa.func.count())
                        .select_from(builds_t)
                        .where(builds_t.c.status == "QUEUED", builds_t.c.id <= row.id)
                    )
                ).scalar_one()
        log = self.log_path(row.build_id)
        return {
            **self._summary(row),
            "Registry": row.registry,
            "Repository": row.repository,
            "Tag": row.tag,
            "FailedStep": row.failed_step,
            "StopRequested": row.stop_requested,
            "QueuePosition": position,
            "ContextSize": row.context_size,
            "ReusedBuildId": row.reused_from,
            "LogSize": log.stat().st_size if log.exists() else 0,
            **{k: v for k, v in row.spec.items() if k != "Resumes"},
        }

    async def list_image_builds(
        self,
        status_equals: str | None = None,
        repository_equals: str | None = None,
        image_name_equals: str | None = None,
        creation_time_after: float | None = None,
        creation_time_before: float | None = None,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        filters = {k: v for k, v in locals().items() if k not in ("self", "next_token", "max_results")}
        conds = time_filters(builds_t.c.created_at, builds_t.c.modified_at, filters)
        if status_equals:
            conds.append(builds_t.c.status == status_equals)
        if repository_equals:
            conds.append(builds_t.c.repository == repository_equals)
        if image_name_equals:
            conds.append(builds_t.c.image_name == image_name_equals)
        async with self.ctx.db.read() as conn:
            page = await fetch_page(
                conn,
                sa.select(builds_t).where(*conds),
                builds_t.c.created_at,
                builds_t.c.id,
                True,
                max_results or DEFAULT_PAGE,
                next_token,
                filters,
                "created_at",
            )
        return {"ImageBuilds": [self._summary(r) for r in page.rows], "NextToken": page.next_token}

    async def stop_image_build(self, build_id: str) -> dict[str, Any]:
        """Ask a build to stop. A queued build nobody is working on stops at once; a running one within
        about a second (its Engine build is cancelled); a finished one is left as it is."""
        now = time.time()
        async with self.ctx.db.transaction() as conn:
            row = await self._load(conn, build_id)
            status = row.status
            if status in ACTIVE:
                await conn.execute(
                    sa.update(builds_t)
                    .where(builds_t.c.id == row.id, builds_t.c.status.in_(ACTIVE))
                    .values(stop_requested=True, modified_at=now, next_attempt_at=None)
                )
                idle = sa.or_(builds_t.c.lease_until.is_(None), builds_t.c.lease_until < now)
                result = await conn.execute(
                    sa.update(builds_t)
                    .where(builds_t.c.id == row.id, builds_t.c.status == "QUEUED", idle)
                    .values(status="STOPPED", ended_at=now, failure_reason="Stopped on request before it started")
                )
                if result.rowcount == 1:
                    status = "STOPPED"
        if status == "STOPPED" and row.status == "QUEUED":
            await asyncio.to_thread(self._forget_context, row.build_id)
        elif status in ACTIVE:
            self.runner.request_stop(row.build_id)
            self.ctx.worker.wake(builds_t)
        return {"BuildId": row.build_id, "BuildStatus": status}

    def _forget_context(self, build_id: str) -> None:
        for name in ("raw.tar", "context.tar", CONTEXT_DIGEST):
            (self.root / build_id / name).unlink(missing_ok=True)
        blog = BuildLog(self.log_path(build_id), self.settings.log_limit)
        blog.write("status", s="STOPPED", m="Stopped on request before it started")
        blog.close()

    async def build_status(self, build_id: str) -> str:
        """The status alone, for the log stream (a cheap read, polled)."""
        async with self.ctx.db.read() as conn:
            return str((await self._load(conn, build_id)).status)
