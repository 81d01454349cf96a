"""image builds: the build-result cache

Revision ID: 0010
Revises: 0007

A build records the SHA-256 of its inputs (context, Dockerfile, options, base image ids) once it succeeds, and a
build answered from an earlier one's result names that build. Existing builds have neither: they are never
reused, and their next build with the same inputs runs and records them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image_builds") as batch:
        batch.add_column(sa.Column("inputs_digest", sa.String(64)))
        batch.add_column(sa.Column("reused_from", sa.String(40)))
    op.create_index("ix_image_builds_inputs_digest", "image_builds", ["inputs_digest"])


def downgrade() -> None:
    op.drop_index("ix_image_builds_inputs_digest", table_name="image_builds")
    with op.batch_alter_table("image_builds") as batch:
        batch.drop_column("reused_from")
        batch.drop_column("inputs_digest")
