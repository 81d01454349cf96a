"""The installation's identity, kept in the store so that every replica on one database is the same byoi.

- `installation-id` names and labels every session container (`session_files.container_name`, `labels`), and a
  reconciler looks only at containers carrying it: replicas must share it, or each would take the others'
  sessions for vanished ones and their containers for orphans. The first server to start writes it
  (INSERT … ON CONFLICT DO NOTHING, then SELECT: of replicas starting at once, one value wins and all read it).
  Upgrade: an installation from before the store kept it had the id in `<data dir>/installation-id`; a store
  without an id takes that file's, so the containers it runs stay its own. When the store has one and the file
  says another, the store wins, and the start says so (both ids) once: the file is then renamed aside.
- `master-key-check` is a value sealed with the master key. Secrets at rest (access-key secrets, the OIDC flow
  cookie) are sealed with it, so every replica needs the same key (BYOI_MASTER_KEY, or one key file copied to
  each); it is never put in the store, so a copy of the database still reveals no secret. A replica whose key
  cannot open the check refuses to start, naming the variable, rather than failing requests one by one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from byoi.auth.secrets import SecretBox
from byoi.errors import StartupRefused
from byoi.store.db import Database
from byoi.store.schema import access_keys
from byoi.store.schema_installation import INSTALLATION_ID, MASTER_KEY_CHECK, installation_settings

log = logging.getLogger(__name__)

ID_FILE = "installation-id"  # in the data dir, before the store kept the id (read once, at the upgrade)
SUPERSEDED_SUFFIX = ".superseded"
_CHECK_PLAINTEXT = "byoi master key check"


class MasterKeyMismatch(StartupRefused):
    """This server's master key cannot open what another server (or an earlier start) sealed in the store."""


def new_installation_id() -> str:
    return os.urandom(8).hex()


def read_id_file(data_dir: Path) -> str | None:
    """The id an installation from before the store kept it wrote in its data dir, or None."""
    try:
        value = (data_dir / ID_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return value or None


async def put_once(db: Database, key: str, value: str) -> str:
    """Write `key` unless it is there, and return what the store holds (this value, or the one written first):
    INSERT … ON CONFLICT DO NOTHING then SELECT, race-free on SQLite and PostgreSQL alike."""
    dialect = postgresql if db.dialect == "postgresql" else sqlite
    insert = dialect.insert(installation_settings).values(key=key, value=value, created_at=time.time())
    async with db.transaction() as conn:
        await conn.execute(insert.on_conflict_do_nothing(index_elements=["key"]))
        stored = await conn.execute(sa.select(installation_settings.c.value).where(installation_settings.c.key == key))
        return str(stored.scalar_one())


async def get(db: Database, key: str) -> str | None:
    async with db.read() as conn:
        found = await conn.execute(sa.select(installation_settings.c.value).where(installation_settings.c.key == key))
        value = found.scalar_one_or_none()
    return None if value is None else str(value)


async def installation_id(db: Database, data_dir: Path) -> str:
    """The installation's id from the store; written on first start (the data dir's old file's id, if any)."""
    from_file = read_id_file(data_dir)
    stored = await get(db, INSTALLATION_ID)
    if stored is None:
        stored = await put_once(db, INSTALLATION_ID, from_file or new_installation_id())
        if from_file is not None and stored == from_file:
            log.info("installation id %s moved from %s into the store", stored, data_dir / ID_FILE)
    if from_file is not None and from_file != stored:
        aside = data_dir / (ID_FILE + SUPERSEDED_SUFFIX)
        log.warning(
            "the store's installation id is %s but %s says %s: using the store's (session containers labelled "
            "byoi.installation=%s are not this installation's); the file is renamed to %s",
            stored,
            data_dir / ID_FILE,
            from_file,
            from_file,
            aside.name,
        )
        try:
            os.replace(data_dir / ID_FILE, aside)  # so the warning is given once, not at every start
        except OSError as exc:
            log.warning("cannot rename %s: %s", data_dir / ID_FILE, exc)
    return stored


async def check_master_key(db: Database, secrets: SecretBox) -> None:
    """Raise MasterKeyMismatch unless this server's master key opens what the store holds sealed."""
    hint = (
        "every byoi server on one database needs the same master key: set BYOI_MASTER_KEY to the same value on "
        "each (or copy one <data dir>/master.key to every data dir)"
    )
    check = await get(db, MASTER_KEY_CHECK)
    if check is None:
        # A store from before the check: the oldest sealed secret must open, or this is the other key.
        async with db.read() as conn:
            sealed = (
                await conn.execute(
                    sa.select(access_keys.c.secret_ciphertext).order_by(access_keys.c.created_at).limit(1)
                )
            ).scalar_one_or_none()
        if sealed is not None:
            _open(secrets, str(sealed), hint)
        check = await put_once(db, MASTER_KEY_CHECK, secrets.seal(_CHECK_PLAINTEXT))
    _open(secrets, check, hint)


def _open(secrets: SecretBox, sealed: str, hint: str) -> None:
    try:
        secrets.open(sealed)
    except RuntimeError:
        raise MasterKeyMismatch(
            f"this server's master key does not open the secrets in its store (another server sealed them): {hint}"
        ) from None
