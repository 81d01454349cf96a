"""App image configs: how a custom image is run. For RStudio only the name matters; the KernelGateway,
JupyterLab and CodeEditor configurations are kept and echoed.
CreateAppImageConfig, DescribeAppImageConfig, UpdateAppImageConfig, DeleteAppImageConfig, ListAppImageConfigs.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from byoi.errors import ResourceInUse, ResourceNotFound
from byoi.services.context import ServiceContext
from byoi.services.tags import delete_all_tags, write_tags
from byoi.store.paging import fetch_page
from byoi.store.schema_domains import app_image_configs as configs_t

DEFAULT_PAGE = 10
SORT_COLUMNS = {"CreationTime": "created_at", "LastModifiedTime": "modified_at", "Name": "name"}
ECHOED = {
    "kernel_gateway_image_config": "KernelGatewayImageConfig",
    "jupyter_lab_app_image_config": "JupyterLabAppImageConfig",
    "code_editor_app_image_config": "CodeEditorAppImageConfig",
}


def not_found(name: str) -> ResourceNotFound:
    return ResourceNotFound(f"No AppImageConfig with the name {name} exists")


async def load_config(conn: AsyncConnection, name: str, for_update: bool = False) -> sa.Row[Any]:
    query = sa.select(configs_t).where(configs_t.c.name == name)
    row = (await conn.execute(query.with_for_update() if for_update else query)).first()
    if row is None:
        raise not_found(name)
    return row


class AppImageConfigService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def config_exists(self, conn: AsyncConnection, parts: tuple[str, ...]) -> bool:
        return bool((await conn.execute(sa.select(configs_t.c.id).where(configs_t.c.name == parts[0]))).first())

    def _describe(self, row: sa.Row[Any]) -> dict[str, Any]:
        return {
            **row.spec,
            "AppImageConfigArn": self.ctx.arns.app_image_config(row.name),
            "AppImageConfigName": row.name,
            "CreationTime": row.created_at,
            "LastModifiedTime": row.modified_at,
        }

    async def create_app_image_config(
        self, app_image_config_name: str, tags: list[dict[str, str]] | None = None, **echoed: Any
    ) -> dict[str, Any]:
        spec = {wire: echoed[snake] for snake, wire in ECHOED.items() if echoed.get(snake) is not None}
        arn = self.ctx.arns.app_image_config(app_image_config_name)
        now = time.time()
        try:
            async with self.ctx.db.transaction() as conn:
                if (
                    await conn.execute(sa.select(configs_t.c.id).where(configs_t.c.name == app_image_config_name))
                ).first():
                    raise ResourceInUse(f"AppImageConfig {app_image_config_name} already exists")
                await conn.execute(
                    sa.insert(configs_t).values(name=app_image_config_name, spec=spec, created_at=now, modified_at=now)
                )
                if tags:
                    await write_tags(conn, arn, tags)
        except IntegrityError:
            raise ResourceInUse(f"AppImageConfig {app_image_config_name} already exists") from None
        return {"AppImageConfigArn": arn}

    async def describe_app_image_config(self, app_image_config_name: str) -> dict[str, Any]:
        async with self.ctx.db.read() as conn:
            return self._describe(await load_config(conn, app_image_config_name))

    async def update_app_image_config(self, app_image_config_name: str, **echoed: Any) -> dict[str, Any]:
        """Configurations given replace the stored ones; those not given are kept."""
        changes = {wire: echoed[snake] for snake, wire in ECHOED.items() if echoed.get(snake) is not None}
        async with self.ctx.db.transaction() as conn:
            row = await load_config(conn, app_image_config_name, for_update=True)
            await conn.execute(
                sa.update(configs_t)
                .where(configs_t.c.id == row.id)
                .values(spec={**row.spec, **changes}, modified_at=time.time())
            )
        return {"AppImageConfigArn": self.ctx.arns.app_image_config(app_image_config_name)}

    async def delete_app_image_config(self, app_image_config_name: str) -> dict[str, Any]:
        async with self.ctx.db.transaction() as conn:
            row = await load_config(conn, app_image_config_name)
            referrers = await self.ctx.referrers(conn, "app-image-config", row.name)
            if referrers:
                raise ResourceInUse(
                    f"AppImageConfig {row.name} is still used by {', '.join(referrers)}; detach it first"
                )
            await delete_all_tags(conn, self.ctx.arns.app_image_config(row.name))
            await conn.execute(sa.delete(configs_t).where(configs_t.c.id == row.id))
        return {}

    async def list_app_image_configs(
        self,
        max_results: int | None = None,
        next_token: str | None = None,
        name_contains: str | None = None,
        creation_time_before: float | None = None,
        creation_time_after: float | None = None,
        modified_time_before: float | None = None,
        modified_time_after: float | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> dict[str, Any]:
        filters = {k: v for k, v in locals().items() if k not in ("self", "next_token", "max_results")}
        conds = []
        bounds = (
            (creation_time_after, configs_t.c.created_at.__ge__),
            (creation_time_before, configs_t.c.created_at.__le__),
            (modified_time_after, configs_t.c.modified_at.__ge__),
            (modified_time_before, configs_t.c.modified_at.__le__),
        )
        conds = [compare(value) for value, compare in bounds if value is not None]
        if name_contains:
            conds.append(sa.func.lower(configs_t.c.name).contains(name_contains.lower(), autoescape=True))
        column = SORT_COLUMNS[sort_by or "CreationTime"]
        async with self.ctx.db.read() as conn:
            page = await fetch_page(
                conn,
                sa.select(configs_t).where(*conds),
                configs_t.c[column],
                configs_t.c.id,
                (sort_order or "Descending") == "Descending",
                max_results or DEFAULT_PAGE,
                next_token,
                filters,
                column,
            )
        return {"AppImageConfigs": [self._describe(r) for r in page.rows], "NextToken": page.next_token}
