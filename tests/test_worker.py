"""The background-work reconciler on a real SQLite store: leases, retries and separate pools."""

from __future__ import annotations

import asyncio
import logging

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


async def wait_for(predicate, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_a_handler_that_always_fails_is_given_up_after_max_failures(tmp_path, caplog):
    db = await make_db(tmp_path, [(1, "QUICK", "quick"), (2, "QUICK", "quick")])
    calls: list[tuple[int, float]] = []
    given_up: list[tuple[int, str]] = []

    async def broken(claim: Claim) -> None:
        calls.append((claim.row_id, asyncio.get_running_loop().time()))
        if claim.row_id == 1:
            raise KeyError("Env")
        await finish(db, claim)

    async def give_up(claim: Claim, reason: str) -> None:
        given_up.append((claim.row_id, reason))
        async with db.transaction() as conn:
            await conn.execute(sa.update(items).where(claim.owns()).values(status="FAILED"))

    worker = Worker(db, lease_seconds=5, poll_seconds=0.02, failure_delay=0.05)
    worker.register(Task("quick", items, ("QUICK",), broken, give_up=give_up, max_failures=4))
    caplog.set_level("INFO", logger="byoi.jobs.worker")
    worker.start()
    try:
        await wait_for(lambda: _statuses_are(db, {1: "FAILED", 2: "DONE"}))
        await asyncio.sleep(0.5)  # nothing more happens to a row given up
        times = [t for row, t in calls if row == 1]
        assert len(times) == 4
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2  # back-off doubles
        assert given_up == [(1, "KeyError: 'Env' (failed 4 times; see the server log)")]
        failed = [r.getMessage() for r in caplog.records if "handler failed" in r.getMessage()]
        assert len(failed) == 4 and failed[-1] == "quick 1: handler failed 4 times in a row; giving up"
        async with db.read() as conn:
            row = (await conn.execute(sa.select(items).where(items.c.id == 1))).one()
        assert (row.lease_owner, row.lease_until) == (None, None)
    finally:
        await worker.stop()
        await db.close()


async def _statuses_are(db: Database, expected: dict[int, str]) -> bool:
    return await status_of(db) == expected


async def test_failures_in_a_row_are_counted_afresh_after_a_success(tmp_path):
    """Only failures in a row count: a row that recovers (a clean return) starts again from zero."""
    db = await make_db(tmp_path, [(1, "QUICK", "quick")])
    script = ["fail", "fail", "ok", "fail", "fail", "done"]  # never 3 failures in a row
    given_up: list[str] = []

    async def flaky(claim: Claim) -> None:
        step = script.pop(0)
        if step == "fail":
            raise RuntimeError("boom")
        if step == "done":
            await finish(db, claim)

    async def give_up(claim: Claim, reason: str) -> None:
        given_up.append(reason)

    worker = Worker(db, lease_seconds=5, poll_seconds=0.02, failure_delay=0.02)
    worker.register(Task("quick", items, ("QUICK",), flaky, give_up=give_up, max_failures=3))
    worker.start()
    try:
        await wait_for(lambda: _statuses_are(db, {1: "DONE"}))
        assert given_up == [] and script == []
    finally:
        await worker.stop()
        await db.close()


async def test_new_work_on_a_row_starts_its_failure_count_afresh(tmp_path):
    """A service that records new work on a row resets its `attempts` (a re-created app reuses its row):
    failures of the earlier work do not count towards giving the new work up."""
    db = await make_db(tmp_path, [(1, "QUICK", "quick")])
    script = ["fail", "fail-and-record-new-work", "fail", "fail", "done"]  # 2 failures, then 2 of the new work
    given_up: list[str] = []

    async def flaky(claim: Claim) -> None:
        step = script.pop(0)
        if step == "fail-and-record-new-work":
            async with db.transaction() as conn:
                await conn.execute(sa.update(items).where(claim.owns()).values(attempts=0))
        if step.startswith("fail"):
            raise RuntimeError("boom")
        await finish(db, claim)

    async def give_up(claim: Claim, reason: str) -> None:
        given_up.append(reason)

    worker = Worker(db, lease_seconds=5, poll_seconds=0.02, failure_delay=0.02)
    worker.register(Task("quick", items, ("QUICK",), flaky, give_up=give_up, max_failures=3))
    worker.start()
    try:
        await wait_for(lambda: _statuses_are(db, {1: "DONE"}))
        assert given_up == [] and script == []
    finally:
        await worker.stop()
        await db.close()


async def test_without_a_give_up_hook_a_failing_row_is_retried_with_capped_back_off(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="byoi.jobs.worker")
    db = await make_db(tmp_path, [(1, "QUICK", "quick")])
    calls: list[float] = []

    async def broken(claim: Claim) -> None:
        calls.append(asyncio.get_running_loop().time())
        raise RuntimeError("no failed state to move to")

    worker = Worker(db, lease_seconds=5, poll_seconds=0.02, failure_delay=0.02, max_failure_delay=0.1, max_failures=2)
    worker.register(Task("quick", items, ("QUICK",), broken))
    worker.start()
    try:
        await wait_for(lambda: _true_when(len(calls) >= 6))
        gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
        # The delays the worker chose (from its log, not the wall clock, which a loaded machine stretches):
        # doubling from failure_delay, then held at max_failure_delay, still retried past max_failures.
        delays = [r.args[3] for r in caplog.records if r.getMessage().startswith("quick 1: handler failed")]
        assert delays[:5] == [0.02, 0.04, 0.08, 0.1, 0.1], delays
        assert gaps[-1] >= 0.1  # and the row really waited for the capped delay
        assert (await status_of(db)) == {1: "QUICK"}
    finally:
        await worker.stop()
        await db.close()


async def _true_when(value: bool) -> bool:
    return value


async def test_a_give_up_hook_that_fails_is_tried_again(tmp_path):
    db = await make_db(tmp_path, [(1, "QUICK", "quick")])
    hooks: list[int] = []

    async def broken(claim: Claim) -> None:
        raise ValueError("bad")

    async def give_up(claim: Claim, reason: str) -> None:
        hooks.append(claim.attempts)
        if len(hooks) == 1:
            raise OSError("store unavailable")
        async with db.transaction() as conn:
            await conn.execute(sa.update(items).where(claim.owns()).values(status="FAILED"))

    worker = Worker(db, lease_seconds=5, poll_seconds=0.02, failure_delay=0.02)
    worker.register(Task("quick", items, ("QUICK",), broken, give_up=give_up, max_failures=2))
    worker.start()
    try:
        await wait_for(lambda: _statuses_are(db, {1: "FAILED"}))
        assert hooks == [2, 3]
    finally:
        await worker.stop()
        await db.close()


async def test_stop_cancels_running_handlers_and_keeps_their_lease(tmp_path):
    """stop() cancels a long handler (its row keeps the lease until it expires, so a restarted server
    resumes it) and returns promptly even while the loop polls the store continuously."""
    db = await make_db(tmp_path, [(1, "SLOW", "slow")])
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def long_work(claim: Claim) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker = Worker(db, lease_seconds=5, poll_seconds=0.001)
    worker.register(Task("slow", items, ("SLOW",), long_work))
    worker.start()
    try:
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.2)  # the loop keeps polling meanwhile
        await asyncio.wait_for(worker.stop(), 10)
        assert cancelled.is_set() and worker.running == {"slow": 0}
        async with db.read() as conn:
            row = (await conn.execute(sa.select(items))).one()
        assert row.status == "SLOW" and row.lease_owner == worker.owner and row.lease_until > 0
    finally:
        await worker.stop()
        await db.close()


async def test_stop_right_after_a_wake_returns(tmp_path):
    """Python 3.11's asyncio.wait_for swallows a cancellation that arrives as the awaited event fires. The
    worker used to stop its loop by cancelling it, so a wake() just before stop() (work recorded as the
    server shuts down) left the loop running and stop() waiting for ever. It now stops on a flag."""
    db = await make_db(tmp_path, [(1, "OTHER", "none")])  # no row the task handles

    async def never(claim: Claim) -> None:
        raise AssertionError("no rows")

    # The poll is an hour, so a stop() that waits for the next poll fails as surely as one that waits for ever.
    # The 30 s bound is only there to fail rather than hang, generous so a loaded 2-core machine passes it;
    # asyncio.wait (unlike wait_for) does not cancel stop() on time-out, whose cancellation could end it.
    worker = Worker(db, poll_seconds=3600)
    worker.register(Task("quick", items, ("QUICK",), never))
    worker.start()
    stopping: asyncio.Task[None] | None = None
    try:
        await asyncio.sleep(0.3)  # the loop has polled once and waits for a wake
        worker.wake()
        stopping = asyncio.create_task(worker.stop())
        done, _ = await asyncio.wait({stopping}, timeout=30)
        assert stopping in done, "stop() right after a wake() did not return: the loop kept waiting"
        stopping.result()
        assert worker._loop_task is not None and worker._loop_task.done() and not worker._loop_task.cancelled()
    finally:
        if worker._loop_task and not worker._loop_task.done():
            worker._loop_task.cancel()  # the old behaviour: do not leave the loop behind
        if stopping is not None and not stopping.done():
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
        await db.close()
