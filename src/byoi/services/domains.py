"""Domains: a team's workspace, its default settings and the custom images attached to it.
CreateDomain, DescribeDomain, UpdateDomain, DeleteDomain, ListDomains.

Members that configure AWS infrastructure (VPC, subnets, KMS, roles, security groups) are kept and echoed.
`CreateDomain` writes the domain `Pending` and then makes it `InService` (`UpdateDomain` goes through
`Updating` the same way; see `settle`). Settling a domain with `DomainSettings.RStudioServerProDomainSettings`
makes its RStudioServerPro app (`domain-shared`/`default`, see `byoi.services.apps`), as SageMaker does.
`DeleteDomain` is refused while the domain has user profiles (or anything a later service registers in
`delete_checks`: live sessions); then the domain is `Deleting` until the background task removes it, and its
RStudioServerPro app with it.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi.errors import ResourceInUse, ResourceNotFound
from byoi.jobs.worker import Claim, Task
from byoi.services import custom_images
from byoi.services.access import visibility
from byoi.services.bound_principals import remove_bound_principals
from byoi.services.context import ServiceContext
from byoi.services.tags import delete_all_tags, write_tags
from byoi.store.paging import fetch_page
from byoi.store.schema_domains import domains, user_profiles

log = logging.getLogger("byoi.domains")
DEFAULT_PAGE = 10
ID_ALPHABET = string.ascii_lowercase + string.digits
# Request members that are stored as given and echoed by DescribeDomain.
ECHOED = {
    "auth_mode": "AuthMode",
    "default_user_settings": "DefaultUserSettings",
    "domain_settings": "DomainSettings",
    "subnet_ids": "SubnetIds",
    "vpc_id": "VpcId",
    "app_network_access_type": "AppNetworkAccessType",
    "home_efs_file_system_kms_key_id": "HomeEfsFileSystemKmsKeyId",
    "kms_key_id": "KmsKeyId",
    "app_security_group_management": "AppSecurityGroupManagement",
    "home_efs_file_system_creation": "HomeEfsFileSystemCreation",
    "tag_propagation": "TagPropagation",
    "default_space_settings": "DefaultSpaceSettings",
}
# Roots of a domain's spec that may name custom images.
SETTINGS_ROOTS = ("DefaultUserSettings", "DomainSettings", "DefaultSpaceSettings")

# (connection, domain row) -> descriptions of what still lives in the domain and stops its deletion.
# The apps service (the users' live sessions) appends to `DomainService.delete_checks`.
DeleteCheck = Callable[[AsyncConnection, Any], Awaitable[list[str]]]
# (connection, domain row) -> None: work done in the transaction that makes a Pending / Updating domain
# InService. The apps service appends one that makes the domain's RStudioServerPro app (`domain-shared`).
SettleHook = Callable[[AsyncConnection, Any], Awaitable[None]]
SETTLING = ("Pending", "Updating")


def new_domain_id() -> str:
    return "d-" + "".join(secrets.choice(ID_ALPHABET) for _ in range(12))


def not_found(domain_id: str) -> ResourceNotFound:
    return ResourceNotFound(f"Domain {domain_id} does not exist")


async def load_domain(conn: AsyncConnection, domain_id: str, for_update: bool = False) -> sa.Row[Any]:
    query = sa.select(domains).where(domains.c.domain_id == domain_id)
    row = (await conn.execute(query.with_for_update() if for_update else query)).first()
    if row is None:
        raise not_found(domain_id)
    return row


def require_usable(domain: sa.Row[Any]) -> None:
    if domain.status == "Deleting":
        raise ResourceInUse(f"Domain {domain.domain_id} is being deleted")


def domain_refs(ctx: ServiceContext, spec: dict[str, Any]) -> list[custom_images.Ref]:
    return custom_images.collect_refs(ctx, {root: spec.get(root) for root in SETTINGS_ROOTS})


def apply_domain_settings_update(stored: dict[str, Any] | None, update: dict[str, Any]) -> dict[str, Any]:
    """DomainSettingsForUpdate onto DomainSettings: each member given replaces its counterpart, except
    RStudioServerProDomainSettingsForUpdate, whose members are merged into RStudioServerProDomainSettings
    (so the documented Workbench-upgrade call does not drop the Connect and Package Manager URLs)."""
    result = dict(stored or {})
    for key, value in update.items():
        if key == "RStudioServerProDomainSettingsForUpdate":
            result["RStudioServerProDomainSettings"] = custom_images.merge_members(
                result.get("RStudioServerProDomainSettings"), value
            )
        else:
            result[key] = value
    return result


# -- statuses shared by domains and user profiles (same status enum shape, same settle/give-up rules) ---------


async def settle_rows(
    ctx: ServiceContext, table: sa.Table, where: sa.ColumnElement[bool], hooks: Sequence[SettleHook] = ()
) -> None:
    """Pending / Updating -> InService, after `hooks` have run on each row in the same transaction (the rows
    locked), so what they make exists exactly when the row is InService."""
    async with ctx.db.transaction() as conn:
        settling = table.c.status.in_(SETTLING)
        if hooks:
            for row in await conn.execute(sa.select(table).where(where, settling).with_for_update()):
                for hook in hooks:
                    await hook(conn, row)
        await conn.execute(sa.update(table).where(where, settling).values(status="InService", failure_reason=None))


async def give_up_settling(ctx: ServiceContext, claim: Claim, table: sa.Table, noun: str, reason: str) -> None:
    """Pending -> Failed, Updating -> Update_Failed (the Describe statuses), naming the error."""
    async with ctx.db.transaction() as conn:
        await conn.execute(
            sa.update(table)
            .where(claim.owns(), table.c.status.in_(("Pending", "Updating")))
            .values(
                status=sa.case((table.c.status == "Pending", "Failed"), else_="Update_Failed"),
                failure_reason=f"Internal error while settling the {noun}: {reason}"[:1024],
                modified_at=time.time(),
            )
        )


async def give_up_deleting(ctx: ServiceContext, claim: Claim, table: sa.Table, noun: str, reason: str) -> None:
    """Deleting -> Delete_Failed, naming the error (Delete may be called again)."""
    async with ctx.db.transaction() as conn:
        await conn.execute(
            sa.update(table)
            .where(claim.owns(), table.c.status == "Deleting")
            .values(
                status="Delete_Failed",
                failure_reason=f"Internal error while deleting the {noun}: {reason}"[:1024],
                modified_at=time.time(),
            )
        )


class DomainService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.delete_checks: list[DeleteCheck] = []
        self.settle_hooks: list[SettleHook] = []
        # Called with the domain's row after it is deleted (the apps service removes homes per RetentionPolicy).
        self.deleted_hooks: list[Callable[[Any], Awaitable[None]]] = []
        ctx.referrer_checks.append(custom_images.referrer_check(ctx))

    def tasks(self) -> list[Task]:
        return [
            # After repeated unexpected errors (a bug, the store) the row ends in the model's own failed states,
            # with a FailureReason naming the error, rather than Pending, Updating or Deleting for ever. From
            # there UpdateDomain and DeleteDomain may be called again.
            Task("settle-domain", domains, ("Pending", "Updating"), self._settle, give_up=self._give_up_settling),
            Task("delete-domain", domains, ("Deleting",), self._finish_delete, give_up=self._give_up_deleting),
        ]

    async def domain_exists(self, conn: AsyncConnection, parts: tuple[str, ...]) -> bool:
        return bool((await conn.execute(sa.select(domains.c.id).where(domains.c.domain_id == parts[0]))).first())

    def url(self, domain_id: str) -> str:
        return f"{self.ctx.settings.endpoint_url}/console/domains/{domain_id}"

    def _summary(self, row: sa.Row[Any]) -> dict[str, Any]:
        return {
            "DomainArn": self.ctx.arns.domain(row.domain_id),
            "DomainId": row.domain_id,
            "DomainName": row.name,
            "Status": row.status,
            "CreationTime": row.created_at,
            "LastModifiedTime": row.modified_at,
            "Url": self.url(row.domain_id),
        }

    async def create_domain(
        self, domain_name: str, auth_mode: str, default_user_settings: dict[str, Any], tags: Any = None, **rest: Any
    ) -> dict[str, Any]:
        values = {"auth_mode": auth_mode, "default_user_settings": default_user_settings, **rest}
        spec = {wire: values[snake] for snake, wire in ECHOED.items() if values.get(snake) is not None}
        now = time.time()
        try:
            async with self.ctx.db.transaction() as conn:
                clash = (
                    await conn.execute(sa.select(domains.c.domain_id).where(domains.c.name == domain_name))
                ).first()
                if clash:
                    raise ResourceInUse(f"Domain name {domain_name} is already used by {clash.domain_id}")
                await custom_images.validate(self.ctx, conn, {root: spec.get(root) for root in SETTINGS_ROOTS})
                domain_id = new_domain_id()
                pk = (
                    await conn.execute(
                        sa.insert(domains)
                        .values(
                            domain_id=domain_id,
                            name=domain_name,
                            status="Pending",
                            spec=spec,
                            created_at=now,
                            modified_at=now,
                        )
                        .returning(domains.c.id)
                    )
                ).scalar_one()
                await custom_images.write_refs(conn, pk, None, domain_refs(self.ctx, spec))
                if tags:
                    await write_tags(conn, self.ctx.arns.domain(domain_id), tags)
        except IntegrityError:
            raise ResourceInUse(f"Domain name {domain_name} is already in use") from None
        await self.settle(pk)
        return {"DomainArn": self.ctx.arns.domain(domain_id), "DomainId": domain_id, "Url": self.url(domain_id)}

    async def describe_domain(self, domain_id: str) -> dict[str, Any]:
        async with self.ctx.db.read() as conn:
            row = await load_domain(conn, domain_id)
        return {**row.spec, **self._summary(row), "FailureReason": row.failure_reason}

    async def update_domain(
        self,
        domain_id: str,
        default_user_settings: dict[str, Any] | None = None,
        domain_settings_for_update: dict[str, Any] | None = None,
        default_space_settings: dict[str, Any] | None = None,
        **replaced: Any,
    ) -> dict[str, Any]:
        async with self.ctx.db.transaction() as conn:
            row = await load_domain(conn, domain_id, for_update=True)
            require_usable(row)
            await custom_images.validate(
                self.ctx,
                conn,
                {
                    "DefaultUserSettings": default_user_settings,
                    "DomainSettingsForUpdate": domain_settings_for_update,
                    "DefaultSpaceSettings": default_space_settings,
                },
            )
            spec = dict(row.spec)
            if default_user_settings is not None:
                spec["DefaultUserSettings"] = custom_images.merge_members(
                    spec.get("DefaultUserSettings"), default_user_settings
                )
            if default_space_settings is not None:
                spec["DefaultSpaceSettings"] = custom_images.merge_members(
                    spec.get("DefaultSpaceSettings"), default_space_settings
                )
            if domain_settings_for_update is not None:
                spec["DomainSettings"] = apply_domain_settings_update(
                    spec.get("DomainSettings"), domain_settings_for_update
                )
            for snake, value in replaced.items():
                if value is not None:
                    spec[ECHOED[snake]] = value
            await self.write_spec(conn, row, spec)
        await self.settle(row.id)
        return {"DomainArn": self.ctx.arns.domain(domain_id)}

    async def write_spec(self, conn: AsyncConnection, row: sa.Row[Any], spec: dict[str, Any]) -> int:
        """Store a new spec and its refs, bump the revision, and go through `Updating` (shared with the
        CAS update of the custom image list). Returns the new revision."""
        status = row.status if row.status == "Pending" else "Updating"
        await conn.execute(
            sa.update(domains)
            .where(domains.c.id == row.id)
            .values(spec=spec, status=status, revision=domains.c.revision + 1, modified_at=time.time())
        )
        await custom_images.write_refs(conn, row.id, None, domain_refs(self.ctx, spec))
        return int(row.revision) + 1

    async def delete_domain(self, domain_id: str, retention_policy: dict[str, Any] | None = None) -> dict[str, Any]:
        async with self.ctx.db.transaction() as conn:
            row = await load_domain(conn, domain_id, for_update=True)
            if row.status == "Deleting":
                raise ResourceInUse(f"Domain {domain_id} is already being deleted")
            profiles = [
                r.name + (" (Deleting)" if r.status == "Deleting" else "")
                for r in await conn.execute(
                    sa.select(user_profiles.c.name, user_profiles.c.status)
                    .where(user_profiles.c.domain_pk == row.id)
                    .order_by(user_profiles.c.name_key)
                )
            ]
            if profiles:
                raise ResourceInUse(
                    f"Domain {domain_id} still has user profiles: {', '.join(profiles)}; delete them first"
                )
            for check in self.delete_checks:
                live = await check(conn, row)
                if live:
                    raise ResourceInUse(f"Domain {domain_id} still has {', '.join(live)}; delete them first")
            # RetentionPolicy is kept for the runtime's clean-up of home directories (HomeEfsFileSystem).
            spec = {**row.spec, "RetentionPolicy": retention_policy or {"HomeEfsFileSystem": "Retain"}}
            await conn.execute(
                sa.update(domains)
                .where(domains.c.id == row.id)
                .values(status="Deleting", spec=spec, modified_at=time.time(), attempts=0, next_attempt_at=None)
            )
        self.ctx.worker.wake()
        return {}

    async def list_domains(self, max_results: int | None = None, next_token: str | None = None) -> dict[str, Any]:
        seen = await visibility(self.ctx)
        query = sa.select(domains)
        if seen.domain_id is not None:  # a user: their own domain
            query = query.where(domains.c.domain_id == seen.domain_id)
        async with self.ctx.db.read() as conn:
            page = await fetch_page(
                conn,
                query,
                domains.c.created_at,
                domains.c.id,
                False,
                max_results or DEFAULT_PAGE,
                next_token,
                {"op": "ListDomains", "scope": seen.fingerprint()},
                "created_at",
            )
        return {"Domains": [self._summary(r) for r in page.rows], "NextToken": page.next_token}

    # -- statuses -------------------------------------------------------------------------------

    async def settle(self, pk: int) -> None:
        """Pending / Updating -> InService, in its own transaction right after the request's; the background
        task settles any row a crash (or a failing hook) left in between. Settling runs `settle_hooks`: a domain
        with RStudio settings gets its RStudioServerPro app then, which has no container, so it takes no time.
        (Work that takes time would leave the domain Pending for the background task instead.)"""
        try:
            await settle_rows(self.ctx, domains, domains.c.id == pk, self.settle_hooks)
        except Exception:  # the request's change is stored: the settle-domain task retries, then gives up
            log.exception("settling domain row %s failed; the background task retries it", pk)
            self.ctx.worker.wake()

    async def _settle(self, claim: Claim) -> None:
        await settle_rows(self.ctx, domains, claim.owns(), self.settle_hooks)

    async def _give_up_settling(self, claim: Claim, reason: str) -> None:
        await give_up_settling(self.ctx, claim, domains, "domain", reason)

    async def _give_up_deleting(self, claim: Claim, reason: str) -> None:
        await give_up_deleting(self.ctx, claim, domains, "domain", reason)

    async def _finish_delete(self, claim: Claim) -> None:
        async with self.ctx.db.transaction() as conn:
            row = (await conn.execute(sa.select(domains).where(claim.owns(), domains.c.status == "Deleting"))).first()
            if row is None:
                return
            await delete_all_tags(conn, self.ctx.arns.domain(row.domain_id))
            # Apps go with the domain's records (ON DELETE CASCADE); their tags go with them.
            await delete_all_tags(conn, self.ctx.arns.apps_of(row.domain_id))
            await delete_all_tags(conn, self.ctx.arns.user_profile(row.domain_id, "x").rsplit("/", 1)[0])
            await conn.execute(sa.delete(domains).where(domains.c.id == row.id))
            await remove_bound_principals(conn, row.domain_id)
        for hook in self.deleted_hooks:
            await hook(row)
