"""One HTTP request through the proxy: the body streamed up, the answer streamed down, nothing held whole.

Streaming and backpressure, end to end:

- request body: a body that arrived in one ASGI message (nearly all of RStudio's RPCs) is sent as bytes;
  a longer one is an async generator over `receive()`, which client.py pulls as it writes upstream. The ASGI
  server stops reading the client's socket while it holds more than 64 KiB unread, and client.py waits for
  upstream's socket to drain, so an upload costs a few buffers whatever its size. The client's
  Content-Length is kept; without one (chunked from the client) the body goes upstream chunked.
- response body: `read()` hands over what the client has buffered (client.py stops reading upstream's
  socket past its high-water mark), and `send()` waits while the client's socket is full (uvicorn's flow
  control). A 1 GiB download keeps the proxy's memory flat.
- a client that goes away: after the request body is in, a small watcher waits on `receive()` for
  `http.disconnect` and cancels the exchange, so a held `/events/get_events` or a download stops at once
  and its upstream connection is closed rather than read to the end for nobody. The watcher (a task) is
  only started once an exchange has lasted `WATCH_AFTER` seconds: most requests are over long before, and
  cost a timer instead of a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from byoi.proxy.client import HTTPPool, Response, UpstreamError
from byoi.proxy.headers import PublicOrigin, request_headers, response_headers
from byoi.proxy.pages import send_bad_gateway
from byoi.proxy.paths import SessionPath
from byoi.proxy.rewrite import rewrite_location, rewrite_refresh, rewrite_set_cookie

if TYPE_CHECKING:
    from byoi.proxy.core import Upstream

log = logging.getLogger("byoi.proxy")

# Query strings pass byte-exact when they are plain printable ASCII (always, from a browser); other bytes
# are percent-encoded so the request line upstream stays valid.
_QUERY_SAFE = frozenset(range(0x21, 0x7F)) - {ord("#")}
WATCH_AFTER = 0.2


class ClientGone(Exception):
    """The client disconnected while its request body was still coming."""


async def forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    pool: HTTPPool,
    path: SessionPath,
    upstream: Upstream,
    origin: PublicOrigin,
    strip: frozenset[bytes],
    connect_timeout: float,
) -> None:
    client = scope.get("client")
    headers = request_headers(scope["headers"], origin, upstream.root_path, client and client[0], strip)
    target = upstream_target(path, scope.get("query_string", b""))
    first = await receive()
    if first["type"] != "http.request":
        return  # disconnected before the body
    watch = _Watch(receive)
    body: bytes | AsyncIterator[bytes] | None
    if first.get("more_body", False):
        body = _stream(first.get("body", b""), receive, watch)
    else:
        body = first.get("body") or None
        watch.arm()
    started = False
    response: Response | None = None
    try:
        response = await pool.request(scope["method"], target, headers, body)
        out, rewrite = response_headers(response.headers)
        if rewrite:
            out = _rewrite(out, origin, upstream.root_path, path.rest, strip)
        started = True
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        await _stream_down(response, send, watch)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not watch.gone or task is None:
            raise
        task.uncancel()  # cancelled by our own watcher: the client left, nothing more to do
    except (TimeoutError, UpstreamError, OSError, ClientGone) as exc:
        if watch.gone or isinstance(exc, ClientGone):
            return
        if started:  # upstream failed mid-body: the client must see a truncated answer, not a complete one
            log.warning("upstream of session %s failed mid-response: %r", upstream.session_id, exc)
            return
        log.debug("upstream of session %s is not answering: %r", upstream.session_id, exc)
        watch.finish()  # uvicorn wakes a waiting receive() once this answer is complete: not a disconnect
        await send_bad_gateway(send, exc, connect_timeout)
    finally:
        watch.stop()
        if response is not None:
            response.close()


async def _stream_down(response: Response, send: Send, watch: _Watch) -> None:
    """Each batch of body bytes upstream has sent, as one ASGI message: everything buffered since the last
    send (up to client.HIGH_WATER), so a small answer is one message and a download moves in large ones."""
    while True:
        chunk = await response.read()
        if response.at_eof:
            watch.finish()
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
            return
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _stream(first: bytes, receive: Receive, watch: _Watch) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            watch.gone = True
            raise ClientGone("the client disconnected during the upload")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            break
    watch.start()


def _rewrite(
    headers: list[tuple[bytes, bytes]], origin: PublicOrigin, root_path: str, rest: str, strip: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b"location":
            value = rewrite_location(value, origin, root_path, rest)
        elif name == b"refresh":
            value = rewrite_refresh(value, origin, root_path, rest)
        elif name == b"set-cookie":
            cookie = rewrite_set_cookie(value, root_path.encode("latin-1"), strip)
            if cookie is None:
                continue
            value = cookie
        out.append((name, value))
    return out


def upstream_target(path: SessionPath, query: bytes) -> str:
    """The request target upstream (path and query), already encoded: paths.py made the path canonical."""
    if not query:
        return path.rest
    if all(b in _QUERY_SAFE for b in query):
        return path.rest + "?" + query.decode("ascii")
    return path.rest + "?" + "".join(chr(b) if b in _QUERY_SAFE else f"%{b:02X}" for b in query)


def upstream_url(base_url: str, path: SessionPath, query: bytes) -> URL:
    """The URL upstream for aiohttp (WebSockets), built already encoded: yarl must not requote it."""
    return URL(base_url + upstream_target(path, query), encoded=True)


class _Watch:
    """Waits for the client's `http.disconnect` once the request body is in, and cancels the exchange."""

    __slots__ = ("_done", "_owner", "_receive", "_task", "_timer", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._owner = asyncio.current_task()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False
        self.gone = False

    def arm(self) -> None:
        """Start watching in WATCH_AFTER seconds, if the exchange is still going then."""
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self.start)

    def start(self) -> None:
        if self._task is None and not self._done:
            self._task = asyncio.get_running_loop().create_task(self._wait())

    def finish(self) -> None:
        """The last byte is about to be sent: from now on a disconnect (or uvicorn's end-of-response wake-up)
        is not a reason to cancel."""
        self._done = True

    def stop(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    async def _wait(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self._done and self._owner is not None:
                    self.gone = True
                    self._owner.cancel()
                return
