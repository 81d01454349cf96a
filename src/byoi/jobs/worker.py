"""Durable background work as a reconciler over status and lease columns.

A `Task` names a table, the statuses whose rows need work, and a handler. The worker repeatedly finds
such rows whose lease is free and whose next attempt is due, claims each with a conditional UPDATE
(so two workers or two processes never run the same row), renews the lease while the handler runs,
and releases it afterwards. A row whose server died keeps its lease only until `lease_until`; then any
worker picks it up again. Handlers are idempotent and write their outcome guarded by `Claim.owns`.

A handler that raises anything but RetryLater has a bug or met something nobody foresaw. It is retried
with exponential back-off; after `max_failures` such failures in a row for the same row, a task with a
`give_up` hook hands it the error, and the hook moves the row to its failed state with a reason (so
nothing stays in a transitional state for ever). A task without one keeps retrying, at most every
`max_failure_delay` seconds. The count is kept in memory: a restarted server starts it again, which
still bounds the work per process and needs no column.

A service that records new work calls `wake(table)`: the loop runs at once instead of at its next poll, and
looks at that table's tasks first, so the new row is claimed after one query rather than after a query per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from byoi.store.db import Database

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """Raised by a handler to try the row again after `delay` seconds (e.g. a transient registry error)."""

    def __init__(self, delay: float, reason: str, routine: bool = False) -> None:
        super().__init__(reason)
        self.delay = delay
        self.routine = routine  # expected waiting (e.g. a queued build), logged at debug level only


@dataclass(frozen=True)
class Claim:
    table: sa.Table
    row_id: int
    owner: str
    attempts: int  # including this one

    def owns(self) -> sa.ColumnElement[bool]:
        """A WHERE clause true only while this claim still holds the row."""
        return sa.and_(self.table.c.id == self.row_id, self.table.c.lease_owner == self.owner)


Handler = Callable[[Claim], Awaitable[None]]
# Called, holding the claim, with a reason such as "KeyError: 'x' (failed 5 times; see the server log)".
GiveUp = Callable[[Claim, str], Awaitable[None]]


@dataclass(frozen=True)
class Task:
    name: str
    table: sa.Table
    statuses: tuple[str, ...]
    handler: Handler
    # Long work (a build, a session launch) gets its own pool of this size, so it can never take every
    # shared slot and starve quick work such as resolving image versions. None: the shared pool.
    concurrency: int | None = None
    # Moves the row to its failed state once the handler has failed `max_failures` times in a row with an
    # unexpected error. None: the row is retried for ever (with back-off), for work that has no failed state.
    give_up: GiveUp | None = None
    max_failures: int | None = None  # None: the worker's
    failure_delay: float | None = None  # seconds before the first retry, doubling; None: the worker's


class Worker:
    def __init__(
        self,
        db: Database,
        lease_seconds: float = 30.0,
        concurrency: int = 4,
        poll_seconds: float = 1.0,
        max_failures: int = 5,
        failure_delay: float = 5.0,
        max_failure_delay: float = 300.0,
    ):
        self.db = db
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.max_failures = max_failures
        self.failure_delay = failure_delay
        self.max_failure_delay = max_failure_delay
        self._failures: dict[tuple[str, int], int] = {}  # unexpected handler errors in a row, per row
        self.owner = uuid.uuid4().hex[:16]
        self.tasks: list[Task] = []
        self._slots = asyncio.Semaphore(concurrency)
        self._own_pools: dict[str, asyncio.Semaphore] = {}
        self._wake = asyncio.Event()
        self._woken: set[str] = set()  # tables with new work since the last pass: looked at first
        self._stopping = asyncio.Event()
        self._running: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._handlers: dict[tuple[str, int], asyncio.Task[None]] = {}  # the handler part of a running row
        self._loop_task: asyncio.Task[None] | None = None
        self.waiting: dict[str, int] = {}

    def register(self, task: Task) -> None:
        self.tasks.append(task)
        if task.concurrency is not None:
            self._own_pools[task.name] = asyncio.Semaphore(task.concurrency)

    def wake(self, table: sa.Table | None = None) -> None:
        """Called after a service records new work (on `table`), so it starts now rather than at the next poll."""
        if table is not None:
            self._woken.add(table.name)
        self._wake.set()

    @property
    def running(self) -> dict[str, int]:
        counts: dict[str, int] = {t.name: 0 for t in self.tasks}
        for name, _ in self._running:
            counts[name] = counts.get(name, 0) + 1
        return counts

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="byoi-worker")

    async def stop(self) -> None:
        """Stop polling and cancel the handlers that are running (their rows keep their lease until it
        expires, so another server, or this one restarted, takes them over).

        Only handlers are cancelled. The loop stops on a flag: Python 3.11's asyncio.wait_for swallows a
        cancellation that arrives as the event it waits for fires, so cancelling the loop right after a
        wake() left it running and stop() waiting for ever. Lease renewals and releases are let finish
        their statement rather than being cut off midway."""
        self._stopping.set()
        self._wake.set()
        if self._loop_task:
            await self._loop_task
        for handler in list(self._handlers.values()):
            handler.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception:  # the store may be briefly unavailable; keep reconciling
                log.exception("background work loop failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()

    async def run_once(self) -> None:
        if self._stopping.is_set():
            return
        now = time.time()
        woken, self._woken = self._woken, set()
        for task in sorted(self.tasks, key=lambda task: task.table.name not in woken):  # stable: woken first
            t = task.table
            due = sa.and_(
                t.c.status.in_(task.statuses),
                sa.or_(t.c.lease_until.is_(None), t.c.lease_until < now),
                sa.or_(t.c.next_attempt_at.is_(None), t.c.next_attempt_at <= now),
            )
            async with self.db.read() as conn:
                ids = [r[0] for r in await conn.execute(sa.select(t.c.id).where(due).order_by(t.c.id).limit(100))]
                self.waiting[task.name] = len(ids)
            for row_id in ids:
                if (task.name, row_id) in self._running:
                    continue
                claim = await self._claim(task, row_id, due)
                if claim is not None:
                    self._running[(task.name, row_id)] = asyncio.create_task(self._run(task, claim))

    async def _claim(self, task: Task, row_id: int, due: sa.ColumnElement[bool]) -> Claim | None:
        t = task.table
        async with self.db.transaction() as conn:
            result = await conn.execute(
                sa.update(t)
                .where(t.c.id == row_id, due)
                .values(lease_owner=self.owner, lease_until=time.time() + self.lease_seconds, attempts=t.c.attempts + 1)
                .returning(t.c.attempts)
            )
            row = result.first()
        return Claim(t, row_id, self.owner, row[0]) if row else None

    async def _run(self, task: Task, claim: Claim) -> None:
        key = (task.name, claim.row_id)
        try:
            values = await self._attempt(task, claim)
            if values is not None:
                async with self.db.transaction() as conn:
                    await conn.execute(sa.update(claim.table).where(claim.owns()).values(**values))
                self.wake()
        finally:
            self._running.pop(key, None)

    async def _attempt(self, task: Task, claim: Claim) -> dict[str, Any] | None:
        """Run the handler once, renewing the lease meanwhile; return the values that release the row
        (None when the handler was cancelled by stop(): the lease then simply expires)."""
        key = (task.name, claim.row_id)
        if claim.attempts == 1:
            # Services reset `attempts` when they record new work on a row (a re-created app reuses its row):
            # failures counted for the work before it must not count towards this work's give-up.
            self._failures.pop(key, None)
        done = asyncio.Event()
        renew = asyncio.create_task(self._renew(claim, done))
        values: dict[str, Any] = {"lease_owner": None, "lease_until": None}
        try:
            async with self._own_pools.get(task.name, self._slots):
                if self._stopping.is_set():
                    return values  # stopped while waiting for a slot: let the row go at once
                handler = self._handlers[key] = asyncio.ensure_future(task.handler(claim))
                await handler
            self._failures.pop(key, None)
        except RetryLater as exc:
            level = logging.DEBUG if exc.routine else logging.INFO
            log.log(level, "%s %s: retrying in %.1fs: %s", task.name, claim.row_id, exc.delay, exc)
            values["next_attempt_at"] = time.time() + exc.delay
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                raise
            return None
        except Exception as exc:
            # A handler bug must not wedge the row, nor retry it for ever: see the module docstring.
            delay = await self._handler_failed(task, claim, exc)
            if delay is not None:
                values["next_attempt_at"] = time.time() + delay
        finally:
            self._handlers.pop(key, None)
            done.set()
            await asyncio.gather(renew, return_exceptions=True)  # let a renewal in flight finish
        return values

    async def _handler_failed(self, task: Task, claim: Claim, exc: Exception) -> float | None:
        """Log an unexpected handler error; give the row up or return the delay before its next attempt."""
        key = (task.name, claim.row_id)
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        limit = task.max_failures or self.max_failures
        base = self.failure_delay if task.failure_delay is None else task.failure_delay
        delay = min(base * 2 ** min(failures - 1, 30), self.max_failure_delay)
        if task.give_up is None or failures < limit:
            log.exception(
                "%s %s: handler failed (%d time(s) in a row); retrying in %.1fs",
                task.name,
                claim.row_id,
                failures,
                delay,
            )
            return delay
        log.exception("%s %s: handler failed %d times in a row; giving up", task.name, claim.row_id, failures)
        reason = f"{type(exc).__name__}: {exc} (failed {failures} times; see the server log)"
        try:
            await task.give_up(claim, reason)
        except Exception:  # the store may be down too: keep the count and try again later
            log.exception("%s %s: could not give up; retrying in %.1fs", task.name, claim.row_id, delay)
            return delay
        self._failures.pop(key, None)
        return None

    async def _renew(self, claim: Claim, done: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.lease_seconds / 3)
            if done.is_set():
                return
            try:
                async with self.db.transaction() as conn:
                    await conn.execute(
                        sa.update(claim.table).where(claim.owns()).values(lease_until=time.time() + self.lease_seconds)
                    )
            except Exception:  # the store may be briefly unavailable: try again at the next interval
                log.warning("%s %s: could not renew the lease", claim.table.name, claim.row_id, exc_info=True)
