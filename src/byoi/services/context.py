"""What every service needs, built once by the composition root (`byoi.app`)."""

from __future__ import annotations

from dataclasses import dataclass

from byoi.arns import Partition
from byoi.auth.secrets import SecretBox
from byoi.config import Settings
from byoi.jobs.worker import Worker
from byoi.registry.client import RegistryClient
from byoi.store.db import Database


@dataclass
class ServiceContext:
    settings: Settings
    db: Database
    registry: RegistryClient
    worker: Worker
    secrets: SecretBox

    @property
    def arns(self) -> Partition:
        return Partition(self.settings.region, self.settings.account_id)
