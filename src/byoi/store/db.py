"""Connections and migrations. SQLite (WAL) by default, PostgreSQL by URL."""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import regex
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from byoi.errors import StartupRefused

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


_REVISION = regex.compile(r"^revision\s*=\s*['\"](\w+)['\"]", regex.M)
_DOWN_REVISION = regex.compile(r"^down_revision\s*=\s*(.+)$", regex.M)


@functools.cache
def schema_heads() -> frozenset[str]:
    """The revisions `alembic upgrade heads` ends at, read from the migration files without importing alembic
    (tests/test_store.py checks them against alembic's own answer)."""
    revisions: set[str] = set()
    below: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text()
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision is None or down is None:
            raise RuntimeError(f"{path.name}: no revision / down_revision line")
        revisions.add(revision[1])
        below.update(regex.findall(r"['\"](\w+)['\"]", down[1]))
    return frozenset(revisions - below)


async def schema_is_current(db: Database) -> bool:
    """Whether the store's schema is the newest one (so a start need not load alembic at all)."""

    def current(conn: sa.Connection) -> set[str]:
        if not sa.inspect(conn).has_table("alembic_version"):
            return set()
        return {str(row[0]) for row in conn.execute(sa.text("SELECT version_num FROM alembic_version"))}

    async with db.read() as conn:
        return await conn.run_sync(current) == schema_heads()


def unreachable(url: str, exc: BaseException) -> str:
    """'the store at <url, password hidden> is not reachable: <the driver's first line>'."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    where = sa.engine.make_url(url).render_as_string(hide_password=True)
    return f"the store at {where} is not reachable: {reason[0] if reason else type(exc).__name__}"


UNREACHABLE_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, OSError)


def migrate_in_child(url: str) -> None:
    """`migrate(url)` in a forked child process, so that the server never loads alembic (with mako and the
    parts of SQLAlchemy only migrations use: 12 MiB of resident memory that an idle server would keep for
    nothing). Forked, not spawned: the child starts in milliseconds with what this process imported already.
    Called before the server's event loop or any thread starts. StartupRefused when the store does not
    answer; RuntimeError with the child's traceback when a migration fails."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_migrate_child, args=(url, send), name="byoi-migrate", daemon=True)
    child.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:
        outcome = ("failed", f"the migration process ended without an answer (exit code {child.exitcode})")
    finally:
        receive.close()
        child.join()
    if outcome is None:
        return
    kind, message = outcome
    if kind == "refused":
        raise StartupRefused(message)
    raise RuntimeError(f"the store's schema could not be brought up to date:\n{message}")


def _migrate_child(url: str, send: Any) -> None:
    try:
        migrate(url)
        send.send(None)
    except UNREACHABLE_ERRORS as exc:
        send.send(("refused", unreachable(url, exc)))
    except BaseException:
        send.send(("failed", traceback.format_exc()))
    finally:
        send.close()


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
