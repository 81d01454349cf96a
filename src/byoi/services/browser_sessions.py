"""Browser sessions: signing a browser in (password, presigned token, and later OIDC), finding who a session
cookie belongs to, signing out. Called by the `/auth/` door (`byoi.web.auth`); knows nothing of HTTP.

A session is valid only while it is not revoked, not expired, its principal still exists, and it was created
after the principal's `sessions_valid_after` (SetPrincipalPassword and RevokePrincipalSessions move that
forward; DeletePrincipal revokes the rows and removes the principal). Every check is one indexed query, made on
every request, so a revocation takes effect on the very next one, on every replica.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from byoi.auth.browser import digest, new_secret, well_formed
from byoi.auth.passwords import verify_password
from byoi.auth.principal import Principal
from byoi.services.context import ServiceContext
from byoi.store.schema_identity import browser_sessions, presigned_tokens, principals

PASSWORD_SESSION_SECONDS = 12 * 3600  # as SageMaker's default SessionExpirationDurationInSeconds


@dataclass(frozen=True)
class BrowserSession:
    principal: Principal  # door="browser"; the door adds the source address
    csrf_token: str
    expires_at: float
    via: str


@dataclass(frozen=True)
class NewSession:
    session_id: str  # the cookie's value: shown to the browser once, only its hash is kept
    session: BrowserSession


class TokenRefused(Exception):  # noqa: N818 - a refusal with its reason, not an error of the server
    """A presigned token that signs nobody in. `reason` is the audit outcome; `status` the page's HTTP status."""

    def __init__(self, reason: str, status: int, message: str, token: Any = None) -> None:
        super().__init__(message)
        self.reason, self.status, self.message, self.token = reason, status, message, token


@dataclass(frozen=True)
class Redeemed:
    new: NewSession
    domain_id: str
    user_profile_name: str
    landing_uri: str | None


def _principal(row: Any) -> Principal:
    return Principal(
        name=row.name,
        role=row.role,
        domain_id=row.domain_id,
        user_profile_name=row.user_profile_name,
        door="browser",
    )


class BrowserSessions:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def _insert(self, conn: Any, row: Any, seconds: float, via: str) -> NewSession:
        session_id, csrf, now = new_secret(), new_secret(), time.time()
        await conn.execute(
            sa.insert(browser_sessions).values(
                id_hash=digest(session_id),
                principal=row.name,
                created_at=now,
                expires_at=now + seconds,
                via=via,
                csrf_token=csrf,
            )
        )
        return NewSession(session_id, BrowserSession(_principal(row), csrf, now + seconds, via))

    async def sign_in(self, principal_name: str, via: str, seconds: float = PASSWORD_SESSION_SECONDS) -> NewSession:
        """Start a session for an existing principal: the one call every way of signing in ends with (the OIDC
        callback too). KeyError when the principal does not exist."""
        async with self.ctx.db.transaction() as conn:
            row = (await conn.execute(sa.select(principals).where(principals.c.name == principal_name))).first()
            if row is None:
                raise KeyError(principal_name)
            return await self._insert(conn, row, seconds, via)

    async def check_password(self, username: str, password: str) -> tuple[bool, bool]:
        """(the principal exists, `password` is theirs): the same work either way (argon2 checks a dummy hash for
        unknown names and for principals without a password)."""
        async with self.ctx.db.read() as conn:
            row = (await conn.execute(sa.select(principals).where(principals.c.name == username))).first()
        ok = await asyncio.to_thread(verify_password, row.password_hash if row is not None else None, password)
        return row is not None, ok and row is not None

    async def exists(self, username: str) -> bool:
        async with self.ctx.db.read() as conn:
            query = sa.select(principals.c.name).where(principals.c.name == username)
            return (await conn.execute(query)).first() is not None

    async def resolve(self, session_id: str | None) -> BrowserSession | None:
        """The live session a cookie names, or None (unknown, revoked, expired, principal gone or signed out
        everywhere since)."""
        if not session_id or not well_formed(session_id):
            return None
        query = (
            sa.select(browser_sessions, principals)
            .join(principals, principals.c.name == browser_sessions.c.principal)
            .where(
                browser_sessions.c.id_hash == digest(session_id),
                browser_sessions.c.revoked_at.is_(None),
                browser_sessions.c.expires_at > time.time(),
                browser_sessions.c.created_at > principals.c.sessions_valid_after,
            )
        )
        async with self.ctx.db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return BrowserSession(_principal(row), row.csrf_token, row.expires_at, row.via)

    async def sign_out(self, session_id: str) -> None:
        async with self.ctx.db.transaction() as conn:
            await conn.execute(
                sa.update(browser_sessions)
                .where(browser_sessions.c.id_hash == digest(session_id), browser_sessions.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )

    async def redeem(self, token: str) -> Redeemed:
        """Consume a presigned token and start its session, or raise TokenRefused. The token is marked used by a
        conditional UPDATE in the same transaction that starts the session, so of two browsers racing with one
        token exactly one is signed in."""
        if not well_formed(token):
            raise TokenRefused("TokenMalformed", 400, "This sign-in link is malformed: copy the whole URL.")
        now = time.time()
        async with self.ctx.db.transaction() as conn:
            tok = (
                await conn.execute(sa.select(presigned_tokens).where(presigned_tokens.c.id_hash == digest(token)))
            ).first()
            if tok is None:
                raise TokenRefused("TokenUnknown", 403, "This sign-in link is not valid.")
            if tok.used_at is not None:
                raise TokenRefused("TokenUsed", 403, "This sign-in link has already been used: ask for a new one.", tok)
            if tok.expires_at <= now:
                raise TokenRefused("TokenExpired", 403, "This sign-in link has expired: ask for a new one.", tok)
            row = (await conn.execute(sa.select(principals).where(principals.c.name == tok.principal))).first()
            if (
                row is None
                or (row.domain_id, row.user_profile_name) != (tok.domain_id, tok.user_profile_name)
                or row.created_at > tok.created_at
                or row.sessions_valid_after >= tok.created_at
            ):
                # Deleted, rebound or recreated, or signed out everywhere since the URL was made.
                raise TokenRefused(
                    "PrincipalRevoked", 403, "This sign-in link is no longer valid: ask for a new one.", tok
                )
            claimed = await conn.execute(
                sa.update(presigned_tokens)
                .where(presigned_tokens.c.id_hash == tok.id_hash, presigned_tokens.c.used_at.is_(None))
                .values(used_at=now)
            )
            if claimed.rowcount != 1:
                raise TokenRefused("TokenUsed", 403, "This sign-in link has already been used: ask for a new one.", tok)
            new = await self._insert(conn, row, tok.session_seconds, "presigned")
        return Redeemed(new, tok.domain_id, tok.user_profile_name, tok.landing_uri)
