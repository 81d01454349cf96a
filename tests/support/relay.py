"""A relay a test can take down and bring back: it listens on a Unix socket or a loopback TCP port and forwards
each connection to a real service (Docker Engine's socket, a registry), so the service seems to go away for
whoever talks to it through the relay, while everyone else, and the service itself, carry on."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from tests.support.processes import free_port


class Relay:
    """Forwards `listen` (a Unix socket path, or None for a free loopback port) to `target` (a Unix socket path
    or a loopback port). `close()` stops listening and drops every connection; `open()` listens again at the
    same address. Runs its own event loop in a thread; `stop()` ends it."""

    CHUNK = 65536

    def __init__(self, target: Path | int, listen: Path | None = None) -> None:
        self.target = target
        self.path = listen
        self.port = None if listen is not None else free_port()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[Any] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.open()

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open(self) -> None:
        self._call(self._open())

    def close(self) -> None:
        """From now on nothing answers at the relay's address (a Unix socket stays as a file nobody listens on)."""
        self._call(self._close())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _open(self) -> None:
        if self._server is not None:
            return
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self._server = await asyncio.start_unix_server(self._handle, str(self.path))
            os.chmod(self.path, 0o600)
        else:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _connect_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.target, int):
            return await asyncio.open_connection("127.0.0.1", self.target)
        return await asyncio.open_unix_connection(str(self.target))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._connect_target()
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(self.CHUNK):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
