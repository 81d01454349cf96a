"""CreatePresignedDomainUrl: a short-lived, single-use URL that signs a browser in as one user profile.

As SageMaker: only for domains whose AuthMode is IAM (SSO domains sign in through their identity provider);
the URL is valid for ExpiresInSeconds (5-300, default 300) and signs the browser in for
SessionExpirationDurationInSeconds (1800-43200, default 43200). The token in the URL is 32 random bytes; only
its SHA-256 is stored, with the user principal bound to that profile, which the session will act as. Following
it is `GET /auth/presigned` (`byoi.web.auth`, `byoi.services.browser_sessions.BrowserSessions.redeem`).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from byoi.auth.browser import BrowserSettings, check_landing_uri, digest, new_secret
from byoi.errors import ResourceNotFound, ValidationException
from byoi.services.context import ServiceContext
from byoi.services.domains import load_domain
from byoi.services.user_profiles import load_profile
from byoi.store.schema_identity import presigned_tokens, principals

PRESIGNED_PATH = "/auth/presigned"
FORGET_AFTER = 24 * 3600  # used or expired tokens are removed this long after they expire


class PresignedUrlService:
    def __init__(self, ctx: ServiceContext, browser: BrowserSettings) -> None:
        self.ctx = ctx
        self.browser = browser

    async def create_presigned_domain_url(
        self,
        domain_id: str,
        user_profile_name: str,
        session_expiration_duration_in_seconds: int = 43200,
        expires_in_seconds: int = 300,
        space_name: str | None = None,
        landing_uri: str | None = None,
    ) -> dict[str, Any]:
        if space_name:
            raise ValidationException(
                f"SpaceName {space_name}: byoi has no spaces (RStudio sessions belong to the user profile); omit it"
            )
        landing = check_landing_uri(landing_uri)
        token, now = new_secret(), time.time()
        async with self.ctx.db.transaction() as conn:
            domain = await load_domain(conn, domain_id)
            auth_mode = domain.spec.get("AuthMode")
            if auth_mode != "IAM":
                raise ValidationException(
                    f"Domain {domain_id} uses AuthMode {auth_mode}: presigned URLs are only for IAM domains; "
                    "its users sign in through the identity provider"
                )
            profile = await load_profile(conn, domain, user_profile_name)
            bound = (
                await conn.execute(
                    sa.select(principals.c.name).where(
                        principals.c.domain_id == domain_id, principals.c.user_profile_name == profile.name
                    )
                )
            ).first()
            if bound is None:
                raise ResourceNotFound(
                    f"User profile {profile.name} in domain {domain_id} has no byoi user to sign in as: create one "
                    f"with `byoi admin users create` (Byoi.CreatePrincipal with Role user, DomainId {domain_id} and "
                    f"UserProfileName {profile.name})"
                )
            await conn.execute(sa.delete(presigned_tokens).where(presigned_tokens.c.expires_at < now - FORGET_AFTER))
            await conn.execute(
                sa.insert(presigned_tokens).values(
                    id_hash=digest(token),
                    principal=bound.name,
                    domain_id=domain_id,
                    user_profile_name=profile.name,
                    created_at=now,
                    expires_at=now + expires_in_seconds,
                    session_seconds=session_expiration_duration_in_seconds,
                    landing_uri=landing,
                )
            )
        return {"AuthorizedUrl": f"{self.browser.base_url(self.ctx.settings)}{PRESIGNED_PATH}?token={token}"}
