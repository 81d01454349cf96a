"""image version compatibility reports

Revision ID: 0004
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_version_reports",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("compatible", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=True),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["image_versions.id"],
            name=op.f("fk_image_version_reports_version_id_image_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_image_version_reports")),
    )


def downgrade() -> None:
    op.drop_table("image_version_reports")
