"""Tables for domains, user profiles, app image configs, and the index of what their settings refer to."""

from __future__ import annotations

import sqlalchemy as sa

from byoi.store.schema import _lease_columns, metadata

domains = sa.Table(
    "domains",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("domain_id", sa.String(63), nullable=False, unique=True),  # d- and 12 lower-case alphanumerics
    # byoi keeps domain names unique so that the CLI can address a domain by name (AWS does not say).
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("failure_reason", sa.String(1024)),
    sa.Column("spec", sa.JSON, nullable=False),  # every request member, echoed by DescribeDomain
    # Bumped on every settings change, so a read-modify-write can detect a concurrent change (CAS).
    sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_uid", sa.Integer, nullable=False, server_default="200000"),  # HomeEfsFileSystemUid counter
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("modified_at", sa.Float, nullable=False),
    *_lease_columns(),
)
sa.Index("ix_domains_status", domains.c.status)

user_profiles = sa.Table(
    "user_profiles",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("domain_pk", sa.Integer, sa.ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("name_key", sa.String(63), nullable=False),  # profile names are case-insensitive (model doc)
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("failure_reason", sa.String(1024)),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
    sa.Column("home_uid", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("modified_at", sa.Float, nullable=False),
    *_lease_columns(),
    sa.UniqueConstraint("domain_pk", "name_key"),
)
sa.Index("ix_user_profiles_status", user_profiles.c.status)

app_image_configs = sa.Table(
    "app_image_configs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("modified_at", sa.Float, nullable=False),
)

# One row per image / version / app image config that a domain's or profile's settings name, rewritten
# with the settings, so "who refers to image X" is an indexed lookup rather than a scan of every spec.
custom_image_refs = sa.Table(
    "custom_image_refs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("domain_pk", sa.Integer, sa.ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    sa.Column("profile_pk", sa.Integer, sa.ForeignKey("user_profiles.id", ondelete="CASCADE")),
    sa.Column("path", sa.String(256), nullable=False),  # e.g. DefaultUserSettings.RSessionAppSettings.CustomImages
    sa.Column("image_name", sa.String(63), nullable=False),
    sa.Column("image_version", sa.Integer),  # None: "the latest CREATED version"
    sa.Column("app_image_config_name", sa.String(63)),
)
sa.Index("ix_custom_image_refs_image", custom_image_refs.c.image_name)
sa.Index("ix_custom_image_refs_config", custom_image_refs.c.app_image_config_name)
sa.Index("ix_custom_image_refs_owner", custom_image_refs.c.domain_pk, custom_image_refs.c.profile_pk)
