"""Give-up outcomes of the background work for user-visible resources, on the real services in-process.

Each test runs the real store, worker and services (a real registry where one is needed); the failure is
injected (a method below or beside the handler that raises), standing for any bug nobody foresaw. The
handler fails a few times in a row, the task's give-up hook moves the row to its failed state with a reason
that names the error, and the normal operations still work on the row afterwards. The worker's back-off is
shortened so the tests take well under a second each.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from byoi.app import build_context
from byoi.config import RegistryConfig, Settings
from byoi.services import installation
from byoi.services.context import ServiceContext
from byoi.store.db import migrate

ROLE = "arn:aws:iam::000000000000:role/byoi-test"


def start(ctx: ServiceContext, *services: Any) -> None:
    """Register the services' tasks on the context's worker and start it."""
    for service in services:
        for task in service.tasks():
            ctx.worker.register(task)
    ctx.worker.start()


async def new_context(tmp_path: Path, registry: str) -> ServiceContext:
    ctx = build_context(Settings(data_dir=tmp_path, registries=(RegistryConfig(f"http://{registry}"),)))
    await asyncio.to_thread(migrate, ctx.db.url)
    ctx.installation = await installation.installation_id(ctx.db, tmp_path)  # as the composition root does
    ctx.worker.poll_seconds = 0.02
    ctx.worker.failure_delay = 0.01  # the default is 5 s, doubling, for tasks that do not set their own
    return ctx


async def close(ctx: ServiceContext) -> None:
    await ctx.worker.stop()
    await ctx.registry.close()
    await ctx.db.close()


async def until(
    read: Callable[[], Awaitable[dict[str, Any]]], done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    for _ in range(400):
        found = await read()
        if done(found):
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"still not there: {found}")


# -- run-image-build ---------------------------------------------------------------------------------


class HangingBuilder:
    """TEST DOUBLE for the builder seam (DockerBuilder): its builds run until they are cancelled, which is how
    byoi stops an Engine build (the Builder protocol: cancelling `build()` stops it), and it counts both, so
    the test sees that no build is left running when the runner gives up. With `hang` off a build succeeds."""

    name = "test-double"

    def __init__(self) -> None:
        self.hang = True
        self.started = 0
        self.cancelled = 0
        self.running = asyncio.Event()  # set while a build runs

    async def ping(self) -> None:
        return None

    async def base_image_ids(self, refs: Any, platform: Any = None) -> None:
        return None  # never reused: every build runs

    async def build(self, request: Any, emit: Any) -> str:
        self.started += 1
        if not self.hang:
            return "sha256:" + "1" * 64
        self.running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            self.running.clear()
            raise
        raise AssertionError("unreachable")

    async def push(self, request: Any, emit: Any) -> str:
        return "sha256:" + "2" * 64

    async def close(self) -> None:
        return None


async def upload(builds: Any, files: dict[str, bytes]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue()

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    result = await builds.accept_context(chunks(), len(body), hashlib.sha256(body).hexdigest())
    return str(result["ContextId"])


async def test_a_build_whose_runner_keeps_failing_ends_failed_and_its_build_is_stopped(tmp_path, registry, monkeypatch):
    from byoi.build.settings import BuildSettings
    from byoi.services.build_runner import BuildRunner
    from byoi.services.builds import BuildService
    from byoi.services.image_versions import ImageVersionService
    from byoi.services.images import ImageService

    ctx = await new_context(tmp_path, registry)
    builder = HangingBuilder()
    builds = BuildService(ctx, builder, ImageService(ctx), ImageVersionService(ctx), BuildSettings(resume_attempts=2))

    async def broken_stop_check(self: Any, row_id: int, stop: Any) -> None:
        await builder.running.wait()  # fails while the Engine builds
        raise RuntimeError("stop check with a bug")

    monkeypatch.setattr(BuildRunner, "_watch_stop", broken_stop_check)
    start(ctx, builds)
    try:
        dockerfile = {"Dockerfile": b"FROM scratch\nCOPY a /a\n", "a": b"a"}
        build_id = (await builds.start_image_build(await upload(builds, dockerfile), "giveup/app"))["BuildId"]
        d = await until(lambda: builds.describe_image_build(build_id), lambda d: d["BuildStatus"] == "FAILED")
        # The real error, not "stopped on request" (what a failing stop check used to mean) nor "the server
        # running this build stopped" (what the resumes after each failure would say one try later).
        assert d["FailureReason"] == (
            "Internal error while building: RuntimeError: stop check with a bug (failed 3 times; see the server log)"
        )
        assert d["EndTime"] is not None and d["EndTime"] >= d["StartTime"]
        assert builder.started == builder.cancelled == 3  # each try's build was stopped before the row went on
        assert not (tmp_path / "builds" / build_id / "raw.tar").exists()

        monkeypatch.undo()
        builder.hang = False
        build_id = (await builds.start_image_build(await upload(builds, dockerfile), "giveup/app"))["BuildId"]
        d = await until(lambda: builds.describe_image_build(build_id), lambda d: d["BuildStatus"] != "QUEUED")
        d = await until(lambda: builds.describe_image_build(build_id), lambda d: d["BuildStatus"] == "SUCCEEDED")
        assert d.get("FailureReason") is None
    finally:
        await close(ctx)


# -- launch-app --------------------------------------------------------------------------------------


async def created_version(images: Any, versions: Any, pusher: Any, registry: str, image: str) -> None:
    pusher.image(f"giveup/{image}", "v1")
    await images.create_image(image, ROLE)
    await versions.create_image_version(image, f"{registry}/giveup/{image}:v1", "token-1")
    await until(lambda: versions.describe_image_version(image, 1), lambda d: d["ImageVersionStatus"] != "CREATING")


async def test_a_launch_that_keeps_failing_ends_failed_with_its_container_removed(
    tmp_path, registry, pusher, monkeypatch
):
    """The session runtime is the real one (Docker Engine, when it runs here); its `inspect` is made to raise
    something no launch expects, and `remove` is watched (and still called through)."""
    from byoi.runtime.docker import DockerRuntime, RuntimeFailure
    from byoi.runtime.instance_types import InstanceTypes
    from byoi.runtime.settings import RuntimeSettings
    from byoi.services.app_image_configs import AppImageConfigService
    from byoi.services.apps import AppService
    from byoi.services.domains import DomainService
    from byoi.services.image_versions import ImageVersionService
    from byoi.services.images import ImageService
    from byoi.services.user_profiles import UserProfileService

    ctx = await new_context(tmp_path, registry)
    images, versions = ImageService(ctx), ImageVersionService(ctx)
    domains, profiles, configs = DomainService(ctx), UserProfileService(ctx), AppImageConfigService(ctx)
    runtime = DockerRuntime(socket_root=tmp_path / "sockets")
    apps = AppService(ctx, runtime, RuntimeSettings(launch_attempts=3), InstanceTypes.load(None), domains, profiles)
    failure: list[Exception] = [RuntimeError("inspect with a bug")]
    removed: list[str] = []
    real_remove = runtime.remove

    async def broken_state(name: str) -> Any:
        raise failure[0]

    async def watched_remove(name: str, stop_timeout: int = 10) -> None:
        removed.append(name)
        await real_remove(name, stop_timeout)

    monkeypatch.setattr(runtime, "state", broken_state)
    monkeypatch.setattr(runtime, "remove", watched_remove)
    start(ctx, images, versions, domains, profiles, apps)
    try:
        await created_version(images, versions, pusher, registry, "giveup-app")
        await configs.create_app_image_config("giveup-config")
        domain_id = (
            await domains.create_domain(
                "giveup",
                "IAM",
                {
                    "ExecutionRole": ROLE,
                    "RSessionAppSettings": {
                        "CustomImages": [{"ImageName": "giveup-app", "AppImageConfigName": "giveup-config"}]
                    },
                },
                domain_settings={"RStudioServerProDomainSettings": {"DomainExecutionRoleArn": ROLE}},
            )
        )["DomainId"]
        await profiles.create_user_profile(domain_id, "alice")
        app = (domain_id, "RSessionGateway", "rs")
        spec = {"SageMakerImageArn": ctx.arns.image("giveup-app")}

        async def describe() -> dict[str, Any]:
            return await apps.describe_app(*app, user_profile_name="alice")

        await apps.create_app(*app, user_profile_name="alice", resource_spec=spec)
        d = await until(describe, lambda d: d["Status"] != "Pending")
        assert d["Status"] == "Failed"
        assert d["FailureReason"] == (
            "Internal error while launching: RuntimeError: inspect with a bug (failed 3 times; see the server log)"
        )
        assert len(removed) == 1  # by the give-up: a container the launch may have left is gone
        # Re-created, the app is launched again; an Engine refusal now is the launch's ordinary failure.
        failure[0] = RuntimeFailure("the engine refused")
        await apps.create_app(*app, user_profile_name="alice", resource_spec=spec)
        d = await until(describe, lambda d: d["Status"] != "Pending")
        assert (d["Status"], d["FailureReason"]) == ("Failed", "Docker Engine: the engine refused")
        assert len(removed) == 2 and removed[0] != removed[1]  # each generation has its own container
    finally:
        await close(ctx)
        await runtime.close()


# -- settle-domain, delete-domain, settle-user-profile, delete-user-profile ---------------------------


async def test_domains_and_profiles_whose_work_keeps_failing_end_in_the_models_failed_states(
    tmp_path, registry, monkeypatch
):
    """Settling is done in the request and only left to the task by a crash: the inline settle is switched off
    (standing for that crash) and the task's handler made to raise. Deletion fails on a tag clean-up that
    raises. Each ends in the model's failed state with the error, and Update / Delete work again from it."""
    import byoi.services.domains as domains_module
    import byoi.services.user_profiles as profiles_module
    from byoi.services.domains import DomainService
    from byoi.services.user_profiles import UserProfileService

    ctx = await new_context(tmp_path, registry)
    domains, profiles = DomainService(ctx), UserProfileService(ctx)

    async def crashed(pk: int) -> None:
        return None

    async def broken_settle(claim: Any) -> None:
        raise RuntimeError("settle with a bug")

    def broken_cleanup(*_args: Any) -> None:
        raise RuntimeError("tag cleanup with a bug")

    for service in (domains, profiles):
        monkeypatch.setattr(service, "settle", crashed)
        monkeypatch.setattr(service, "_settle", broken_settle)
    start(ctx, domains, profiles)  # the settle tasks keep the broken handlers from here on
    try:
        domain_id = (await domains.create_domain("giveup", "IAM", {"ExecutionRole": ROLE}))["DomainId"]

        async def domain() -> dict[str, Any]:
            return await domains.describe_domain(domain_id)

        async def profile() -> dict[str, Any]:
            return await profiles.describe_user_profile(domain_id, "alice")

        def settled(d: dict[str, Any]) -> bool:
            return d["Status"] not in ("Pending", "Updating", "Deleting")

        want = "RuntimeError: settle with a bug (failed 5 times; see the server log)"
        d = await until(domain, settled)
        assert (d["Status"], d["FailureReason"]) == ("Failed", f"Internal error while settling the domain: {want}")
        await domains.update_domain(domain_id, default_user_settings={"ExecutionRole": ROLE + "-2"})
        d = await until(domain, settled)
        assert (d["Status"], d["FailureReason"]) == (
            "Update_Failed",
            f"Internal error while settling the domain: {want}",
        )
        await profiles.create_user_profile(domain_id, "alice")
        p = await until(profile, settled)
        assert (p["Status"], p["FailureReason"]) == (
            "Failed",
            f"Internal error while settling the user profile: {want}",
        )
        await profiles.update_user_profile(domain_id, "alice", user_settings={"ExecutionRole": ROLE})
        p = await until(profile, settled)
        assert p["Status"] == "Update_Failed"

        monkeypatch.undo()  # the inline settle works again: updates settle at once
        await domains.update_domain(domain_id, default_user_settings={"ExecutionRole": ROLE})
        await profiles.update_user_profile(domain_id, "alice", user_settings={"ExecutionRole": ROLE})
        assert ((await domain())["Status"], (await domain())["FailureReason"]) == ("InService", None)
        assert ((await profile())["Status"], (await profile())["FailureReason"]) == ("InService", None)

        want = "RuntimeError: tag cleanup with a bug (failed 5 times; see the server log)"
        monkeypatch.setattr(profiles_module, "delete_all_tags", broken_cleanup)
        monkeypatch.setattr(domains_module, "delete_all_tags", broken_cleanup)
        await profiles.delete_user_profile(domain_id, "alice")
        p = await until(profile, settled)
        assert (p["Status"], p["FailureReason"]) == (
            "Delete_Failed",
            f"Internal error while deleting the user profile: {want}",
        )
        monkeypatch.undo()
        await profiles.delete_user_profile(domain_id, "alice")
        await until(lambda: gone(profile), lambda g: g["Gone"])
        monkeypatch.setattr(domains_module, "delete_all_tags", broken_cleanup)
        await domains.delete_domain(domain_id)
        d = await until(domain, settled)
        assert (d["Status"], d["FailureReason"]) == (
            "Delete_Failed",
            f"Internal error while deleting the domain: {want}",
        )
        monkeypatch.undo()
        await domains.delete_domain(domain_id)
        await until(lambda: gone(domain), lambda g: g["Gone"])
    finally:
        await close(ctx)


async def gone(describe: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    from byoi.errors import ResourceNotFound

    try:
        await describe()
    except ResourceNotFound:
        return {"Gone": True}
    return {"Gone": False}


# -- delete-image ------------------------------------------------------------------------------------


async def test_an_image_whose_deletion_keeps_failing_ends_delete_failed(tmp_path, registry, monkeypatch):
    import byoi.services.images as images_module
    from byoi.errors import ResourceNotFound
    from byoi.services.images import ImageService

    ctx = await new_context(tmp_path, registry)
    images = ImageService(ctx)

    def broken_cleanup(*_args: Any) -> None:
        raise RuntimeError("tag cleanup with a bug")

    monkeypatch.setattr(images_module, "delete_all_tags", broken_cleanup)
    start(ctx, images)
    try:
        await images.create_image("giveup", ROLE)
        await images.delete_image("giveup")
        d = await until(lambda: images.describe_image("giveup"), lambda d: d["ImageStatus"] != "DELETING")
        assert (d["ImageStatus"], d["FailureReason"]) == (
            "DELETE_FAILED",
            "Internal error while deleting the image: RuntimeError: tag cleanup with a bug "
            "(failed 5 times; see the server log)",
        )
        monkeypatch.undo()
        await images.delete_image("giveup")
        await until(lambda: gone(lambda: images.describe_image("giveup")), lambda g: g["Gone"])
        with pytest.raises(ResourceNotFound):
            await images.describe_image("giveup")
    finally:
        await close(ctx)
