"""A request body handed from the event loop to a reader in a worker thread, as a file that reader reads.

Why: an uploaded build context is checked member by member (build/context.py `check_upload`, blocking tarfile
code, so in a thread) and copied as checked. It used to be written to disk as it came and then read again for
the check; for a 16 MB context that first copy, written and read back, was about half of the upload's time on
the server. With the pipe the check reads the body as it arrives and only the checked copy is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
POLL = 0.1  # seconds between the reader's looks at whether the upload was aborted


class UploadAborted(Exception):
    """The upload ended before its body did (the client went, the body was refused): the reader stops."""


def in_own_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`fn(*args)` on a thread of its own, as a future of this loop. Not asyncio.to_thread: a reader that waits for
    the upload's next block must not hold one of the default pool's few threads, which the loop needs meanwhile
    (with every pool thread a waiting reader, nothing else the server hands to the pool would run)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine, as to_thread does
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it any more
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name="byoi-upload-check", daemon=True).start()
    return future


class BlockPipe:
    """The loop `put`s the body's chunks, joined into blocks of about BLOCK bytes (the reader's wake-up is paid per
    block, not per network chunk), then `close`s; the reader thread `read`s. At most DEPTH blocks wait: the loop
    waits for room on an asyncio semaphore the reader releases as it takes a block, so a slow reader slows the
    upload down rather than filling memory, and no thread waits on the loop's behalf. Once the reader is done
    (`done_reading`: the archive ended, or it was refused) whatever is put is dropped; after `abort` the reader's
    next read raises UploadAborted. Made in the event loop that puts."""

    BLOCK = 1 << 20
    DEPTH = 4

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._room = asyncio.Semaphore(self.DEPTH)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._reader_done = threading.Event()
        self._aborted = threading.Event()
        self._block = memoryview(b"")
        self._eof = False

    # -- the event loop's side --------------------------------------------------------------------

    async def put(self, chunk: bytes) -> None:
        if self._reader_done.is_set():
            return
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= self.BLOCK:
            await self._flush()

    async def close(self) -> None:
        """The whole body is in."""
        await self._flush()
        await self._hand_over(None)

    def abort(self) -> None:
        self._aborted.set()

    async def _flush(self) -> None:
        if self._pending:
            block = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
            await self._hand_over(block)

    async def _hand_over(self, item: bytes | None) -> None:
        if self._reader_done.is_set():
            return
        await self._room.acquire()
        if not self._reader_done.is_set():
            self._queue.put(item)

    # -- the reader's side (its own thread) ---------------------------------------------------------

    def _next(self) -> bytes | None:
        while True:
            if self._aborted.is_set():
                raise UploadAborted("the upload ended before its body did")
            try:
                item = self._queue.get(timeout=POLL)
            except queue.Empty:
                continue
            self._release()
            return item

    def _release(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody puts any more
            self._loop.call_soon_threadsafe(self._room.release)

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size if size >= 0 else None
        while wanted is None or wanted > 0:
            if not self._block:
                if self._eof:
                    break
                item = self._next()
                if item is None:
                    self._eof = True
                    break
                self._block = memoryview(item)
            take = len(self._block) if wanted is None else min(wanted, len(self._block))
            parts.append(bytes(self._block[:take]))
            self._block = self._block[take:]
            if wanted is not None:
                wanted -= take
        return b"".join(parts)

    def done_reading(self) -> None:
        """The reader needs no more: a put waiting for room goes on, and drops the rest."""
        self._reader_done.set()
        self._release()
