"""What every service needs, built once by the composition root (`byoi.app`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from byoi.arns import Partition
from byoi.auth.secrets import SecretBox
from byoi.config import Settings
from byoi.jobs.worker import Worker
from byoi.registry.client import RegistryClient
from byoi.store.db import Database

# (connection, kind, name, version) -> descriptions of what still refers to that resource. `kind` is
# "image", "image-version" or "app-image-config"; `version` is set only for "image-version".
ReferrerCheck = Callable[[AsyncConnection, str, str, int | None], Awaitable[list[str]]]

# (version row, resolved image) -> a failure reason, or None when the version passes. Run in order after
# a version's BaseImage resolves and before it becomes CREATED; may raise RegistryError (transient ones
# are retried like resolution itself).
VersionCheck = Callable[[Any, Any], Awaitable[str | None]]


@dataclass
class ServiceContext:
    settings: Settings
    db: Database
    registry: RegistryClient
    worker: Worker
    secrets: SecretBox
    # The installation's id, from the store (services/installation.py), set by the composition root at start.
    installation: str = ""
    referrer_checks: list[ReferrerCheck] = field(default_factory=list)
    version_checks: list[VersionCheck] = field(default_factory=list)

    async def referrers(self, conn: AsyncConnection, kind: str, name: str, version: int | None = None) -> list[str]:
        found: list[str] = []
        for check in self.referrer_checks:
            found.extend(await check(conn, kind, name, version))
        return found

    @property
    def arns(self) -> Partition:
        return Partition(self.settings.region, self.settings.account_id)
