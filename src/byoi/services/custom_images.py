"""What domain and user-profile settings say about custom images, and the rules byoi applies to it.

Settings name images in two ways: `CustomImages` lists (`{ImageName, ImageVersionNumber?, AppImageConfigName}`,
found under `RSessionAppSettings`, `KernelGatewayAppSettings`, `JupyterLabAppSettings`, ...) and
`DefaultResourceSpec` ARNs. Every such reference is validated when it is written (the image exists, a given
version exists and is CREATED, the app image config exists, at most 200 entries, no duplicates), and indexed
in `custom_image_refs` so that deleting a referenced image, version or app image config can be refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi import arns
from byoi.errors import ResourceInUse, ResourceNotFound, ValidationException
from byoi.services.context import ServiceContext
from byoi.store.schema import image_versions, images
from byoi.store.schema_domains import app_image_configs, custom_image_refs, domains, user_profiles

MAX_CUSTOM_IMAGES = 200
MAX_REFERRERS_SHOWN = 10
RSESSION = "RSessionAppSettings"


@dataclass(frozen=True)
class Ref:
    path: str
    image_name: str  # lower-cased: image names are unique ignoring case
    image_version: int | None
    app_image_config_name: str | None


def custom_image_lists(settings: Any, path: str) -> Iterator[tuple[str, list[Any]]]:
    """Every `CustomImages` list in a settings structure, with its dotted path."""
    if not isinstance(settings, dict):
        return
    for key, value in settings.items():
        sub = f"{path}.{key}"
        if key == "CustomImages" and isinstance(value, list):
            yield sub, value
        elif isinstance(value, dict):
            yield from custom_image_lists(value, sub)


def resource_specs(settings: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every `DefaultResourceSpec` in a settings structure, with its dotted path."""
    if not isinstance(settings, dict):
        return
    for key, value in settings.items():
        sub = f"{path}.{key}"
        if key == "DefaultResourceSpec" and isinstance(value, dict):
            yield sub, value
        elif isinstance(value, dict):
            yield from resource_specs(value, sub)


def describe_entry(path: str, index: int, entry: dict[str, Any]) -> str:
    version = entry.get("ImageVersionNumber")
    what = entry.get("ImageName", "?") + (f":{version}" if version is not None else "")
    return f"{path}[{index + 1}] ({what})"


def _own_arn(ctx: ServiceContext, value: str | None, kind: str) -> arns.ParsedArn | None:
    """The parsed ARN when it names a resource of `kind` in this byoi; None for other accounts' resources
    (such as the built-in RStudio images AWS owns), which are kept and echoed unchecked."""
    if not value or value == "None":
        return None
    parsed = arns.parse(value)
    if parsed is None or parsed.kind != kind:
        return None
    if parsed.region != ctx.settings.region or parsed.account_id != ctx.settings.account_id:
        return None
    return parsed


def collect_refs(ctx: ServiceContext, roots: dict[str, Any]) -> list[Ref]:
    """The references a (merged, stored) settings document makes; no I/O."""
    refs: list[Ref] = []
    for root, settings in roots.items():
        for path, entries in custom_image_lists(settings, root):
            for entry in entries:
                refs.append(
                    Ref(path, entry["ImageName"].lower(), entry.get("ImageVersionNumber"), entry["AppImageConfigName"])
                )
        for path, spec in resource_specs(settings, root):
            image = _own_arn(ctx, spec.get("SageMakerImageArn"), "image")
            if image is not None:
                refs.append(Ref(path, image.parts[0].lower(), None, None))
            version = _own_arn(ctx, spec.get("SageMakerImageVersionArn"), "image-version")
            name_and_number = None if version is None else arns.image_version_of(version)
            if name_and_number is not None:
                refs.append(Ref(path, name_and_number[0].lower(), name_and_number[1], None))
    return refs


class _Lookups:
    """Per-request cache of image, version and app image config rows, read with a share lock (PostgreSQL)
    so that a concurrent delete of the same row waits for this write to commit and then sees its refs."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.images: dict[str, Any] = {}
        self.versions: dict[tuple[int, int], Any] = {}
        self.configs: dict[str, Any] = {}

    async def image(self, name: str, by_key: bool = False) -> Any:
        cache_key = ("k:" if by_key else "n:") + (name.lower() if by_key else name)
        if cache_key not in self.images:
            column = images.c.name_key if by_key else images.c.name
            query = sa.select(images).where(column == (name.lower() if by_key else name))
            self.images[cache_key] = (await self.conn.execute(query.with_for_update(read=True))).first()
        return self.images[cache_key]

    async def version(self, image: Any, number: int) -> Any:
        key = (image.id, number)
        if key not in self.versions:
            query = sa.select(image_versions).where(
                image_versions.c.image_id == image.id, image_versions.c.version == number
            )
            self.versions[key] = (await self.conn.execute(query.with_for_update(read=True))).first()
        return self.versions[key]

    async def config(self, name: str) -> Any:
        if name not in self.configs:
            query = sa.select(app_image_configs.c.id).where(app_image_configs.c.name == name)
            self.configs[name] = (await self.conn.execute(query.with_for_update(read=True))).first()
        return self.configs[name]


async def _check_image_version(lookups: _Lookups, what: str, image: Any, number: int) -> None:
    version = await lookups.version(image, number)
    if version is None:
        raise ResourceNotFound(f"{what}: No ImageVersion with the name {image.name} and version {number} exists")
    if version.status != "CREATED":
        raise ValidationException(
            f"{what}: version {number} of image {image.name} is {version.status}; only CREATED versions can be attached"
        )


async def _check_image(lookups: _Lookups, what: str, name: str, by_key: bool = False) -> Any:
    image = await lookups.image(name, by_key)
    if image is None:
        raise ResourceNotFound(f"{what}: No Image with the name {name} exists")
    if image.status == "DELETING":
        raise ResourceInUse(f"{what}: Image {image.name} is being deleted")
    return image


async def _validate_list(lookups: _Lookups, path: str, entries: list[dict[str, Any]]) -> None:
    if len(entries) > MAX_CUSTOM_IMAGES:
        raise ValidationException(f"{path} has {len(entries)} entries; at most {MAX_CUSTOM_IMAGES} are allowed")
    seen: dict[tuple[str, int | None], int] = {}
    for index, entry in enumerate(entries):
        what = describe_entry(path, index, entry)
        key = (entry["ImageName"].lower(), entry.get("ImageVersionNumber"))
        if key in seen:
            raise ValidationException(f"{what} duplicates entry {seen[key] + 1}; each image version may be listed once")
        seen[key] = index
        image = await _check_image(lookups, what, entry["ImageName"])
        if entry.get("ImageVersionNumber") is not None:
            await _check_image_version(lookups, what, image, entry["ImageVersionNumber"])
        if await lookups.config(entry["AppImageConfigName"]) is None:
            raise ResourceNotFound(f"{what}: No AppImageConfig with the name {entry['AppImageConfigName']} exists")


async def _validate_spec(ctx: ServiceContext, lookups: _Lookups, path: str, spec: dict[str, Any]) -> None:
    image_arn = _own_arn(ctx, spec.get("SageMakerImageArn"), "image")
    if image_arn is not None:
        await _check_image(lookups, f"{path}.SageMakerImageArn", image_arn.parts[0])
    version_arn = _own_arn(ctx, spec.get("SageMakerImageVersionArn"), "image-version")
    if version_arn is not None:
        what = f"{path}.SageMakerImageVersionArn"
        name_and_number = arns.image_version_of(version_arn)
        if name_and_number is None:
            raise ValidationException(f"{what} is not an image version ARN (or its version number is too large)")
        image = await _check_image(lookups, what, name_and_number[0], by_key=True)
        await _check_image_version(lookups, what, image, name_and_number[1])


async def validate(ctx: ServiceContext, conn: AsyncConnection, roots: dict[str, Any]) -> None:
    """Check every image reference in the given (request) settings; raise naming the first bad entry."""
    lookups = _Lookups(conn)
    for root, settings in roots.items():
        if settings is None:
            continue
        for path, entries in custom_image_lists(settings, root):
            await _validate_list(lookups, path, entries)
        for path, spec in resource_specs(settings, root):
            await _validate_spec(ctx, lookups, path, spec)


async def write_refs(conn: AsyncConnection, domain_pk: int, profile_pk: int | None, refs: list[Ref]) -> None:
    """Replace the index rows of one domain's own settings (profile_pk None) or one profile's."""
    owner = (
        custom_image_refs.c.profile_pk.is_(None) if profile_pk is None else custom_image_refs.c.profile_pk == profile_pk
    )
    await conn.execute(sa.delete(custom_image_refs).where(custom_image_refs.c.domain_pk == domain_pk, owner))
    if refs:
        await conn.execute(
            sa.insert(custom_image_refs),
            [
                {
                    "domain_pk": domain_pk,
                    "profile_pk": profile_pk,
                    "path": r.path,
                    "image_name": r.image_name,
                    "image_version": r.image_version,
                    "app_image_config_name": r.app_image_config_name,
                }
                for r in refs
            ],
        )


def referrer_check(ctx: ServiceContext):  # type: ignore[no-untyped-def]
    """The function byoi's image services call (through `ctx.referrer_checks`) before a delete."""

    async def check(conn: AsyncConnection, kind: str, name: str, version: int | None) -> list[str]:
        # Take the row lock first: a concurrent attach holds a share lock on the same row until it commits,
        # so once this returns its refs are visible to the query below (PostgreSQL, read committed).
        if kind in ("image", "image-version"):
            await conn.execute(sa.select(images.c.id).where(images.c.name_key == name.lower()).with_for_update())
            cond = custom_image_refs.c.image_name == name.lower()
            if kind == "image-version":
                cond = sa.and_(cond, custom_image_refs.c.image_version == version)
        elif kind == "app-image-config":
            await conn.execute(
                sa.select(app_image_configs.c.id).where(app_image_configs.c.name == name).with_for_update()
            )
            cond = custom_image_refs.c.app_image_config_name == name
        else:
            return []
        rows = await conn.execute(
            sa.select(domains.c.domain_id, user_profiles.c.name, custom_image_refs.c.path)
            .select_from(custom_image_refs)
            .join(domains, domains.c.id == custom_image_refs.c.domain_pk)
            .outerjoin(user_profiles, user_profiles.c.id == custom_image_refs.c.profile_pk)
            .where(cond)
            .distinct()
            .order_by(domains.c.domain_id, user_profiles.c.name, custom_image_refs.c.path)
        )
        found = [
            f"user profile {r.name} in domain {r.domain_id} ({r.path})"
            if r.name
            else f"domain {r.domain_id} ({r.path})"
            for r in rows
        ]
        if len(found) > MAX_REFERRERS_SHOWN:
            found = found[:MAX_REFERRERS_SHOWN] + [f"and {len(found) - MAX_REFERRERS_SHOWN} more"]
        return found

    return check


def merge_members(stored: dict[str, Any] | None, given: dict[str, Any] | None) -> dict[str, Any]:
    """Partial update (reference/sagemaker-api.md 6.3): members present replace, absent ones are kept."""
    return {**(stored or {}), **(given or {})}


def rsession_images(settings: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list(((settings or {}).get(RSESSION) or {}).get("CustomImages") or [])


async def resolve_entry(conn: AsyncConnection, ctx: ServiceContext, entry: dict[str, Any]) -> dict[str, Any]:
    """What one CustomImages entry means now: the version it resolves to (the given one, else the newest
    CREATED one), its pinned container image, or the problem that stops it from being launched."""
    out: dict[str, Any] = {
        "ImageName": entry["ImageName"],
        "AppImageConfigName": entry["AppImageConfigName"],
        "ImageVersionNumber": entry.get("ImageVersionNumber"),
    }
    image = (await conn.execute(sa.select(images).where(images.c.name == entry["ImageName"]))).first()
    if image is None:
        return {**out, "Problem": f"No Image with the name {entry['ImageName']} exists"}
    out["ImageArn"] = ctx.arns.image(image.name)
    query = sa.select(image_versions).where(image_versions.c.image_id == image.id)
    if entry.get("ImageVersionNumber") is not None:
        query = query.where(image_versions.c.version == entry["ImageVersionNumber"])
    else:
        query = query.where(image_versions.c.status == "CREATED").order_by(image_versions.c.version.desc()).limit(1)
    version = (await conn.execute(query)).first()
    if version is None:
        problem = (
            f"Version {entry['ImageVersionNumber']} of image {image.name} does not exist"
            if entry.get("ImageVersionNumber") is not None
            else f"Image {image.name} has no CREATED version yet"
        )
        return {**out, "Problem": problem}
    out.update(
        ResolvedVersionNumber=version.version,
        ImageVersionArn=ctx.arns.image_version(image.name, version.version),
        ImageVersionStatus=version.status,
        ContainerImage=version.container_image,
    )
    if version.status != "CREATED":
        out["Problem"] = f"Version {version.version} of image {image.name} is {version.status}"
    return out
