"""HTTP/1.1 over one socket, for the build path's client (byoi.cli.wire): one request per connection.

Why not the standard library's http.client: it imports the email package to parse header fields, 17 ms of the
60 ms a plain `byoi build` took to start, to send a handful of requests to one server. What the build path
needs is small, and all of it is here:

- connect over TCP (and TLS with the caller's context, its host name sent and checked), with one timeout for the
  connect and for each read;
- send the request head, then the body: bytes, or a file read in blocks of `blocksize`;
- read the answer: the status line, the header fields (in order, names as sent), interim 1xx answers skipped;
  the body framed as RFC 9112 §6.3 says: none for HEAD, 1xx, 204 and 304, else chunked transfer coding, else
  Content-Length, else until the server closes;
- an answer that breaks the framing (a malformed status line, header or chunk size, a head over 64 KiB) or ends
  before it is whole raises `HTTPError`; the socket's own failures (refused, reset, timed out, TLS) are OSErrors.

When the server answers and closes while the body is still being sent (a refused upload: too large, bad
signature), the answer is what the caller gets, not the broken pipe: `getresponse` reads what the server said.
tests/test_cli_wire.py runs it against the standard library's HTTP server, a real byoi server (uvicorn) and a
TLS server with a private CA.
"""

from __future__ import annotations

import re
import socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import IO

MAX_HEAD = 64 * 1024  # bytes of status line and header fields
MAX_FIELDS = 200
_READ = 64 * 1024  # bytes of body asked of the socket at a time
_DIGITS = re.compile(rb"[0-9]{1,18}")
_ENDS_A_FIELD = frozenset("\r\n\0")  # in a name or value, it would end the field early: another header, injected
_NOT_IN_A_TARGET = frozenset(map(chr, [*range(0x21), 0x7F]))  # spaces and control characters
_BODY_METHODS = ("POST", "PUT", "PATCH")  # state `Content-Length: 0` when they have no body, as http.client


class HTTPError(Exception):
    """The server's answer broke HTTP/1.1's framing, or ended before it was whole."""


class Connection:
    """One request and its answer (http.client.HTTPConnection's methods that wire.py uses, with its names)."""

    def __init__(
        self,
        host: str,
        port: int | None,
        timeout: float | None,
        tls: ssl.SSLContext | None = None,
        blocksize: int = 1 << 20,
    ) -> None:
        self.host, self.port = host, port or (443 if tls else 80)
        self.timeout, self.tls, self.blocksize = timeout, tls, blocksize
        self.sock: socket.socket | None = None
        self.method = "GET"
        self.response: Response | None = None
        self._send_failed: OSError | None = None

    def connect(self) -> None:
        if self.sock is not None:
            return
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host) if self.tls else sock
        except BaseException:
            sock.close()
            raise

    def request(self, method: str, target: str, body: bytes | IO[bytes] | None, headers: dict[str, str]) -> None:
        """Send the request. A failure to send the body is kept for `getresponse`: the server may have answered
        (and closed) before reading it all, and then its answer is the one to report."""
        if not _NOT_IN_A_TARGET.isdisjoint(target):
            raise HTTPError(f"the request target {target[:80]!r} has a space or a control character")
        for name, value in headers.items():
            if not _ENDS_A_FIELD.isdisjoint(name + value) or ":" in name:
                raise HTTPError(f"the request's header {name[:40]!r} has a line break or NUL in it")
        self.connect()
        assert self.sock is not None
        self.method = method
        if not any(name.lower() == "content-length" for name in headers):  # as http.client adds it
            if isinstance(body, bytes):
                headers = {**headers, "Content-Length": str(len(body))}
            elif body is None and method in _BODY_METHODS:
                headers = {**headers, "Content-Length": "0"}
        if not any(name.lower() == "accept-encoding" for name in headers):
            headers = {**headers, "Accept-Encoding": "identity"}  # no compression by a proxy on the way
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        data = f"{method} {target} HTTP/1.1\r\n{head}\r\n".encode("latin-1")
        if isinstance(body, bytes):
            data += body
        self.sock.sendall(data)
        if body is None or isinstance(body, bytes):
            return
        block = memoryview(bytearray(self.blocksize))  # one buffer for the whole body: no allocation per block
        try:
            while size := body.readinto(block):  # type: ignore[attr-defined]  # a binary file's
                self.sock.sendall(block[:size])
        except TimeoutError:
            raise
        except OSError as exc:  # a broken pipe, a reset, a TLS connection closed under it (SSLEOFError)
            self._send_failed = exc

    def getresponse(self) -> Response:
        assert self.sock is not None
        try:
            self.response = Response(self.sock.makefile("rb"), self.method)
            return self.response
        except (HTTPError, OSError):
            if self._send_failed is not None:  # no answer came either: the send's failure says most
                raise self._send_failed from None
            raise

    def close(self) -> None:
        """Close the connection, its answer's reader too (which holds the socket open otherwise)."""
        if self.response is not None:
            self.response.fp.close()
            self.response = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Response:
    """An answer: `status`, `reason`, `getheaders()`, and its body through `read()` (all of it) or `readline()`."""

    def __init__(self, fp: IO[bytes], method: str) -> None:
        self.fp = fp
        self._head = 0
        while True:
            self.status, self.reason = self._status_line()
            fields = self._fields()
            if not (100 <= self.status < 200) or self.status == 101:
                break  # 1xx answers (100 Continue, 103 Early Hints) come before the real one
        self.headers = fields
        self._buffer = b""
        self._chunk_left = 0  # bytes left in the current chunk (chunked) or in the body (Content-Length)
        self._done = False
        coding = self.header("transfer-encoding")
        length = self.header("content-length")
        if method == "HEAD" or self.status in (204, 304) or self.status < 200:
            self._framing, self._done = "none", True
        elif coding is not None:
            if coding.rsplit(",", 1)[-1].strip().lower() != "chunked":
                raise HTTPError(f"the answer's Transfer-Encoding {coding!r} does not end in chunked")
            self._framing = "chunked"
        elif length is not None:
            sizes = {v.strip() for v in length.split(",")}
            if len(sizes) != 1 or not _DIGITS.fullmatch(next(iter(sizes)).encode("latin-1")):
                raise HTTPError(f"the answer's Content-Length {length!r} is not a number")
            self._framing, self._chunk_left = "length", int(sizes.pop())
            self._done = self._chunk_left == 0
        else:
            self._framing = "close"

    # -- the head -----------------------------------------------------------------------------------------

    def _line(self) -> bytes:
        line = self.fp.readline(MAX_HEAD + 1)
        self._head += len(line)
        if self._head > MAX_HEAD:
            raise HTTPError(f"the answer's head is larger than {MAX_HEAD} bytes")
        if line and not line.endswith(b"\n"):
            raise HTTPError("the server closed the connection in the middle of the answer's head")
        return line

    def _status_line(self) -> tuple[int, str]:
        line = self._line()
        if not line:
            raise HTTPError("the server closed the connection without an answer")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not re.fullmatch("[1-9][0-9][0-9]", code):
            raise HTTPError(f"the server's answer does not start with an HTTP/1.1 status line: {line[:80]!r}")
        return int(code), reason.strip()

    def _fields(self) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        while True:
            line = self._line()
            if not line:
                raise HTTPError("the server closed the connection in the middle of the answer's head")
            text = line.decode("latin-1").rstrip("\r\n")
            if not text:
                return fields
            if text[0] in " \t" and fields:  # an obsolete folded line continues the field before it
                name, value = fields[-1]
                fields[-1] = (name, f"{value} {text.strip()}")
                continue
            name, colon, value = text.partition(":")
            if not colon or not name or name != name.strip():
                raise HTTPError(f"the answer has a malformed header field: {text[:80]!r}")
            fields.append((name, value.strip()))
            if len(fields) > MAX_FIELDS:
                raise HTTPError(f"the answer has more than {MAX_FIELDS} header fields")

    def getheaders(self) -> list[tuple[str, str]]:
        return list(self.headers)

    def header(self, name: str) -> str | None:
        """The field's value (several fields of that name joined with ", "), or None."""
        values = [v for n, v in self.headers if n.lower() == name]
        return ", ".join(values) if values else None

    # -- the body -----------------------------------------------------------------------------------------

    def _some(self) -> bytes:
        """The next bytes of the body, b"" once it is all read."""
        if self._done:
            return b""
        if self._framing == "close":
            data = self.fp.read1(_READ)  # type: ignore[attr-defined]  # a BufferedReader's
            self._done = not data
            return bytes(data)
        if self._framing == "chunked" and self._chunk_left == 0:
            self._chunk_left = self._chunk_size()
            if self._chunk_left == 0:
                self._trailer()
                self._done = True
                return b""
        data = self.fp.read1(min(self._chunk_left, _READ))  # type: ignore[attr-defined]
        if not data:
            raise HTTPError("the server closed the connection before the answer's body was whole")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            if self._framing == "length":
                self._done = True
            elif self.fp.readline(3).rstrip(b"\r\n"):
                raise HTTPError("a chunk of the answer's body does not end where its size says")
        return bytes(data)

    def _chunk_size(self) -> int:
        line = self.fp.readline(1024)
        if not line.endswith(b"\n"):
            raise HTTPError("the server closed the connection before the answer's body was whole")
        size = line.split(b";", 1)[0].strip()
        if not size or size.strip(b"0123456789abcdefABCDEF") or len(size) > 16:
            raise HTTPError(f"the answer has a malformed chunk size: {line[:40]!r}")
        return int(size, 16)

    def _trailer(self) -> None:
        while True:
            line = self.fp.readline(MAX_HEAD)
            if not line:
                raise HTTPError("the server closed the connection before the answer's body was whole")
            if not line.rstrip(b"\r\n"):
                return

    def read(self) -> bytes:
        """The rest of the body."""
        parts = [self._buffer]
        self._buffer = b""
        while data := self._some():
            parts.append(data)
        return b"".join(parts)

    def readline(self) -> bytes:
        """The body's next line with its b"\\n", or what is left of the body (b"" at its end)."""
        while b"\n" not in self._buffer:
            data = self._some()
            if not data:
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"
