"""A TCP relay on loopback that can hold connections: to keep background work mid-flight on purpose.

While paused, connections are accepted and held without being forwarded; on resume, held and new
connections are relayed to the target. Used to catch a server with versions still CREATING.

`held` counts the connections the gate is holding right now (accepted while paused, or with data waiting for
the resume): a test waits for it to know the work really is in flight, rather than sleeping and hoping.

`cut_once_after(n)` drops the first connection whose answer passes n bytes: a registry connection lost in the
middle of a blob.
"""

from __future__ import annotations

import asyncio
import threading
import time

from tests.support.processes import free_port


class Gate:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._open: asyncio.Event | None = None
        self._cut_after: int | None = None
        self.cuts = 0
        self._held: set[int] = set()  # ids of the connections held at the gate (touched on the loop only)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._open = asyncio.Event()
        self._open.set()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _hold(self, conn: int) -> None:
        """Wait for the gate to be open; count the connection as held meanwhile."""
        assert self._open is not None
        if self._open.is_set():
            return
        self._held.add(conn)
        try:
            await self._open.wait()
        finally:
            self._held.discard(conn)

    @property
    def held(self) -> int:
        return len(self._held)

    def wait_held(self, n: int, timeout: float = 30.0) -> int:
        """Wait until the gate holds at least n connections; fail with what it holds on time-out."""
        deadline = time.monotonic() + timeout
        while self.held < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the gate holds {self.held} connection(s) after {timeout}s, not {n}")
            time.sleep(0.05)
        return self.held

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        conn = id(writer)
        await self._hold(conn)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        assert self._open is not None

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
            assert self._open is not None
            sent = 0
            try:
                while data := await src.read(65536):
                    await self._hold(conn)  # also holds kept-alive connections while paused
                    sent += len(data)
                    if answers and self._cut_after is not None and sent > self._cut_after:
                        self._cut_after, self.cuts = None, self.cuts + 1
                        dst.write(data[: len(data) // 2])
                        dst.transport.abort()  # a reset, as when the network drops: no clean end of the body
                        up_writer.transport.abort()
                        return
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    def cut_once_after(self, nbytes: int) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "_cut_after", nbytes)

    def pause(self) -> None:
        self._loop.call_soon_threadsafe(self._open.clear)  # type: ignore[union-attr]

    def resume(self) -> None:
        self._loop.call_soon_threadsafe(self._open.set)  # type: ignore[union-attr]

    def close(self) -> None:
        # The loop thread is a daemon: it stops with the test process, after relayed connections end.
        self.resume()
        self._loop.call_soon_threadsafe(self._server.close)
