"""apps (RStudio sessions)

Revision ID: 0005
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("domain_pk", sa.Integer(), nullable=False),
        sa.Column("profile_pk", sa.Integer(), nullable=True),
        sa.Column("profile_name", sa.String(length=63), nullable=False),
        sa.Column("profile_key", sa.String(length=63), nullable=False),
        sa.Column("app_type", sa.String(length=32), nullable=False),
        sa.Column("app_name", sa.String(length=63), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("generation", sa.Integer(), server_default="1", nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("failure_reason", sa.String(length=1024), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("image_name", sa.String(length=63), nullable=True),
        sa.Column("image_version", sa.Integer(), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("backend", sa.JSON(), nullable=True),
        sa.Column("last_activity", sa.Float(), nullable=True),
        sa.Column("last_health_check", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("modified_at", sa.Float(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["domain_pk"], ["domains.id"], name=op.f("fk_apps_domain_pk_domains"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["profile_pk"], ["user_profiles.id"], name=op.f("fk_apps_profile_pk_user_profiles"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apps")),
        sa.UniqueConstraint("session_id", name=op.f("uq_apps_session_id")),
        sa.UniqueConstraint(
            "domain_pk", "profile_key", "app_type", "app_name", name=op.f("uq_apps_domain_pk_profile_key_app_type_app_name")
        ),
    )
    op.create_index("ix_apps_status", "apps", ["status"], unique=False)
    op.create_index("ix_apps_image", "apps", ["image_name", "image_version"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_apps_image", table_name="apps")
    op.drop_index("ix_apps_status", table_name="apps")
    op.drop_table("apps")
