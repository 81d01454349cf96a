"""The installation's own settings, one row per key, written once by the first server to start and read by every
replica: `installation-id` (on every session container, so servers sharing an engine never touch each other's)
and `master-key-check` (a value sealed with the master key, so a replica started with another key says so)."""

from __future__ import annotations

import sqlalchemy as sa

from byoi.store.schema import metadata

INSTALLATION_ID = "installation-id"
MASTER_KEY_CHECK = "master-key-check"

installation_settings = sa.Table(
    "installation_settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
