"""AddTags, ListTags, DeleteTags on any byoi resource, addressed by ARN.

Each resource service registers how to tell whether an ARN of its kind exists, so tagging an ARN
that names nothing is `ResourceNotFound` rather than a silently kept orphan.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi import arns
from byoi.errors import ResourceLimitExceeded, ResourceNotFound, ValidationException
from byoi.services.context import ServiceContext
from byoi.store.schema import tags

MAX_TAGS_PER_RESOURCE = 50
DEFAULT_PAGE = 50

Exists = Callable[[AsyncConnection, tuple[str, ...]], Awaitable[bool]]


async def write_tags(conn: AsyncConnection, resource_arn: str, new_tags: list[dict[str, str]]) -> None:
    """Add or overwrite tags inside the caller's transaction (used by Create* operations too)."""
    existing = {
        r.key: r.position
        for r in await conn.execute(sa.select(tags.c.key, tags.c.position).where(tags.c.resource_arn == resource_arn))
    }
    merged_keys = set(existing) | {t["Key"] for t in new_tags}
    if len(merged_keys) > MAX_TAGS_PER_RESOURCE:
        raise ResourceLimitExceeded(
            f"{resource_arn} would have {len(merged_keys)} tags; at most {MAX_TAGS_PER_RESOURCE} are allowed"
        )
    position = max(existing.values(), default=0)
    for tag in new_tags:
        value = tag.get("Value", "")
        if tag["Key"] in existing:
            await conn.execute(
                sa.update(tags).where(tags.c.resource_arn == resource_arn, tags.c.key == tag["Key"]).values(value=value)
            )
        else:
            position += 1
            existing[tag["Key"]] = position
            await conn.execute(
                sa.insert(tags).values(resource_arn=resource_arn, key=tag["Key"], value=value, position=position)
            )


async def delete_all_tags(conn: AsyncConnection, arn_prefix: str) -> None:
    """Remove the tags of a resource, and of those under it (`<arn>` and `<arn>/...`)."""
    await conn.execute(
        sa.delete(tags).where(
            sa.or_(tags.c.resource_arn == arn_prefix, tags.c.resource_arn.startswith(arn_prefix + "/"))
        )
    )


class TagService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._kinds: dict[str, Exists] = {}

    def register_kind(self, kind: str, exists: Exists) -> None:
        self._kinds[kind] = exists

    async def _require(self, conn: AsyncConnection, resource_arn: str) -> None:
        parsed = arns.parse(resource_arn)
        if parsed is None or parsed.kind not in self._kinds:
            raise ValidationException(f"ResourceArn {resource_arn} does not name a resource byoi can tag")
        if parsed.region != self.ctx.settings.region or parsed.account_id != self.ctx.settings.account_id:
            raise ResourceNotFound(f"Resource {resource_arn} is not in this byoi's region and account")
        if not await self._kinds[parsed.kind](conn, parsed.parts):
            raise ResourceNotFound(f"Resource {resource_arn} does not exist")

    async def add_tags(self, resource_arn: str, tags: list[dict[str, str]]) -> dict[str, Any]:
        async with self.ctx.db.transaction() as conn:
            await self._require(conn, resource_arn)
            await write_tags(conn, resource_arn, tags)
        return {"Tags": tags}

    async def list_tags(
        self, resource_arn: str, next_token: str | None = None, max_results: int | None = None
    ) -> dict[str, Any]:
        limit = max_results or DEFAULT_PAGE
        start = 0
        if next_token:
            position = arns.version_number(next_token)  # a tag position is numbered like a version
            if position is None:
                raise ValidationException("NextToken is not valid: it was not returned by ListTags")
            start = position
        async with self.ctx.db.read() as conn:
            await self._require(conn, resource_arn)
            rows = (
                await conn.execute(
                    sa.select(tags.c.key, tags.c.value, tags.c.position)
                    .where(tags.c.resource_arn == resource_arn, tags.c.position > start)
                    .order_by(tags.c.position)
                    .limit(limit + 1)
                )
            ).all()
        result: dict[str, Any] = {"Tags": [{"Key": r.key, "Value": r.value} for r in rows[:limit]]}
        if len(rows) > limit:
            result["NextToken"] = str(rows[limit - 1].position)
        return result

    async def delete_tags(self, resource_arn: str, tag_keys: list[str]) -> dict[str, Any]:
        async with self.ctx.db.transaction() as conn:
            await self._require(conn, resource_arn)
            await conn.execute(sa.delete(tags).where(tags.c.resource_arn == resource_arn, tags.c.key.in_(tag_keys)))
        return {}
