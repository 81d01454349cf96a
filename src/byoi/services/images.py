"""Images: named holders of image versions. CreateImage, DescribeImage, UpdateImage, DeleteImage, ListImages."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi.errors import ResourceInUse, ResourceNotFound, ValidationException
from byoi.jobs.worker import Claim, Task
from byoi.services.access import visibility
from byoi.services.context import ServiceContext
from byoi.services.tags import delete_all_tags, write_tags
from byoi.store.paging import fetch_page, time_filters
from byoi.store.schema import image_versions, images

DEFAULT_PAGE = 10
SORT_COLUMNS = {"CREATION_TIME": "created_at", "LAST_MODIFIED_TIME": "modified_at", "IMAGE_NAME": "name"}


def not_found(name: str) -> ResourceNotFound:
    # Terraform's provider matches on "No Image with the name".
    return ResourceNotFound(f"No Image with the name {name} exists")


async def load_image(conn: AsyncConnection, name: str) -> sa.Row[Any]:
    row = (await conn.execute(sa.select(images).where(images.c.name == name))).first()
    if row is None:
        raise not_found(name)
    return row


def require_not_deleting(image: sa.Row[Any]) -> None:
    if image.status == "DELETING":
        raise ResourceInUse(f"Image {image.name} is being deleted")


class ImageService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def tasks(self) -> list[Task]:
        # DELETE_FAILED (SageMaker's own state) after repeated unexpected errors; DeleteImage may be called again.
        return [Task("delete-image", images, ("DELETING",), self._finish_delete, give_up=self._give_up_deleting)]

    async def image_exists(self, conn: AsyncConnection, parts: tuple[str, ...]) -> bool:
        return bool((await conn.execute(sa.select(images.c.id).where(images.c.name == parts[0]))).first())

    def _describe(self, row: sa.Row[Any]) -> dict[str, Any]:
        return {
            **row.spec,
            "ImageName": row.name,
            "ImageArn": self.ctx.arns.image(row.name),
            "ImageStatus": row.status,
            "FailureReason": row.failure_reason,
            "CreationTime": row.created_at,
            "LastModifiedTime": row.modified_at,
        }

    async def create_image(
        self,
        image_name: str,
        role_arn: str,
        description: str | None = None,
        display_name: str | None = None,
        tags: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        now = time.time()
        spec = {
            k: v
            for k, v in {"RoleArn": role_arn, "Description": description, "DisplayName": display_name}.items()
            if v is not None
        }
        arn = self.ctx.arns.image(image_name)
        try:
            async with self.ctx.db.transaction() as conn:
                clash = (
                    await conn.execute(sa.select(images.c.name).where(images.c.name_key == image_name.lower()))
                ).first()
                if clash:
                    raise ResourceInUse(f"Image {clash.name} already exists (image names are unique ignoring case)")
                # Nothing has to happen before an image can hold versions, so it is CREATED at once.
                await conn.execute(
                    sa.insert(images).values(
                        name=image_name,
                        name_key=image_name.lower(),
                        status="CREATED",
                        spec=spec,
                        created_at=now,
                        modified_at=now,
                    )
                )
                if tags:
                    await write_tags(conn, arn, tags)
        except IntegrityError:
            raise ResourceInUse(f"Image {image_name} already exists") from None
        return {"ImageArn": arn}

    async def describe_image(self, image_name: str) -> dict[str, Any]:
        async with self.ctx.db.read() as conn:
            return self._describe(await load_image(conn, image_name))

    async def update_image(
        self,
        image_name: str,
        delete_properties: list[str] | None = None,
        description: str | None = None,
        display_name: str | None = None,
        role_arn: str | None = None,
    ) -> dict[str, Any]:
        changes = {
            k: v
            for k, v in {"Description": description, "DisplayName": display_name, "RoleArn": role_arn}.items()
            if v is not None
        }
        for prop in delete_properties or []:
            if prop in changes:
                raise ValidationException(f"{prop} cannot be both set and listed in DeleteProperties")
        async with self.ctx.db.transaction() as conn:
            image = await load_image(conn, image_name)
            require_not_deleting(image)
            spec = {k: v for k, v in {**image.spec, **changes}.items() if k not in (delete_properties or [])}
            # UPDATING lasts no time here: there is nothing to re-provision, so the image stays CREATED.
            await conn.execute(
                sa.update(images)
                .where(images.c.id == image.id)
                .values(spec=spec, modified_at=time.time(), status="CREATED", failure_reason=None)
            )
        return {"ImageArn": self.ctx.arns.image(image_name)}

    async def delete_image(self, image_name: str) -> dict[str, Any]:
        async with self.ctx.db.transaction() as conn:
            image = await load_image(conn, image_name)
            require_not_deleting(image)
            referrers = await self.ctx.referrers(conn, "image", image.name)
            if referrers:
                raise ResourceInUse(f"Image {image.name} is still used by {', '.join(referrers)}; detach it first")
            await conn.execute(
                sa.update(images)
                .where(images.c.id == image.id)
                .values(status="DELETING", modified_at=time.time(), attempts=0, next_attempt_at=None)
            )
        self.ctx.worker.wake()
        return {}

    async def _finish_delete(self, claim: Claim) -> None:
        """Remove the image's versions, aliases and tags, then the image (versions first, one transaction)."""
        async with self.ctx.db.transaction() as conn:
            image = (await conn.execute(sa.select(images).where(claim.owns(), images.c.status == "DELETING"))).first()
            if image is None:
                return
            await delete_all_tags(conn, self.ctx.arns.image(image.name))
            await delete_all_tags(conn, self.ctx.arns.image_version(image.name, 0).rsplit("/", 1)[0])
            await conn.execute(sa.delete(image_versions).where(image_versions.c.image_id == image.id))
            await conn.execute(sa.delete(images).where(images.c.id == image.id))

    async def _give_up_deleting(self, claim: Claim, reason: str) -> None:
        async with self.ctx.db.transaction() as conn:
            await conn.execute(
                sa.update(images)
                .where(claim.owns(), images.c.status == "DELETING")
                .values(
                    status="DELETE_FAILED",
                    failure_reason=f"Internal error while deleting the image: {reason}"[:1024],
                    modified_at=time.time(),
                )
            )

    async def list_images(
        self,
        creation_time_after: float | None = None,
        creation_time_before: float | None = None,
        last_modified_time_after: float | None = None,
        last_modified_time_before: float | None = None,
        max_results: int | None = None,
        name_contains: str | None = None,
        next_token: str | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> dict[str, Any]:
        filters = dict(locals())
        filters.pop("self")
        filters.pop("next_token")
        filters.pop("max_results")
        sort_by = sort_by or "CREATION_TIME"
        sort_column = images.c[SORT_COLUMNS[sort_by]]
        conds = time_filters(images.c.created_at, images.c.modified_at, filters)
        seen = await visibility(self.ctx)
        filters["scope"] = seen.fingerprint()
        if seen.image_names is not None:  # a user: only what is attached to their domain or profile
            conds.append(images.c.name_key.in_(sorted(seen.image_names)))
        if name_contains:
            conds.append(images.c.name_key.contains(name_contains.lower(), autoescape=True))
        query = sa.select(images).where(*conds)
        async with self.ctx.db.read() as conn:
            page = await fetch_page(
                conn,
                query,
                sort_column,
                images.c.id,
                (sort_order or "DESCENDING") == "DESCENDING",
                max_results or DEFAULT_PAGE,
                next_token,
                filters,
                SORT_COLUMNS[sort_by],
            )
        return {"Images": [self._describe(r) for r in page.rows], "NextToken": page.next_token}
