"""Image builds: one row per build, worked on by the `run-image-build` background task.

Status goes QUEUED -> BUILDING -> PUSHING -> SUCCEEDED | FAILED | STOPPED. The log lives on disk in the
data dir (`builds/<build_id>/log.jsonl`); the row keeps only its size and whether it was truncated.
"""

from __future__ import annotations

import sqlalchemy as sa

from byoi.store.schema import _lease_columns, metadata

image_builds = sa.Table(
    "image_builds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("build_id", sa.String(40), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("registry", sa.String(255), nullable=False),  # host[:port] of a configured registry
    sa.Column("repository", sa.String(255), nullable=False),
    sa.Column("tag", sa.String(128), nullable=False),
    sa.Column("image_name", sa.String(63)),  # the byoi image to add a version to, when registering
    sa.Column("client_token", sa.String(64)),
    sa.Column("digest", sa.String(80)),
    sa.Column("image_version_arn", sa.String(512)),
    sa.Column("failure_reason", sa.String(1024)),
    sa.Column("failed_step", sa.String(512)),
    sa.Column("stop_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("context_size", sa.BigInteger, nullable=False, server_default="0"),
    # The build-result cache (services/build_reuse.py): the SHA-256 of what a successful build was made from
    # (context, options, base images), and for a build that re-tagged an earlier one's image, that build's id.
    sa.Column("inputs_digest", sa.String(64)),
    sa.Column("reused_from", sa.String(40)),
    # Dockerfile, BuildArgs, Target, Labels, Platform, RoleArn: what the build was asked for.
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("modified_at", sa.Float, nullable=False),
    *_lease_columns(),
)
sa.Index("ix_image_builds_status", image_builds.c.status)
sa.Index("ix_image_builds_inputs_digest", image_builds.c.inputs_digest)
# Unique: the store decides which of two StartImageBuild calls with one ClientToken starts the build.
sa.Index("ix_image_builds_client_token", image_builds.c.client_token, unique=True)
