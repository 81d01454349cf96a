"""identity and access: principals, browser sessions, presigned tokens, audit log

Revision ID: 0008
Revises: 0001

Every existing access key's principal (until now always "admin") becomes an administrator principal.
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    principals = op.create_table(
        "principals",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("domain_id", sa.String(63)),
        sa.Column("user_profile_name", sa.String(63)),
        sa.Column("password_hash", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("sessions_valid_after", sa.Float, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("name", name="pk_principals"),
    )
    op.create_index("ix_principals_profile", "principals", ["domain_id", "user_profile_name"], unique=True)
    op.create_table(
        "browser_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("principal", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name="pk_browser_sessions"),
    )
    op.create_index("ix_browser_sessions_principal", "browser_sessions", ["principal"])
    op.create_table(
        "presigned_tokens",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("principal", sa.String(64), nullable=False),
        sa.Column("domain_id", sa.String(63), nullable=False),
        sa.Column("user_profile_name", sa.String(63), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("session_seconds", sa.Integer, nullable=False),
        sa.Column("landing_uri", sa.String(1023)),
        sa.Column("used_at", sa.Float),
        sa.PrimaryKeyConstraint("id_hash", name="pk_presigned_tokens"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("principal", sa.String(64), nullable=False),
        sa.Column("access_key_id", sa.String(128)),
        sa.Column("door", sa.String(16), nullable=False),
        sa.Column("operation", sa.String(128), nullable=False),
        sa.Column("resource_arn", sa.String(2048)),
        sa.Column("outcome", sa.String(128), nullable=False),
        sa.Column("source", sa.String(128)),
        sa.Column("request_id", sa.String(64)),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_principal", "audit_log", ["principal"])
    op.create_index("ix_audit_log_operation", "audit_log", ["operation"])
    keys = sa.table("access_keys", sa.column("principal", sa.String))
    names = [row[0] for row in op.get_bind().execute(sa.select(keys.c.principal).distinct())]
    if names:
        op.bulk_insert(principals, [{"name": n, "role": "admin", "created_at": time.time()} for n in names])


def downgrade() -> None:
    for table in ("audit_log", "presigned_tokens", "browser_sessions", "principals"):
        op.drop_table(table)
