"""The installation's identity in the store (services/installation.py), on a real migrated store: SQLite, and
PostgreSQL where one is configured. The upgrade path keeps an existing data dir's id; replicas starting at once
get one id; a replica with another master key refuses to start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from byoi.auth.secrets import SecretBox
from byoi.services import installation
from byoi.store.db import Database, migrate

OLD_ID = "0123456789abcdef"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "postgres":
        from tests.conftest import fresh_postgres_database

        url = fresh_postgres_database(request.getfixturevalue("postgres_url"))
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'byoi.db'}"
    store = Database(url)
    await asyncio.to_thread(migrate, store.url)
    yield store
    await store.close()


async def test_an_upgraded_installation_keeps_the_id_of_its_data_dir(db: Database, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "installation-id").write_text(OLD_ID + "\n")  # written by byoi before the store kept the id
    assert await installation.installation_id(db, data_dir) == OLD_ID  # its containers stay its own
    assert await installation.get(db, installation.INSTALLATION_ID) == OLD_ID
    other = tmp_path / "replica"  # a second replica, its own (empty) data dir: the same id, and no file made
    other.mkdir()
    assert await installation.installation_id(db, other) == OLD_ID
    assert not (other / "installation-id").exists()
    assert await installation.installation_id(db, data_dir) == OLD_ID  # and again at the next start


async def test_the_store_wins_over_another_file_and_says_so_once(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stored = await installation.put_once(db, installation.INSTALLATION_ID, "feedfacefeedface")
    (tmp_path / "installation-id").write_text(OLD_ID)
    with caplog.at_level(logging.WARNING, logger="byoi.services.installation"):
        assert await installation.installation_id(db, tmp_path) == stored
        assert await installation.installation_id(db, tmp_path) == stored
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and stored in warnings[0] and OLD_ID in warnings[0], warnings
    assert (tmp_path / "installation-id.superseded").read_text() == OLD_ID


async def test_replicas_starting_at_once_get_one_id(db: Database, tmp_path: Path) -> None:
    dirs = [tmp_path / f"replica-{i}" for i in range(6)]
    for d in dirs:
        d.mkdir()
    ids = await asyncio.gather(*(installation.installation_id(db, d) for d in dirs))
    assert len(set(ids)) == 1 and len(ids[0]) == 16, ids
    # The race itself: every writer offers its own value, and all read back the one that was written first.
    offered = [f"{i:016x}" for i in range(8)]
    won = await asyncio.gather(*(installation.put_once(db, "race", v) for v in offered))
    assert len(set(won)) == 1 and won[0] in offered


async def test_a_server_with_another_master_key_refuses_to_start(db: Database) -> None:
    mine, other = SecretBox(Fernet.generate_key()), SecretBox(Fernet.generate_key())
    await installation.check_master_key(db, mine)
    await installation.check_master_key(db, mine)  # the next start of the same key
    with pytest.raises(installation.MasterKeyMismatch, match="BYOI_MASTER_KEY"):
        await installation.check_master_key(db, other)


async def test_a_store_from_before_the_check_is_checked_against_its_sealed_secrets(db: Database) -> None:
    import time

    import sqlalchemy as sa

    from byoi.store.schema import access_keys

    mine, other = SecretBox(Fernet.generate_key()), SecretBox(Fernet.generate_key())
    async with db.transaction() as conn:
        await conn.execute(
            sa.insert(access_keys).values(
                access_key_id="BYOIOLDKEY0000000000",
                secret_ciphertext=mine.seal("s3cret"),
                principal="admin",
                role="admin",
                active=True,
                created_at=time.time(),
            )
        )
    with pytest.raises(installation.MasterKeyMismatch):  # never writes its own check over the real key's
        await installation.check_master_key(db, other)
    assert await installation.get(db, installation.MASTER_KEY_CHECK) is None
    await installation.check_master_key(db, mine)
    assert await installation.get(db, installation.MASTER_KEY_CHECK) is not None
