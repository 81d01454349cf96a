"""image builds: one build per ClientToken

Revision ID: 0007
Revises: 0003

StartImageBuild's ClientToken was looked up and then inserted, so two calls at the same time could both start a
build. The index on it becomes unique (NULL, a call without a token, may repeat: on SQLite and PostgreSQL alike),
and the store arbitrates. Duplicates a database may already hold keep their token on the oldest build only.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    builds = sa.table("image_builds", sa.column("id", sa.Integer), sa.column("client_token", sa.String))
    oldest = (
        sa.select(sa.func.min(builds.c.id)).where(builds.c.client_token.is_not(None)).group_by(builds.c.client_token)
    )
    op.execute(
        sa.update(builds)
        .where(builds.c.client_token.is_not(None), builds.c.id.not_in(oldest))
        .values(client_token=None)
    )
    op.drop_index("ix_image_builds_client_token", table_name="image_builds")
    op.create_index("ix_image_builds_client_token", "image_builds", ["client_token"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_image_builds_client_token", table_name="image_builds")
    op.create_index("ix_image_builds_client_token", "image_builds", ["client_token"], unique=False)
