"""Tables for apps (RStudio sessions and the domain's RStudioServerPro entry point)."""

from __future__ import annotations

import sqlalchemy as sa

from byoi.store.schema import _lease_columns, metadata

apps = sa.Table(
    "apps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("domain_pk", sa.Integer, sa.ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    # NULL for the domain's own apps (the pseudo profile `domain-shared`), which have no profile row.
    sa.Column("profile_pk", sa.Integer, sa.ForeignKey("user_profiles.id", ondelete="CASCADE")),
    sa.Column("profile_name", sa.String(63), nullable=False),
    sa.Column("profile_key", sa.String(63), nullable=False),  # lower-cased: profile names ignore case
    sa.Column("app_type", sa.String(32), nullable=False),
    sa.Column("app_name", sa.String(63), nullable=False),
    sa.Column("session_id", sa.String(32), nullable=False, unique=True),  # in the root path /sessions/<id>/
    sa.Column("generation", sa.Integer, nullable=False, server_default="1"),  # bumped by each re-create
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("failure_reason", sa.String(1024)),
    sa.Column("spec", sa.JSON, nullable=False),  # ResourceSpec as resolved, RecoveryMode, launch inputs
    sa.Column("image_name", sa.String(63)),  # lower-cased, for "is this version in use" checks
    sa.Column("image_version", sa.Integer),
    sa.Column("progress", sa.JSON),  # launch phase, pull bytes, message
    sa.Column("backend", sa.JSON),  # the runtime backend's own state (container id, host port, ...): opaque
    sa.Column("last_activity", sa.Float),  # the proxy's activity, written in batches (services/activity.py)
    sa.Column("last_health_check", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("modified_at", sa.Float, nullable=False),
    *_lease_columns(),
    sa.UniqueConstraint("domain_pk", "profile_key", "app_type", "app_name"),
)
sa.Index("ix_apps_status", apps.c.status)
sa.Index("ix_apps_image", apps.c.image_name, apps.c.image_version)
