"""byoi.cli.http1, the build path's HTTP/1.1: each framing of an answer, and each way an answer can be broken,
from a server that sends exactly the bytes scripted (a socket on loopback), then a refused upload through a
real byoi server."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from byoi.cli import wire
from byoi.cli.http1 import Connection, HTTPError


class Raw:
    """A one-connection server: reads the request head (and `read_body` bytes), then runs `reply(conn)`."""

    def __init__(self, reply: Callable[[socket.socket], None], read_body: int = 0, tls: Path | None = None) -> None:
        self.tls = None
        if tls is not None:  # a private CA's certificate for 127.0.0.1, written to `tls`
            import ssl

            from tests.support.tls import make_ca_and_server_cert

            _, cert, key = make_ca_and_server_cert(tls)
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.request = b""
        self.reply, self.read_body = reply, read_body
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:  # closed before anyone came (the client refused to send)
            return
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        with conn:
            while b"\r\n\r\n" not in self.request:
                data = conn.recv(65536)
                if not data:
                    return
                self.request += data
            while len(self.request.partition(b"\r\n\r\n")[2]) < self.read_body:
                data = conn.recv(65536)
                if not data:
                    break
                self.request += data
            self.reply(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() no client came to (close alone does not)
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def raw() -> Iterator[Callable[..., Raw]]:
    servers: list[Raw] = []

    def start(reply: bytes | Callable[[socket.socket], None], read_body: int = 0, tls: Path | None = None) -> Raw:
        send = (lambda conn: conn.sendall(reply)) if isinstance(reply, bytes) else reply
        servers.append(Raw(send, read_body, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def ask(server: Raw, method: str = "GET", body: bytes | None = None) -> Connection:
    conn = Connection("127.0.0.1", server.port, timeout=5)
    conn.request(method, "/x?y=1", body, {"Host": f"127.0.0.1:{server.port}"})
    return conn


def test_the_request_is_one_head_and_its_body(raw):
    server = raw(b"HTTP/1.1 204 No Content\r\n\r\n", read_body=5)
    response = ask(server, "POST", b"hello").getresponse()
    assert (response.status, response.reason, response.read()) == (204, "No Content", b"")
    server.thread.join(5)
    head = (
        f"POST /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 5\r\nAccept-Encoding: identity\r\n"
    )
    assert server.request == (head + "\r\nhello").encode()


def test_a_post_without_a_body_states_its_empty_length_as_http_client_did(raw):
    server = raw(b"HTTP/1.1 204 No Content\r\n\r\n")
    ask(server, "POST").getresponse().read()
    server.thread.join(5)
    assert b"\r\nContent-Length: 0\r\n" in server.request  # a proxy may refuse a POST without one (411)


@pytest.mark.parametrize(
    ("target", "headers", "says"),
    [
        ("/x\r\nX-Injected: 1", {}, "has a space or a control character"),
        ("/x y", {}, "has a space or a control character"),
        ("/x", {"X-Amz-Security-Token": "tok\r\nX-Injected: 1"}, "has a line break or NUL"),
        ("/x", {"Bad\nName": "v"}, "has a line break or NUL"),
        ("/x", {"Bad:Name": "v"}, "has a line break or NUL"),
    ],
    ids=["target-crlf", "target-space", "value-crlf", "name-lf", "name-colon"],
)
def test_nothing_from_a_header_value_or_target_becomes_another_header(raw, target, headers, says):
    server = raw(b"HTTP/1.1 204 No Content\r\n\r\n")
    conn = Connection("127.0.0.1", server.port, timeout=5)
    with pytest.raises(HTTPError, match=says):
        conn.request("GET", target, None, {"Host": "h", **headers})
    assert conn.sock is None  # refused before anything was sent


def test_a_chunked_answer_is_read_whole_and_line_by_line_across_its_chunks(raw):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
        b"7;ext=1\r\nevent: \r\n"  # a chunk extension is ignored
        b"D\r\nstep\ndata: {}\r\n"
        b"3\r\n\n\nx\r\n"
        b"0\r\nTrailer: t\r\n\r\n"
    )
    response = ask(raw(chunked)).getresponse()
    assert response.getheaders() == [("Transfer-Encoding", "chunked"), ("X-A", "1"), ("x-a", "2")]
    assert response.header("x-a") == "1, 2"
    assert [response.readline() for _ in range(5)] == [b"event: step\n", b"data: {}\n", b"\n", b"x", b""]
    assert ask(raw(chunked)).getresponse().read() == b"event: step\ndata: {}\n\nx"


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA", b"hello"),  # no more than the length says
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", b"until the end"),  # no framing: until the server closes
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"ok",
        ),  # interim answers are skipped  # fmt: skip
        (b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n", b""),
    ],
    ids=["content-length", "until-close", "interim-1xx", "folded-field"],
)
def test_each_framing_of_a_body(raw, answer, body):
    response = ask(raw(answer)).getresponse()
    assert (response.status, response.read()) == (200, body)


def test_a_head_answer_has_no_body_whatever_its_length_says(raw):
    response = ask(raw(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"), "HEAD").getresponse()
    assert response.read() == b""


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"", "closed the connection without an answer"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "does not start with an HTTP/1.1 status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Len", "in the middle of the answer's head"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header field"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "before the answer's body was whole"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "is not a number"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "is not a number"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", "is not a number"),  # "2" only to str.isdigit()
        (b"HTTP/1.1 \xb200 OK\r\n\r\n", "does not start with an HTTP/1.1 status line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "does not end in chunked"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef", "does not end where its size says"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "before the answer's body was whole"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n", "head is larger than"),
    ],
    ids=[
        "nothing",
        "not-http",
        "cut-head",
        "bad-field",
        "short-body",
        "negative-length",
        "two-lengths",
        "superscript-length",
        "superscript-status",
        "not-chunked",
        "bad-chunk-size",
        "long-chunk",
        "cut-chunk",
        "huge-head",
    ],  # fmt: skip
)
def test_a_broken_answer_is_an_httperror_naming_what_broke(raw, answer, says):
    with pytest.raises(HTTPError, match=says):
        ask(raw(answer)).getresponse().read()


def test_a_broken_answer_reaches_the_client_as_a_transport_error(raw):
    """wire's callers see TransportError (the build's line: "cannot reach byoi at …"), never HTTPError."""
    server = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    client = wire.Client(wire.Setup(f"http://127.0.0.1:{server.port}", wire.Credentials("AKID", "s"), "us-east-1"))
    with pytest.raises(wire.TransportError, match="before the answer's body was whole"):
        client.request("GET", "/byoi/x")


def test_close_closes_the_socket_even_while_its_answer_is_still_held(raw):
    """The answer's reader holds the socket: close() closes it too, so the server sees the end at once (the
    build's Ctrl-C prompt keeps the answer alive while it asks)."""
    seen = threading.Event()

    def answer_then_wait_for_the_end(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello\n\r\n")
        conn.settimeout(5)
        if conn.recv(1) == b"":
            seen.set()

    conn = ask(raw(answer_then_wait_for_the_end))
    response = conn.getresponse()
    assert response.readline() == b"hello\n"
    conn.close()
    assert seen.wait(5) and response is not None


def _refuse(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
    conn.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_an_answer_sent_while_the_body_is_still_going_out_is_what_the_caller_gets(raw, tmp_path, tls):
    """The server refuses an upload after its head (too large, say) and closes: the client, still sending, gets
    a broken pipe or a reset (over TLS, an SSLEOFError), and reports the server's answer instead of that."""
    import ssl

    big = tmp_path / "big"
    big.write_bytes(b"x" * (32 << 20))  # far more than the socket buffers hold
    client_tls = None
    server = raw(_refuse, tls=tmp_path / "tls" if tls else None)
    if tls:
        client_tls = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.pem"))
    conn = Connection("127.0.0.1", server.port, timeout=10, tls=client_tls, blocksize=1 << 16)
    with big.open("rb") as body:
        conn.request("POST", "/upload", body, {"Host": "h", "Content-Length": str(32 << 20)})
    response = conn.getresponse()
    assert (response.status, response.read()) == (413, b"too big!")
