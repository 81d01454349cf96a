"""The composition root: builds the store, registry client, worker and services from Settings, and
the one ASGI app that serves them. Concrete backends are chosen here and nowhere else."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from byoi.api import builds_http
from byoi.api.dispatch import Dispatcher, Operation, snake
from byoi.api.model import all_operation_names
from byoi.api.protocol import AwsJsonEndpoint
from byoi.auth.browser import SESSION_COOKIE, SIGN_IN_CSRF_COOKIE, BrowserSettings
from byoi.auth.oidc import OidcClient, OidcSettings
from byoi.auth.principal import SYSTEM
from byoi.auth.secrets import SecretBox
from byoi.build.base import Builder
from byoi.build.docker import DockerBuilder
from byoi.build.settings import BuildSettings
from byoi.config import Settings
from byoi.console import routes as console_http
from byoi.errors import StartupRefused
from byoi.jobs.worker import Worker
from byoi.metrics import Metrics
from byoi.proxy.core import SessionProxy
from byoi.registry.client import RegistryClient
from byoi.registry.errors import RegistryError
from byoi.runtime.base import SessionRuntime
from byoi.runtime.docker import DockerRuntime, default_socket_root
from byoi.runtime.instance_types import InstanceTypes
from byoi.runtime.settings import RuntimeSettings
from byoi.services import installation
from byoi.services.access import AccessService
from byoi.services.access_keys import AccessKeyService
from byoi.services.activity import ActivityTracker
from byoi.services.app_image_configs import AppImageConfigService
from byoi.services.apps import AppService
from byoi.services.attachments import AttachmentService
from byoi.services.audit import AuditLog
from byoi.services.browser_sessions import BrowserSessions
from byoi.services.builds import BuildService
from byoi.services.context import ServiceContext
from byoi.services.domains import DomainService
from byoi.services.image_versions import ImageVersionService
from byoi.services.images import ImageService
from byoi.services.inspection import InspectionService
from byoi.services.presigned import PresignedUrlService
from byoi.services.principals import PrincipalService
from byoi.services.server_info import ServerInfoService
from byoi.services.session_access import SessionAccess
from byoi.services.tags import TagService
from byoi.services.user_profiles import UserProfileService
from byoi.store.db import UNREACHABLE_ERRORS, Database, migrate, schema_is_current, unreachable
from byoi.web import auth as auth_http
from byoi.web import launcher as launcher_http
from byoi.web import oidc as oidc_http
from byoi.web import session_gate

log = logging.getLogger("byoi")


class Services:
    """Every service, and the table of operations they implement (found by name, never listed by hand).

    To add a resource: construct its service here, append it to `self.all`, and register its taggable
    ARN kind; its background tasks (a `tasks()` method) and operations are then picked up by themselves.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.access_keys = AccessKeyService(ctx)
        self.principals = PrincipalService(ctx)
        self.server_info = ServerInfoService(ctx)
        self.images = ImageService(ctx)
        self.image_versions = ImageVersionService(ctx)
        self.tags = TagService(ctx)
        self.all: list[Any] = [self.server_info, self.principals, self.images, self.image_versions, self.tags]
        self.tags.register_kind("image", self.images.image_exists)
        self.tags.register_kind("image-version", self.image_versions.version_exists)
        # Domains, user profiles, app image configs (and the attach extension operations).
        self.domains = DomainService(ctx)
        self.user_profiles = UserProfileService(ctx)
        self.app_image_configs = AppImageConfigService(ctx)
        self.attachments = AttachmentService(ctx, self.domains, self.user_profiles)
        self.all += [self.domains, self.user_profiles, self.app_image_configs, self.attachments]
        self.tags.register_kind("domain", self.domains.domain_exists)
        self.tags.register_kind("user-profile", self.user_profiles.profile_exists)
        self.tags.register_kind("app-image-config", self.app_image_configs.config_exists)
        # Compatibility reports: every version is inspected before it becomes CREATED.
        self.inspection = InspectionService(ctx)
        self.all.append(self.inspection)
        ctx.version_checks.append(self.inspection.check_version)

        # Image builds: on Docker Engine, or as BuildKit Jobs on Kubernetes; successful builds can register versions.
        self.browser_settings = BrowserSettings.from_env()
        build_settings = BuildSettings.from_env()
        if ctx.settings.builder:  # `byoi server --builder` over BYOI_BUILDER
            build_settings = dataclasses.replace(build_settings, builder=ctx.settings.builder)
        builder: Builder
        if build_settings.builder == "kubernetes":
            from byoi.build.kubernetes import builder_from_settings  # lightkube only when it is used

            base = build_settings.context_base_url or self.browser_settings.base_url(ctx.settings)
            builder = builder_from_settings(build_settings, ctx.installation, base, ctx.secrets)
        else:
            builder = DockerBuilder(build_settings.docker_host)
        self.builds = BuildService(ctx, builder, self.images, self.image_versions, build_settings)
        self.all.append(self.builds)

        # Sessions (CreateApp and friends) on Docker Engine or Kubernetes; RStudioServerPro apps are records only.
        rt = RuntimeSettings.from_env()
        if ctx.settings.runtime:  # `byoi server --runtime` over BYOI_RUNTIME
            rt = dataclasses.replace(rt, runtime=ctx.settings.runtime)
            rt.check()
        types = InstanceTypes.load(rt.instance_types)
        runtime: SessionRuntime
        if rt.runtime == "kubernetes":
            from byoi.runtime.kubernetes import runtime_from_settings  # lightkube only when it is used

            runtime = runtime_from_settings(rt, types)
        else:
            # Sockets beside the homes (`<data dir>/sockets` by default): replicas given one homes root share them.
            runtime = DockerRuntime(
                rt.docker_host, rt.socket_dir or default_socket_root(rt.homes(ctx.settings.data_dir).parent)
            )
        public = self.browser_settings.base_url(ctx.settings)
        self.apps = AppService(ctx, runtime, rt, types, self.domains, self.user_profiles, public)
        self.all.append(self.apps)
        self.tags.register_kind("app", self.apps.app_exists)

        # Browser sign-in: presigned domain URLs (an operation) and the sessions the /auth/ routes start.
        self.browser_sessions = BrowserSessions(ctx)
        self.presigned = PresignedUrlService(ctx, self.browser_settings)
        self.all.append(self.presigned)

        # The session proxy: who may open a session (one decision), and the activity it records.
        self.session_access = SessionAccess(ctx, self.browser_settings.admin_session_access)
        self.activity = ActivityTracker(ctx, rt.activity_seconds, rt.idle_timeout_minutes)

    def register_tasks(self) -> None:
        for service in self.all:
            for task in service.tasks() if hasattr(service, "tasks") else []:
                self.ctx.worker.register(task)

    def operations(self) -> dict[str, Operation]:
        wanted = {snake(name) for name in all_operation_names()}
        table: dict[str, Operation] = {}
        for service in self.all:
            for name, method in inspect.getmembers(service, inspect.iscoroutinefunction):
                if name in wanted:
                    assert name not in table, f"two services implement {name}"
                    table[name] = method
        return table


def build_context(settings: Settings) -> ServiceContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    return ServiceContext(
        settings=settings,
        db=db,
        registry=RegistryClient(settings.registries, settings.docker_config, settings.registry_timeout),
        worker=Worker(db, settings.lease_seconds, settings.worker_concurrency),
        secrets=SecretBox.from_settings(settings.data_dir, settings.master_key),
    )


class SessionsFirst:
    """Sends `/sessions/…` (HTTP and WebSocket) straight to the session proxy, ahead of FastAPI's exception
    handling and router: RStudio makes many small requests, and the proxy answers every error itself."""

    def __init__(self, app: Any, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._one_line_refusal(send))
            return
        path = scope.get("raw_path") or scope.get("path", "").encode()
        if path.startswith(b"/sessions/") or path == b"/sessions":
            await self.state["proxy"](scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _one_line_refusal(self, send: Any) -> Any:
        """Starlette reports a start-up that raised with the whole traceback as the failure's message, which
        uvicorn logs; a StartupRefused (state["refused"]) is reported as its one line instead."""

        async def lifespan_send(message: dict[str, Any]) -> None:
            if message.get("type") == "lifespan.startup.failed" and self.state.get("refused"):
                message = {**message, "message": f"byoi server refuses to start: {self.state['refused']}"}
            await send(message)

        return lifespan_send


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        ctx = build_context(settings)
        try:
            # `byoi server` has brought the schema up to date in a child process (db.migrate_in_child); an app
            # started otherwise (tests, an ASGI server of the site's) does it here.
            if not await schema_is_current(ctx.db):
                await asyncio.to_thread(migrate, ctx.db.url)
            # What every replica on this store must agree on: the master key (checked) and the installation's id.
            await installation.check_master_key(ctx.db, ctx.secrets)
            ctx.installation = await installation.installation_id(ctx.db, settings.data_dir)
        except StartupRefused as exc:
            state["refused"] = str(exc)
            raise
        except UNREACHABLE_ERRORS as exc:
            state["refused"] = unreachable(ctx.db.url, exc)
            raise StartupRefused(state["refused"]) from None
        services = Services(ctx)
        services.register_tasks()
        key_id, created = await services.access_keys.ensure_admin_key()
        if created:
            log.info("created administrator access key %s in %s", key_id, services.access_keys.credentials_path)
        dispatcher = Dispatcher(services.operations(), AccessService(ctx), AuditLog(ctx))
        endpoint = AwsJsonEndpoint(
            dispatcher,
            services.access_keys.lookup,
            metrics,
            settings.max_clock_skew_seconds,
            region=settings.region,
        )
        metrics.watch_work(lambda: dict(ctx.worker.waiting), lambda: ctx.worker.running)
        oidc_settings = OidcSettings.from_env(os.environ)  # checked by the CLI before start too
        oidc = OidcClient(oidc_settings) if oidc_settings else None
        gate = session_gate.SessionGate(state)
        proxy = SessionProxy(
            gate,
            services.activity,
            services.browser_settings.public_url,
            frozenset({SESSION_COOKIE, SIGN_IN_CSRF_COOKIE}),
        )

        async def stop_idle(domain_id: str, profile: str, name: str) -> object:
            params = {"DomainId": domain_id, "UserProfileName": profile, "AppType": "RSessionGateway", "AppName": name}
            return await dispatcher.dispatch(SYSTEM, "SageMaker", "DeleteApp", params)

        services.activity.stop_session = stop_idle
        state.update(
            ctx=ctx, endpoint=endpoint, services=services, dispatcher=dispatcher, oidc=oidc, gate=gate, proxy=proxy
        )
        ctx.worker.start()
        services.apps.start()  # the session reconciler
        services.activity.start()  # activity writes and idle shutdown
        try:
            yield
        finally:
            if oidc is not None:
                await oidc.close()
            await services.activity.stop()
            await proxy.close()
            await services.apps.stop()
            await ctx.worker.stop()
            await services.builds.builder.close()
            await ctx.registry.close()
            await ctx.db.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    builds_http.install(app, state)  # context upload and build log routes (signed, outside POST /)
    auth_http.install(app, state)  # browser sign-in under /auth/ (session cookies)
    launcher_http.install(app, state)  # the RStudio launcher, /rstudio/default/
    console_http.install(app, state)  # the console, /console/ (pages, static files)
    oidc_http.install(app, state)  # OIDC sign-in for SSO domains under /auth/oidc/
    session_gate.install(app, state)  # GET /auth/session-check: forward-auth for a gateway in front

    app.add_middleware(SessionsFirst, state=state)  # the session proxy: /sessions/<id>/… (HTTP and WebSocket)

    @app.post("/")
    async def aws_json(request: Request) -> Response:
        return await state["endpoint"](request)  # type: ignore[no-any-return]

    @app.get("/healthz")
    async def healthz() -> Response:
        """The store, the sessions' runtime (`docker`: Docker Engine, `kubernetes`: the cluster's API), the builds'
        Docker Engine when it is another one, and each registry: "ok" or "error: <what is wrong>" each; 503 when
        one fails."""
        ctx: ServiceContext = state["ctx"]
        services: Services = state["services"]
        checks: dict[str, str] = {}
        try:
            await ctx.db.ping()
            checks["store"] = "ok"
        except Exception as exc:  # any store failure is reported, not raised
            checks["store"] = f"error: {type(exc).__name__}: {exc}"
        engines = {services.apps.runtime.name: services.apps.runtime.ping}
        if services.builds.builder.name != "docker":
            engines[f"{services.builds.builder.name} builds"] = services.builds.builder.ping
        elif services.apps.runtime.name != "docker" or (
            services.builds.settings.docker_host != services.apps.settings.docker_host
        ):
            engines["docker builds"] = services.builds.builder.ping
        for name, ping in engines.items():
            try:
                await ping()
                checks[name] = "ok"
            except Exception as exc:  # "Docker Engine is not reachable at <address>: <why>", or the Engine's answer
                checks[name] = f"error: {exc}"
        for reg in settings.registries:
            try:
                await ctx.registry.ping(reg.host)
                checks[f"registry {reg.host}"] = "ok"
            except RegistryError as exc:
                checks[f"registry {reg.host}"] = f"error: {exc}"
            except Exception as exc:  # a health check reports every failure; it never answers 500
                log.exception("health check of registry %s failed", reg.host)
                checks[f"registry {reg.host}"] = f"error: {type(exc).__name__}: {exc}"
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unhealthy", "checks": checks}, status_code=200 if healthy else 503
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
