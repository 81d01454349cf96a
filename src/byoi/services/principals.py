"""Principals and their access keys, passwords and sessions; the caller's identity; the audit log.

Byoi.CreatePrincipal, DescribePrincipal, ListPrincipals, DeletePrincipal, SetPrincipalPassword,
RevokePrincipalSessions, CreateAccessKey, ListAccessKeys, UpdateAccessKey, DeleteAccessKey, GetCallerIdentity,
ListAuditEvents. Administrators only (`byoi.auth.policy`), except GetCallerIdentity.

A user principal is bound to one user profile in one domain, which must exist when it is created; at most one
principal per profile. The last administrator, and the last active key of the last administrator, cannot be
removed: byoi would have nobody left to manage it.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi.auth.passwords import hash_password
from byoi.auth.principal import ADMIN, current
from byoi.errors import ResourceInUse, ResourceLimitExceeded, ResourceNotFound, ValidationException
from byoi.services.access import principal_arn
from byoi.services.access_keys import new_key_pair
from byoi.services.bound_principals import remove_principals, revoke_sessions
from byoi.services.context import ServiceContext
from byoi.services.domains import load_domain
from byoi.services.user_profiles import load_profile
from byoi.store.paging import fetch_page
from byoi.store.schema import access_keys
from byoi.store.schema_identity import audit_log, principals

MAX_KEYS_PER_PRINCIPAL = 5
DEFAULT_PAGE = 50


def not_found(name: str) -> ResourceNotFound:
    return ResourceNotFound(f"No principal named {name} exists")


async def load_principal(conn: AsyncConnection, name: str, for_update: bool = False) -> sa.Row[Any]:
    query = sa.select(principals).where(principals.c.name == name)
    row = (await conn.execute(query.with_for_update() if for_update else query)).first()
    if row is None:
        raise not_found(name)
    return row


class PrincipalService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def _arn(self, name: str) -> str:
        return principal_arn(self.ctx.settings.account_id, name)

    def _describe(self, row: sa.Row[Any]) -> dict[str, Any]:
        return {
            "Name": row.name,
            "Role": row.role,
            "DomainId": row.domain_id,
            "UserProfileName": row.user_profile_name,
            "HasPassword": row.password_hash is not None,
            "CreationTime": row.created_at,
            "PrincipalArn": self._arn(row.name),
        }

    @staticmethod
    def _key(row: sa.Row[Any]) -> dict[str, Any]:
        return {
            "AccessKeyId": row.access_key_id,
            "PrincipalName": row.principal,
            "Status": "Active" if row.active else "Inactive",
            "CreateDate": row.created_at,
        }

    async def create_principal(
        self,
        name: str,
        role: str,
        domain_id: str | None = None,
        user_profile_name: str | None = None,
        password: str | None = None,
    ) -> dict[str, Any]:
        if role == "user" and (domain_id is None or user_profile_name is None):
            raise ValidationException("A user principal needs DomainId and UserProfileName: the profile it acts as")
        if role == ADMIN and (domain_id is not None or user_profile_name is not None):
            raise ValidationException(
                "An admin principal is bound to no user profile: omit DomainId and UserProfileName"
            )
        password_hash = hash_password(password) if password is not None else None
        async with self.ctx.db.transaction() as conn:
            if role == "user":
                assert domain_id is not None and user_profile_name is not None
                profile = await load_profile(conn, await load_domain(conn, domain_id), user_profile_name)
                user_profile_name = profile.name
                taken = await conn.execute(
                    sa.select(principals.c.name).where(
                        principals.c.domain_id == domain_id, principals.c.user_profile_name == user_profile_name
                    )
                )
                other = taken.first()
                if other is not None:
                    raise ResourceInUse(
                        f"User profile {user_profile_name} in domain {domain_id} already has a principal: {other.name}"
                    )
            if (await conn.execute(sa.select(principals.c.name).where(principals.c.name == name))).first():
                raise ResourceInUse(f"A principal named {name} already exists")
            await conn.execute(
                sa.insert(principals).values(
                    name=name,
                    role=role,
                    domain_id=domain_id,
                    user_profile_name=user_profile_name,
                    password_hash=password_hash,
                    created_at=time.time(),
                )
            )
            row = await load_principal(conn, name)
        return {"Principal": self._describe(row), "AccessKeys": []}

    async def describe_principal(self, name: str) -> dict[str, Any]:
        async with self.ctx.db.read() as conn:
            row = await load_principal(conn, name)
            keys = await conn.execute(
                sa.select(access_keys).where(access_keys.c.principal == name).order_by(access_keys.c.created_at)
            )
            return {"Principal": self._describe(row), "AccessKeys": [self._key(k) for k in keys]}

    async def list_principals(self, max_results: int | None = None, next_token: str | None = None) -> dict[str, Any]:
        """By name; the NextToken is the last name returned (principal names are unique and never reused while
        the principal exists, so a page neither skips nor repeats one)."""
        after = ""
        if next_token:
            try:
                after = base64.urlsafe_b64decode(next_token.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                raise ValidationException("NextToken is not valid: it was not returned by this operation") from None
        limit = max_results or DEFAULT_PAGE
        query = sa.select(principals).where(principals.c.name > after).order_by(principals.c.name).limit(limit + 1)
        async with self.ctx.db.read() as conn:
            rows = list(await conn.execute(query))
        more = len(rows) > limit
        rows = rows[:limit]
        token = base64.urlsafe_b64encode(rows[-1].name.encode()).decode() if more else None
        return {"Principals": [self._describe(r) for r in rows], "NextToken": token}

    async def _admins_left(self, conn: AsyncConnection, without: str | None = None, key: str | None = None) -> int:
        """Active keys of administrators, leaving out one principal or one key."""
        query = (
            sa.select(sa.func.count())
            .select_from(access_keys)
            .join(principals, principals.c.name == access_keys.c.principal)
            .where(principals.c.role == ADMIN, access_keys.c.active.is_(True))
        )
        if without is not None:
            query = query.where(principals.c.name != without)
        if key is not None:
            query = query.where(access_keys.c.access_key_id != key)
        return int((await conn.execute(query)).scalar_one())

    async def delete_principal(self, name: str) -> dict[str, Any]:
        if name == current().name:
            raise ResourceInUse("A principal cannot delete itself")
        async with self.ctx.db.transaction() as conn:
            row = await load_principal(conn, name, for_update=True)
            if row.role == ADMIN and await self._admins_left(conn, without=name) == 0:
                raise ResourceInUse(f"{name} holds the last active administrator key: create another one first")
            await remove_principals(conn, [name])
        return {}

    async def set_principal_password(self, name: str, password: str | None = None) -> dict[str, Any]:
        password_hash = hash_password(password) if password is not None else None
        async with self.ctx.db.transaction() as conn:
            await load_principal(conn, name, for_update=True)
            await conn.execute(
                sa.update(principals)
                .where(principals.c.name == name)
                .values(password_hash=password_hash, sessions_valid_after=time.time())
            )
        return {}

    async def revoke_principal_sessions(self, name: str) -> dict[str, Any]:
        async with self.ctx.db.transaction() as conn:
            await load_principal(conn, name, for_update=True)
            now = time.time()
            await conn.execute(sa.update(principals).where(principals.c.name == name).values(sessions_valid_after=now))
            await revoke_sessions(conn, [name], now)
        return {}

    async def create_access_key(self, principal_name: str) -> dict[str, Any]:
        key_id, secret = new_key_pair()
        now = time.time()
        async with self.ctx.db.transaction() as conn:
            row = await load_principal(conn, principal_name, for_update=True)
            count = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(access_keys).where(access_keys.c.principal == principal_name)
                )
            ).scalar_one()
            if count >= MAX_KEYS_PER_PRINCIPAL:
                raise ResourceLimitExceeded(
                    f"{principal_name} has {count} access keys, the most a principal may have: delete one first"
                )
            await conn.execute(
                sa.insert(access_keys).values(
                    access_key_id=key_id,
                    secret_ciphertext=self.ctx.secrets.seal(secret),
                    principal=principal_name,
                    role=row.role,
                    active=True,
                    created_at=now,
                )
            )
        return {
            "AccessKey": {
                "AccessKeyId": key_id,
                "SecretAccessKey": secret,
                "PrincipalName": principal_name,
                "Status": "Active",
                "CreateDate": now,
            }
        }

    async def list_access_keys(self, principal_name: str | None = None) -> dict[str, Any]:
        query = sa.select(access_keys).order_by(access_keys.c.principal, access_keys.c.created_at)
        async with self.ctx.db.read() as conn:
            if principal_name is not None:
                await load_principal(conn, principal_name)
                query = query.where(access_keys.c.principal == principal_name)
            return {"AccessKeys": [self._key(k) for k in await conn.execute(query)]}

    async def _load_key(self, conn: AsyncConnection, key_id: str) -> sa.Row[Any]:
        row = (
            await conn.execute(sa.select(access_keys).where(access_keys.c.access_key_id == key_id).with_for_update())
        ).first()
        if row is None:
            raise ResourceNotFound(f"No access key {key_id} exists")
        return row

    async def _refuse_last_admin_key(self, conn: AsyncConnection, key_id: str) -> None:
        if await self._admins_left(conn, key=key_id) == 0:
            raise ResourceInUse(f"{key_id} is the last active administrator key: create another one first")

    async def update_access_key(self, access_key_id: str, status: str) -> dict[str, Any]:
        async with self.ctx.db.transaction() as conn:
            row = await self._load_key(conn, access_key_id)
            if status == "Inactive" and row.active:
                await self._refuse_last_admin_key(conn, access_key_id)
            await conn.execute(
                sa.update(access_keys)
                .where(access_keys.c.access_key_id == access_key_id)
                .values(active=status == "Active")
            )
        return {}

    async def delete_access_key(self, access_key_id: str) -> dict[str, Any]:
        async with self.ctx.db.transaction() as conn:
            row = await self._load_key(conn, access_key_id)
            if row.active:
                await self._refuse_last_admin_key(conn, access_key_id)
            await conn.execute(sa.delete(access_keys).where(access_keys.c.access_key_id == access_key_id))
        return {}

    async def get_caller_identity(self) -> dict[str, Any]:
        me = current()
        return {
            "PrincipalName": me.name,
            "Role": me.role,
            "DomainId": me.domain_id,
            "UserProfileName": me.user_profile_name,
            "AccessKeyId": me.access_key_id,
        }

    async def list_audit_events(
        self,
        start_time: float | None = None,
        end_time: float | None = None,
        principal_name: str | None = None,
        operation: str | None = None,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        filters = {"start": start_time, "end": end_time, "principal": principal_name, "operation": operation}
        query = sa.select(audit_log)
        if start_time is not None:
            query = query.where(audit_log.c.at >= start_time)
        if end_time is not None:
            query = query.where(audit_log.c.at < end_time)
        if principal_name is not None:
            query = query.where(audit_log.c.principal == principal_name)
        if operation is not None:
            query = query.where(audit_log.c.operation == operation)
        async with self.ctx.db.read() as conn:
            page = await fetch_page(
                conn,
                query,
                audit_log.c.at,
                audit_log.c.id,
                True,
                max_results or DEFAULT_PAGE,
                next_token,
                filters,
                "at",
            )
        return {
            "AuditEvents": [
                {
                    "EventId": str(r.id),
                    "Time": r.at,
                    "PrincipalName": r.principal,
                    "AccessKeyId": r.access_key_id,
                    "Door": r.door,
                    "Operation": r.operation,
                    "ResourceArn": r.resource_arn,
                    "Outcome": r.outcome,
                    "SourceAddress": r.source,
                    "RequestId": r.request_id,
                }
                for r in page.rows
            ],
            "NextToken": page.next_token,
        }
