"""catalog list indexes

Revision ID: 0006
Revises: 0001
"""

from alembic import op

revision = "0006"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_images_created_at", "images", ["created_at", "id"])
    op.create_index("ix_images_modified_at", "images", ["modified_at", "id"])
    op.create_index("ix_image_versions_image_created", "image_versions", ["image_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_image_versions_image_created", table_name="image_versions")
    op.drop_index("ix_images_modified_at", table_name="images")
    op.drop_index("ix_images_created_at", table_name="images")
