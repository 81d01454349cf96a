"""Tables. Timestamps are epoch seconds (floats), as on the wire, so SQLite and PostgreSQL agree.

Members of a resource that byoi only keeps and echoes live in the `spec` JSON column; columns exist
only for what is filtered, sorted, joined or changed by background work. Rows that background work
acts on carry the lease columns (`lease_owner`, `lease_until`, `attempts`, `next_attempt_at`) that
`byoi.jobs` claims them by.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _lease_columns() -> list[sa.Column]:
    return [
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_until", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float),
    ]


access_keys = sa.Table(
    "access_keys",
    metadata,
    sa.Column("access_key_id", sa.String(128), primary_key=True),
    sa.Column("secret_ciphertext", sa.Text, nullable=False),
    sa.Column("principal", sa.String(256), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.Float, nullable=False),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    # Names are unique ignoring case because image-version ARNs are lower-case (see byoi.arns).
    sa.Column("name_key", sa.String(63), nullable=False, unique=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("failure_reason", sa.String(1024)),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("last_version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("modified_at", sa.Float, nullable=False),
    *_lease_columns(),
)

image_versions = sa.Table(
    "image_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("base_image", sa.String(255), nullable=False),
    sa.Column("container_image", sa.String(512)),
    sa.Column("failure_reason", sa.String(1024)),
    sa.Column("client_token", sa.String(36), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("modified_at", sa.Float, nullable=False),
    *_lease_columns(),
    sa.UniqueConstraint("image_id", "version"),
    sa.UniqueConstraint("image_id", "client_token"),
)
sa.Index("ix_image_versions_status", image_versions.c.status)
# ListImages / ListImageVersions page by (sort column, id): indexes keep each page a range scan.
sa.Index("ix_images_created_at", images.c.created_at, images.c.id)
sa.Index("ix_images_modified_at", images.c.modified_at, images.c.id)
sa.Index("ix_image_versions_image_created", image_versions.c.image_id, image_versions.c.created_at)

image_version_aliases = sa.Table(
    "image_version_aliases",
    metadata,
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    sa.Column("alias", sa.String(128), nullable=False),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("image_versions.id", ondelete="CASCADE"), nullable=False),
    sa.PrimaryKeyConstraint("image_id", "alias"),
)

tags = sa.Table(
    "tags",
    metadata,
    sa.Column("resource_arn", sa.String(512), nullable=False),
    sa.Column("key", sa.String(128), nullable=False),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),  # keeps the order tags were added in
    sa.PrimaryKeyConstraint("resource_arn", "key"),
)
