"""Identity and access: principals (who), browser sessions and presigned sign-in tokens (how a browser is
signed in), and the audit log (what each did). Access keys live in `schema.access_keys`, whose `principal`
column names a row here.

A principal is an administrator or a user bound to one user profile in one domain. Passwords are argon2
hashes; no secret is stored in clear (key secrets are sealed with the master key, session and token ids are
stored as SHA-256 hashes so a copy of the database signs nobody in).
"""

from __future__ import annotations

import sqlalchemy as sa

from byoi.store.schema import metadata

principals = sa.Table(
    "principals",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),  # "admin" | "user"
    sa.Column("domain_id", sa.String(63)),  # users only
    sa.Column("user_profile_name", sa.String(63)),  # users only
    sa.Column("password_hash", sa.Text),  # argon2; None: no browser sign-in with a password
    sa.Column("created_at", sa.Float, nullable=False),
    # Browser sessions issued before this instant are no longer valid ("sign out everywhere").
    sa.Column("sessions_valid_after", sa.Float, nullable=False, server_default="0"),
    sa.Index("ix_principals_profile", "domain_id", "user_profile_name", unique=True),
)

browser_sessions = sa.Table(
    "browser_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),  # sha256 of the random session id in the cookie
    sa.Column("principal", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("via", sa.String(16), nullable=False),  # "password" | "presigned" | "oidc"
    sa.Column("csrf_token", sa.String(64), nullable=False),
)

presigned_tokens = sa.Table(
    "presigned_tokens",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),  # sha256 of the token in the URL
    sa.Column("principal", sa.String(64), nullable=False),
    sa.Column("domain_id", sa.String(63), nullable=False),
    sa.Column("user_profile_name", sa.String(63), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("session_seconds", sa.Integer, nullable=False),
    sa.Column("landing_uri", sa.String(1023)),
    sa.Column("used_at", sa.Float),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("principal", sa.String(64), nullable=False, index=True),
    sa.Column("access_key_id", sa.String(128)),
    sa.Column("door", sa.String(16), nullable=False),  # "api" | "browser" | "system"
    sa.Column("operation", sa.String(128), nullable=False, index=True),
    sa.Column("resource_arn", sa.String(2048)),
    sa.Column("outcome", sa.String(128), nullable=False),  # "ok" or the error code
    sa.Column("source", sa.String(128)),  # the client's address
    sa.Column("request_id", sa.String(64)),
)
