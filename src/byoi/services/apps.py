"""Apps: RStudio sessions on custom images (`RSessionGateway`) and the domain's RStudio entry point
(`RStudioServerPro`, profile `domain-shared`, name `default`). CreateApp, DescribeApp, DeleteApp, ListApps,
and the extension operations Byoi.DescribeAppProgress and Byoi.GetAppLogs.

CreateApp checks everything a launch needs up front (the domain has RStudio, the user may use it, the image
is attached for the user and its version is CREATED, the instance type fits this host), records the app
`Pending` with what the launch will run, and leaves the launch to a background task (`app_launch`).
`RStudioServerPro` is a record that goes `InService` without a container: in byoi it is the launcher page
(`/rstudio/default/`), so the AWS documentation's delete-and-recreate steps work. A domain with RStudio settings
gets it when it settles (`_provision_shared`); users of the domain may read it, only administrators change it;
it does not stop DeleteDomain and goes with the domain.
"""

from __future__ import annotations

import secrets
import time
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi.auth.policy import SHARED_APP_NAME, SHARED_APP_PROFILE, SHARED_APP_TYPE
from byoi.errors import ResourceInUse, ResourceNotFound, ValidationException
from byoi.jobs.worker import Task
from byoi.runtime.base import Endpoint, RuntimeFailure, SessionRuntime
from byoi.runtime.instance_types import DEFAULT_TYPE, InstanceType, InstanceTypeError, InstanceTypes
from byoi.runtime.settings import RuntimeSettings
from byoi.services import app_resources
from byoi.services import session_files as files
from byoi.services.access import visibility
from byoi.services.app_launch import RSESSION_GATEWAY, Launcher
from byoi.services.context import ServiceContext
from byoi.services.domains import DomainService, load_domain, require_usable
from byoi.services.instance_offers import offers
from byoi.services.tags import write_tags
from byoi.services.user_profiles import UserProfileService, load_profile
from byoi.store.paging import fetch_page
from byoi.store.schema_apps import apps
from byoi.store.schema_domains import domains

RSTUDIO_SERVER_PRO = SHARED_APP_TYPE  # "RStudioServerPro"
SUPPORTED = (RSESSION_GATEWAY, RSTUDIO_SERVER_PRO)
SHARED_PROFILE = SHARED_APP_PROFILE  # "domain-shared"
SHARED_APP = SHARED_APP_NAME  # "default"
LIVE = ("Pending", "InService", "Deleting")
DEFAULT_PAGE = 10
_NO_PROFILE = SimpleNamespace(spec={})  # ListInstanceTypes for a domain: no profile settings over the domain's


class AppService:
    def __init__(
        self,
        ctx: ServiceContext,
        runtime: SessionRuntime,
        settings: RuntimeSettings,
        instance_types: InstanceTypes,
        domains_service: DomainService,
        profiles: UserProfileService,
        public_base: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.public_base = (public_base or ctx.settings.endpoint_url).rstrip("/")
        self.runtime = runtime
        self.settings = settings
        self.instance_types = instance_types
        self.launcher = Launcher(ctx, runtime, settings)
        profiles.delete_checks.append(self._profile_live_apps)
        domains_service.delete_checks.append(self._domain_live_apps)
        domains_service.settle_hooks.append(self._provision_shared)
        domains_service.deleted_hooks.append(self.launcher.remove_domain_homes)

    def tasks(self) -> list[Task]:
        return self.launcher.tasks()

    def start(self) -> None:
        self.launcher.start()

    async def stop(self) -> None:
        await self.launcher.stop()
        await self.runtime.close()

    async def app_exists(self, conn: AsyncConnection, parts: tuple[str, ...]) -> bool:
        if len(parts) != 4:
            return False
        row = await conn.execute(
            sa.select(apps.c.id)
            .join(domains, domains.c.id == apps.c.domain_pk)
            .where(
                domains.c.domain_id == parts[0],
                apps.c.profile_key == parts[1].lower(),
                apps.c.app_type == parts[2],
                apps.c.app_name == parts[3],
            )
        )
        return row.first() is not None

    # -- checks for other services ---------------------------------------------------------------

    async def _profile_live_apps(self, conn: AsyncConnection, _domain: Any, profile: Any) -> list[str]:
        rows = await conn.execute(
            sa.select(apps.c.app_type, apps.c.app_name, apps.c.status)
            .where(apps.c.profile_pk == profile.id, apps.c.status.in_(LIVE))
            .order_by(apps.c.id)
        )
        return [f"app {r.app_type}/{r.app_name} ({r.status})" for r in rows]

    async def _domain_live_apps(self, conn: AsyncConnection, domain: Any) -> list[str]:
        """The live sessions that stop DeleteDomain. Not the RStudioServerPro app: it has no container and is
        removed with the domain (SageMaker asks for it to be deleted first; byoi never makes that a dead end)."""
        rows = await conn.execute(
            sa.select(apps.c.profile_name, apps.c.app_type, apps.c.app_name, apps.c.status)
            .where(apps.c.domain_pk == domain.id, apps.c.status.in_(LIVE), apps.c.app_type != RSTUDIO_SERVER_PRO)
            .order_by(apps.c.id)
        )
        return [f"app {r.app_type}/{r.app_name} of {r.profile_name} ({r.status})" for r in rows]

    # -- addressing -------------------------------------------------------------------------------

    @staticmethod
    def _owner(user_profile_name: str | None, space_name: str | None) -> str:
        if space_name is not None:
            raise ValidationException("SpaceName is not supported by byoi (no shared spaces); give UserProfileName")
        if not user_profile_name:
            raise ValidationException("UserProfileName is required (byoi has no shared spaces)")
        return user_profile_name

    @staticmethod
    def _check_type(app_type: str) -> None:
        if app_type not in SUPPORTED:
            raise ValidationException(
                f"AppType {app_type} is not supported by byoi: only RSessionGateway (an RStudio session on a "
                "custom image) and RStudioServerPro (the domain's RStudio entry point)"
            )

    async def _load(
        self, conn: AsyncConnection, domain_id: str, profile: str, app_type: str, app_name: str, lock: bool = False
    ) -> Any:
        domain = await load_domain(conn, domain_id)
        query = sa.select(apps).where(
            apps.c.domain_pk == domain.id,
            apps.c.profile_key == profile.lower(),
            apps.c.app_type == app_type,
            apps.c.app_name == app_name,
        )
        row = (await conn.execute(query.with_for_update() if lock else query)).first()
        if row is None:
            raise ResourceNotFound(
                f"App {app_type}/{app_name} of user profile {profile} does not exist in domain {domain_id}"
            )
        return row

    def session_url(self, session_id: str) -> str:
        """Where a browser opens the session: byoi's proxy (the owner's sign-in is asked for there)."""
        return f"{self.public_base}{files.root_path(session_id)}"

    def arn(self, domain_id: str, row: Any) -> str:
        return self.ctx.arns.app(domain_id, row.profile_name, row.app_type, row.app_name)

    # -- CreateApp --------------------------------------------------------------------------------

    async def create_app(
        self,
        domain_id: str,
        app_type: str,
        app_name: str,
        user_profile_name: str | None = None,
        space_name: str | None = None,
        tags: list[dict[str, str]] | None = None,
        resource_spec: dict[str, Any] | None = None,
        recovery_mode: bool | None = None,
    ) -> dict[str, Any]:
        profile_name = self._owner(user_profile_name, space_name)
        self._check_type(app_type)
        capacity = None
        if app_type == RSESSION_GATEWAY:
            try:
                capacity = await self.runtime.capacity()
            except RuntimeFailure:
                capacity = None  # the launch will fail with the engine's reason; the table still applies
        async with self.ctx.db.transaction() as conn:
            domain = await load_domain(conn, domain_id, for_update=True)
            require_usable(domain)
            if not (domain.spec.get("DomainSettings") or {}).get("RStudioServerProDomainSettings"):
                raise ValidationException(
                    f"Domain {domain_id} does not have RStudio enabled (DomainSettings.RStudioServerProDomainSettings)"
                )
            if app_type == RSTUDIO_SERVER_PRO:
                if profile_name != SHARED_PROFILE or app_name != SHARED_APP:
                    raise ValidationException(
                        f"An RStudioServerPro app belongs to user profile {SHARED_PROFILE} and is named {SHARED_APP}"
                    )
                spec: dict[str, Any] = shared_spec()
                profile, image = None, None
            else:
                if profile_name.lower() == SHARED_PROFILE:
                    raise ValidationException(f"User profile {SHARED_PROFILE} runs only the RStudioServerPro app")
                profile = await load_profile(conn, domain, profile_name)
                self._check_profile(domain, profile)
                arn = self.ctx.arns.app(domain_id, profile.name, app_type, app_name)
                spec, image = await self._rsession_spec(conn, domain, profile, resource_spec, arn, capacity)
            if recovery_mode is not None:
                spec["RecoveryMode"] = recovery_mode
            owner = profile.name if profile is not None else SHARED_PROFILE
            row_id = await self._write(conn, domain, profile, owner, app_type, app_name, spec, image)
            arn = self.ctx.arns.app(domain_id, owner, app_type, app_name)
            if tags:
                await write_tags(conn, arn, tags)
        if app_type == RSTUDIO_SERVER_PRO:
            await self._settle_shared(row_id)
        self.ctx.worker.wake(apps)
        return {"AppArn": arn}

    @staticmethod
    def _check_profile(domain: Any, profile: Any) -> None:
        if profile.status == "Deleting":
            raise ResourceInUse(f"User profile {profile.name} in domain {domain.domain_id} is being deleted")
        access = ((profile.spec.get("UserSettings") or {}).get("RStudioServerProAppSettings") or {}).get("AccessStatus")
        if access == "DISABLED":
            raise ValidationException(
                f"User profile {profile.name} has RStudio access DISABLED (RStudioServerProAppSettings.AccessStatus)"
            )

    def _instance_type(self, name: str, capacity: Any) -> InstanceType:
        try:
            if capacity is None:
                if name not in self.instance_types.table:
                    raise InstanceTypeError(f"InstanceType {name} is not offered by byoi")
                vcpu, mem = self.instance_types.table[name]
                return InstanceType(name, vcpu, int(mem * (1 << 30)))
            return self.instance_types.get(name, capacity)
        except InstanceTypeError as exc:
            raise ValidationException(str(exc)) from None

    async def _rsession_spec(
        self, conn: AsyncConnection, domain: Any, profile: Any, given: dict[str, Any] | None, arn: str, capacity: Any
    ) -> tuple[dict[str, Any], app_resources.ResolvedImage]:
        image = await app_resources.resolve(conn, self.ctx, domain, profile, given, self.settings.uid)
        type_name = (
            (given or {}).get("InstanceType") or app_resources.default_instance_type(domain, profile) or DEFAULT_TYPE
        )
        itype = self._instance_type(type_name, capacity)
        env = self._session_env(domain, profile, arn)
        resource_spec = {
            "SageMakerImageArn": image.image_arn,
            "SageMakerImageVersionArn": image.version_arn,
            "InstanceType": itype.name,
        }
        if (given or {}).get("SageMakerImageVersionAlias"):
            resource_spec["SageMakerImageVersionAlias"] = given["SageMakerImageVersionAlias"]  # type: ignore[index]
        launch = {
            "ContainerImage": image.container_image,
            "ImageVersionArn": image.version_arn,
            "RHome": image.r_home,
            "ListenSocket": image.listen_socket,
            "UserName": image.image_user or self.settings.user_name,
            "Vcpu": itype.vcpu,
            "MemoryBytes": itype.memory_bytes,
            "Env": env,
        }
        return {"ResourceSpec": resource_spec, "Launch": launch}, image

    def _session_env(self, domain: Any, profile: Any, arn: str) -> dict[str, str]:
        """What R sees (container env and Renviron.site): the domain's RStudio URLs, who and what this is."""
        rstudio = (domain.spec.get("DomainSettings") or {}).get("RStudioServerProDomainSettings") or {}
        env = {
            "BYOI_DOMAIN_ID": domain.domain_id,
            "BYOI_USER_PROFILE_NAME": profile.name,
            "BYOI_APP_ARN": arn,
            "BYOI_APP_NAME": arn.rsplit("/", 1)[1],
        }
        if rstudio.get("RStudioConnectUrl"):
            env["RSTUDIO_CONNECT_URL"] = rstudio["RStudioConnectUrl"]
        if rstudio.get("RStudioPackageManagerUrl"):
            env["RSTUDIO_PACKAGE_MANAGER_URL"] = rstudio["RStudioPackageManagerUrl"]
        bad = files.unsafe_env(env)
        if bad:
            raise ValidationException(
                f"Cannot pass {', '.join(bad)} to R: the value contains quotes, backslashes, '${{' or control "
                "characters; fix the domain's RStudioServerProDomainSettings"
            )
        return env

    async def _write(
        self,
        conn: AsyncConnection,
        domain: Any,
        profile: Any,
        owner: str,
        app_type: str,
        app_name: str,
        spec: dict[str, Any],
        image: app_resources.ResolvedImage | None,
    ) -> int:
        """Insert the app Pending, or reuse a Deleted / Failed record of the same name as a new generation."""
        existing = (
            await conn.execute(
                sa.select(apps)
                .where(
                    apps.c.domain_pk == domain.id,
                    apps.c.profile_key == owner.lower(),
                    apps.c.app_type == app_type,
                    apps.c.app_name == app_name,
                )
                .with_for_update()
            )
        ).first()
        now = time.time()
        values = {
            "status": "Pending",
            "failure_reason": None,
            "spec": spec,
            "image_name": image.image_name.lower() if image else None,
            "image_version": image.version if image else None,
            "progress": {"Phase": "queued", "Message": "Waiting for a launch slot", "UpdatedAt": now},
            "backend": None,
            "last_health_check": None,
            "modified_at": now,
            "attempts": 0,
            "next_attempt_at": None,
        }
        if existing is not None:
            if existing.status in LIVE:
                raise ResourceInUse(
                    f"App {app_type}/{app_name} of user profile {owner} already exists in domain "
                    f"{domain.domain_id} ({existing.status})"
                )
            await conn.execute(
                sa.update(apps)
                .where(apps.c.id == existing.id)
                .values(generation=apps.c.generation + 1, created_at=now, last_activity=None, **values)
            )
            return int(existing.id)
        result = await conn.execute(
            sa.insert(apps)
            .values(
                domain_pk=domain.id,
                profile_pk=profile.id if profile is not None else None,
                profile_name=owner,
                profile_key=owner.lower(),
                app_type=app_type,
                app_name=app_name,
                session_id=secrets.token_hex(8),
                generation=1,
                created_at=now,
                **values,
            )
            .returning(apps.c.id)
        )
        return int(result.scalar_one())

    async def _settle_shared(self, row_id: int) -> None:
        """RStudioServerPro has nothing to start: Pending -> InService at once (the launch task settles
        a row a crash left Pending)."""
        async with self.ctx.db.transaction() as conn:
            await _shared_in_service(conn, row_id)

    async def _provision_shared(self, conn: AsyncConnection, domain: Any) -> None:
        """A domain settling with RStudio settings (CreateDomain, or the UpdateDomain that adds them) gets its
        RStudioServerPro app InService, as on SageMaker, in the transaction that makes the domain InService.

        Only when the domain has no record of it at all: a record that is Deleted was deleted by someone (the
        documented delete-app / create-app steps), and settling the domain again must not bring it back behind
        their back; their own CreateApp restores it (a new generation of the same record, see `_write`)."""
        if not (domain.spec.get("DomainSettings") or {}).get("RStudioServerProDomainSettings"):
            return
        known = await conn.execute(
            sa.select(apps.c.id).where(
                apps.c.domain_pk == domain.id,
                apps.c.profile_key == SHARED_PROFILE,
                apps.c.app_type == RSTUDIO_SERVER_PRO,
                apps.c.app_name == SHARED_APP,
            )
        )
        if known.first() is not None:
            return
        row_id = await self._write(
            conn, domain, None, SHARED_PROFILE, RSTUDIO_SERVER_PRO, SHARED_APP, shared_spec(), None
        )
        await _shared_in_service(conn, row_id)

    # -- DescribeApp / DeleteApp / ListApps -----------------------------------------------------------

    def _details(self, domain_id: str, row: Any) -> dict[str, Any]:
        return {
            "DomainId": domain_id,
            "UserProfileName": row.profile_name,
            "AppType": row.app_type,
            "AppName": row.app_name,
            "Status": row.status,
            "CreationTime": row.created_at,
            "ResourceSpec": (row.spec or {}).get("ResourceSpec"),
        }

    async def describe_app(
        self,
        domain_id: str,
        app_type: str,
        app_name: str,
        user_profile_name: str | None = None,
        space_name: str | None = None,
    ) -> dict[str, Any]:
        profile = self._owner(user_profile_name, space_name)
        async with self.ctx.db.read() as conn:
            row = await self._load(conn, domain_id, profile, app_type, app_name)
        return {
            **self._details(domain_id, row),
            "AppArn": self.arn(domain_id, row),
            "FailureReason": row.failure_reason,
            "LastHealthCheckTimestamp": row.last_health_check,
            "LastUserActivityTimestamp": row.last_activity,
            "RecoveryMode": (row.spec or {}).get("RecoveryMode"),
        }

    async def delete_app(
        self,
        domain_id: str,
        app_type: str,
        app_name: str,
        user_profile_name: str | None = None,
        space_name: str | None = None,
    ) -> dict[str, Any]:
        profile = self._owner(user_profile_name, space_name)
        async with self.ctx.db.transaction() as conn:
            row = await self._load(conn, domain_id, profile, app_type, app_name, lock=True)
            what = f"App {app_type}/{app_name} of user profile {row.profile_name} in domain {domain_id}"
            if row.status == "Failed":
                raise ValidationException(f"{what} is Failed: there is nothing to delete (create it again to retry)")
            if row.status == "Deleted":
                raise ValidationException(f"{what} is already Deleted")
            if row.status == "Deleting":
                raise ResourceInUse(f"{what} is already being deleted")
            now = time.time()
            await conn.execute(
                sa.update(apps)
                .where(apps.c.id == row.id)
                .values(
                    status="Deleting",
                    modified_at=now,
                    attempts=0,
                    next_attempt_at=None,
                    progress={"Phase": "deleting", "Message": "Stopping the session", "UpdatedAt": now},
                )
            )
        self.ctx.worker.wake(apps)
        return {}

    async def list_apps(
        self,
        next_token: str | None = None,
        max_results: int | None = None,
        sort_order: str | None = None,
        sort_by: str | None = None,
        domain_id_equals: str | None = None,
        user_profile_name_equals: str | None = None,
        space_name_equals: str | None = None,
    ) -> dict[str, Any]:
        if user_profile_name_equals and space_name_equals:
            raise ValidationException("Give UserProfileNameEquals or SpaceNameEquals, not both")
        filters = {
            "domain": domain_id_equals,
            "profile": (user_profile_name_equals or "").lower(),
            "space": space_name_equals,
            "sort": sort_order,
        }
        query = sa.select(apps, domains.c.domain_id).join(domains, domains.c.id == apps.c.domain_pk)
        seen = await visibility(self.ctx)
        filters["scope"] = seen.fingerprint()
        if seen.domain_id is not None:  # a user: their own apps, and their domain's RStudioServerPro app
            shared = sa.and_(apps.c.profile_key == SHARED_PROFILE, apps.c.app_type == RSTUDIO_SERVER_PRO)
            query = query.where(
                domains.c.domain_id == seen.domain_id,
                sa.or_(apps.c.profile_key == (seen.user_profile_name or "").lower(), shared),
            )
        if domain_id_equals:
            query = query.where(domains.c.domain_id == domain_id_equals)
        if user_profile_name_equals:
            query = query.where(apps.c.profile_key == user_profile_name_equals.lower())
        if space_name_equals:
            query = query.where(sa.false())  # byoi has no shared spaces
        async with self.ctx.db.read() as conn:
            page = await fetch_page(
                conn,
                query,
                apps.c.created_at,
                apps.c.id,
                (sort_order or "Ascending") == "Descending",
                max_results or DEFAULT_PAGE,
                next_token,
                filters,
                "created_at",
            )
        return {"Apps": [self._details(r.domain_id, r) for r in page.rows], "NextToken": page.next_token}

    # -- extension operations ---------------------------------------------------------------------

    async def describe_app_progress(
        self, domain_id: str, user_profile_name: str, app_name: str, app_type: str | None = None
    ) -> dict[str, Any]:
        app_type = app_type or RSESSION_GATEWAY
        async with self.ctx.db.read() as conn:
            row = await self._load(conn, domain_id, user_profile_name, app_type, app_name)
        progress = dict(row.progress or {})
        launch = (row.spec or {}).get("Launch") or {}
        endpoint = Endpoint.from_json((row.backend or {}).get("Endpoint"))
        return {
            "AppArn": self.arn(domain_id, row),
            "Status": row.status,
            "FailureReason": row.failure_reason,
            "Phase": progress.get("Phase"),
            "Message": progress.get("Message"),
            "BytesDone": progress.get("BytesDone"),
            "BytesTotal": progress.get("BytesTotal"),
            "UpdatedAt": progress.get("UpdatedAt"),
            "Endpoint": progress.get("Endpoint") if row.status == "InService" else None,
            "Url": self.session_url(row.session_id),
            "RootPath": files.root_path(row.session_id),
            "SessionId": row.session_id,
            "ContainerImage": launch.get("ContainerImage"),
            "ContainerName": self.launcher.name_of(row) if row.app_type == RSESSION_GATEWAY else None,
            "HostPort": endpoint.port if endpoint is not None and row.status == "InService" else None,
            "InstanceType": ((row.spec or {}).get("ResourceSpec") or {}).get("InstanceType"),
            "Vcpu": launch.get("Vcpu"),
            "MemoryMiB": int(launch["MemoryBytes"]) // (1 << 20) if launch.get("MemoryBytes") else None,
            "CreationTime": row.created_at,
            "LastUserActivityTime": row.last_activity,
        }

    async def get_app_logs(
        self,
        domain_id: str,
        user_profile_name: str,
        app_name: str,
        app_type: str | None = None,
        lines: int | None = None,
    ) -> dict[str, Any]:
        app_type = app_type or RSESSION_GATEWAY
        async with self.ctx.db.read() as conn:
            row = await self._load(conn, domain_id, user_profile_name, app_type, app_name)
        found, source = await self.launcher.logs(row, lines or 100)
        return {"AppArn": self.arn(domain_id, row), "Status": row.status, "Lines": found, "Source": source}

    async def list_instance_types(self, domain_id: str, user_profile_name: str | None = None) -> dict[str, Any]:
        """Byoi.ListInstanceTypes: the table, what this host offers of it, and the default CreateApp applies."""
        async with self.ctx.db.read() as conn:
            domain = await load_domain(conn, domain_id)
            profile = await load_profile(conn, domain, user_profile_name) if user_profile_name else None
        default = app_resources.default_instance_type(domain, profile or _NO_PROFILE) or DEFAULT_TYPE
        try:
            capacity = await self.runtime.capacity()
        except RuntimeFailure:
            capacity = None
        return {"InstanceTypes": offers(self.instance_types, capacity), "DefaultInstanceType": default}


# -- the domain's RStudioServerPro app ---------------------------------------------------------------


def shared_spec() -> dict[str, Any]:
    """What the RStudioServerPro record holds: no image, no container (byoi's launcher page stands for it)."""
    return {"ResourceSpec": {"InstanceType": "system"}}


async def _shared_in_service(conn: AsyncConnection, row_id: int) -> None:
    now = time.time()
    await conn.execute(
        sa.update(apps)
        .where(apps.c.id == row_id, apps.c.status == "Pending", apps.c.lease_owner.is_(None))
        .values(
            status="InService",
            last_health_check=now,
            progress={"Phase": "ready", "Message": "The launcher page", "UpdatedAt": now},
        )
    )
