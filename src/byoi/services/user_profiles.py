"""User profiles: a person in a domain, whose settings may override the domain's (attached images included).
CreateUserProfile, DescribeUserProfile, UpdateUserProfile, DeleteUserProfile, ListUserProfiles.

Names are case-insensitive within a domain (model doc). Statuses go `Pending` -> `InService`, `Updating` ->
`InService` (see `settle`), `Deleting` -> gone through a background task. A profile whose apps are not all `Deleted` or
`Failed` cannot be deleted: the apps service registers that check in `UserProfileService.delete_checks`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi.errors import ResourceInUse, ResourceNotFound, ValidationException
from byoi.jobs.worker import Claim, Task
from byoi.services import custom_images
from byoi.services.access import visibility
from byoi.services.bound_principals import remove_bound_principals
from byoi.services.context import ServiceContext
from byoi.services.domains import (
    give_up_deleting,
    give_up_settling,
    load_domain,
    require_usable,
    settle_rows,
)
from byoi.services.tags import delete_all_tags, write_tags
from byoi.store.paging import fetch_page
from byoi.store.schema_domains import domains, user_profiles

DEFAULT_PAGE = 10
SORT_COLUMNS = {"CreationTime": "created_at", "LastModifiedTime": "modified_at"}
# The pseudo profile that owns a domain's RStudioServerPro app; no person may take the name.
RESERVED_NAMES = {"domain-shared"}

# (connection, domain row, profile row) -> descriptions of what still runs for the profile (e.g. "app
# RSessionGateway/foo (InService)"). The apps service appends its "apps not Deleted/Failed" check here.
DeleteCheck = Callable[[AsyncConnection, Any, Any], Awaitable[list[str]]]


def not_found(domain_id: str, name: str) -> ResourceNotFound:
    return ResourceNotFound(f"User profile {name} does not exist in domain {domain_id}")


async def load_profile(conn: AsyncConnection, domain: sa.Row[Any], name: str, for_update: bool = False) -> sa.Row[Any]:
    query = sa.select(user_profiles).where(
        user_profiles.c.domain_pk == domain.id, user_profiles.c.name_key == name.lower()
    )
    row = (await conn.execute(query.with_for_update() if for_update else query)).first()
    if row is None:
        raise not_found(domain.domain_id, name)
    return row


def profile_refs(ctx: ServiceContext, spec: dict[str, Any]) -> list[custom_images.Ref]:
    return custom_images.collect_refs(ctx, {"UserSettings": spec.get("UserSettings")})


def _check_sso(domain: sa.Row[Any], identifier: str | None, value: str | None) -> None:
    sso = domain.spec.get("AuthMode") == "SSO"
    given = identifier is not None or value is not None
    if sso and (identifier is None or value is None):
        raise ValidationException(
            f"Domain {domain.domain_id} uses SSO: SingleSignOnUserIdentifier and SingleSignOnUserValue are required"
        )
    if not sso and given:
        raise ValidationException(
            f"Domain {domain.domain_id} uses IAM: SingleSignOnUserIdentifier and SingleSignOnUserValue are not allowed"
        )


class UserProfileService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.delete_checks: list[DeleteCheck] = []

    def tasks(self) -> list[Task]:
        return [
            # After repeated unexpected errors (a bug, the store) the row ends in the model's own failed states,
            # with a FailureReason naming the error, rather than Pending, Updating or Deleting for ever. From
            # there UpdateUserProfile and DeleteUserProfile may be called again.
            Task(
                "settle-user-profile",
                user_profiles,
                ("Pending", "Updating"),
                self._settle,
                give_up=self._give_up_settling,
            ),
            Task(
                "delete-user-profile", user_profiles, ("Deleting",), self._finish_delete, give_up=self._give_up_deleting
            ),
        ]

    async def profile_exists(self, conn: AsyncConnection, parts: tuple[str, ...]) -> bool:
        if len(parts) != 2:
            return False
        row = await conn.execute(
            sa.select(user_profiles.c.id)
            .join(domains, domains.c.id == user_profiles.c.domain_pk)
            .where(domains.c.domain_id == parts[0], user_profiles.c.name_key == parts[1].lower())
        )
        return row.first() is not None

    def _summary(self, domain_id: str, row: sa.Row[Any]) -> dict[str, Any]:
        return {
            "DomainId": domain_id,
            "UserProfileName": row.name,
            "Status": row.status,
            "CreationTime": row.created_at,
            "LastModifiedTime": row.modified_at,
        }

    async def create_user_profile(
        self,
        domain_id: str,
        user_profile_name: str,
        single_sign_on_user_identifier: str | None = None,
        single_sign_on_user_value: str | None = None,
        tags: list[dict[str, str]] | None = None,
        user_settings: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if user_profile_name.lower() in RESERVED_NAMES:
            raise ValidationException(f"UserProfileName {user_profile_name} is reserved for the domain's shared apps")
        spec: dict[str, Any] = {"UserSettings": user_settings} if user_settings is not None else {}
        if single_sign_on_user_identifier is not None:
            spec["SingleSignOnUserIdentifier"] = single_sign_on_user_identifier
        if single_sign_on_user_value is not None:
            spec["SingleSignOnUserValue"] = single_sign_on_user_value
        now = time.time()
        arn = self.ctx.arns.user_profile(domain_id, user_profile_name)
        try:
            async with self.ctx.db.transaction() as conn:
                domain = await load_domain(conn, domain_id, for_update=True)
                require_usable(domain)
                _check_sso(domain, single_sign_on_user_identifier, single_sign_on_user_value)
                clash = (
                    await conn.execute(
                        sa.select(user_profiles.c.name).where(
                            user_profiles.c.domain_pk == domain.id,
                            user_profiles.c.name_key == user_profile_name.lower(),
                        )
                    )
                ).first()
                if clash:
                    raise ResourceInUse(
                        f"User profile {clash.name} already exists in domain {domain_id} (names ignore case)"
                    )
                await custom_images.validate(self.ctx, conn, {"UserSettings": user_settings})
                uid = (
                    await conn.execute(
                        sa.update(domains)
                        .where(domains.c.id == domain.id)
                        .values(last_uid=domains.c.last_uid + 1)
                        .returning(domains.c.last_uid)
                    )
                ).scalar_one()
                pk = (
                    await conn.execute(
                        sa.insert(user_profiles)
                        .values(
                            domain_pk=domain.id,
                            name=user_profile_name,
                            name_key=user_profile_name.lower(),
                            status="Pending",
                            spec=spec,
                            home_uid=uid,
                            created_at=now,
                            modified_at=now,
                        )
                        .returning(user_profiles.c.id)
                    )
                ).scalar_one()
                await custom_images.write_refs(conn, domain.id, pk, profile_refs(self.ctx, spec))
                if tags:
                    await write_tags(conn, arn, tags)
        except IntegrityError:
            raise ResourceInUse(f"User profile {user_profile_name} already exists in domain {domain_id}") from None
        await self.settle(pk)
        return {"UserProfileArn": arn}

    async def describe_user_profile(self, domain_id: str, user_profile_name: str) -> dict[str, Any]:
        async with self.ctx.db.read() as conn:
            domain = await load_domain(conn, domain_id)
            row = await load_profile(conn, domain, user_profile_name)
        return {
            **row.spec,
            **self._summary(domain_id, row),
            "UserProfileArn": self.ctx.arns.user_profile(domain_id, row.name),
            "HomeEfsFileSystemUid": str(row.home_uid),
            "FailureReason": row.failure_reason,
        }

    async def update_user_profile(
        self, domain_id: str, user_profile_name: str, user_settings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        async with self.ctx.db.transaction() as conn:
            domain = await load_domain(conn, domain_id)
            require_usable(domain)
            row = await load_profile(conn, domain, user_profile_name, for_update=True)
            if row.status == "Deleting":
                raise ResourceInUse(f"User profile {row.name} in domain {domain_id} is being deleted")
            await custom_images.validate(self.ctx, conn, {"UserSettings": user_settings})
            spec = dict(row.spec)
            if user_settings is not None:
                spec["UserSettings"] = custom_images.merge_members(spec.get("UserSettings"), user_settings)
            await self.write_spec(conn, domain, row, spec)
        await self.settle(row.id)
        return {"UserProfileArn": self.ctx.arns.user_profile(domain_id, row.name)}

    async def write_spec(
        self, conn: AsyncConnection, domain: sa.Row[Any], row: sa.Row[Any], spec: dict[str, Any]
    ) -> int:
        status = row.status if row.status == "Pending" else "Updating"
        await conn.execute(
            sa.update(user_profiles)
            .where(user_profiles.c.id == row.id)
            .values(spec=spec, status=status, revision=user_profiles.c.revision + 1, modified_at=time.time())
        )
        await custom_images.write_refs(conn, domain.id, row.id, profile_refs(self.ctx, spec))
        return int(row.revision) + 1

    async def delete_user_profile(self, domain_id: str, user_profile_name: str) -> dict[str, Any]:
        async with self.ctx.db.transaction() as conn:
            domain = await load_domain(conn, domain_id)
            row = await load_profile(conn, domain, user_profile_name, for_update=True)
            if row.status == "Deleting":
                raise ResourceInUse(f"User profile {row.name} in domain {domain_id} is already being deleted")
            for check in self.delete_checks:
                live = await check(conn, domain, row)
                if live:
                    raise ResourceInUse(
                        f"User profile {row.name} in domain {domain_id} still has {', '.join(live)}; delete them first"
                    )
            await conn.execute(
                sa.update(user_profiles)
                .where(user_profiles.c.id == row.id)
                .values(status="Deleting", modified_at=time.time(), attempts=0, next_attempt_at=None)
            )
        self.ctx.worker.wake()
        return {}

    async def list_user_profiles(
        self,
        next_token: str | None = None,
        max_results: int | None = None,
        sort_order: str | None = None,
        sort_by: str | None = None,
        domain_id_equals: str | None = None,
        user_profile_name_contains: str | None = None,
    ) -> dict[str, Any]:
        filters = {
            "domain": domain_id_equals,
            "contains": user_profile_name_contains,
            "sort_by": sort_by,
            "sort_order": sort_order,
        }
        column = SORT_COLUMNS[sort_by or "CreationTime"]
        query = sa.select(user_profiles, domains.c.domain_id).join(domains, domains.c.id == user_profiles.c.domain_pk)
        seen = await visibility(self.ctx)
        filters["scope"] = seen.fingerprint()
        if seen.domain_id is not None:  # a user: their own profile
            query = query.where(
                domains.c.domain_id == seen.domain_id,
                user_profiles.c.name_key == (seen.user_profile_name or "").lower(),
            )
        if domain_id_equals:
            query = query.where(domains.c.domain_id == domain_id_equals)
        if user_profile_name_contains:
            query = query.where(user_profiles.c.name_key.contains(user_profile_name_contains.lower(), autoescape=True))
        async with self.ctx.db.read() as conn:
            page = await fetch_page(
                conn,
                query,
                user_profiles.c[column],
                user_profiles.c.id,
                (sort_order or "Ascending") == "Descending",
                max_results or DEFAULT_PAGE,
                next_token,
                filters,
                column,
            )
        return {"UserProfiles": [self._summary(r.domain_id, r) for r in page.rows], "NextToken": page.next_token}

    # -- statuses -------------------------------------------------------------------------------

    async def settle(self, pk: int) -> None:
        """Pending / Updating -> InService, in its own transaction (as `DomainService.settle`)."""
        await settle_rows(self.ctx, user_profiles, user_profiles.c.id == pk)

    async def _settle(self, claim: Claim) -> None:
        await settle_rows(self.ctx, user_profiles, claim.owns())

    async def _give_up_settling(self, claim: Claim, reason: str) -> None:
        await give_up_settling(self.ctx, claim, user_profiles, "user profile", reason)

    async def _give_up_deleting(self, claim: Claim, reason: str) -> None:
        await give_up_deleting(self.ctx, claim, user_profiles, "user profile", reason)

    async def _finish_delete(self, claim: Claim) -> None:
        async with self.ctx.db.transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(user_profiles, domains.c.domain_id)
                    .join(domains, domains.c.id == user_profiles.c.domain_pk)
                    .where(claim.owns(), user_profiles.c.status == "Deleting")
                )
            ).first()
            if row is None:
                return
            await delete_all_tags(conn, self.ctx.arns.user_profile(row.domain_id, row.name))
            await delete_all_tags(conn, self.ctx.arns.apps_of(row.domain_id, row.name))  # its apps' tags too
            await conn.execute(sa.delete(user_profiles).where(user_profiles.c.id == row.id))
            await remove_bound_principals(conn, row.domain_id, row.name)
