"""Which image version an RSessionGateway app runs, and with what: CreateApp's `ResourceSpec` checked against
the user's effective custom images (domains issue), resolved to a CREATED version pinned by digest, plus
what its compatibility report says about running it (R home, the image's user for the session UID).

Rules (reference/sagemaker-api.md 6.5): `SageMakerImageVersionArn` wins over `SageMakerImageArn` (the literal
`None` clears it); `SageMakerImageVersionAlias` needs `SageMakerImageArn`; with only the image ARN, the
version is the one the user's attached entry pins, else the newest CREATED one. Without any image, the
user's (then the domain's) `RSessionAppSettings.DefaultResourceSpec` is used. The image must be in the
user's effective list: an entry without a version allows any CREATED version, an entry with one allows
that version only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi import arns
from byoi.errors import ResourceNotFound, ValidationException
from byoi.inspect.facts import socket_support
from byoi.services.attachments import effective_entries
from byoi.services.context import ServiceContext
from byoi.services.custom_images import RSESSION
from byoi.store.schema import image_version_aliases, image_versions, images
from byoi.store.schema_inspect import image_version_reports

DEFAULT_R_HOME = "/usr/lib/R"


@dataclass(frozen=True)
class ResolvedImage:
    image_name: str
    version: int
    image_arn: str
    version_arn: str
    container_image: str  # registry/repository@sha256:...
    r_home: str
    image_user: str | None  # the image's user with the session UID, if it has one
    # rserver listens on a Unix socket unless the report says its RStudio predates --www-socket (2024.12)
    listen_socket: bool = True


def _default_spec(domain: Any, profile: Any) -> dict[str, Any]:
    for settings in ((profile.spec.get("UserSettings") or {}), (domain.spec.get("DefaultUserSettings") or {})):
        spec = (settings.get(RSESSION) or {}).get("DefaultResourceSpec") or {}
        if spec.get("SageMakerImageArn") or spec.get("SageMakerImageVersionArn") not in (None, "None"):
            return dict(spec)
    return {}


def default_instance_type(domain: Any, profile: Any) -> str | None:
    for settings in ((profile.spec.get("UserSettings") or {}), (domain.spec.get("DefaultUserSettings") or {})):
        spec = (settings.get(RSESSION) or {}).get("DefaultResourceSpec") or {}
        if spec.get("InstanceType"):
            return str(spec["InstanceType"])
    return None


def _own(ctx: ServiceContext, value: str, kind: str, member: str) -> arns.ParsedArn:
    parsed = arns.parse(value)
    if parsed is None or parsed.kind != kind:
        raise ValidationException(f"ResourceSpec.{member} {value} is not an {kind} ARN")
    if parsed.region != ctx.settings.region or parsed.account_id != ctx.settings.account_id:
        raise ValidationException(
            f"ResourceSpec.{member} {value} is not in this byoi ({ctx.settings.region}, account "
            f"{ctx.settings.account_id}); byoi runs only its own custom images"
        )
    return parsed


async def _image_by_key(conn: AsyncConnection, key: str, what: str) -> Any:
    row = (await conn.execute(sa.select(images).where(images.c.name_key == key.lower()))).first()
    if row is None:
        raise ResourceNotFound(f"{what}: No Image with the name {key} exists")
    return row


async def _pick_version(
    conn: AsyncConnection, ctx: ServiceContext, spec: dict[str, Any], allowed: dict[str, list[int | None]]
) -> tuple[Any, Any]:
    version_arn = spec.get("SageMakerImageVersionArn")
    image_arn = spec.get("SageMakerImageArn")
    alias = spec.get("SageMakerImageVersionAlias")
    if version_arn and version_arn != "None":
        parsed = _own(ctx, version_arn, "image-version", "SageMakerImageVersionArn")
        name_and_number = arns.image_version_of(parsed)
        if name_and_number is None:
            raise ValidationException(
                f"ResourceSpec.SageMakerImageVersionArn {version_arn} is not an image version ARN"
            )
        image = await _image_by_key(conn, name_and_number[0], "ResourceSpec.SageMakerImageVersionArn")
        if image_arn and _own(ctx, image_arn, "image", "SageMakerImageArn").parts[0].lower() != image.name_key:
            raise ValidationException(
                "ResourceSpec.SageMakerImageArn and SageMakerImageVersionArn name different images"
            )
        query = sa.select(image_versions).where(
            image_versions.c.image_id == image.id, image_versions.c.version == name_and_number[1]
        )
        missing = f"No ImageVersion with the name {image.name} and version {parsed.parts[1]} exists"
    elif image_arn:
        image = await _image_by_key(
            conn, _own(ctx, image_arn, "image", "SageMakerImageArn").parts[0], "ResourceSpec.SageMakerImageArn"
        )
        query = sa.select(image_versions).where(image_versions.c.image_id == image.id)
        if alias:
            query = query.join(image_version_aliases, image_version_aliases.c.version_id == image_versions.c.id).where(
                image_version_aliases.c.alias == alias
            )
            missing = f"No ImageVersion with the alias {alias} exists for image {image.name}"
        else:
            pinned = [v for v in allowed.get(image.name_key, []) if v is not None]
            if pinned and None not in allowed.get(image.name_key, []):
                query = query.where(image_versions.c.version == max(pinned))
            else:
                query = query.where(image_versions.c.status == "CREATED")
            query = query.order_by(image_versions.c.version.desc()).limit(1)
            missing = f"Image {image.name} has no CREATED version to launch"
    elif alias:
        raise ValidationException("ResourceSpec.SageMakerImageVersionAlias needs ResourceSpec.SageMakerImageArn")
    else:
        raise ValidationException("no image")  # handled by the caller
    version = (await conn.execute(query)).first()
    if version is None:
        raise ResourceNotFound(missing)
    return image, version


async def resolve(
    conn: AsyncConnection, ctx: ServiceContext, domain: Any, profile: Any, given: dict[str, Any] | None, uid: int
) -> ResolvedImage:
    """The version a launch runs; ValidationException / ResourceNotFound naming what is wrong."""
    entries, source = effective_entries(domain, profile)
    allowed: dict[str, list[int | None]] = {}
    for e in entries:
        allowed.setdefault(e["ImageName"].lower(), []).append(e.get("ImageVersionNumber"))
    spec = dict(given or {})
    if not (spec.get("SageMakerImageArn") or spec.get("SageMakerImageVersionArn") not in (None, "None")):
        spec = {**_default_spec(domain, profile), **{k: v for k, v in spec.items() if k == "InstanceType"}}
    if not (spec.get("SageMakerImageArn") or spec.get("SageMakerImageVersionArn") not in (None, "None")):
        names = ", ".join(e["ImageName"] for e in entries) or "none are attached"
        raise ValidationException(
            "ResourceSpec must name a custom image (SageMakerImageArn or SageMakerImageVersionArn): byoi has no "
            f"built-in RStudio image. Images user profile {profile.name} may launch: {names}"
        )
    image, version = await _pick_version(conn, ctx, spec, allowed)
    where = "user profile" if source == "UserProfile" else "domain"
    if image.name_key not in allowed:
        raise ValidationException(
            f"Image {image.name} is not attached for user profile {profile.name} in domain {domain.domain_id} "
            f"(its {where} RSessionAppSettings.CustomImages); attach it first"
        )
    versions = allowed[image.name_key]
    if None not in versions and version.version not in versions:
        raise ValidationException(
            f"Version {version.version} of image {image.name} is not attached for user profile {profile.name} "
            f"(attached: version {', '.join(str(v) for v in versions)})"
        )
    if version.status != "CREATED":
        why = f": {version.failure_reason}" if version.failure_reason else ""
        raise ValidationException(
            f"Version {version.version} of image {image.name} is {version.status}{why}; only CREATED versions "
            "can be launched"
        )
    report = (
        await conn.execute(
            sa.select(image_version_reports.c.report).where(image_version_reports.c.version_id == version.id)
        )
    ).scalar_one_or_none()
    if report is not None and report.get("Compatible") is False and report.get("Status") == "FAILED":
        raise ValidationException(f"Version {version.version} of image {image.name} failed inspection")
    return ResolvedImage(
        image_name=image.name,
        version=version.version,
        image_arn=ctx.arns.image(image.name),
        version_arn=ctx.arns.image_version(image.name, version.version),
        container_image=version.container_image,
        r_home=_r_home(report),
        image_user=_image_user(report, uid),
        listen_socket=socket_support(report or {}) is not False,
    )


def _r_home(report: dict[str, Any] | None) -> str:
    for install in (report or {}).get("RInstallations") or []:
        if install.get("Home"):
            return str(install["Home"])
    return DEFAULT_R_HOME


def _image_user(report: dict[str, Any] | None, uid: int) -> str | None:
    for user in (report or {}).get("Users") or []:
        if user.get("Uid") == uid:
            return str(user.get("Name"))
    return None
