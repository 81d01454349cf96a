"""The background side of apps: launching a session container (`Pending` -> `InService` | `Failed`), removing
it (`Deleting` -> `Deleted`), and the reconciler that compares records with the containers on the engine.

A launch is a worker task on the app's row, so it holds the row's lease while it runs, and a server that
dies mid-launch leaves the row to the next worker once the lease expires: that worker adopts the container
if it is running, or removes it and starts over; after `launch_attempts` interrupted launches the app is
`Failed`, and so it is after as many unexpected errors in a row (the worker's give-up, naming the error).
Each re-create of an app name is a new generation with its own container name, so a container of an earlier
generation is never taken for the current one.

The reconciler runs every `reconcile_seconds`: an `InService` app whose container stopped or vanished
becomes `Failed` (with the exit code and the last log lines), and containers with this installation's labels
that no live record claims (orphans) are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import sqlalchemy as sa

from byoi.jobs.worker import Claim, RetryLater, Task
from byoi.registry.engine_auth import engine_auth
from byoi.runtime.base import GONE, Endpoint, RuntimeFailure, SessionRuntime, SessionState, Unreachable
from byoi.runtime.settings import RuntimeSettings
from byoi.runtime.spec import PullProgress, SessionSpec
from byoi.services import session_files as files
from byoi.services.context import ServiceContext
from byoi.store.schema_apps import apps
from byoi.store.schema_domains import domains, user_profiles

log = logging.getLogger(__name__)
RSESSION_GATEWAY = "RSessionGateway"
LOG_LINES = 30
# "Does RStudio answer" probes: FAST_PROBE apart for the first FAST_WINDOW seconds after the start (a probe
# that finds no socket is one stat, one that finds no port a refused connect: well under 1 ms), then doubling up
# to POLL, so a session that is slow to answer (a busy host, 100 launches at once) is not probed 10 times a second.
FAST_PROBE = 0.02
FAST_WINDOW = 3.0
POLL = 0.25
STATE_CHECK = 1.0  # seconds between checks that the container still runs while RStudio does not answer
MAX_REASON = 1024
IMAGE_FILES = 64  # files of pinned images remembered (Renviron.site), at most


class LaunchFailed(Exception):
    pass


class Aborted(Exception):
    """The app stopped being this launch's to finish (deleted, or re-created) while it ran."""


def failure_with_logs(head: str, lines: list[str]) -> str:
    """A FailureReason: the head, then as many of the last log lines as fit in 1024 characters."""
    if not lines:
        return head[:MAX_REASON]
    head += " Last log lines: "
    kept: list[str] = []
    for line in reversed(lines):
        if len(head) + sum(len(k) + 3 for k in kept) + len(line) + 3 > MAX_REASON:
            break
        kept.insert(0, line.strip())
    return (head + " | ".join(kept))[:MAX_REASON]


def registry_auth(ctx: ServiceContext, host: str) -> dict[str, str] | None:
    """The credentials byoi has for a registry, in the form the engine's X-Registry-Auth wants."""
    return engine_auth(ctx.settings.registries, ctx.settings.docker_config, host)


class Launcher:
    def __init__(self, ctx: ServiceContext, runtime: SessionRuntime, settings: RuntimeSettings) -> None:
        self.ctx = ctx
        self.runtime = runtime
        self.settings = settings
        self._loop: asyncio.Task[None] | None = None
        # What this process's launches pulled, by app row: kept in every later progress record, so the bytes
        # pulled stay readable after the (often brief) pulling phase.
        self._pulled: dict[int, dict[str, int]] = {}
        self._image_files: dict[tuple[str, str], bytes | None] = {}  # (pinned image, path) -> content (None: absent)

    @property
    def installation(self) -> str:
        """The installation's id, from the store (shared by every replica), on every container's name and labels."""
        if not self.ctx.installation:
            raise RuntimeError("the installation id is not read from the store yet (services.installation)")
        return self.ctx.installation

    @property
    def homes_root(self) -> Path:
        """BYOI_SESSION_HOMES_ROOT, else `<data dir>/homes`: replicas given one root give a user one home."""
        return self.settings.homes(Path(self.ctx.settings.data_dir))

    def tasks(self) -> list[Task]:
        return [
            # An unexpected error (a bug) ends the app Failed with it, as often as an interrupted launch is tried:
            # every try is a claim, so one more would end it Failed as "interrupted" without naming the error.
            Task(
                "launch-app",
                apps,
                ("Pending",),
                self._launch,
                concurrency=self.settings.launch_concurrency,
                give_up=self._give_up_launching,
                max_failures=self.settings.launch_attempts,
            ),
            # No give-up: AppStatus has no delete-failed state, and Failed means the container is gone, which
            # is not known here. The row stays Deleting and is retried (at most every few minutes) until the
            # container can be removed; DescribeApp and the log say why meanwhile.
            Task("delete-app", apps, ("Deleting",), self._delete),
        ]

    def name_of(self, row: Any) -> str:
        return files.container_name(self.installation, row.session_id, row.generation)

    # -- shared row helpers -----------------------------------------------------------------------

    async def _load(self, claim: Claim, status: str) -> Any:
        async with self.ctx.db.read() as conn:
            return (
                await conn.execute(
                    sa.select(apps, domains.c.domain_id, user_profiles.c.home_uid)
                    .join(domains, domains.c.id == apps.c.domain_pk)
                    .outerjoin(user_profiles, user_profiles.c.id == apps.c.profile_pk)
                    .where(claim.owns(), apps.c.status == status)
                )
            ).first()

    async def _update(self, claim: Claim, row: Any, guard: str = "Pending", **values: Any) -> bool:
        """Write to the row if this claim still holds it in status `guard` and generation; False otherwise."""
        if "status" in values:
            values["modified_at"] = time.time()
        async with self.ctx.db.transaction() as conn:
            result = await conn.execute(
                sa.update(apps)
                .where(claim.owns(), apps.c.status == guard, apps.c.generation == row.generation)
                .values(**values)
            )
        return bool(result.rowcount)

    async def _progress(
        self, claim: Claim, row: Any, phase: str, message: str, backend: dict[str, Any] | None = None, **extra: Any
    ) -> None:
        """Record the launch's phase (and the session's `backend` document with it, in the same write)."""
        progress = {
            "Phase": phase,
            "Message": message,
            "UpdatedAt": time.time(),
            **self._pulled.get(row.id, {}),
            **extra,
        }
        values: dict[str, Any] = (
            {"progress": progress} if backend is None else {"progress": progress, "backend": backend}
        )
        if not await self._update(claim, row, **values):
            raise Aborted()

    # -- launch ---------------------------------------------------------------------------------

    async def _launch(self, claim: Claim) -> None:
        row = await self._load(claim, "Pending")
        if row is None:
            return
        try:
            await self._launch_row(claim, row)
        finally:
            self._pulled.pop(row.id, None)

    async def _launch_row(self, claim: Claim, row: Any) -> None:
        if row.app_type != RSESSION_GATEWAY:  # RStudioServerPro: a record only (the launcher page)
            await self._update(claim, row, status="InService", progress={"Phase": "ready", "UpdatedAt": time.time()})
            return
        if claim.attempts > self.settings.launch_attempts:
            await self._fail(claim, row, f"The launch was interrupted {claim.attempts - 1} times (the server stopped)")
            return
        name = self.name_of(row)
        try:
            state = await self.runtime.state(name)
            if state.running:
                await self._progress(claim, row, "waiting", "Adopted the running container after a restart")
            else:
                if not state.gone:  # created or exited by an interrupted launch: start over
                    await self.runtime.remove(name, 0)
                await self._create_and_start(claim, row, name)
            endpoint = await self.runtime.endpoint(name)
            if endpoint is None:
                state = await self.runtime.state(name)
                if not state.running:
                    raise LaunchFailed(await self._exited(name, state))
                raise LaunchFailed(f"The {self.runtime.name} runtime reports no endpoint for the session")
            backend = {"Backend": self.runtime.name, "Name": name, "Endpoint": endpoint.to_json()}
            shown = endpoint.display()
            await self._progress(claim, row, "waiting", "Waiting for RStudio to answer", backend, Endpoint=shown)
            await self._wait_until_answering(claim, row, name, endpoint)
        except Aborted:
            return
        except (LaunchFailed, RuntimeFailure, PermissionError) as exc:
            # Unreachable says "Docker Engine is not reachable at <address>: …" itself; other refusals get the prefix.
            engine_refused = isinstance(exc, RuntimeFailure) and not isinstance(exc, Unreachable)
            backend_name = "Docker Engine" if self.runtime.name == "docker" else "Kubernetes"
            reason = f"{backend_name}: {exc}" if engine_refused else str(exc)
            await self._fail(claim, row, reason)
            return
        except (OSError, httpx.TransportError) as exc:
            raise RetryLater(2.0, f"launch of {name} interrupted: {exc}") from exc
        now = time.time()
        done = await self._update(
            claim,
            row,
            status="InService",
            failure_reason=None,
            last_health_check=now,
            progress={
                "Phase": "ready",
                "Message": "RStudio answers",
                "UpdatedAt": now,
                "Endpoint": shown,
                **self._pulled.get(row.id, {}),
            },
        )
        if done:
            log.info("session %s is InService at %s", row.session_id, shown)

    async def _create_and_start(self, claim: Claim, row: Any, name: str) -> None:
        launch = row.spec["Launch"]
        await self._pull(claim, row, launch["ContainerImage"])
        await self._progress(claim, row, "creating", "Creating the container")
        home = files.home_dir(self.homes_root, row.domain_id, row.profile_name, row.home_uid)
        if self.runtime.name == "docker":  # on Kubernetes the home is the profile's claim, made by create()
            await asyncio.to_thread(files.ensure_home, home, self.settings.uid, self.settings.gid)
        renviron = f"{launch['RHome'].rstrip('/')}/etc/Renviron.site"
        original = await self._image_file(launch["ContainerImage"], renviron)
        metadata = {
            "AppType": row.app_type,
            "DomainId": row.domain_id,
            "UserProfileName": row.profile_name,
            "ResourceArn": launch["Env"].get("BYOI_APP_ARN"),
            "ResourceName": row.app_name,
            "AppImageVersion": launch.get("ImageVersionArn"),
        }
        session_files = files.session_files(launch["RHome"], original, launch["Env"], metadata)
        await self.runtime.create(self.session_spec(row, name, str(home), session_files))
        await self._progress(claim, row, "starting", "Starting RStudio Server")
        await self.runtime.start(name)
        if (await self.runtime.state(name)).gone:
            raise LaunchFailed("The container disappeared right after it started")

    def session_spec(self, row: Any, name: str, home: str, session_files: dict[str, bytes]) -> SessionSpec:
        launch = row.spec["Launch"]
        arn = launch["Env"].get("BYOI_APP_ARN", "")
        return SessionSpec(
            name=name,
            image=launch["ContainerImage"],
            uid=self.settings.uid,
            gid=self.settings.gid,
            user_name=launch.get("UserName") or self.settings.user_name,
            home_host_path=home,
            home_mount_path=self.settings.home_mount,
            root_path=files.root_path(row.session_id),
            nano_cpus=int(launch["Vcpu"] * 1e9),
            memory_bytes=int(launch["MemoryBytes"]),
            network=self.settings.network,
            env=dict(launch["Env"]),
            labels=files.labels(
                self.installation, arn, row.session_id, row.generation, row.domain_id, row.profile_name
            ),
            pids_limit=self.settings.pids_limit,
            listen_socket=bool(launch.get("ListenSocket", True)),
            instance_type=str(((row.spec or {}).get("ResourceSpec") or {}).get("InstanceType") or ""),
            files=session_files,
        )

    async def _pull(self, claim: Claim, row: Any, image: str) -> None:
        """Fetch the image unless the runtime has it, with the bytes pulled in the progress record."""

        async def report(p: PullProgress) -> None:
            await self._progress(
                claim,
                row,
                "pulling",
                f"Pulling {image}: {p.layers_done}/{p.layers} layers",
                BytesDone=p.done,
                BytesTotal=p.total,
                Layers=p.layers,
                LayersDone=p.layers_done,
            )
            self._pulled[row.id] = {
                "BytesDone": p.done,
                "BytesTotal": p.total,
                "Layers": p.layers,
                "LayersDone": p.layers_done,
            }

        registry = image.split("/", 1)[0]
        try:
            pulled = await self.runtime.ensure_image(image, registry_auth(self.ctx, registry), report)
        except Unreachable:
            raise  # the Engine itself, not the pull: said as such
        except RuntimeFailure as exc:
            raise LaunchFailed(f"Cannot pull {image}: {exc}") from None
        if not pulled:
            self._pulled.pop(row.id, None)  # nothing was fetched: no bytes to report

    async def _image_file(self, image: str, path: str) -> bytes | None:
        """A file of `image` (None when it has none), read once per pinned image: an image pinned by digest
        never changes, and the Engine mounts a container's filesystem to read it (0.2 to 0.7 s here)."""
        key = (image, path)
        if key in self._image_files:
            return self._image_files[key]
        data = await self.runtime.read_image_file(image, path)
        if "@sha256:" in image:
            if len(self._image_files) >= IMAGE_FILES:
                self._image_files.pop(next(iter(self._image_files)))  # the oldest
            self._image_files[key] = data
        return data

    async def _wait_until_answering(self, claim: Claim, row: Any, name: str, endpoint: Endpoint) -> None:
        """Probe `endpoint` until RStudio answers, and every STATE_CHECK seconds check that the container still
        runs. The probes follow `probe_delay`: an answer is seen at most FAST_PROBE after RStudio can give it in
        the first FAST_WINDOW seconds, POLL after that (a probe that connects waits for the answer itself)."""
        root = files.root_path(row.session_id)
        started = time.monotonic()
        deadline = started + self.settings.start_timeout
        next_check = started + STATE_CHECK
        delay = 0.0
        while True:
            if await self.runtime.answers(name, root, endpoint=endpoint):
                return  # any HTTP answer means rserver serves
            now = time.monotonic()
            if now >= next_check:
                next_check = now + STATE_CHECK
                state = await self.runtime.state(name)
                if not state.running:
                    raise LaunchFailed(await self._exited(name, state))
                await self._progress(claim, row, "waiting", "Waiting for RStudio to answer")
            if now >= deadline:
                raise LaunchFailed(
                    failure_with_logs(
                        f"RStudio Server did not answer within {self.settings.start_timeout:g} seconds.",
                        await self.runtime.logs_tail(name, LOG_LINES),
                    )
                )
            delay = probe_delay(now - started, delay)
            await asyncio.sleep(delay)

    async def _exited(self, name: str, state: SessionState) -> str:
        head = f"RStudio Server exited with code {state.exit_code if state.exit_code is not None else 'unknown'}"
        head += f" before it answered ({state.error})." if state.error else " before it answered."
        return failure_with_logs(head, await self.runtime.logs_tail(name, LOG_LINES))

    async def _fail(self, claim: Claim, row: Any, reason: str) -> None:
        """Failed, with the reason and the last log lines kept; the container is removed."""
        name = self.name_of(row)
        lines: list[str] = []
        with contextlib.suppress(RuntimeFailure, OSError):
            lines = await self.runtime.logs_tail(name, LOG_LINES)
        with contextlib.suppress(RuntimeFailure, OSError):  # apart: logs that cannot be read still remove it
            await self.runtime.remove(name, 0)
        await self._update(
            claim,
            row,
            status="Failed",
            failure_reason=reason[:MAX_REASON],
            progress={"Phase": "failed", "Message": reason[:MAX_REASON], "UpdatedAt": time.time()},
            backend={**(row.backend or {}), "LastLogLines": lines},
        )
        log.warning("session %s failed: %s", row.session_id, reason)

    async def _give_up_launching(self, claim: Claim, reason: str) -> None:
        """The launch failed `max_failures` times in a row with an unexpected error: Failed, naming it, with the
        container removed first (as `_fail` does), so the app is never Pending for ever."""
        row = await self._load(claim, "Pending")
        if row is not None:
            await self._fail(claim, row, f"Internal error while launching: {reason}")

    # -- delete ---------------------------------------------------------------------------------

    async def _delete(self, claim: Claim) -> None:
        row = await self._load(claim, "Deleting")
        if row is None:
            return
        lines: list[str] = []
        if row.app_type == RSESSION_GATEWAY:
            name = self.name_of(row)
            try:
                lines = await self.runtime.logs_tail(name, LOG_LINES)
                await self.runtime.remove(name, self.settings.stop_timeout)
            except (RuntimeFailure, OSError) as exc:
                # An Engine that does not answer is logged once by the Engine client, not at every retry.
                quiet = isinstance(exc, Unreachable)
                raise RetryLater(5.0, f"cannot remove container {name}: {exc}", routine=quiet) from exc
        await self._update(
            claim,
            row,
            guard="Deleting",
            status="Deleted",
            progress={"Phase": "deleted", "Message": "Stopped and removed", "UpdatedAt": time.time()},
            backend={**(row.backend or {}), "LastLogLines": lines} if lines else row.backend,
        )

    # -- logs -----------------------------------------------------------------------------------

    async def logs(self, row: Any, lines: int) -> tuple[list[str], str]:
        if row.app_type == RSESSION_GATEWAY and row.status in ("Pending", "InService", "Deleting"):
            with contextlib.suppress(RuntimeFailure, OSError):
                found = await self.runtime.logs_tail(self.name_of(row), lines)
                if found:
                    return found, "container"
        return list((row.backend or {}).get("LastLogLines") or [])[-lines:], "saved"

    # -- the reconciler -------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.create_task(self._reconcile_forever(), name="byoi-sessions")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Unreachable as exc:  # logged once when the Engine goes away and once when it is back
                log.debug("cannot check sessions: %s", exc)
            except RuntimeFailure as exc:
                log.warning("cannot check sessions: %s", exc)
            except Exception:  # keep reconciling whatever one pass hit
                log.exception("session reconciler pass failed")
            await asyncio.sleep(self.settings.reconcile_seconds)

    async def reconcile(self) -> None:
        started = time.time()
        async with self.ctx.db.read() as conn:
            rows = list(
                await conn.execute(
                    sa.select(apps).where(
                        apps.c.app_type == RSESSION_GATEWAY, apps.c.status.in_(("Pending", "InService", "Deleting"))
                    )
                )
            )
        # Rows first, then containers: a container created after the rows were read is never an orphan here.
        managed = await self.runtime.list_managed({files.INSTALLATION: self.installation})
        by_name = {m.name: m for m in managed}
        claimed = {self.name_of(r) for r in rows}
        healthy: list[int] = []
        for row in rows:
            if row.status != "InService":
                continue
            found = by_name.get(self.name_of(row))
            if found is not None and found.running:
                healthy.append(row.id)
            else:
                await self._lost(row, found)
        if healthy:
            async with self.ctx.db.transaction() as conn:
                await conn.execute(
                    sa.update(apps)
                    .where(apps.c.id.in_(healthy), apps.c.status == "InService")
                    .values(last_health_check=time.time())
                )
        for name, m in by_name.items():
            if name not in claimed and m.created_at < started - 2:
                log.warning("removing orphan session container %s (no live app claims it)", name)
                with contextlib.suppress(RuntimeFailure, OSError):
                    await self.runtime.remove(name, self.settings.stop_timeout)

    async def _lost(self, row: Any, found: Any) -> None:
        name = self.name_of(row)
        state = GONE if found is None else await self.runtime.state(name)
        # Not listed, removed between the listing and the state read, or being removed (docker rm -f): gone.
        if state.gone:
            reason, lines = "The session's container is gone: it was removed outside byoi.", []
        else:
            lines = await self.runtime.logs_tail(name, LOG_LINES)
            reason = failure_with_logs(
                f"RStudio Server stopped with {state.describe()} at {state.finished_at or 'an unknown time'}.",
                lines,
            )
            # Removed before the app is marked Failed, so Failed always means the container is gone (as after
            # _fail and _delete). Safe even if the guarded update below loses: the name carries the generation,
            # and a concurrent DeleteApp removes the same container anyway.
            with contextlib.suppress(RuntimeFailure, OSError):
                await self.runtime.remove(name, 0)
        async with self.ctx.db.transaction() as conn:
            result = await conn.execute(
                sa.update(apps)
                .where(apps.c.id == row.id, apps.c.status == "InService", apps.c.generation == row.generation)
                .values(
                    status="Failed",
                    failure_reason=reason[:MAX_REASON],
                    modified_at=time.time(),
                    progress={"Phase": "failed", "Message": reason[:MAX_REASON], "UpdatedAt": time.time()},
                    backend={**(row.backend or {}), "LastLogLines": lines},
                )
            )
        if result.rowcount:
            log.warning("session %s failed: %s", row.session_id, reason)

    async def remove_domain_homes(self, domain: Any) -> None:
        """Called after a domain is deleted: its homes go only if its RetentionPolicy says Delete."""
        policy = (domain.spec.get("RetentionPolicy") or {}).get("HomeEfsFileSystem", "Retain")
        if policy == "Delete":
            remove = getattr(self.runtime, "remove_domain_homes", None)  # Kubernetes: the domain's claims
            if remove is not None:
                await remove(domain.domain_id, installation=self.installation)
            else:
                await asyncio.to_thread(files.remove_domain_homes, self.homes_root, domain.domain_id)


def probe_delay(elapsed: float, previous: float) -> float:
    """Seconds until the next probe, `elapsed` seconds into the wait, the last delay having been `previous`:
    FAST_PROBE within FAST_WINDOW, then twice the last delay, at most POLL."""
    if elapsed < FAST_WINDOW:
        return FAST_PROBE
    return min(max(previous, FAST_PROBE) * 2, POLL)
