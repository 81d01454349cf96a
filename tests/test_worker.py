"""The background-work reconciler on a real SQLite store: leases, retries and separate pools."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from byoi.jobs.worker import Claim, RetryLater, Task, Worker
from byoi.store.db import Database
from byoi.store.schema import _lease_columns

meta = sa.MetaData()
items = sa.Table(
    "items",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16)),
    sa.Column("kind", sa.String(16)),
    *_lease_columns(),
)


async def make_db(tmp_path, rows: list[tuple[int, str, str]]) -> Database:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(meta.create_all)
    async with db.transaction() as conn:
        await conn.execute(sa.insert(items), [{"id": i, "status": s, "kind": k} for i, s, k in rows])
    return db


async def finish(db: Database, claim: Claim) -> None:
    async with db.transaction() as conn:
        await conn.execute(sa.update(items).where(claim.owns()).values(status="DONE"))


async def status_of(db: Database) -> dict[int, str]:
    async with db.read() as conn:
        return {r.id: r.status for r in await conn.execute(sa.select(items.c.id, items.c.status))}


async def test_long_work_in_its_own_pool_never_starves_quick_work(tmp_path):
    db = await make_db(tmp_path, [(1, "SLOW", "slow"), (2, "SLOW", "slow"), (3, "QUICK", "quick")])
    release = asyncio.Event()

    async def slow(claim: Claim) -> None:
        await release.wait()
        await finish(db, claim)

    async def quick(claim: Claim) -> None:
        await finish(db, claim)

    worker = Worker(db, lease_seconds=5, concurrency=1, poll_seconds=0.05)  # one shared slot only
    worker.register(Task("slow", items, ("SLOW",), slow, concurrency=2))
    worker.register(Task("quick", items, ("QUICK",), quick))
    worker.start()
    try:
        for _ in range(100):
            if (await status_of(db))[3] == "DONE":
                break
            await asyncio.sleep(0.05)
        assert await status_of(db) == {1: "SLOW", 2: "SLOW", 3: "DONE"}
        assert worker.running["slow"] == 2
        release.set()
        for _ in range(100):
            if set((await status_of(db)).values()) == {"DONE"}:
                break
            await asyncio.sleep(0.05)
        assert set((await status_of(db)).values()) == {"DONE"}
    finally:
        await worker.stop()
        await db.close()


async def test_retry_later_counts_attempts_and_waits(tmp_path):
    db = await make_db(tmp_path, [(1, "QUICK", "quick")])
    attempts: list[int] = []

    async def flaky(claim: Claim) -> None:
        attempts.append(claim.attempts)
        if claim.attempts < 3:
            raise RetryLater(0.1, "not yet")
        await finish(db, claim)

    worker = Worker(db, lease_seconds=5, concurrency=2, poll_seconds=0.05)
    worker.register(Task("quick", items, ("QUICK",), flaky))
    worker.start()
    try:
        for _ in range(100):
            if (await status_of(db))[1] == "DONE":
                break
            await asyncio.sleep(0.05)
        assert attempts == [1, 2, 3]
        async with db.read() as conn:
            row = (await conn.execute(sa.select(items))).one()
        assert (row.status, row.lease_owner, row.lease_until) == ("DONE", None, None)
    finally:
        await worker.stop()
        await db.close()


async def test_routine_waiting_is_not_logged_as_a_retry(tmp_path, caplog):
    db = await make_db(tmp_path, [(1, "QUICK", "quick"), (2, "SLOW", "slow")])
    tries: dict[str, int] = {"quick": 0, "slow": 0}

    async def wait_in_queue(claim: Claim) -> None:
        tries["quick"] += 1
        if tries["quick"] < 3:
            raise RetryLater(0.05, "waits for a slot", routine=True)
        await finish(db, claim)

    async def transient(claim: Claim) -> None:
        tries["slow"] += 1
        if tries["slow"] < 2:
            raise RetryLater(0.05, "registry down")
        await finish(db, claim)

    worker = Worker(db, lease_seconds=5, concurrency=2, poll_seconds=0.05)
    worker.register(Task("quick", items, ("QUICK",), wait_in_queue))
    worker.register(Task("slow", items, ("SLOW",), transient))
    caplog.set_level("INFO", logger="byoi.jobs.worker")
    worker.start()
    try:
        for _ in range(100):
            if set((await status_of(db)).values()) == {"DONE"}:
                break
            await asyncio.sleep(0.05)
        retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
        assert retries and all("registry down" in m for m in retries)
    finally:
        await worker.stop()
        await db.close()
