"""A request body handed from the event loop to a reader in a worker thread, as a file that reader reads.

Why: an uploaded build context is checked member by member (build/context.py `check_upload`, blocking tarfile
code, so in a thread) and copied as checked. It used to be written to disk as it came and then read again for
the check; for a 16 MB context that first copy, written and read back, was about half of the upload's time on
the server. With the pipe the check reads the body as it arrives and only the checked copy is written.
"""

from __future__ import annotations

import asyncio
import queue
import threading

POLL = 0.1  # seconds between a blocked side's looks at whether the other has given up


class UploadAborted(Exception):
    """The upload ended before its body did (the client went, the body was refused): the reader stops."""


class BlockPipe:
    """The loop `put`s the body's chunks, joined into blocks of about BLOCK bytes (the thread hop is paid per
    block, not per network chunk), then `close`s; the thread `read`s. At most DEPTH blocks wait, so a slow
    reader slows the upload down rather than filling memory. Once the reader is done (`done_reading`: the
    archive ended, or it was refused) whatever is put is dropped; after `abort` the reader's next read raises
    UploadAborted. Neither side can wait for ever on the other: each looks every POLL seconds whether the other
    has given up."""

    BLOCK = 1 << 20
    DEPTH = 4

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
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
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            await asyncio.to_thread(self._put_waiting, item)

    def _put_waiting(self, item: bytes | None) -> None:
        while not (self._reader_done.is_set() or self._aborted.is_set()):
            try:
                self._queue.put(item, timeout=POLL)
                return
            except queue.Full:
                continue

    # -- the reader's side (a worker thread) ---------------------------------------------------------

    def _next(self) -> bytes | None:
        while True:
            if self._aborted.is_set():
                raise UploadAborted("the upload ended before its body did")
            try:
                return self._queue.get(timeout=POLL)
            except queue.Empty:
                continue

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
        """The reader needs no more: a producer waiting for room goes on, and drops the rest."""
        self._reader_done.set()
