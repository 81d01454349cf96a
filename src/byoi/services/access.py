"""Authorization with the resource: what `byoi.auth.policy`'s rules mean for one request, and what a user may
see (for the services that scope their lists). Called only by `byoi.api.dispatch`; never by a door.

A user sees the images attached to their domain (its default user settings) or to their own profile, their
domain, their own profile, their own apps and their domain's shared RStudioServerPro app (read only). Each check
costs at most one indexed query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from byoi.auth.policy import SHARED_APP_NAME, SHARED_APP_PROFILE, SHARED_APP_TYPE, Rule, user_rule
from byoi.auth.principal import USER, Principal, current
from byoi.errors import AccessDeniedException
from byoi.services import custom_images
from byoi.services.context import ServiceContext
from byoi.store.schema_domains import custom_image_refs, domains, user_profiles


@dataclass(frozen=True)
class Visibility:
    """What a list may show the caller: None for a member means no limit (administrators)."""

    image_names: frozenset[str] | None = None  # lower-cased
    domain_id: str | None = None
    user_profile_name: str | None = None

    @property
    def unlimited(self) -> bool:
        return self.image_names is None and self.domain_id is None

    def fingerprint(self) -> str:
        """Goes into a list's NextToken filters, so a token is only valid for the caller's own view."""
        if self.unlimited:
            return "*"
        return f"{self.domain_id}/{self.user_profile_name}"


UNLIMITED = Visibility()


def principal_arn(account_id: str, name: str) -> str:
    return f"arn:aws:iam::{account_id}:user/byoi/{name}"


def resource_arn(ctx: ServiceContext, params: dict[str, Any]) -> str | None:
    """The ARN of the resource a request names, for refusals and the audit log (None when it names none)."""
    arns = ctx.arns
    domain, profile = params.get("DomainId"), params.get("UserProfileName")
    if isinstance(params.get("ResourceArn"), str):
        return str(params["ResourceArn"])
    for member in ("PrincipalName", "Name"):  # only the identity operations have a bare Name
        if isinstance(params.get(member), str):
            return principal_arn(ctx.settings.account_id, params[member])
    if isinstance(params.get("AccessKeyId"), str):
        return f"arn:aws:iam::{ctx.settings.account_id}:access-key/{params['AccessKeyId']}"
    if isinstance(domain, str) and isinstance(profile, str):
        if isinstance(params.get("AppName"), str):
            return arns.app(domain, profile, str(params.get("AppType") or "RSessionGateway"), params["AppName"])
        return arns.user_profile(domain, profile)
    if isinstance(domain, str):
        return arns.domain(domain)
    if isinstance(params.get("ImageName"), str):
        return arns.image(params["ImageName"])
    if isinstance(params.get("AppImageConfigName"), str):
        return arns.app_image_config(params["AppImageConfigName"])
    return None


class AccessService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def check(self, principal: Principal, operation: str, params: dict[str, Any]) -> None:
        """Refuse with AccessDeniedException naming the operation and the resource, or return."""
        if principal.is_admin:
            return
        rule = user_rule(operation)
        allowed = rule is not None and await self._satisfies(principal, rule, params)
        if not allowed:
            arn = resource_arn(self.ctx, params)
            on = f" on {arn}" if arn else ""
            raise AccessDeniedException(
                f"User {principal.name} is not authorized to perform {operation}{on}"
                + ("" if rule is None else f": {rule.value}")
            )

    @staticmethod
    def may_open_session(principal: Principal, domain_id: str, user_profile_name: str, admins: bool) -> bool:
        """Whether `principal` may use the session of that user profile through the proxy: only its owner, and
        administrators only when the server allows it (`BYOI_PROXY_ADMIN_ACCESS=1`). The one place the proxy,
        the forward-auth endpoint and the launcher ask."""
        if principal.role == "system":
            return False
        if principal.is_admin:
            return admins
        # Profile names are unique regardless of case within a domain (the store keys them lower-cased).
        return (
            principal.role == USER
            and principal.domain_id == domain_id
            and (principal.user_profile_name or "").lower() == user_profile_name.lower()
        )

    async def _satisfies(self, principal: Principal, rule: Rule, params: dict[str, Any]) -> bool:
        if rule in (Rule.ANYONE, Rule.SCOPED):
            return True
        domain, profile = params.get("DomainId"), params.get("UserProfileName")
        if rule is Rule.OWN_PROFILE:
            return principal.owns_profile(domain, profile)
        if rule is Rule.OWN_PROFILE_OR_SHARED_APP:
            shared = (params.get("UserProfileName"), params.get("AppType"), params.get("AppName")) == (
                SHARED_APP_PROFILE,
                SHARED_APP_TYPE,
                SHARED_APP_NAME,
            )
            return principal.owns_profile(domain, profile) or (
                shared and principal.domain_id is not None and domain == principal.domain_id
            )
        if rule is Rule.OWN_DOMAIN:
            return domain == principal.domain_id and (profile is None or principal.owns_profile(domain, profile))
        if rule is Rule.ATTACHED_IMAGE:
            name = params.get("ImageName")
            visible = (await visibility(self.ctx, principal)).image_names
            return isinstance(name, str) and visible is not None and name.lower() in visible
        return False


DOMAIN_IMAGES = f"DefaultUserSettings.{custom_images.RSESSION}.CustomImages"
PROFILE_IMAGES = f"UserSettings.{custom_images.RSESSION}.CustomImages"


def attached_to(domain_pk: Any, profile_pk: Any) -> sa.ColumnElement[bool]:
    """The `custom_image_refs` rows (the index of references the settings writes keep, so no settings document
    is read or parsed) of the images attached to a domain's default user settings or to one of its profiles."""
    refs = custom_image_refs
    return sa.or_(
        sa.and_(refs.c.domain_pk == domain_pk, refs.c.profile_pk.is_(None), refs.c.path == DOMAIN_IMAGES),
        sa.and_(refs.c.profile_pk == profile_pk, refs.c.path == PROFILE_IMAGES),
    )


def profile_of(user_profile_name: Any) -> sa.ColumnElement[bool]:
    """The join condition of the user profile named `user_profile_name` in `domains`' row (names ignore case)."""
    return sa.and_(
        user_profiles.c.domain_pk == domains.c.id, user_profiles.c.name_key == sa.func.lower(user_profile_name)
    )


def attached_images_query(domain_id: str, user_profile_name: str) -> sa.Select[Any]:
    """The (lower-cased) names of the images attached to a domain or to one of its profiles."""
    return (
        sa.select(custom_image_refs.c.image_name)
        .select_from(domains)
        .outerjoin(user_profiles, profile_of(user_profile_name))
        .join(custom_image_refs, attached_to(domains.c.id, user_profiles.c.id))
        .where(domains.c.domain_id == domain_id)
    )


async def read_attached_images(conn: Any, domain_id: str, user_profile_name: str) -> frozenset[str]:
    return frozenset(r.image_name for r in await conn.execute(attached_images_query(domain_id, user_profile_name)))


async def visibility(ctx: ServiceContext, principal: Principal | None = None) -> Visibility:
    """What lists may show `principal` (the current caller when not given).

    A principal authenticated by an access key carries the attached image names read in the same query as its
    key (`AccessKeyService.lookup`), a snapshot taken at the start of the request; otherwise they are read here.
    """
    principal = principal or current()
    if principal.is_admin:
        return UNLIMITED
    if principal.domain_id is None or principal.user_profile_name is None:
        return Visibility(image_names=frozenset(), domain_id="", user_profile_name="")
    names = principal.attached_images
    if names is None:
        async with ctx.db.read() as conn:
            names = await read_attached_images(conn, principal.domain_id, principal.user_profile_name)
    return Visibility(names, principal.domain_id, principal.user_profile_name)
