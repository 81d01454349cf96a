"""byoi's extension operations for attaching images: a compare-and-swap of the RStudio `CustomImages` list
(so that `byoi attach` / `byoi detach`, a read-modify-write, never loses a concurrent change), and the
effective list of images a user may launch.

Byoi.DescribeAttachedImages, Byoi.UpdateAttachedImages, Byoi.ListEffectiveImages.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi.errors import ConcurrentModification, ResourceInUse
from byoi.services import custom_images as rules
from byoi.services.context import ServiceContext
from byoi.services.domains import DomainService, load_domain, require_usable
from byoi.services.user_profiles import UserProfileService, load_profile


def _with_images(settings: dict[str, Any] | None, images: list[dict[str, Any]]) -> dict[str, Any]:
    """`settings` with RSessionAppSettings.CustomImages replaced and everything else kept."""
    settings = dict(settings or {})
    settings[rules.RSESSION] = {**(settings.get(rules.RSESSION) or {}), "CustomImages": images}
    return settings


class AttachmentService:
    def __init__(self, ctx: ServiceContext, domains: DomainService, profiles: UserProfileService) -> None:
        self.ctx = ctx
        self.domains = domains
        self.profiles = profiles

    async def _owner(
        self, conn: AsyncConnection, domain_id: str, profile: str | None, for_update: bool = False
    ) -> tuple[sa.Row[Any], sa.Row[Any] | None]:
        domain = await load_domain(conn, domain_id, for_update=for_update and profile is None)
        if profile is None:
            return domain, None
        return domain, await load_profile(conn, domain, profile, for_update=for_update)

    async def describe_attached_images(self, domain_id: str, user_profile_name: str | None = None) -> dict[str, Any]:
        async with self.ctx.db.read() as conn:
            domain, profile = await self._owner(conn, domain_id, user_profile_name)
        row = profile if profile is not None else domain
        settings = row.spec.get("UserSettings" if profile is not None else "DefaultUserSettings")
        return {
            "DomainId": domain.domain_id,
            "UserProfileName": profile.name if profile is not None else None,
            "CustomImages": rules.rsession_images(settings),
            "Revision": row.revision,
        }

    async def update_attached_images(
        self,
        domain_id: str,
        custom_images: list[dict[str, Any]],
        expected_revision: int,
        user_profile_name: str | None = None,
    ) -> dict[str, Any]:
        images = custom_images
        async with self.ctx.db.transaction() as conn:
            domain, profile = await self._owner(conn, domain_id, user_profile_name, for_update=True)
            require_usable(domain)
            row = profile if profile is not None else domain
            if profile is not None and profile.status == "Deleting":
                raise ResourceInUse(f"User profile {profile.name} in domain {domain_id} is being deleted")
            if row.revision != expected_revision:
                raise ConcurrentModification(
                    f"The settings of {self._label(domain, profile)} are at revision {row.revision}, not "
                    f"{expected_revision}: they changed since they were read; read them again and retry"
                )
            root = "UserSettings" if profile is not None else "DefaultUserSettings"
            await rules.validate(self.ctx, conn, {root: {rules.RSESSION: {"CustomImages": images}}})
            spec = {**row.spec, root: _with_images(row.spec.get(root), images)}
            if profile is not None:
                revision = await self.profiles.write_spec(conn, domain, profile, spec)
            else:
                revision = await self.domains.write_spec(conn, domain, spec)
        await (self.profiles.settle(profile.id) if profile is not None else self.domains.settle(domain.id))
        return {"Revision": revision}

    @staticmethod
    def _label(domain: sa.Row[Any], profile: sa.Row[Any] | None) -> str:
        if profile is None:
            return f"domain {domain.domain_id}"
        return f"user profile {profile.name} in domain {domain.domain_id}"

    async def list_effective_images(self, domain_id: str, user_profile_name: str | None = None) -> dict[str, Any]:
        async with self.ctx.db.read() as conn:
            domain, profile = await self._owner(conn, domain_id, user_profile_name)
            entries, source = effective_entries(domain, profile)
            resolved = [await rules.resolve_entry(conn, self.ctx, e) for e in entries]
        return {
            "DomainId": domain.domain_id,
            "UserProfileName": profile.name if profile is not None else None,
            "Source": source,
            "EffectiveImages": resolved,
        }


def effective_entries(domain: sa.Row[Any], profile: sa.Row[Any] | None) -> tuple[list[dict[str, Any]], str]:
    """The CustomImages entries that apply to a user: their profile's list when it is non-empty, else the
    domain's default. (An empty profile list falls back too, so detaching a user's last own image gives
    them the domain's images back rather than none.) The apps service uses this to check a launch."""
    if profile is not None:
        own = rules.rsession_images(profile.spec.get("UserSettings"))
        if own:
            return own, "UserProfile"
    return rules.rsession_images(domain.spec.get("DefaultUserSettings")), "Domain"
