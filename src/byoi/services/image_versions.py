"""Image versions and their aliases, and the background work that pins a version to a registry digest.

A version is numbered from its image's counter (one UPDATE ... RETURNING, so concurrent creates get
distinct consecutive numbers), starts `CREATING`, and becomes `CREATED` once its `BaseImage` resolves:
`ContainerImage` is then `<registry>/<repository>@sha256:...` and never changes again, whatever is later
pushed to the same tag. Transient registry errors are retried with back-off before the version fails.
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi import arns
from byoi.errors import ResourceInUse, ResourceNotFound, ValidationException
from byoi.jobs.worker import Claim, RetryLater, Task
from byoi.registry import reference
from byoi.registry.errors import RegistryBadContent, RegistryError, RegistryNotFound
from byoi.services.context import ServiceContext
from byoi.services.images import load_image, require_not_deleting
from byoi.services.tags import delete_all_tags
from byoi.store.paging import fetch_page, time_filters
from byoi.store.schema import image_version_aliases as aliases_t
from byoi.store.schema import image_versions as versions_t
from byoi.store.schema import images as images_t

DEFAULT_PAGE = 10
MAX_CONFIG_BYTES = 1 << 20  # an image config is a few KiB; one this big is not worth reading for its platform
SORT_COLUMNS = {"CREATION_TIME": "created_at", "LAST_MODIFIED_TIME": "modified_at", "VERSION": "version"}
# Members byoi keeps and echoes but does not act on.
ECHOED = {
    "vendor_guidance": "VendorGuidance",
    "job_type": "JobType",
    "ml_framework": "MLFramework",
    "programming_lang": "ProgrammingLang",
    "processor": "Processor",
    "horovod": "Horovod",
    "release_notes": "ReleaseNotes",
}


def _echoed(values: dict[str, Any]) -> dict[str, Any]:
    return {wire: values[snake] for snake, wire in ECHOED.items() if values.get(snake) is not None}


def parse_base_image(base_image: str) -> reference.Reference:
    try:
        return reference.parse(base_image)
    except reference.InvalidReference as exc:
        raise ValidationException(f"BaseImage is not a valid image reference: {exc}") from None


async def find_version(
    conn: AsyncConnection, query: sa.Select[Any], image: Any, version: int | None, alias: str | None, what: str = ""
) -> sa.Row[Any]:
    """Narrow `query` (a select over image_versions, maybe with more columns) to the version of `image`
    named by number or alias, or the newest when neither is given; ResourceNotFound saying which is missing.
    `what` prefixes the member names in the error (e.g. "From" for a diff's FromVersion/FromAlias)."""
    if version is not None and alias is not None:
        raise ValidationException(f"Specify either {what}Version or {what}Alias, not both")
    query = query.where(versions_t.c.image_id == image.id)
    if alias is not None:
        query = query.join(aliases_t, aliases_t.c.version_id == versions_t.c.id).where(aliases_t.c.alias == alias)
        missing = f"No ImageVersion with the alias {alias} exists for image {image.name}"
    elif version is not None:
        query = query.where(versions_t.c.version == version)
        missing = f"No ImageVersion with the name {image.name} and version {version} exists"
    else:
        query = query.order_by(versions_t.c.version.desc()).limit(1)
        missing = f"Image {image.name} has no versions"
    row = (await conn.execute(query)).first()
    if row is None:
        raise ResourceNotFound(missing)
    return row


def _check_alias_list(name: str, aliases: list[str]) -> None:
    seen = set()
    for alias in aliases:
        if alias in seen:
            raise ValidationException(f"{name} lists alias {alias!r} more than once")
        seen.add(alias)


class ImageVersionService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def tasks(self) -> list[Task]:
        settings = self.ctx.settings
        return [
            # An unexpected error (a bug, or a malformed image nobody foresaw) is tried as often as a transient
            # registry error, then ends the version CREATE_FAILED instead of leaving it CREATING for ever.
            Task(
                "resolve-image-version",
                versions_t,
                ("CREATING",),
                self._resolve,
                give_up=self._give_up_resolving,
                max_failures=settings.resolve_attempts,
                failure_delay=settings.retry_base_delay,
            ),
            # DELETE_FAILED is SageMaker's own state for this; DeleteImageVersion may be called again from it.
            Task(
                "delete-image-version", versions_t, ("DELETING",), self._finish_delete, give_up=self._give_up_deleting
            ),
        ]

    async def version_exists(self, conn: AsyncConnection, parts: tuple[str, ...]) -> bool:
        number = arns.version_number(parts[1]) if len(parts) == 2 else None
        if number is None:
            return False
        row = await conn.execute(
            sa.select(versions_t.c.id)
            .join(images_t, images_t.c.id == versions_t.c.image_id)
            .where(images_t.c.name_key == parts[0], versions_t.c.version == number)
        )
        return row.first() is not None

    # -- reading --------------------------------------------------------------------------------

    async def _aliases_of(self, conn: AsyncConnection, version_id: int) -> list[str]:
        rows = await conn.execute(
            sa.select(aliases_t.c.alias).where(aliases_t.c.version_id == version_id).order_by(aliases_t.c.alias)
        )
        return [r.alias for r in rows]

    async def _find(
        self, conn: AsyncConnection, image: sa.Row[Any], version: int | None, alias: str | None
    ) -> sa.Row[Any]:
        return await find_version(conn, sa.select(versions_t), image, version, alias)

    def _summary(self, image_name: str, row: sa.Row[Any]) -> dict[str, Any]:
        return {
            "ImageArn": self.ctx.arns.image(image_name),
            "ImageVersionArn": self.ctx.arns.image_version(image_name, row.version),
            "ImageVersionStatus": row.status,
            "FailureReason": row.failure_reason,
            "Version": row.version,
            "CreationTime": row.created_at,
            "LastModifiedTime": row.modified_at,
        }

    async def describe_image_version(
        self, image_name: str, version: int | None = None, alias: str | None = None
    ) -> dict[str, Any]:
        async with self.ctx.db.read() as conn:
            row = None
            if version is not None and alias is None:
                # The common case in one statement (each costs a thread hop on SQLite); the general path
                # below also tells a missing image from a missing version when this finds nothing.
                row = (
                    await conn.execute(
                        sa.select(versions_t)
                        .join(images_t, images_t.c.id == versions_t.c.image_id)
                        .where(images_t.c.name == image_name, versions_t.c.version == version)
                    )
                ).first()
            if row is None:
                row = await self._find(conn, await load_image(conn, image_name), version, alias)
        return {
            **row.spec,
            **self._summary(image_name, row),
            "BaseImage": row.base_image,
            "ContainerImage": row.container_image,
        }

    async def list_image_versions(
        self,
        image_name: str,
        creation_time_after: float | None = None,
        creation_time_before: float | None = None,
        last_modified_time_after: float | None = None,
        last_modified_time_before: float | None = None,
        max_results: int | None = None,
        next_token: str | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> dict[str, Any]:
        filters = {k: v for k, v in locals().items() if k not in ("self", "next_token", "max_results")}
        sort_by = sort_by or "CREATION_TIME"
        async with self.ctx.db.read() as conn:
            image = await load_image(conn, image_name)
            conds = time_filters(versions_t.c.created_at, versions_t.c.modified_at, filters)
            page = await fetch_page(
                conn,
                sa.select(versions_t).where(versions_t.c.image_id == image.id, *conds),
                versions_t.c[SORT_COLUMNS[sort_by]],
                versions_t.c.id,
                (sort_order or "DESCENDING") == "DESCENDING",
                max_results or DEFAULT_PAGE,
                next_token,
                filters,
                SORT_COLUMNS[sort_by],
            )
        return {"ImageVersions": [self._summary(image.name, r) for r in page.rows], "NextToken": page.next_token}

    async def list_aliases(
        self,
        image_name: str,
        alias: str | None = None,
        version: int | None = None,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        async with self.ctx.db.read() as conn:
            image = await load_image(conn, image_name)
            query = sa.select(aliases_t.c.alias.label("id"), aliases_t.c.alias).where(aliases_t.c.image_id == image.id)
            if alias is not None or version is not None:
                row = await self._find(conn, image, version, alias)
                query = query.where(aliases_t.c.version_id == row.id)
            page = await fetch_page(
                conn,
                query,
                aliases_t.c.alias,
                aliases_t.c.alias,
                False,
                max_results or DEFAULT_PAGE,
                next_token,
                {"image": image.name, "alias": alias, "version": version},
                "alias",
            )
        return {"SageMakerImageVersionAliases": [r.alias for r in page.rows], "NextToken": page.next_token}

    # -- writing --------------------------------------------------------------------------------

    async def _add_aliases(self, conn: AsyncConnection, image: sa.Row[Any], version_id: int, names: list[str]) -> None:
        if not names:
            return
        taken = await conn.execute(
            sa.select(aliases_t.c.alias, versions_t.c.version)
            .join(versions_t, versions_t.c.id == aliases_t.c.version_id)
            .where(aliases_t.c.image_id == image.id, aliases_t.c.alias.in_(names), aliases_t.c.version_id != version_id)
        )
        for clash in taken:
            raise ResourceInUse(f"Alias {clash.alias} already points at version {clash.version} of image {image.name}")
        existing = set(await self._aliases_of(conn, version_id))
        for name in names:
            if name not in existing:
                await conn.execute(sa.insert(aliases_t).values(image_id=image.id, alias=name, version_id=version_id))

    async def create_image_version(
        self, image_name: str, base_image: str, client_token: str, aliases: list[str] | None = None, **echoed: Any
    ) -> dict[str, Any]:
        parse_base_image(base_image)
        _check_alias_list("Aliases", aliases or [])
        now = time.time()
        async with self.ctx.db.transaction() as conn:
            image = await load_image(conn, image_name)
            require_not_deleting(image)
            earlier = (
                await conn.execute(
                    sa.select(versions_t).where(
                        versions_t.c.image_id == image.id, versions_t.c.client_token == client_token
                    )
                )
            ).first()
            if earlier is not None:
                if earlier.base_image != base_image:
                    raise ValidationException(
                        f"ClientToken {client_token} was already used for version {earlier.version} "
                        f"with a different BaseImage ({earlier.base_image})"
                    )
                return {"ImageVersionArn": self.ctx.arns.image_version(image.name, earlier.version)}
            number = (
                await conn.execute(
                    sa.update(images_t)
                    .where(images_t.c.id == image.id)
                    .values(last_version=images_t.c.last_version + 1, modified_at=now)
                    .returning(images_t.c.last_version)
                )
            ).scalar_one()
            version_id = (
                await conn.execute(
                    sa.insert(versions_t)
                    .values(
                        image_id=image.id,
                        version=number,
                        status="CREATING",
                        base_image=base_image,
                        client_token=client_token,
                        spec=_echoed(echoed),
                        created_at=now,
                        modified_at=now,
                    )
                    .returning(versions_t.c.id)
                )
            ).scalar_one()
            await self._add_aliases(conn, image, version_id, aliases or [])
        self.ctx.worker.wake()
        return {"ImageVersionArn": self.ctx.arns.image_version(image.name, number)}

    async def describe_image_reference(self, image_reference: str) -> dict[str, Any]:
        """Byoi.DescribeImageReference: resolve a reference as a new version's BaseImage would be resolved (the
        default registry when it names none, the runtime platform), and read its config for the platform;
        nothing is created or stored."""
        try:
            ref = reference.parse(image_reference)
        except reference.InvalidReference as exc:
            raise ValidationException(f"ImageReference is not valid: {exc}") from None
        settings = self.ctx.settings
        if ref.registry is None:
            ref = ref.with_registry(settings.default_registry.host)
        try:
            resolved = await self.ctx.registry.resolve(ref, settings.platform)
            platform = await self._platform_of(resolved)
        except RegistryNotFound as exc:
            raise ResourceNotFound(f"Cannot resolve {ref}: {exc}") from None
        except RegistryError as exc:
            raise ValidationException(f"Cannot resolve {ref}: {exc}") from None
        layers = resolved.manifest.get("layers")
        layers = layers if isinstance(layers, list) else []
        sizes = [layer.get("size") for layer in layers if isinstance(layer, dict)]
        return {
            "ImageReference": str(ref),
            "Registry": resolved.registry,
            "Repository": resolved.repository,
            "Digest": resolved.digest,
            "IndexDigest": resolved.index_digest,
            "PinnedImage": resolved.pinned,
            "MediaType": resolved.media_type,
            "Platform": platform,
            "CompressedSize": sum(s for s in sizes if isinstance(s, int) and not isinstance(s, bool) and s >= 0),
            "LayerCount": len(layers),
        }

    async def _platform_of(self, resolved: Any) -> str | None:
        """`os/architecture[/variant]` from the image's config blob (None when the manifest names no config)."""
        config = resolved.manifest.get("config")
        digest = config.get("digest") if isinstance(config, dict) else None
        if not isinstance(digest, str) or not reference.DIGEST.fullmatch(digest):
            return None
        data = b""
        stream = self.ctx.registry.stream_blob(resolved.registry, resolved.repository, digest)
        try:
            async for chunk in stream:
                data += chunk
                if len(data) > MAX_CONFIG_BYTES:
                    raise RegistryBadContent(f"the config of {resolved.pinned} is larger than {MAX_CONFIG_BYTES} bytes")
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator: closes the response
        try:
            body = json.loads(data)
        except ValueError:
            raise RegistryBadContent(f"the config of {resolved.pinned} is not JSON") from None
        if not isinstance(body, dict):
            return None
        parts = [body.get(k) for k in ("os", "architecture", "variant")]
        return "/".join(p for p in parts if isinstance(p, str) and p) or None

    async def update_image_version(
        self,
        image_name: str,
        alias: str | None = None,
        version: int | None = None,
        aliases_to_add: list[str] | None = None,
        aliases_to_delete: list[str] | None = None,
        **echoed: Any,
    ) -> dict[str, Any]:
        _check_alias_list("AliasesToAdd", aliases_to_add or [])
        both = set(aliases_to_add or []) & set(aliases_to_delete or [])
        if both:
            raise ValidationException(f"Alias {sorted(both)[0]} is in both AliasesToAdd and AliasesToDelete")
        async with self.ctx.db.transaction() as conn:
            image = await load_image(conn, image_name)
            require_not_deleting(image)
            row = await self._find(conn, image, version, alias)
            if row.status == "DELETING":
                raise ResourceInUse(f"Version {row.version} of image {image.name} is being deleted")
            if aliases_to_delete:
                await conn.execute(
                    sa.delete(aliases_t).where(
                        aliases_t.c.version_id == row.id, aliases_t.c.alias.in_(aliases_to_delete)
                    )
                )
            await self._add_aliases(conn, image, row.id, aliases_to_add or [])
            await conn.execute(
                sa.update(versions_t)
                .where(versions_t.c.id == row.id)
                .values(spec={**row.spec, **_echoed(echoed)}, modified_at=time.time())
            )
        return {"ImageVersionArn": self.ctx.arns.image_version(image.name, row.version)}

    async def delete_image_version(
        self, image_name: str, version: int | None = None, alias: str | None = None
    ) -> dict[str, Any]:
        if version is None and alias is None:
            raise ValidationException("Specify the Version or the Alias of the image version to delete")
        async with self.ctx.db.transaction() as conn:
            image = await load_image(conn, image_name)
            row = await self._find(conn, image, version, alias)
            if row.status == "DELETING":
                raise ResourceInUse(f"Version {row.version} of image {image.name} is already being deleted")
            referrers = await self.ctx.referrers(conn, "image-version", image.name, row.version)
            if referrers:
                raise ResourceInUse(
                    f"Version {row.version} of image {image.name} is still used by {', '.join(referrers)}; "
                    "detach it first"
                )
            await conn.execute(
                sa.update(versions_t)
                .where(versions_t.c.id == row.id)
                .values(status="DELETING", modified_at=time.time(), attempts=0, next_attempt_at=None)
            )
        self.ctx.worker.wake()
        return {}

    # -- background work ------------------------------------------------------------------------

    async def _finish_delete(self, claim: Claim) -> None:
        async with self.ctx.db.transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(versions_t, images_t.c.name)
                    .join(images_t, images_t.c.id == versions_t.c.image_id)
                    .where(claim.owns(), versions_t.c.status == "DELETING")
                )
            ).first()
            if row is None:
                return
            await delete_all_tags(conn, self.ctx.arns.image_version(row.name, row.version))
            await conn.execute(sa.delete(versions_t).where(versions_t.c.id == row.id))

    async def _resolve(self, claim: Claim) -> None:
        """Pin a CREATING version to the digest its BaseImage names now."""
        async with self.ctx.db.read() as conn:
            row = (
                await conn.execute(sa.select(versions_t).where(claim.owns(), versions_t.c.status == "CREATING"))
            ).first()
        if row is None:
            return
        settings = self.ctx.settings
        ref = parse_base_image(row.base_image)
        if ref.registry is None:
            ref = ref.with_registry(settings.default_registry.host)
        try:
            resolved = await self.ctx.registry.resolve(ref, settings.platform)
            for check in self.ctx.version_checks:
                failure = await check(row, resolved)
                if failure:
                    await self._settle(claim, "CREATE_FAILED", failure_reason=failure[:1024])
                    return
        except RegistryError as exc:
            if exc.transient and claim.attempts < settings.resolve_attempts:
                raise RetryLater(settings.retry_base_delay * 2 ** (claim.attempts - 1), str(exc)) from exc
            reason = f"Cannot resolve BaseImage {row.base_image}: {exc}"
            if exc.transient:
                reason += f" (gave up after {claim.attempts} attempts)"
            await self._settle(claim, "CREATE_FAILED", failure_reason=reason[:1024])
            return
        await self._settle(claim, "CREATED", container_image=resolved.pinned)

    async def _give_up_resolving(self, claim: Claim, reason: str) -> None:
        failure = f"Internal error while resolving or inspecting the BaseImage: {reason}"
        await self._settle(claim, "CREATE_FAILED", failure_reason=failure[:1024])

    async def _give_up_deleting(self, claim: Claim, reason: str) -> None:
        async with self.ctx.db.transaction() as conn:
            await conn.execute(
                sa.update(versions_t)
                .where(claim.owns(), versions_t.c.status == "DELETING")
                .values(
                    status="DELETE_FAILED",
                    failure_reason=f"Internal error while deleting the version: {reason}"[:1024],
                    modified_at=time.time(),
                )
            )

    async def _settle(self, claim: Claim, status: str, **values: Any) -> None:
        async with self.ctx.db.transaction() as conn:
            await conn.execute(
                sa.update(versions_t)
                .where(claim.owns(), versions_t.c.status == "CREATING")
                .values(status=status, modified_at=time.time(), **values)
            )
