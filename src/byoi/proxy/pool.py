"""Per session endpoint: a lean HTTP pool (client.py) for plain requests, and an aiohttp client for
WebSockets and the launcher's probe, opened only when first needed, set up so that it adds nothing and keeps
nothing.

Both keep idle connections for `KEEPALIVE` seconds and have only a connect timeout. The aiohttp settings:

- `DummyCookieJar`: a client that remembered cookies would hand one user's RStudio cookies to the next
  request on the same pool; cookies travel only in the headers the browser sent.
- `auto_decompress=False` and no automatic headers (User-Agent, Accept, Accept-Encoding, Content-Type): the
  bytes and the headers the browser sent are what RStudio gets, and what RStudio sent is what the browser
  gets (Content-Length stays true, gzip stays gzip).
- no total or read timeout, only a connect timeout: `/events/get_events` is held 50 s, downloads and
  WebSockets last as long as they last (§5 of rstudio-behind-a-proxy.md).
- no connection limit (the server in front limits concurrency), and idle connections dropped after
  `KEEPALIVE` seconds, below the 5 s idle timeout of uvicorn and most servers: a POST is not retried on a
  kept-alive connection the upstream has just closed, so the proxy must not be the one holding it longest.
- a middleware pins every request of the pool to its endpoint. The proxy never follows redirects for HTTP,
  but aiohttp's `ws_connect` does; without the pin, a session's WebSocket handshake could answer 302 to
  `http://127.0.0.1:<some internal port>/` and have byoi connect there on its behalf.
"""

from __future__ import annotations

import aiohttp
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType

from byoi.proxy.client import HTTPPool
from byoi.runtime.base import Endpoint

KEEPALIVE = 4.0
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")
_SOCKET_HOST = "rstudio"  # the host in URLs sent over a Unix socket: never used to connect, Host is ours


class OffEndpoint(aiohttp.ClientConnectionError):
    """A redirect that would have taken a pooled client away from its session's endpoint."""


class Pool:
    def __init__(self, connect_timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect_timeout, sock_read=None)
        self._connect_timeout = connect_timeout
        self._sessions: dict[Endpoint, tuple[aiohttp.ClientSession, str]] = {}
        self._http: dict[Endpoint, HTTPPool] = {}

    def http(self, endpoint: Endpoint) -> HTTPPool:
        """The endpoint's pool for plain HTTP requests."""
        found = self._http.get(endpoint)
        if found is None:
            found = self._http[endpoint] = HTTPPool(
                socket=endpoint.socket,
                host=endpoint.host,
                port=endpoint.port,
                connect_timeout=self._connect_timeout,
                keepalive=KEEPALIVE,
            )
        return found

    def get(self, endpoint: Endpoint) -> tuple[aiohttp.ClientSession, str]:
        """The endpoint's client and the base URL ('http://host:port', no slash) to put paths on."""
        found = self._sessions.get(endpoint)
        if found is None or found[0].closed:
            found = self._sessions[endpoint] = self._open(endpoint)
        return found

    def _open(self, endpoint: Endpoint) -> tuple[aiohttp.ClientSession, str]:
        connector: aiohttp.BaseConnector
        if endpoint.socket is not None:
            connector = aiohttp.UnixConnector(endpoint.socket, limit=0, keepalive_timeout=KEEPALIVE)
            host, port = _SOCKET_HOST, 80
        else:
            assert endpoint.host is not None and endpoint.port is not None  # Endpoint guarantees one or the other
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE)
            host, port = endpoint.host, endpoint.port
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=self._timeout,
            middlewares=(_pinned(host, port),),
            requote_redirect_url=False,
            trust_env=False,
        )
        netloc = f"[{host}]" if ":" in host else host
        return session, f"http://{netloc}:{port}"

    async def forget(self, endpoint: Endpoint) -> None:
        http = self._http.pop(endpoint, None)
        if http is not None:
            http.close()
        found = self._sessions.pop(endpoint, None)
        if found is not None:
            await found[0].close()

    async def close(self) -> None:
        https, self._http = self._http, {}
        for http in https.values():
            http.close()
        sessions, self._sessions = self._sessions, {}
        for session, _ in sessions.values():
            await session.close()


def _pinned(host: str, port: int) -> ClientMiddlewareType:
    async def pin(request: aiohttp.ClientRequest, handler: ClientHandlerType) -> aiohttp.ClientResponse:
        if request.url.raw_host != host or request.url.port != port:
            raise OffEndpoint(f"refused to follow a redirect to {request.url.host}")
        return await handler(request)

    return pin
