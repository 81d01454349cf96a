"""`byoi rotate-master-key`: re-seal every stored secret with a new master key, offline.

Access-key secrets are the only data sealed at rest with the master key (session ids and presigned tokens are
stored as hashes; OIDC flow cookies live ten minutes). Run it with byoi stopped, on the data dir (and database)
the server uses:

1. the new key is written next to the old one (`master.key.new`, mode 0600) before anything changes;
2. every secret is opened with the old key and sealed with the new one in one database transaction (a failure
   changes nothing);
3. then `master.key` becomes `master.key.old` and `master.key.new` becomes `master.key`.

With `BYOI_MASTER_KEY` (the key is not in a file) the new key is printed instead, to be put in its place.
Backups of the database taken before the rotation need the old key: keep `master.key.old` with them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from byoi.config import default_data_dir


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def rotate_master_key(
    data_dir: Annotated[Path, typer.Option("--data-dir", envvar="BYOI_DATA_DIR", help="The server's data dir.")] = (
        default_data_dir()
    ),
    database_url: Annotated[
        str | None,
        typer.Option(envvar="BYOI_DATABASE_URL", help="The server's database URL."),
    ] = None,
) -> None:
    """Re-seal every stored secret with a new master key (stop byoi first)."""
    # The store's stack is loaded here, not when `byoi` starts: other commands never need it.
    import sqlalchemy as sa
    from cryptography.fernet import Fernet

    from byoi.auth.secrets import SecretBox
    from byoi.store.db import migrate, sync_url
    from byoi.store.schema import access_keys
    from byoi.store.schema_installation import MASTER_KEY_CHECK, installation_settings

    data_dir = data_dir.expanduser().resolve()
    url = database_url or f"sqlite+aiosqlite:///{data_dir / 'byoi.db'}"
    key_file = data_dir / "master.key"
    from_env = os.environ.get("BYOI_MASTER_KEY")
    if not from_env and not key_file.exists():
        raise typer.BadParameter(f"no master key: neither BYOI_MASTER_KEY nor {key_file} exists")
    if database_url is None and not (data_dir / "byoi.db").exists():
        raise typer.BadParameter(f"no byoi database in {data_dir}")
    old = SecretBox(from_env.encode()) if from_env else SecretBox(key_file.read_bytes().strip())
    new_key = Fernet.generate_key()
    new = SecretBox(new_key)
    staged = key_file.with_name("master.key.new")
    if not from_env:
        _write_private(staged, new_key)
    migrate(url)  # the schema the server would run with
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            rows = list(conn.execute(sa.select(access_keys.c.access_key_id, access_keys.c.secret_ciphertext)))
            for row in rows:
                try:
                    secret = old.open(row.secret_ciphertext)
                except RuntimeError:
                    raise typer.BadParameter(
                        f"access key {row.access_key_id} is not sealed with this master key: nothing was changed"
                    ) from None
                conn.execute(
                    sa.update(access_keys)
                    .where(access_keys.c.access_key_id == row.access_key_id)
                    .values(secret_ciphertext=new.seal(secret))
                )
            # The check every server makes at start that its key is the store's (services/installation.py).
            check = installation_settings.c.key == MASTER_KEY_CHECK
            sealed = conn.execute(sa.select(installation_settings.c.value).where(check)).scalar_one_or_none()
            if sealed is not None:
                try:
                    plain = old.open(sealed)
                except RuntimeError:
                    raise typer.BadParameter(
                        "the store's master key check is not sealed with this master key: nothing was changed"
                    ) from None
                conn.execute(sa.update(installation_settings).where(check).values(value=new.seal(plain)))
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    finally:
        engine.dispose()
    if from_env:
        typer.echo(f"Re-sealed {len(rows)} secrets. Set BYOI_MASTER_KEY to the new key before starting byoi:")
        typer.echo(new_key.decode())
        return
    os.replace(key_file, key_file.with_name("master.key.old"))
    os.replace(staged, key_file)
    typer.echo(f"Re-sealed {len(rows)} secrets; {key_file} is the new key, the old one is {key_file}.old")


def register(app: typer.Typer) -> None:
    app.command("rotate-master-key")(rotate_master_key)
