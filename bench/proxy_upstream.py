"""The WebSocket echo server bench/proxy.py measures round trips against: every message comes back as it came.

    .venv/bin/python bench/proxy_upstream.py SOCKET PORT

Listens on the Unix socket SOCKET (what byoi and nginx reach, as they reach a session's RStudio) and on
127.0.0.1:PORT (what configurable-http-proxy reaches: it cannot target a Unix socket), answers any path, no
compression. Prints `ready` once both listen; runs until it is terminated.
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, serve, unix_serve


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def main(socket_path: str, port: int) -> None:
    options = {"compression": None, "max_size": 2**20, "ping_interval": None}
    async with unix_serve(echo, socket_path, **options), serve(echo, "127.0.0.1", port, **options):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    run(main(sys.argv[1], int(sys.argv[2])))
