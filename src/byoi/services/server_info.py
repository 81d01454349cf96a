"""Byoi.GetServerInfo: what this server is. Answers without touching the store (the benchmarks' floor)."""

from __future__ import annotations

from typing import Any

from byoi import __version__
from byoi.services.context import ServiceContext


class ServerInfoService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def get_server_info(self) -> dict[str, Any]:
        s = self.ctx.settings
        return {
            "Version": __version__,
            "Region": s.region,
            "AccountId": s.account_id,
            "Platform": s.platform,
            "Registries": [r.url for r in s.registries],
            "DefaultRegistry": s.default_registry.host,
            "InstallationId": self.ctx.installation,  # read from the store once, at start
        }
