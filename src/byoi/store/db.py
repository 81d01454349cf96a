"""Connections and migrations. SQLite (WAL) by default, PostgreSQL by URL."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x62796F69  # "byoi": the PostgreSQL advisory lock held while migrating


def normalise_url(url: str) -> str:
    """Accept the URLs people write (`postgresql://`, `sqlite:///`) and pick byoi's async drivers."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.split(":///", 1)[1]
    return url


def sync_url(url: str) -> str:
    """Alembic runs synchronously: the same database through a sync driver."""
    return url.replace("sqlite+aiosqlite://", "sqlite://")


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    write = conn.get_execution_options().get("byoi_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def migrate(url: str) -> None:
    """Upgrade the database to the newest schema (idempotent; run on every start)."""
    # alembic's templates (mako) load pygments' lexers for highlighting their own error pages: 4 MiB of a server's
    # memory that it never uses. Without that plug-in mako escapes those pages as plain text.
    sys.modules.setdefault("mako.ext.pygmentplugin", None)  # type: ignore[arg-type]
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    engine = sa.create_engine(sync_url(url))
    if is_sqlite(url):
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas starting at once upgrade one after the other (the lock ends with the transaction).
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")  # each area adds its tables on its own branch from 0001
    finally:
        engine.dispose()


class Database:
    """The async engine, and transactions with the retry SQLite's single writer sometimes needs."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        kwargs: dict[str, Any] = {}
        if not is_sqlite(self.url):
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if is_sqlite(self.url):
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            # pysqlite's own transaction handling is switched off (isolation_level None) and byoi
            # begins explicitly: writers take the write lock up front (BEGIN IMMEDIATE), so two
            # read-then-write transactions cannot deadlock; readers begin plainly and never block.
            sa.event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
            sa.event.listen(
                self.engine.sync_engine,
                "connect",
                lambda dbapi_conn, _rec: setattr(dbapi_conn, "isolation_level", None),
            )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.execution_options(byoi_write=True).begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
