"""Session activity and idle shutdown.

The proxy calls `ActivityTracker.touch(session_id)` on every request and WebSocket frame: a dict write in
memory, no I/O. Every `flush_seconds` the latest time per session is written to `apps.last_activity` in one
transaction (one UPDATE per active session, never one per frame), which DescribeApp returns as
`LastUserActivityTimestamp` and the launcher shows. A crash loses at most one interval of activity.

Idle shutdown, off by default as JupyterHub's culler and SageMaker's idle settings are: a domain tagged
`byoi:idle-timeout-minutes=<N>` (or every domain, with `BYOI_SESSION_IDLE_TIMEOUT_MINUTES`, which a tag
overrides; `0` turns it off for that domain) has its InService sessions stopped once nobody used them for N
minutes: the last activity, or the time the session became InService if it was never used. They are stopped
through `stop(domain_id, user_profile_name, app_name)`, which the composition root points at DeleteApp
through the dispatcher (the same path, the same audit record, as the system principal). The home stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import sqlalchemy as sa

from byoi.services.context import ServiceContext
from byoi.store.schema import tags
from byoi.store.schema_apps import apps
from byoi.store.schema_domains import domains

log = logging.getLogger(__name__)
IDLE_TAG = "byoi:idle-timeout-minutes"
StopSession = Callable[[str, str, str], Awaitable[object]]


def timeout_minutes(tag_value: str | None, default: float) -> float:
    """The idle timeout a domain's tag asks for (minutes; 0 = off), else the server's default."""
    if tag_value is None:
        return default
    try:
        value = float(tag_value.strip())
    except ValueError:
        return default
    return value if value >= 0 else default


class ActivityTracker:
    def __init__(
        self,
        ctx: ServiceContext,
        flush_seconds: float = 15.0,
        default_idle_minutes: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx
        self.flush_seconds = flush_seconds
        self.default_idle_minutes = default_idle_minutes
        self.clock = clock
        self.stop_session: StopSession | None = None
        self._seen: dict[str, float] = {}
        self._loop: asyncio.Task[None] | None = None

    def touch(self, session_id: str) -> None:
        self._seen[session_id] = self.clock()

    async def flush(self) -> int:
        """Write the activity seen since the last flush; the number of sessions written."""
        pending, self._seen = self._seen, {}
        if not pending:
            return 0
        async with self.ctx.db.transaction() as conn:
            for session_id, when in pending.items():
                await conn.execute(
                    sa.update(apps)
                    .where(
                        apps.c.session_id == session_id,
                        sa.or_(apps.c.last_activity.is_(None), apps.c.last_activity < when),
                    )
                    .values(last_activity=when)
                )
        return len(pending)

    async def idle_sessions(self) -> list[tuple[str, str, str]]:
        """(domain, user profile, app name) of the InService sessions idle past their domain's timeout."""
        now = self.clock()
        async with self.ctx.db.read() as conn:
            rows = list(
                await conn.execute(
                    sa.select(
                        domains.c.domain_id,
                        apps.c.session_id,
                        apps.c.profile_name,
                        apps.c.app_name,
                        apps.c.last_activity,
                        apps.c.modified_at,
                        apps.c.created_at,
                    )
                    .join(domains, domains.c.id == apps.c.domain_pk)
                    .where(apps.c.app_type == "RSessionGateway", apps.c.status == "InService")
                )
            )
            if not rows:
                return []
            domain_arns = {r.domain_id: self.ctx.arns.domain(r.domain_id) for r in rows}
            tagged = {
                t.resource_arn: t.value
                for t in await conn.execute(
                    sa.select(tags.c.resource_arn, tags.c.value).where(
                        tags.c.key == IDLE_TAG, tags.c.resource_arn.in_(set(domain_arns.values()))
                    )
                )
            }
        idle = []
        for r in rows:
            minutes = timeout_minutes(tagged.get(domain_arns[r.domain_id]), self.default_idle_minutes)
            if minutes <= 0:
                continue
            since = max(x for x in (r.last_activity, r.modified_at, r.created_at, self._seen.get(r.session_id)) if x)
            if now - since >= minutes * 60:
                idle.append((r.domain_id, r.profile_name, r.app_name))
        return idle

    async def cull(self) -> list[tuple[str, str, str]]:
        """Stop the idle sessions (after writing the activity seen, so a session used just now is kept)."""
        await self.flush()
        stopped = []
        for domain_id, profile, name in await self.idle_sessions():
            if self.stop_session is None:
                break
            try:
                await self.stop_session(domain_id, profile, name)
            except Exception as exc:  # one refusal (already deleting…) does not stop the others
                log.warning("cannot stop idle session %s/%s/%s: %s", domain_id, profile, name, exc)
                continue
            log.info("stopped session %s of %s in %s: idle past the domain's timeout", name, profile, domain_id)
            stopped.append((domain_id, profile, name))
        return stopped

    # -- background loop ------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.create_task(self._forever(), name="byoi-activity")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        with contextlib.suppress(Exception):
            await self.flush()

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.cull()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep going whatever one pass hit
                log.exception("activity flush / idle shutdown pass failed")
