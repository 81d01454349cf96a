"""A lean HTTP/1.1 client for plain (non-WebSocket) requests to one session endpoint: httptools over pooled
asyncio connections.

Why not aiohttp here: profiled behind uvicorn in front of a static server, the proxy spent ~60% of its Python
time per request inside aiohttp's `ClientSession._request` machinery (request/response objects, header
multidicts, timers, tracing, cookie and redirect handling), spread over dozens of small steps none of which
can be switched off. The proxy needs none of it: it sends headers it has already decided on and streams
bytes both ways. WebSockets (and the launcher's probe) stay on aiohttp (pool.py).

What it does, all of which the proxy tests check:

- one request at a time per connection; idle connections are kept per endpoint and reused (last used first),
  and dropped after `KEEPALIVE` seconds idle (see pool.py for why that is below the upstream's timeout). An
  idempotent request that finds its reused connection closed before any byte of answer is sent once more on
  a new connection (RFC 9112 §9.3.1, as aiohttp does); a POST is never retried.
- request bodies: bytes go out in the same write as the head; a stream (async iterator) is written by a task
  as it arrives, waiting whenever the socket's buffer is full (`pause_writing`), with the client's
  Content-Length kept, or chunked without one. As aiohttp, a bodiless POST/PUT/PATCH/DELETE states
  `Content-Length: 0`.
- responses: Content-Length, chunked or until-close framing (httptools/llhttp), interim 1xx answers skipped,
  HEAD bodiless. Body bytes are buffered up to `HIGH_WATER`, then the socket is not read until the caller
  takes them, so a 1 GiB download keeps memory flat.
- no timeout but the connect timeout; a caller that is cancelled (its client left) closes the connection.
- failures are `UpstreamError`s (pages.py words them for the 502 page): could not connect, no connection
  within the timeout, closed before answering, closed (or spoke nonsense) mid-answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal, cast

import httptools

# Response body bytes held for a slow reader before the upstream socket stops being read (aiohttp's default
# StreamReader pauses at 128 KiB; uvloop reads up to 256 KiB at a time).
HIGH_WATER = 256 * 1024
# Methods safe to send twice (aiohttp's IDEMPOTENT_METHODS), and those that state an empty body.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

Body = bytes | AsyncIterator[bytes] | None


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer properly."""


class Unreachable(UpstreamError):
    """No connection: the socket is missing, refused…"""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class ConnectTimeout(UpstreamError, TimeoutError):
    """No connection within the connect timeout."""


class Disconnected(UpstreamError):
    """The upstream closed the connection before its answer began."""


class Broken(UpstreamError):
    """The upstream closed the connection in the middle of its answer, or sent something that is not HTTP."""


class HTTPPool:
    """The idle connections to one endpoint (a Unix socket, or host and port) and how to open more."""

    def __init__(
        self, *, socket: str | None, host: str | None, port: int | None, connect_timeout: float, keepalive: float
    ) -> None:
        self._socket, self._host, self._port = socket, host, port
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._idle: list[_Connection] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: Body) -> Response:
        """Send a request; the Response once its status and headers are in. The caller must `close()` it."""
        head, chunked = _head(method, target, headers, body)
        retry = method in _IDEMPOTENT and not isinstance(body, AsyncIterator)
        while True:
            conn, reused = self._idle_connection(), True
            if conn is None:
                conn, reused = await self._connect(), False
            response = Response(conn, method)
            conn.send(response, head, body, chunked)
            try:
                await response._head
            except Disconnected:
                response.close()
                if reused and retry:
                    retry = False
                    continue
                raise
            except BaseException:
                response.close()
                raise
            return response

    def _idle_connection(self) -> _Connection | None:
        loop = asyncio.get_running_loop()
        while self._idle:
            conn = self._idle.pop()
            if loop.time() - conn.idle_since < self._keepalive:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._socket is not None:
                    _, conn = await loop.create_unix_connection(lambda: _Connection(self), self._socket)
                else:
                    assert self._host is not None and self._port is not None  # Endpoint: a socket or both
                    _, conn = await loop.create_connection(lambda: _Connection(self), self._host, self._port)
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {self._connect_timeout:g} s") from None
        except OSError as exc:
            raise Unreachable(exc) from exc
        return conn

    def _put(self, conn: _Connection) -> None:
        """A connection whose exchange is over, ready for the next request."""
        if self._closed:
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)
        if self._sweeper is None:  # one timer per pool, not one per request
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for longer than `keepalive` (so none sits open for ever)."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for conn in [c for c in self._idle if now - c.idle_since >= self._keepalive]:
            conn.close()  # connection_lost takes it out of the idle list
        self._idle = [c for c in self._idle if now - c.idle_since < self._keepalive]
        if self._idle:
            oldest = min(c.idle_since for c in self._idle)
            self._sweeper = asyncio.get_running_loop().call_later(oldest + self._keepalive - now, self._sweep)

    def _lost(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        """Close the idle connections; those in use close when their exchange ends."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _head(method: str, target: str, headers: list[tuple[str, str]], body: Body) -> tuple[bytes, bool]:
    """The request line and headers, with the framing header the body needs, as bytes; and whether the body
    is to be sent chunked (a stream without the client's Content-Length)."""
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    has_length = chunked = False
    for name, value in headers:
        if name == "content-length":
            has_length = True
        lines.append(f"{name}: {value}\r\n")
    if not has_length:
        if isinstance(body, bytes):
            lines.append(f"content-length: {len(body)}\r\n")
        elif body is None:
            if method not in _BODILESS:
                lines.append("content-length: 0\r\n")
        else:
            lines.append("transfer-encoding: chunked\r\n")
            chunked = True
    lines.append("\r\n")
    text = "".join(lines)
    # Names and values come from the ASGI server's parser and from paths.py/headers.py, so none can hold a line
    # break; one line feed per line is the proof, cheaper than checking every value.
    if text.count("\n") != len(lines):
        raise ValueError("a line break in a request header")
    return text.encode("latin-1"), chunked


class Response:
    """One exchange's answer: `status`, `headers` (raw (name, value) pairs as upstream sent them), and the body
    through `read()`. Fed by its connection's parser."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_head",
        "_head_only",
        "_interim",
        "_size",
        "_waiter",
        "_writer",
        "framed",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, method: str) -> None:
        self._conn: _Connection | None = conn
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._head_only = method == "HEAD"
        self._writer: asyncio.Task[None] | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._done = False  # the whole body is in _chunks
        self._error: BaseException | None = None
        self._interim = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.framed = False  # Content-Length or chunked: the end is known without the connection closing

    @property
    def at_eof(self) -> bool:
        """The whole body has been read."""
        return self._done and not self._chunks

    async def read(self) -> bytes:
        """The body bytes received so far (waiting for some), or b"" at the end."""
        while not self._chunks:
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks, self._chunks, self._size = self._chunks, [], 0
        if self._conn is not None and self._conn._unread:
            self._conn.reading(True)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        """End the exchange: the connection goes back to the pool if the answer was complete, else it is closed
        (a client that left, an upload upstream did not wait for)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()

    # -- fed by the connection --

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._done:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved here: a caller that was cancelled will never look
        self._wake()

    def _feed(self, data: bytes) -> bool:
        """Body bytes; False when enough are held that the socket should stop being read."""
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        return self._size < HIGH_WATER

    def _finish(self) -> Literal["reuse", "close"]:
        self._done = True
        self._wake()
        writer_done = self._writer is None or self._writer.done()
        return "reuse" if writer_done and not self._head_only else "close"


class _Connection(asyncio.Protocol):
    """One upstream connection: writes the request, parses the answer into the current Response."""

    def __init__(self, pool: HTTPPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport  # set by connection_made, before anything else is called
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused = False  # writing: the socket's buffer is full
        self._unread = False  # reading paused: the response holds HIGH_WATER bytes
        self._received = False  # any byte of the current answer
        self.closed = False
        self.idle_since = 0.0

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's subclasses

    def data_received(self, data: bytes) -> None:
        if self._response is None:  # nothing asked: an upstream that talks out of turn is not reused
            self.close()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(Broken(f"upstream sent an invalid answer: {exc}"))

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._lost(self)
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("the upstream closed the connection"))
        response, self._response = self._response, None
        if response is None:
            return
        if response._head.done() and not response.framed and not response._interim:
            response._finish()  # an until-close body: closing is how it ends
        elif not self._received:
            response._fail(Disconnected("the upstream closed the connection before answering"))
        else:
            response._fail(Broken("the upstream closed the connection mid-answer"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        self._response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim (100 Continue, 103 Early Hints): not the answer
            response.headers.clear()
            response._interim = True
            return
        response._interim = False
        response.status = status
        for name, value in response.headers:
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
                response.framed = True
        if response._head_only or status in (204, 304):
            response.framed = True
        response._head.set_result(None)
        if response._head_only:  # llhttp does not know the request was HEAD: the answer ends here
            self._end(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None and not self._response._feed(body):
            self.reading(False)

    def on_message_complete(self) -> None:
        response = self._response
        if response is None or response._interim:
            return
        self._end(response)

    # -- used by the pool and the response --

    def send(self, response: Response, head: bytes, body: Body, chunked: bool) -> None:
        self._response, self._received = response, False
        if body is None:
            self._transport.write(head)
        elif isinstance(body, bytes):
            self._transport.write(head + body)
        else:
            self._transport.write(head)
            response._writer = asyncio.get_running_loop().create_task(self._write_body(response, body, chunked))

    async def _write_body(self, response: Response, body: AsyncIterator[bytes], chunked: bool) -> None:
        try:
            async for chunk in body:
                if self.closed:
                    return
                if chunk:
                    self._transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if self._paused:
                    self._drained = asyncio.get_running_loop().create_future()
                    await self._drained
            if chunked and not self.closed:
                self._transport.write(b"0\r\n\r\n")
        except ConnectionResetError:
            return  # upstream closed: its answer, or its absence, tells the rest
        except Exception as exc:  # the client's body failed (it left: ClientGone): the exchange is over
            response._fail(exc)
            self.close()

    def reading(self, on: bool) -> None:
        if self._unread is not on or self.closed:
            return
        self._unread = not on
        if on:
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()

    def _end(self, response: Response) -> None:
        self._response = None
        reuse = response._finish() == "reuse" and self._parser.should_keep_alive()
        response._conn = None
        if reuse and not self.closed:
            self.reading(True)
            self._pool._put(self)
        else:
            self.close()

    def _broken(self, error: UpstreamError) -> None:
        if self._response is not None:
            self._response._fail(error)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._transport.close()
