"""Real servers for tests/test_proxy_core.py, each in its own process, all on Unix sockets or loopback.

`upstream SOCKET_DIR NAME…`: one aiohttp.web process serving one small app per NAME on SOCKET_DIR/NAME.sock.
It is a TEST DOUBLE for rserver, only as much of it as the proxy core needs: it echoes what it received
(method, raw path, headers, cookies), sets cookies with odd paths and domains, answers absolute Locations at
localhost, streams N bytes, consumes an upload and reports its size and sha256, holds a request, breaks off a
response midway, and echoes a WebSocket. Each app counts the requests that reached it, so a test can prove a
request never reached a session.

`proxy PORT CONFIG_JSON`: byoi's real SessionProxy inside a real uvicorn (httptools, uvloop, websockets) on
127.0.0.1:PORT, with a tiny real Gate (the config maps session ids to a socket, or to a refusal status; any
other id is a 404) and an Activity that counts touches, readable at `/_test/touches`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Any

BLOCK = 64 * 1024
_BASE = random.Random(7).randbytes(BLOCK)  # noqa: S311 - test data, not a secret


def block(i: int) -> bytes:
    """The i-th 64 KiB block of a streamed download: numbered, so reordering or repeats change the hash."""
    return struct.pack(">Q", i) + _BASE[8:]


def stream_bytes(n: int):
    """The bytes `/stream?n=` sends, as blocks (the last one cut to size)."""
    i = 0
    while n > 0:
        chunk = block(i)[:n]
        yield chunk
        n -= len(chunk)
        i += 1


def stream_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for chunk in stream_bytes(n):
        digest.update(chunk)
    return digest.hexdigest()


# -- the upstream (rserver test double) --------------------------------------------------------------------


def upstream_app(name: str):
    from aiohttp import WSMsgType, web

    hits: Counter[str] = Counter()
    state: dict[str, Any] = {"last_close": None, "abandoned": 0}

    @web.middleware
    async def count(request: web.Request, handler):
        if request.path not in ("/_hits", "/_state"):
            hits[request.path] += 1
        return await handler(request)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "upstream": name,
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
                "body_size": len(body),
            }
        )

    async def root(request: web.Request) -> web.Response:
        """Like rserver's main page: without a `user-id` cookie, a redirect to sign-in under the root path."""
        if "user-id" not in request.cookies:
            location = request.headers.get("X-RStudio-Root-Path", "") + "/auth-sign-in?appUri=%2F"
            return web.Response(status=302, headers={"Location": location})
        return web.Response(text=f"upstream {name}")

    async def redirect(request: web.Request) -> web.Response:
        headers = {"Location": request.query["to"]}
        if "refresh" in request.query:
            headers["Refresh"] = request.query["refresh"]
        return web.Response(status=int(request.query.get("status", "302")), headers=headers)

    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(text="cookies")
        for value in json.loads(request.query["set"]):
            response.headers.add("Set-Cookie", value)
        return response

    async def hop(request: web.Request) -> web.Response:
        response = web.Response(text="hop")
        response.headers["X-Hop-Named"] = "drop me"
        response.headers["X-Kept"] = "keep me"
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["Proxy-Authenticate"] = "Basic realm=upstream"
        response.headers["Connection"] = "X-Hop-Named"
        return response

    async def stream(request: web.Request) -> web.StreamResponse:
        n = int(request.query["n"])
        response = web.StreamResponse()
        if "chunked" in request.query:
            response.enable_chunked_encoding()
        else:
            response.content_length = n
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        for chunk in stream_bytes(n):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response(
            {
                "size": size,
                "sha256": digest.hexdigest(),
                "content_length": request.headers.get("Content-Length"),
                "transfer_encoding": request.headers.get("Transfer-Encoding"),
            }
        )

    async def hold(request: web.Request) -> web.Response:
        """Answer after `s` seconds, like RStudio's /events/get_events; counts a caller that left first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request.query["s"])
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            if request.transport is None or request.transport.is_closing():
                state["abandoned"] += 1
                return web.Response(text="abandoned")
        return web.Response(text="held")

    async def midway(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()  # so only the missing last chunk tells the client it is cut short
        await response.prepare(request)
        await response.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.close()  # the upstream dies before its last chunk
        return response

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("rstudio-terminal", "other"), heartbeat=None)
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT and message.data.startswith("close:"):
                await ws.close(code=int(message.data[6:]), message=b"upstream says bye")
                break
            if message.type is WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(b"echo:" + message.data)
        state["last_close"] = ws.close_code
        return ws

    async def state_now(request: web.Request) -> web.Response:
        return web.json_response(state)

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no such thing")

    async def hit_counts(request: web.Request) -> web.Response:
        return web.json_response(dict(hits))

    app = web.Application(middlewares=[count], client_max_size=2**40)
    app.router.add_get("/", root)
    app.router.add_get(r"/{deep:(?:.*/)?}redirect", redirect)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/hop", hop)
    app.router.add_get("/stream", stream)
    app.router.add_post("/upload", upload)
    app.router.add_get("/hold", hold)
    app.router.add_get("/midway", midway)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/_state", state_now)
    app.router.add_get("/gone", gone)
    app.router.add_get("/_hits", hit_counts)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def serve_upstreams(socket_dir: Path, names: list[str]) -> None:
    from aiohttp import web

    for name in names:
        runner = web.AppRunner(upstream_app(name), access_log=None)
        await runner.setup()
        await web.UnixSite(runner, str(socket_dir / f"{name}.sock")).start()
    await asyncio.Event().wait()


# -- the proxy under uvicorn ---------------------------------------------------------------------------------


def proxy_app(config: dict[str, Any]):
    from starlette.responses import PlainTextResponse

    from byoi.proxy.core import SessionProxy, Upstream
    from byoi.runtime.base import Endpoint

    class TestGate:
        """Session id -> socket; a session with an "owner" only for the request whose byoi cookie names it."""

        async def decide(self, scope, path):
            entry = config["sessions"].get(path.session_id)
            if entry is None:
                return PlainTextResponse("no such session", 404)
            if "owner" in entry and f"byoi_session={entry['owner']}".encode() not in _cookies(scope):
                return PlainTextResponse("not yours", 403)
            return Upstream(Endpoint(socket=entry["socket"]), path.session_id, path.prefix)

    class CountingActivity:
        def __init__(self) -> None:
            self.touches: Counter[str] = Counter()

        def touch(self, session_id: str) -> None:
            self.touches[session_id] += 1

    activity = CountingActivity()
    proxy = SessionProxy(
        TestGate(), activity, config.get("public_url"), frozenset(config["strip"]), config.get("connect_timeout", 10.0)
    )

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await proxy(scope, receive, send)  # closes the pooled connections on shutdown
        elif scope.get("raw_path", b"").startswith(b"/sessions/"):
            await proxy(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/_test/touches":
            body = json.dumps(activity.touches).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/json")]})
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "http":
            await PlainTextResponse("not the proxy", 404)(scope, receive, send)
        else:
            await send({"type": "websocket.close"})

    return app


def _cookies(scope) -> bytes:
    return b"; ".join(value for name, value in scope["headers"] if name == b"cookie")


def main(argv: list[str]) -> None:
    if argv[0] == "upstream":
        asyncio.run(serve_upstreams(Path(argv[1]), argv[2:]))
    elif argv[0] == "proxy":
        import uvicorn

        config = json.loads(argv[2])
        uvicorn.run(
            proxy_app(config),
            host="127.0.0.1",
            port=int(argv[1]),
            http="httptools",
            loop="uvloop",
            ws="websockets-sansio",
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # the test client is on loopback: its X-Forwarded-For must not become scope["client"]
        )
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
