"""Compatibility reports: one per image version, written when its inspection ends (either way)."""

from __future__ import annotations

import sqlalchemy as sa

from byoi.store.schema import metadata

image_version_reports = sa.Table(
    "image_version_reports",
    metadata,
    sa.Column("version_id", sa.Integer, sa.ForeignKey("image_versions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),  # COMPLETED | FAILED (the inspection itself)
    sa.Column("compatible", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("digest", sa.String(71)),  # the image manifest the report is about
    sa.Column("report", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
