"""Running one image build: admission in queue order, the build and push through the builder seam, the
log on disk, stop requests, resumption after a crash, and the final status (written only while this
worker's claim still holds the row)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from byoi.build.base import Builder, BuilderUnavailable, BuildFailed, BuildRequest, PushRequest
from byoi.build.context import filter_context
from byoi.build.logstore import BuildLog
from byoi.build.settings import BuildSettings
from byoi.errors import ByoiError, ResourceInUse
from byoi.jobs.worker import Claim, RetryLater
from byoi.registry.engine_auth import engine_auth
from byoi.registry.reference import DOCKER_HUB, DOCKER_HUB_KEY, image_registry
from byoi.services.build_reuse import CONTEXT_DIGEST, BuildReuse
from byoi.services.context import ServiceContext
from byoi.services.image_versions import ImageVersionService
from byoi.services.images import ImageService
from byoi.store.schema_builds import image_builds as builds_t

log = logging.getLogger(__name__)

ACTIVE = ("QUEUED", "BUILDING", "PUSHING")
RUNNING = ("BUILDING", "PUSHING")
QUEUE_POLL = 1.0  # seconds between admission attempts of a queued build
STOP_POLL = 1.0  # seconds between checks for a stop requested through another server process
DEFAULT_ROLE = "arn:aws:iam::{account}:role/byoi-build"
_NOISE = (" ---> ", "Removing intermediate container", "Successfully ")


def failure_reason(exc: BuildFailed, last_lines: list[str], where: str) -> str:
    """A short reason: the failing step and the builder's message, then the last lines of output."""
    if exc.phase == "push":
        head = f"Push to {where} failed: {exc.message}"
    elif exc.step:
        head = f"{exc.step} failed: {exc.message}"
    else:
        head = f"The Dockerfile could not be built: {exc.message}"
    tail = [ln for ln in last_lines if ln.strip() and not ln.startswith(_NOISE) and not ln.startswith("Step ")]
    if tail:
        head += " | last output: " + " / ".join(tail[-5:])
    return head if len(head) <= 1024 else head[:1021] + "..."


class BuildRunner:
    def __init__(
        self,
        ctx: ServiceContext,
        builder: Builder,
        images: ImageService,
        versions: ImageVersionService,
        settings: BuildSettings,
        root: Path,
    ) -> None:
        self.ctx = ctx
        self.builder = builder
        self.images = images
        self.versions = versions
        self.settings = settings
        self.root = root
        self._admission = asyncio.Lock()
        self._stops: dict[str, asyncio.Event] = {}
        self.reuse = BuildReuse(ctx, builder)

    def request_stop(self, build_id: str) -> None:
        """A stop recorded in the store; if this process runs the build, stop it now rather than at the next poll."""
        event = self._stops.get(build_id)
        if event is not None:
            event.set()

    # -- the task handler ----------------------------------------------------------------------

    async def run(self, claim: Claim) -> None:
        async with self.ctx.db.read() as conn:
            row = (await conn.execute(sa.select(builds_t).where(claim.owns(), builds_t.c.status.in_(ACTIVE)))).first()
        if row is None:
            return
        blog = BuildLog(self.root / row.build_id / "log.jsonl", self.settings.log_limit)
        try:
            if row.stop_requested:
                await self._settle(claim, blog, "STOPPED", failure_reason="Stopped on request before it started")
                return
            if row.status == "QUEUED":
                if not await self._admit(claim, row, blog):
                    raise RetryLater(QUEUE_POLL, f"build {row.build_id} waits for a build slot", routine=True)
            else:
                # Claimed again while BUILDING or PUSHING: the server that ran it stopped (its lease ran out).
                resumes = int(row.spec.get("Resumes", 0)) + 1
                if resumes > self.settings.resume_attempts:
                    await self._settle(
                        claim, blog, "FAILED",
                        failure_reason=f"The server running this build stopped {resumes} times; giving up",
                    )  # fmt: skip
                    return
                await self._update(claim, status="BUILDING", spec={**row.spec, "Resumes": resumes})
                blog.write("status", s="BUILDING", m=f"restarted after the server stopped (restart {resumes})")
            await self._execute(claim, row, blog)
        finally:
            blog.close()

    async def _admit(self, claim: Claim, row: Any, blog: BuildLog) -> bool:
        """Start `row` if a slot is free and no build queued before it is still waiting."""
        async with self._admission, self.ctx.db.transaction() as conn:
            running = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(builds_t).where(builds_t.c.status.in_(RUNNING))
                )
            ).scalar_one()
            earlier = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(builds_t)
                    .where(builds_t.c.status == "QUEUED", builds_t.c.id < row.id, builds_t.c.stop_requested.is_(False))
                )
            ).scalar_one()
            if running >= self.settings.concurrency or earlier:
                return False
            now = time.time()
            result = await conn.execute(
                sa.update(builds_t)
                .where(claim.owns(), builds_t.c.status == "QUEUED")
                .values(status="BUILDING", started_at=now, modified_at=now)
            )
            if result.rowcount != 1:
                return False
        blog.write("status", s="BUILDING")
        return True

    async def _execute(self, claim: Claim, row: Any, blog: BuildLog) -> None:
        stop = self._stops.setdefault(row.build_id, asyncio.Event())
        work = asyncio.create_task(self._steps(claim, row, blog))
        watcher = asyncio.create_task(self._watch_stop(row.id, stop))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()  # closes the Engine request: the Engine stops the build
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                watcher.result()  # the stop check itself failed (e.g. the store): a handler error, not a stop
                await self._settle(claim, blog, "STOPPED", failure_reason="Stopped on request")
                return
            try:
                status, values = work.result()
            except Exception as exc:  # a bug must end the build with a reason, not restart it forever
                log.exception("build %s failed unexpectedly", row.build_id)
                status, values = "FAILED", {"failure_reason": f"Internal error in byoi: {type(exc).__name__}: {exc}"}
            await self._settle(claim, blog, status, **values)
        finally:
            work.cancel()
            watcher.cancel()
            # Wait until the build task has ended: its Engine request is then closed (so the Engine stops the
            # build) before the row is released, retried or given up.
            await asyncio.gather(work, watcher, return_exceptions=True)
            self._stops.pop(row.build_id, None)

    async def _watch_stop(self, row_id: int, stop: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STOP_POLL)
                return
            async with self.ctx.db.read() as conn:
                wanted = (
                    await conn.execute(sa.select(builds_t.c.stop_requested).where(builds_t.c.id == row_id))
                ).scalar_one_or_none()
            if wanted:
                return

    async def _steps(self, claim: Claim, row: Any, blog: BuildLog) -> tuple[str, dict[str, Any]]:
        """Build and push (or tag the image of an earlier build with the same inputs), then register; return the
        final status and the values to record with it."""
        where = f"{row.registry}/{row.repository}:{row.tag}"
        values: dict[str, Any] = {}
        try:
            await self.builder.ping()
            facts = await self.reuse.read(row, self.root / row.build_id, blog)
            key = await self.reuse.key(row, self.root / row.build_id, facts) if facts else None
            reused = await self.reuse.retag(row, key, blog) if key and not row.spec.get("NoCache") else None
            if reused is not None:
                digest = reused.digest
                values["reused_from"] = reused.build_id
                blog.write("note", m=f"Tagged {where} as {row.registry}/{row.repository}@{digest}")
            else:
                pulls = self._pull_auths(facts.images if facts else [])
                digest = await self._build_and_push(claim, row, blog, where, pulls)
            values.update(digest=digest, inputs_digest=key)
            await self._update(claim, **values)
        except BuildFailed as exc:
            blog.flush_partial()
            return "FAILED", {
                "failure_reason": failure_reason(exc, list(blog.last_lines), where),
                "failed_step": exc.step[:512] if exc.step else None,
            }
        except BuilderUnavailable as exc:  # "Docker Engine is not reachable at <address>: <why>"
            return "FAILED", {"failure_reason": str(exc)[:1024]}
        if row.image_name:
            try:
                values["image_version_arn"] = await self._register(row, digest)
                blog.write("note", m=f"Registered {values['image_version_arn']}")
            except ByoiError as exc:
                reason = f"Pushed {row.registry}/{row.repository}@{digest} but could not register a version of "
                return "FAILED", {**values, "failure_reason": (reason + f"{row.image_name}: {exc.message}")[:1024]}
        return "SUCCEEDED", values

    async def _build_and_push(
        self, claim: Claim, row: Any, blog: BuildLog, where: str, pull_auths: dict[str, dict[str, str]]
    ) -> str:
        """Run the build on the builder and push its image; return the pushed manifest's digest."""
        spec, folder = row.spec, self.root / row.build_id
        context = folder / "context.tar"
        if not context.exists():
            summary = await asyncio.to_thread(filter_context, folder / "raw.tar", context, spec["Dockerfile"])
            excluded = f", {summary.excluded} excluded by .dockerignore" if summary.excluded else ""
            blog.write("note", m=f"Build context: {summary.files} files, {summary.size} bytes{excluded}")
        plain_http = any(r.host == row.registry and r.scheme == "http" for r in self.ctx.settings.registries)
        destination = PushRequest(
            "", f"{row.registry}/{row.repository}", row.tag, self._auth(row.registry), insecure=plain_http
        )
        request = BuildRequest(
            context_tar=context,
            dockerfile=spec["Dockerfile"],
            build_args=spec.get("BuildArgs") or {},
            target=spec.get("Target"),
            labels=spec.get("Labels") or {},
            platform=spec.get("Platform"),
            no_cache=bool(spec.get("NoCache")),
            build_id=row.build_id,
            push_to=destination,
            pull_auths=pull_auths,
        )
        image_id = await self.builder.build(request, blog.emit)
        await self._update(claim, status="PUSHING")
        blog.write("status", s="PUSHING", m=where)
        digest = await self.builder.push(replace(destination, image_id=image_id), blog.emit)
        blog.write("note", m=f"Pushed {where} as {row.registry}/{row.repository}@{digest}")
        return digest

    def _auth(self, host: str) -> dict[str, str] | None:
        return engine_auth(self.ctx.settings.registries, self.ctx.settings.docker_config, host)

    def _pull_auths(self, images: list[str]) -> dict[str, dict[str, str]]:
        """Credentials for the registries of the images the build pulls (`images`, as its Dockerfile names them;
        none when byoi could not read them), from the registries file, then the Docker config's `auths`: a FROM
        on a private registry is as buildable as a push to one. Only those registries': on Kubernetes they sit in
        the build's pod, within reach of its steps."""
        settings = self.ctx.settings
        found: dict[str, dict[str, str]] = {}
        for host in dict.fromkeys(image_registry(ref) for ref in images):
            for alias in DOCKER_HUB if host in DOCKER_HUB else (host,):
                auth = engine_auth(settings.registries, settings.docker_config, alias)
                if auth:
                    found[DOCKER_HUB_KEY if host in DOCKER_HUB else host] = auth
                    break
        return found

    async def _register(self, row: Any, digest: str) -> str:
        """Create the image if missing, then a version pinned to the pushed digest (idempotent on restart)."""
        role = row.spec.get("RoleArn") or DEFAULT_ROLE.format(account=self.ctx.settings.account_id)
        with contextlib.suppress(ResourceInUse):
            await self.images.create_image(image_name=row.image_name, role_arn=role)
        token = str(uuid.uuid5(uuid.NAMESPACE_URL, f"byoi-build:{row.build_id}"))
        result = await self.versions.create_image_version(
            image_name=row.image_name,
            base_image=f"{row.registry}/{row.repository}:{row.tag}@{digest}",
            client_token=token,
        )
        return str(result["ImageVersionArn"])

    async def give_up(self, claim: Claim, reason: str) -> None:
        """The handler failed `max_failures` times in a row with an unexpected error (see byoi.jobs.worker): FAILED,
        naming the error, instead of being tried for ever. Nothing of it runs on the Engine any more: the
        handler has returned, and `_execute` waits for the build's request to be closed before it does."""
        async with self.ctx.db.read() as conn:
            build_id = (
                await conn.execute(sa.select(builds_t.c.build_id).where(claim.owns(), builds_t.c.status.in_(ACTIVE)))
            ).scalar_one_or_none()
        if build_id is None:
            return
        blog = BuildLog(self.root / build_id / "log.jsonl", self.settings.log_limit)
        try:
            await self._settle(claim, blog, "FAILED", failure_reason=f"Internal error while building: {reason}"[:1024])
        finally:
            blog.close()

    # -- writing outcomes ----------------------------------------------------------------------

    async def _update(self, claim: Claim, **values: Any) -> None:
        async with self.ctx.db.transaction() as conn:
            await conn.execute(
                sa.update(builds_t)
                .where(claim.owns(), builds_t.c.status.in_(ACTIVE))
                .values(modified_at=time.time(), **values)
            )

    async def _settle(self, claim: Claim, blog: BuildLog, status: str, **values: Any) -> None:
        now = time.time()
        async with self.ctx.db.transaction() as conn:
            result = await conn.execute(
                sa.update(builds_t)
                .where(claim.owns(), builds_t.c.status.in_(ACTIVE))
                .values(status=status, ended_at=now, modified_at=now, **values)
                .returning(builds_t.c.build_id)
            )
            build_id = result.scalar_one_or_none()
            if build_id is not None:
                # A slot is free: the queued builds are due now, not at their next QUEUE_POLL.
                await conn.execute(
                    sa.update(builds_t).where(builds_t.c.status == "QUEUED").values(next_attempt_at=None)
                )
        if build_id is None:
            return  # another worker took the row over; it writes the outcome
        blog.write("status", s=status, m=values.get("failure_reason"))
        folder = self.root / build_id
        for name in ("raw.tar", "context.tar", CONTEXT_DIGEST):
            (folder / name).unlink(missing_ok=True)
        self.ctx.worker.wake(builds_t)  # the next queued build starts now
