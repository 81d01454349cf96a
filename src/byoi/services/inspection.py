"""Compatibility reports of image versions: the version check that inspects an image while its version
is CREATING, and the Byoi.DescribeImageVersionReport / Byoi.DiffImageVersions operations.

The check runs after the version's BaseImage resolves (see ImageVersionService._resolve): it reads the
image from the registry (byoi.inspect), stores the report, and returns the failure reason when a
required rule fails or the image cannot be inspected. Transient registry errors propagate, so the
version is retried like resolution itself; layers read before the error stay cached.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi.errors import ResourceNotFound, ValidationException
from byoi.inspect.config import InspectionConfig
from byoi.inspect.diff import diff_reports
from byoi.inspect.errors import InspectionError
from byoi.inspect.inspector import Inspector
from byoi.registry.errors import RegistryError
from byoi.services.context import ServiceContext
from byoi.services.image_versions import find_version
from byoi.services.images import load_image
from byoi.store.schema import image_versions as versions_t
from byoi.store.schema_inspect import image_version_reports as reports_t


class InspectionService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.config: InspectionConfig = getattr(ctx.settings, "inspection", None) or InspectionConfig()
        cache_dir = self.config.cache_dir or ctx.settings.data_dir / "inspect-cache"
        self.inspector = Inspector(self.config, cache_dir, ctx.settings.platform)

    # -- the version check -----------------------------------------------------------------------

    async def check_version(self, row: Any, resolved: Any) -> str | None:
        """Inspect a resolved version; store its report; return a failure reason or None."""
        if not self.config.enabled:
            return None

        def stream(digest: str) -> Any:
            return self.ctx.registry.stream_blob(resolved.registry, resolved.repository, digest)

        try:
            report = await self.inspector.inspect(resolved.manifest, stream)
        except (InspectionError, RegistryError) as exc:
            if isinstance(exc, RegistryError) and exc.transient:
                raise
            reason = f"Cannot inspect {resolved.pinned}: {exc}"
            report = {"Status": "FAILED", "Compatible": False, "FailureReason": reason, "Error": str(exc)}
            report["InspectedAt"] = time.time()
        report.update(ContainerImage=resolved.pinned, Digest=resolved.digest, IndexDigest=resolved.index_digest)
        await self._store(row.id, report)
        return report.get("FailureReason")  # type: ignore[no-any-return]

    async def _store(self, version_id: int, report: dict[str, Any]) -> None:
        try:
            async with self.ctx.db.transaction() as conn:
                await conn.execute(sa.delete(reports_t).where(reports_t.c.version_id == version_id))
                await conn.execute(
                    sa.insert(reports_t).values(
                        version_id=version_id,
                        status=report["Status"],
                        compatible=bool(report.get("Compatible")),
                        digest=report.get("Digest"),
                        report=report,
                        created_at=time.time(),
                    )
                )
        except IntegrityError:
            pass  # the version was deleted while it was being inspected: nothing to keep

    # -- operations ------------------------------------------------------------------------------

    async def _load(
        self, conn: AsyncConnection, image: Any, version: int | None, alias: str | None, what: str = ""
    ) -> tuple[Any, dict[str, Any]]:
        """The version (by number, alias, or the newest) and its report; ResourceNotFound naming why not."""
        query = sa.select(versions_t, reports_t.c.report).outerjoin(
            reports_t, reports_t.c.version_id == versions_t.c.id
        )
        row = await find_version(conn, query, image, version, alias, what)
        if row.report is None:
            why = {"CREATING": "it is still being resolved and inspected"}.get(
                row.status, f"it is {row.status}" + (f": {row.failure_reason}" if row.failure_reason else "")
            )
            raise ResourceNotFound(f"Version {row.version} of image {image.name} has no compatibility report ({why})")
        return row, row.report

    async def describe_image_version_report(
        self, image_name: str, version: int | None = None, alias: str | None = None
    ) -> dict[str, Any]:
        async with self.ctx.db.read() as conn:
            image = await load_image(conn, image_name)
            row, report = await self._load(conn, image, version, alias)
        return {
            "ImageName": image.name,
            "ImageVersionArn": self.ctx.arns.image_version(image.name, row.version),
            "Version": row.version,
            "ImageVersionStatus": row.status,
            "Report": report,
        }

    async def diff_image_versions(
        self,
        image_name: str,
        from_version: int | None = None,
        from_alias: str | None = None,
        to_version: int | None = None,
        to_alias: str | None = None,
    ) -> dict[str, Any]:
        for side, v, a in (("From", from_version, from_alias), ("To", to_version, to_alias)):
            if v is None and a is None:
                raise ValidationException(f"Specify {side}Version or {side}Alias")
        async with self.ctx.db.read() as conn:
            image = await load_image(conn, image_name)
            old, old_report = await self._load(conn, image, from_version, from_alias, "From")
            new, new_report = await self._load(conn, image, to_version, to_alias, "To")
        for row, report in ((old, old_report), (new, new_report)):
            if report.get("Status") != "COMPLETED":
                raise ValidationException(
                    f"Version {row.version} of image {image.name} could not be inspected, so it cannot be compared: "
                    f"{report.get('Error') or report.get('FailureReason')}"
                )
        return {
            "ImageName": image.name,
            "From": self._ref(image.name, old, old_report),
            "To": self._ref(image.name, new, new_report),
            **diff_reports(old_report, new_report),
        }

    def _ref(self, image_name: str, row: Any, report: dict[str, Any]) -> dict[str, Any]:
        return {
            "Version": row.version,
            "ImageVersionArn": self.ctx.arns.image_version(image_name, row.version),
            "ContainerImage": report.get("ContainerImage"),
        }
