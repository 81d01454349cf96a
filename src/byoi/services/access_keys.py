"""Access keys: who may sign requests. The first start creates an administrator key and writes it to
`<data-dir>/credentials` (AWS shared-credentials format, profile `byoi`, mode 0600)."""

from __future__ import annotations

import os
import secrets
import string
import time
from pathlib import Path

import sqlalchemy as sa

from byoi.auth.principal import USER, Principal
from byoi.config import CREDENTIALS_PROFILE as PROFILE
from byoi.services.access import attached_to, profile_of
from byoi.services.context import ServiceContext
from byoi.store.schema import access_keys
from byoi.store.schema_domains import custom_image_refs, domains, user_profiles
from byoi.store.schema_identity import principals

ADMIN_ROLE = "admin"
FIRST_ADMIN = "admin"  # the administrator created on first start
SECRET_CACHE_SIZE = 10_000


def new_key_pair() -> tuple[str, str]:
    alphabet = string.ascii_uppercase + string.digits
    key_id = "BYOI" + "".join(secrets.choice(alphabet) for _ in range(16))
    secret = secrets.token_urlsafe(30)
    return key_id, secret


def write_credentials_file(path: Path, key_id: str, secret: str, region: str) -> None:
    """Write the profile atomically with mode 0600 (never readable by others, even for an instant)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"[{PROFILE}]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\nregion = {region}\n")
    os.replace(tmp, path)


class AccessKeyService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._secrets: dict[str, str] = {}  # sealed secret -> secret (a bounded cache of decryptions)

    @property
    def credentials_path(self) -> Path:
        return self.ctx.settings.data_dir / "credentials"

    async def ensure_admin_key(self) -> tuple[str, bool]:
        """Create the first administrator key when there is none; return (key id, created now)."""
        async with self.ctx.db.transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(access_keys.c.access_key_id, access_keys.c.secret_ciphertext)
                    .where(access_keys.c.role == ADMIN_ROLE, access_keys.c.active.is_(True))
                    .order_by(access_keys.c.created_at)
                    .limit(1)
                )
            ).first()
            if row is not None:
                if not self.credentials_path.exists():
                    secret = self.ctx.secrets.open(row.secret_ciphertext)
                    write_credentials_file(self.credentials_path, row.access_key_id, secret, self.ctx.settings.region)
                return row.access_key_id, False
            key_id, secret = new_key_pair()
            exists = await conn.execute(sa.select(principals.c.name).where(principals.c.name == FIRST_ADMIN))
            if exists.first() is None:
                await conn.execute(
                    sa.insert(principals).values(name=FIRST_ADMIN, role=ADMIN_ROLE, created_at=time.time())
                )
            await conn.execute(
                sa.insert(access_keys).values(
                    access_key_id=key_id,
                    secret_ciphertext=self.ctx.secrets.seal(secret),
                    principal=FIRST_ADMIN,
                    role=ADMIN_ROLE,
                    active=True,
                    created_at=time.time(),
                )
            )
        write_credentials_file(self.credentials_path, key_id, secret, self.ctx.settings.region)
        return key_id, True

    async def lookup(self, key_id: str) -> tuple[str, Principal] | None:
        """(secret, principal) for an active key of an existing principal, or None.

        Read from the store on every request, so a key deactivated or deleted (or a principal deleted) is
        refused on the very next request, on every replica. Only the decryption of a secret is cached, by its
        ciphertext, which never changes for a key."""
        # One statement and one row: the key, its principal and, for a user, the names of the images attached to
        # their domain or profile (aggregated, for the policy's check and the list scoping of this request:
        # services.access.visibility). A second statement, or a row per image, cost more than the check itself.
        attached = (  # correlated with the outer query's domain and profile rows
            sa.select(sa.func.aggregate_strings(custom_image_refs.c.image_name, "\n"))
            .where(attached_to(domains.c.id, user_profiles.c.id))
            .correlate(domains, user_profiles)
            .scalar_subquery()
        )
        query = (
            sa.select(
                access_keys.c.secret_ciphertext,
                principals.c.name,
                principals.c.role,
                principals.c.domain_id,
                principals.c.user_profile_name,
                attached.label("attached"),
            )
            .select_from(access_keys)
            .join(principals, principals.c.name == access_keys.c.principal)
            .outerjoin(domains, domains.c.domain_id == principals.c.domain_id)
            .outerjoin(user_profiles, profile_of(principals.c.user_profile_name))
            .where(access_keys.c.access_key_id == key_id, access_keys.c.active.is_(True))
        )
        async with self.ctx.db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        images = None
        if row.role == USER and row.domain_id and row.user_profile_name:
            images = frozenset(row.attached.split("\n")) if row.attached else frozenset()
        secret = self._secrets.get(row.secret_ciphertext)
        if secret is None:
            secret = self.ctx.secrets.open(row.secret_ciphertext)
            if len(self._secrets) >= SECRET_CACHE_SIZE:
                self._secrets.clear()
            self._secrets[row.secret_ciphertext] = secret
        principal = Principal(
            name=row.name,
            role=row.role,
            domain_id=row.domain_id,
            user_profile_name=row.user_profile_name,
            access_key_id=key_id,
            attached_images=images,
        )
        return secret, principal
