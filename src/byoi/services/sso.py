"""Who an OIDC sign-in is: the user profile of an `AuthMode=SSO` domain whose `SingleSignOnUserValue` equals the
configured claim, the way SageMaker maps IAM Identity Center users to profiles.

Nothing is created for a person no profile names: the sign-in ends on a page that says so. A profile that does
match but has no principal yet gets one, bound to it, named `sso-<domain id>-<profile>`: the administrator
already chose who this is by setting SingleSignOnUserValue, and a principal is only byoi's record of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from byoi.services.context import ServiceContext
from byoi.store.schema_domains import domains, user_profiles
from byoi.store.schema_identity import principals


class NoMatchingProfile(Exception):
    """No (or more than one) user profile of an SSO domain names this person; the message says which."""


@dataclass(frozen=True)
class SsoMatch:
    domain_id: str
    user_profile_name: str
    principal: str


async def match_profile(ctx: ServiceContext, value: str, domain_id: str | None = None) -> SsoMatch:
    """The profile (and its principal, created if need be) for an OIDC claim value, in `domain_id` or in any
    SSO domain. Profiles in their Deleting/Delete_Failed states never match."""
    query = (
        sa.select(domains.c.domain_id, domains.c.spec.label("domain_spec"), user_profiles.c.name, user_profiles.c.spec)
        .join(domains, domains.c.id == user_profiles.c.domain_pk)
        .where(user_profiles.c.status.not_in(("Deleting", "Delete_Failed")))
    )
    if domain_id is not None:
        query = query.where(domains.c.domain_id == domain_id)
    async with ctx.db.read() as conn:
        rows = [
            r
            for r in await conn.execute(query)
            if (r.domain_spec or {}).get("AuthMode") == "SSO" and (r.spec or {}).get("SingleSignOnUserValue") == value
        ]
    where = f"domain {domain_id}" if domain_id else "any SSO domain"
    if not rows:
        raise NoMatchingProfile(
            f"No user profile in {where} has SingleSignOnUserValue {value!r}. "
            "An administrator can create one (create-user-profile --single-sign-on-user-value …)."
        )
    if len(rows) > 1:
        found = ", ".join(f"{r.domain_id}/{r.name}" for r in rows)
        raise NoMatchingProfile(f"Several user profiles name {value!r} ({found}): sign in through one domain's URL")
    row = rows[0]
    return SsoMatch(row.domain_id, row.name, await _principal_for(ctx, row.domain_id, row.name))


async def _principal_for(ctx: ServiceContext, domain_id: str, profile: str) -> str:
    async with ctx.db.transaction() as conn:
        bound = (
            await conn.execute(
                sa.select(principals.c.name).where(
                    principals.c.domain_id == domain_id, principals.c.user_profile_name == profile
                )
            )
        ).first()
        if bound is not None:
            return str(bound.name)
        name = f"sso-{domain_id}-{profile}"[:64]
        await conn.execute(
            sa.insert(principals).values(
                name=name, role="user", domain_id=domain_id, user_profile_name=profile, created_at=time.time()
            )
        )
        return name
