"""The session proxy: an ASGI app for `/sessions/<id>/…` that asks a gate, then relays to that session's RStudio.

Order of work for every request, HTTP or WebSocket:

1. normalise the raw path once (paths.py); a path it will not forward is a 400 (HTTP) or a refused
   handshake; `/sessions/<id>` is redirected to `/sessions/<id>/` (RStudio's pages use relative URLs);
2. ask the gate with that same parsed path; a Response from it (sign-in redirect, 403, 404, a "starting"
   page) is sent as it is, or, for a WebSocket, refuses the handshake (with the gate's real status when
   the server offers the `websocket.http.response` extension, else close-before-accept: a 403);
3. forward, with the prefix stripped and the root path stated (exchange.py for HTTP, relay.py for
   WebSockets), touching the session's activity on each request and on each frame.

The gate must answer for the session id it was given: an `Upstream` for another id is refused, so a gate
bug cannot route one session's traffic to another. This door imports only the runtime's `Endpoint`, never
services or the store: the gate (written with them) is handed in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from byoi.proxy.exchange import forward, upstream_url
from byoi.proxy.headers import BadHost, PublicOrigin, request_headers
from byoi.proxy.pages import not_answering, page, send_page, send_redirect
from byoi.proxy.paths import BadPath, SessionPath, parse_session_path
from byoi.proxy.pool import Pool
from byoi.proxy.relay import relay
from byoi.runtime.base import Endpoint

log = logging.getLogger("byoi.proxy")

# The largest WebSocket message accepted from upstream (uvicorn's own limit towards the browser is 16 MiB):
# RStudio's and Shiny's messages are far smaller, and one session must not be able to make byoi buffer
# without bound.
WS_MAX_MESSAGE = 64 * 2**20
_WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0)


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the gate sends an allowed request: the session's endpoint, its id, and its public root path."""

    endpoint: Endpoint
    session_id: str
    root_path: str  # /sessions/<id>: no trailing slash; RStudio builds redirects and cookie paths on it

    def __post_init__(self) -> None:
        if not self.root_path.startswith("/") or self.root_path.endswith("/") or "//" in self.root_path:
            raise ValueError(f"a root path is /like/this, not {self.root_path!r}")


class Gate(Protocol):
    async def decide(self, scope: Scope, path: SessionPath) -> Upstream | Response:
        """An Upstream to forward to, or the Response to answer instead (sign-in, 403, 404, starting…)."""
        ...


class Activity(Protocol):
    def touch(self, session_id: str) -> None:
        """Record use of the session: in memory, cheap, never awaited (called per request and per frame)."""
        ...


class SessionProxy:
    def __init__(
        self,
        gate: Gate,
        activity: Activity,
        public_url: str | None,
        strip_cookies: frozenset[str],
        connect_timeout: float = 10.0,
    ) -> None:
        self._gate = gate
        self._activity = activity
        self._origin = PublicOrigin.from_url(public_url) if public_url else None
        self._strip = frozenset(name.encode("latin-1") for name in strip_cookies)
        self._connect_timeout = connect_timeout
        self._pool = Pool(connect_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":  # only when run on its own; mounted in byoi's app, the app owns the lifespan
            await _lifespan(receive, send, self.close)

    async def close(self) -> None:
        """Close every pooled upstream connection (server shutdown)."""
        await self._pool.close()

    async def forget(self, endpoint: Endpoint) -> None:
        """Close the pool of one endpoint (its session was stopped)."""
        await self._pool.forget(endpoint)

    async def probe(self, endpoint: Endpoint, root_path: str, timeout: float) -> int | None:
        """The status of `GET /` on that endpoint (redirects not followed), or None when nothing answers
        within `timeout` seconds: how the launcher knows RStudio is up."""
        session, base_url = self._pool.get(endpoint)
        origin = self._origin or PublicOrigin("http", "localhost", 80)
        headers = request_headers((), origin, root_path, None, self._strip)
        try:
            async with session.get(
                base_url + "/",
                headers=headers,
                allow_redirects=False,
                middlewares=(),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                return response.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            path = parse_session_path(_raw_path(scope))
            origin = self._origin or _request_origin(scope)
        except (BadPath, BadHost) as exc:
            await send_page(send, 400, "Bad request", str(exc))
            return
        if path.needs_slash:
            query = scope.get("query_string", b"")
            location = path.prefix.encode("ascii") + b"/" + (b"?" + query if query else b"")
            await send_redirect(send, location, 302 if scope["method"] in ("GET", "HEAD") else 308)
            return
        upstream = await self._decide(scope, receive, send, path)
        if upstream is None:
            return
        self._activity.touch(upstream.session_id)
        await forward(
            scope,
            receive,
            send,
            pool=self._pool.http(upstream.endpoint),
            path=path,
            upstream=upstream,
            origin=origin,
            strip=self._strip,
            connect_timeout=self._connect_timeout,
        )

    async def _decide(self, scope: Scope, receive: Receive, send: Send, path: SessionPath) -> Upstream | None:
        """The gate's Upstream, or None once the gate's own Response (or a refusal) has been sent."""
        decision = await self._gate.decide(scope, path)
        if isinstance(decision, Upstream):
            if decision.session_id == path.session_id:
                return decision
            log.error("the gate answered session %s for a request to %s", decision.session_id, path.session_id)
            decision = _html(403, "Not allowed", "This session is not yours.")
        if scope["type"] == "websocket":
            await _refuse(scope, receive, send, decision)
        else:
            await decision(scope, receive, send)
        return None

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            path = parse_session_path(_raw_path(scope))
            origin = self._origin or _request_origin(scope)
        except (BadPath, BadHost) as exc:
            await _refuse(scope, receive, send, _html(400, "Bad request", str(exc)))
            return
        if path.needs_slash:
            await _refuse(scope, receive, send, _html(404, "Not found", "A session's sockets are below its /"))
            return
        upstream = await self._decide(scope, receive, send, path)
        if upstream is None:
            return
        if (await receive())["type"] != "websocket.connect":
            return
        session, base_url = self._pool.get(upstream.endpoint)
        client = scope.get("client")
        headers = request_headers(
            scope["headers"], origin, upstream.root_path, client and client[0], self._strip, websocket=True
        )
        try:
            ws = await session.ws_connect(
                upstream_url(base_url, path, scope.get("query_string", b"")),
                headers=headers,
                protocols=scope.get("subprotocols") or (),
                timeout=_WS_TIMEOUT,
                heartbeat=None,
                max_msg_size=WS_MAX_MESSAGE,
            )
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status if 400 <= exc.status < 600 else 502
            await _refuse(scope, receive, send, _html(status, "Refused", "RStudio refused the WebSocket"))
            return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            text = not_answering(exc, self._connect_timeout)
            await _refuse(scope, receive, send, _html(502, "RStudio is not answering", text))
            return
        session_id = upstream.session_id
        touch = self._activity.touch
        try:
            await send({"type": "websocket.accept", "subprotocol": ws.protocol})
            touch(session_id)
            await relay(ws, receive, send, lambda: touch(session_id))
        finally:
            await ws.close()


def _raw_path(scope: Scope) -> bytes:
    raw: bytes | None = scope.get("raw_path")
    if raw is not None:
        return raw
    # No raw path from the server: re-encode the decoded one, so that decoding it once gives it back.
    from urllib.parse import quote

    return quote(scope["path"], safe="/").encode("ascii")


def _request_origin(scope: Scope) -> PublicOrigin:
    """No public URL configured: the scheme and Host the request came with."""
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    for name, value in scope["headers"]:
        if name == b"host":
            return PublicOrigin.from_host(scheme, value.decode("latin-1"))
    server = scope.get("server") or ("localhost", None)
    host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    return PublicOrigin.from_host(scheme, host)


def _html(status: int, title: str, text: str) -> Response:
    return Response(page(title, text), status, media_type="text/html; charset=utf-8")


async def _refuse(scope: Scope, receive: Receive, send: Send, response: Response) -> None:
    """Refuse a WebSocket handshake: with the response's own status where the server can send one."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await response(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": 1008})


async def _lifespan(receive: Receive, send: Send, on_shutdown: Callable[[], Awaitable[None]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
