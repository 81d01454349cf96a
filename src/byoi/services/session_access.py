"""Who may reach a session through the proxy, and what the proxy should do: the decision behind
`/sessions/<id>/…`, the forward-auth endpoint and the launcher's Open link, made in one place.

`SessionAccess.decide(principal, session_id)` reads the session's app (one query) and answers a typed
`Decision`: `allow` with the runtime's endpoint, or why not (`sign-in`, `forbidden`, `not-found`,
`starting` with the launch progress, `failed` with its FailureReason, `stopped`). Without a principal the
answer is always `sign-in`, before the id is looked up, so nobody learns which sessions exist without
signing in. The ownership rule itself is `AccessService.may_open_session`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import regex
import sqlalchemy as sa

from byoi.auth.principal import Principal
from byoi.runtime.base import Endpoint
from byoi.services.access import AccessService
from byoi.services.context import ServiceContext
from byoi.store.schema_apps import apps
from byoi.store.schema_domains import domains

SESSION_ID = regex.compile(r"[0-9a-f]{16}")
Kind = Literal["allow", "sign-in", "forbidden", "not-found", "starting", "failed", "stopped"]


@dataclass(frozen=True)
class Decision:
    kind: Kind
    session_id: str
    endpoint: Endpoint | None = None
    domain_id: str | None = None
    user_profile_name: str | None = None
    app_name: str | None = None
    status: str | None = None
    failure_reason: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    sso: bool = False  # the domain signs users in with its OIDC provider (AuthMode SSO)
    decided_at: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.kind == "allow"


class SessionAccess:
    def __init__(self, ctx: ServiceContext, admins_allowed: bool = False) -> None:
        self.ctx = ctx
        self.admins_allowed = admins_allowed

    async def decide(self, principal: Principal | None, session_id: str) -> Decision:
        now = time.time()
        if principal is None:
            sso_domain = await self._sso_domain(session_id)
            return Decision("sign-in", session_id, domain_id=sso_domain, sso=sso_domain is not None, decided_at=now)
        if not SESSION_ID.fullmatch(session_id):
            return Decision("not-found", session_id, decided_at=now)
        async with self.ctx.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        apps.c.profile_name,
                        apps.c.app_name,
                        apps.c.app_type,
                        apps.c.status,
                        apps.c.failure_reason,
                        apps.c.progress,
                        apps.c.backend,
                        domains.c.domain_id,
                    )
                    .join(domains, domains.c.id == apps.c.domain_pk)
                    .where(apps.c.session_id == session_id, apps.c.app_type == "RSessionGateway")
                )
            ).first()
        if row is None:
            return Decision("not-found", session_id, decided_at=now)
        facts: dict[str, Any] = {
            "domain_id": row.domain_id,
            "user_profile_name": row.profile_name,
            "app_name": row.app_name,
            "status": row.status,
            "decided_at": now,
        }
        if not AccessService.may_open_session(principal, row.domain_id, row.profile_name, self.admins_allowed):
            return Decision("forbidden", session_id, **facts)
        if row.status == "Pending":
            return Decision("starting", session_id, progress=dict(row.progress or {}), **facts)
        if row.status == "Failed":
            return Decision("failed", session_id, failure_reason=row.failure_reason, **facts)
        endpoint = Endpoint.from_json((row.backend or {}).get("Endpoint"))
        if row.status != "InService" or endpoint is None:
            return Decision("stopped", session_id, **facts)
        return Decision("allow", session_id, endpoint=endpoint, **facts)

    async def _sso_domain(self, session_id: str) -> str | None:
        """The session's domain when it signs in with SSO (the sign-in then goes to the OIDC provider)."""
        if not SESSION_ID.fullmatch(session_id):
            return None
        async with self.ctx.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(domains.c.domain_id, domains.c.spec)
                    .join(apps, apps.c.domain_pk == domains.c.id)
                    .where(apps.c.session_id == session_id)
                )
            ).first()
        return str(row.domain_id) if row is not None and (row.spec or {}).get("AuthMode") == "SSO" else None
