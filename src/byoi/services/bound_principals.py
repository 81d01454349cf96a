"""Removing principals, in the caller's transaction: with their access keys, and their browser sessions ended at
once. Used by DeletePrincipal and RevokePrincipalSessions (services/principals.py), and by the deletion of a user
profile or domain: a user principal lives as long as the profile it is bound to, or a profile re-created later
under the same name would silently give the old principal, perhaps another person, the new profile's access.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi.store.schema import access_keys
from byoi.store.schema_identity import browser_sessions, principals


async def revoke_sessions(conn: AsyncConnection, names: Sequence[str], now: float | None = None) -> None:
    """End every live browser session of these principals."""
    await conn.execute(
        sa.update(browser_sessions)
        .where(browser_sessions.c.principal.in_(names), browser_sessions.c.revoked_at.is_(None))
        .values(revoked_at=time.time() if now is None else now)
    )


async def remove_principals(conn: AsyncConnection, names: Sequence[str]) -> None:
    """Delete these principals and their keys, and end their sessions."""
    if not names:
        return
    await conn.execute(sa.delete(access_keys).where(access_keys.c.principal.in_(names)))
    await revoke_sessions(conn, names)
    await conn.execute(sa.delete(principals).where(principals.c.name.in_(names)))


async def remove_bound_principals(conn: AsyncConnection, domain_id: str, user_profile_name: str | None = None) -> None:
    """Delete the principals bound to a profile of `domain_id` (to any of its profiles when none is named)."""
    bound = principals.c.domain_id == domain_id
    if user_profile_name is not None:
        bound = sa.and_(bound, sa.func.lower(principals.c.user_profile_name) == user_profile_name.lower())
    await remove_principals(conn, [r.name for r in await conn.execute(sa.select(principals.c.name).where(bound))])
