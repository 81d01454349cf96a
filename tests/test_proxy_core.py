"""The session proxy core (src/byoi/proxy/) through its real doors.

byoi's SessionProxy runs inside a real uvicorn (httptools, uvloop, websockets) in its own process on
127.0.0.1, with a tiny real Gate: session A is anyone's, session B only for the request whose byoi cookie says
"bob" (anyone else gets 403), session M points at a socket that does not exist, any other id is a 404. Behind
it, the upstreams are an aiohttp.web TEST DOUBLE for rserver (tests/support/proxy_upstream.py) on Unix sockets
in a tmp dir, each counting the requests that reached it. A second proxy process has no public URL.

Path normalisation is also checked as a unit table; everything else goes over real sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest
import websockets.exceptions
from websockets.sync.client import connect as ws_connect

from byoi.proxy.core import SessionProxy
from byoi.proxy.paths import BadPath, parse_session_path
from byoi.proxy.pool import Pool
from byoi.runtime.base import Endpoint
from tests.support.processes import REPO, free_port
from tests.support.proxy_upstream import BLOCK, stream_bytes, stream_sha256

A = "0123456789abcdef"  # anyone's session
B = "fedcba9876543210"  # bob's session: 403 for everyone else
M = "aaaaaaaaaaaaaaaa"  # its RStudio is not listening (no socket)
UNKNOWN = "bbbbbbbbbbbbbbbb"
PUBLIC = "https://byoi.example.org"
STRIP = "byoi_session"
MiB = 2**20


@dataclass
class Servers:
    port: int  # the proxy with a public URL
    bare_port: int  # the proxy without one
    pid: int  # the uvicorn process of `port`
    sockets: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def upstream(self, name: str, path: str) -> dict:
        """Ask an upstream directly, over its socket (never through the proxy)."""
        transport = httpx.HTTPTransport(uds=str(self.sockets / f"{name}.sock"))
        with httpx.Client(transport=transport, timeout=10) as client:
            return client.get(f"http://upstream{path}").json()

    def raw(self, method: str, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """A request with the path sent exactly as written (httpx would normalise `..`)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.proxy_upstream", *args],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _wait(check, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not come up within {timeout}s")


def _unix_connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
    return True


def _http_connects(port: int) -> bool:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("proxy")
    sockets = root / "sockets"
    sockets.mkdir()
    upstream = _start(["upstream", str(sockets), "a", "b"], root / "upstream.log")
    sessions = {
        A: {"socket": str(sockets / "a.sock")},
        B: {"socket": str(sockets / "b.sock"), "owner": "bob"},
        M: {"socket": str(sockets / "m.sock")},
    }
    port, bare_port = free_port(), free_port()
    config = {"sessions": sessions, "strip": [STRIP], "public_url": PUBLIC, "connect_timeout": 5}
    proxy = _start(["proxy", str(port), json.dumps(config)], root / "proxy.log")
    bare = _start(["proxy", str(bare_port), json.dumps({**config, "public_url": None})], root / "bare.log")
    try:
        for name in ("a", "b"):
            _wait(lambda n=name: _unix_connects(sockets / f"{n}.sock"), f"upstream {name}")
        for p in (port, bare_port):
            _wait(lambda p=p: _http_connects(p), f"proxy on {p}")
        yield Servers(port, bare_port, proxy.pid, sockets)
    finally:
        for process in (proxy, bare, upstream):
            process.terminate()
        for process in (proxy, bare, upstream):
            process.wait(10)
    for log in ("proxy.log", "bare.log"):
        text = (root / log).read_text()
        assert "Traceback" not in text, text


def echo(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    data = response.json()
    data["h"] = {}
    for name, value in data["headers"]:
        data["h"].setdefault(name.lower(), []).append(value)
    return data


# -- path normalisation: the unit table -------------------------------------------------------------------

NORMALISED = {
    # raw path -> (rest sent upstream, needs_slash)
    f"/sessions/{A}/": ("/", False),
    f"/sessions/{A}": ("/", True),
    f"/sessions/{A}/rpc/client_init": ("/rpc/client_init", False),
    f"/sessions/{A}/p/58fab3e4/terminal/1/": ("/p/58fab3e4/terminal/1/", False),
    f"/sessions/{A}//a//b/": ("/a/b/", False),
    f"//sessions//{A}//": ("/", False),
    f"/sessions/{A}/a/./b": ("/a/b", False),
    f"/sessions/{A}/a/../b": ("/b", False),
    f"/sessions/{A}/a/%2e%2e/b": ("/b", False),
    f"/sessions/{A}/a/%2E./b": ("/b", False),
    f"/sessions/{A}/a/b/.%2e": ("/a/", False),
    f"/sessions/{A}/a/b/..": ("/a/", False),
    f"/sessions/{A}/.well-known/x": ("/.well-known/x", False),
    f"/sessions/{A}/file%20name.txt": ("/file%20name.txt", False),
    f"/sessions/{A}/%7euser": ("/~user", False),
    f"/sessions/{A}/x%2fy": ("/x%2Fy", False),
    f"/sessions/{A}/caf%c3%a9": ("/caf%C3%A9", False),
    f"/sessions/{A}/a%3Fb%23c": ("/a%3Fb%23c", False),
    f"/sessions/{A}/%252e%252e/": ("/%252e%252e/", False),  # decoded once: '%2e%2e' is a name, not '..'
    f"/sessions/{A}/a;b=c,d@e:f": ("/a;b=c,d@e:f", False),
}

REFUSED = [
    f"/sessions/{A}/..",
    f"/sessions/{A}/../{B}/",
    f"/sessions/{A}/%2e%2e/{B}/",
    f"/sessions/{A}/%2E%2E/{B}/",
    f"/sessions/{A}/.%2e/{B}/",
    f"/sessions/{A}/x/../../{B}/",
    f"/sessions/../sessions/{A}/",
    f"/sessions/./{A}/",
    f"/sessions/{A}%2f{B}/",
    f"/sessions/{A}%2F/",
    f"/sessions/{A}%5c{B}/",
    f"/sessions/{A}/..%2f{B}/",
    f"/sessions/{A}/x%2f..%2fy",
    "/sessions/%30123456789abcdef/",  # an escaped id
    "/sessions/0123456789ABCDEF/",
    "/sessions/0123456789abcde/",
    "/sessions/0123456789abcdef0/",
    "/sessions/",
    "/sessions",
    f"/other/{A}/",
    f"sessions/{A}/",
    f"/sessions/{A}/a%00b",
    f"/sessions/{A}/a%0d%0aX-Injected:%20y",
    f"/sessions/{A}/a%7f",
    f"/sessions/{A}/a%5cb",
    f"/sessions/{A}/a\\b",
    f"/sessions/{A}/a%zz",
    f"/sessions/{A}/a%4",
]


@pytest.mark.parametrize("raw", list(NORMALISED))
def test_path_normalisation_table(raw: str):
    parsed = parse_session_path(raw.encode())
    assert (parsed.rest, parsed.needs_slash) == NORMALISED[raw]
    assert (parsed.session_id, parsed.prefix) == (A, f"/sessions/{A}")


@pytest.mark.parametrize("raw", REFUSED)
def test_paths_the_proxy_refuses(raw: str):
    with pytest.raises(BadPath):
        parse_session_path(raw.encode())


def test_raw_bytes_are_refused_or_encoded():
    assert parse_session_path(f"/sessions/{A}/caf\xc3\xa9".encode("latin-1")).rest == "/caf%C3%A9"
    for raw in (b"/sessions/" + A.encode() + b"/a\x00b", b"/sessions/" + A.encode() + b"/a\x1bb"):
        with pytest.raises(BadPath):
            parse_session_path(raw)


# -- the path tricks through the real server --------------------------------------------------------------

TRICKS = [
    f"/sessions/{A}/../{B}/echo",
    f"/sessions/{A}/%2e%2e/{B}/echo",
    f"/sessions/{A}/%2E./{B}/echo",
    f"/sessions/{A}/.%2E/{B}/echo",
    f"/sessions/{A}%2f..%2f{B}/echo",
    f"/sessions/{A}%2f{B}/echo",
    f"/sessions/{A}/..%2f{B}/echo",
    f"/sessions/{A}//..//{B}/echo",
    f"/sessions/{A}/x/../../{B}/echo",
    f"/sessions/{A}/%5c..%5c{B}/echo",
    f"/sessions/{B}/../{A}/echo",
]


def test_path_tricks_never_reach_another_session(servers: Servers):
    for trick in TRICKS:
        response = servers.raw("GET", trick)
        assert response.status == 400, trick
    # '//' collapses before the gate reads the id: the gate checks B, and refuses
    assert servers.raw("GET", f"/sessions//{B}/echo").status == 403
    assert servers.raw("GET", f"/sessions/{A}//{B}/../echo").status == 200  # '..' inside A stays inside A
    assert servers.upstream("b", "/_hits") == {}
    bob = servers.raw("GET", f"/sessions/{B}/echo", {"Cookie": f"{STRIP}=bob"})
    assert bob.status == 200  # B itself is reachable, for bob
    assert servers.upstream("b", "/_hits") == {"/echo": 1}


def test_a_refused_path_is_a_short_400_page(servers: Servers):
    response = httpx.get(servers.url(f"/sessions/{A}/a%00b"))
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "control characters" in response.text and "Traceback" not in response.text


def test_bare_session_path_redirects_to_its_slash(servers: Servers):
    get = httpx.get(servers.url(f"/sessions/{A}?appUri=%2F&x=1"))
    assert (get.status_code, get.headers["location"]) == (302, f"/sessions/{A}/?appUri=%2F&x=1")
    post = httpx.post(servers.url(f"/sessions/{A}"), content=b"x")
    assert (post.status_code, post.headers["location"]) == (308, f"/sessions/{A}/")
    landed = httpx.get(servers.url(f"/sessions/{A}"), follow_redirects=True)
    assert echo(landed)["raw_path"] == "/auth-sign-in?appUri=%2F"  # via /sessions/A/, then upstream's sign-in
    with httpx.Client(cookies={"user-id": "alice"}) as client:  # a header would be dropped on the redirect
        assert client.get(servers.url(f"/sessions/{A}"), follow_redirects=True).text == "upstream a"


# -- what crosses the proxy -------------------------------------------------------------------------------


def test_prefix_stripped_and_root_path_set(servers: Servers):
    data = echo(httpx.get(servers.url(f"/sessions/{A}/rpc/x%7e/file%20one?q=1&r=%2F|x")))
    assert data["raw_path"] == "/rpc/x~/file%20one?q=1&r=%2F|x"
    assert data["h"]["x-rstudio-root-path"] == [f"/sessions/{A}"]
    assert data["h"]["host"] == ["byoi.example.org"]
    assert echo(httpx.get(servers.url(f"/sessions/{A}/rpc/plain")))["raw_path"] == "/rpc/plain"


def test_client_forwarding_claims_are_replaced(servers: Servers):
    claims = {
        "X-Forwarded-Host": "evil.example.com",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Port": "8443",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Prefix": "/elsewhere",
        "Forwarded": "host=evil.example.com;proto=http",
        "X-Real-IP": "203.0.113.9",
        "X-RStudio-Root-Path": f"/sessions/{B}",
        "X-RStudio-Request": "http://evil.example.com/",
        "X-RStudio-SessionContext": "x",
    }
    data = echo(httpx.get(servers.url(f"/sessions/{A}/echo"), headers=claims))
    sent = {k: v for k, v in data["h"].items() if k.startswith(("x-forwarded-", "x-rstudio-", "x-real", "forwarded"))}
    assert sent == {
        "x-rstudio-root-path": [f"/sessions/{A}"],
        "x-forwarded-host": ["byoi.example.org"],
        "x-forwarded-proto": ["https"],
        "x-forwarded-for": ["127.0.0.1"],
    }


def test_without_public_url_the_request_host_is_used(servers: Servers):
    base = f"http://127.0.0.1:{servers.bare_port}"
    data = echo(httpx.get(f"{base}/sessions/{A}/echo", headers={"X-Forwarded-Host": "evil.example.com"}))
    assert data["h"]["host"] == [f"127.0.0.1:{servers.bare_port}"]
    assert data["h"]["x-forwarded-host"] == [f"127.0.0.1:{servers.bare_port}"]
    assert data["h"]["x-forwarded-port"] == [str(servers.bare_port)]
    assert data["h"]["x-forwarded-proto"] == ["http"]
    bad = httpx.get(f"{base}/sessions/{A}/echo", headers={"Host": "a.example.org, evil.example.com"})
    assert bad.status_code == 400 and "Host" in bad.text


def test_byoi_cookie_and_authorization_never_reach_upstream(servers: Servers):
    cookie = f"user-id=alice|Tue%2C%2001%20Dec|abc%3D%3D; {STRIP}=s3cret;rs-csrf-token=7f1e;  port-token=a1b2c3"
    headers = {
        "Cookie": cookie,
        "Authorization": "Bearer s3cret",
        "X-RS-CSRF-Token": "7f1e",
        "X-CSRF-Token": "old-7f1e",
        "Origin": "https://byoi.example.org",
        "Referer": f"https://byoi.example.org/sessions/{A}/",
    }
    data = echo(httpx.post(servers.url(f"/sessions/{A}/rpc/client_init"), headers=headers, content=b"{}"))
    assert data["h"]["cookie"] == ["user-id=alice|Tue%2C%2001%20Dec|abc%3D%3D; rs-csrf-token=7f1e; port-token=a1b2c3"]
    assert "authorization" not in data["h"]
    assert "s3cret" not in json.dumps(data)
    for name in ("x-rs-csrf-token", "x-csrf-token", "origin", "referer"):
        assert data["h"][name] == [headers[next(k for k in headers if k.lower() == name)]]
    only_ours = echo(httpx.get(servers.url(f"/sessions/{A}/echo"), headers={"Cookie": f"{STRIP}=s3cret"}))
    assert "cookie" not in only_ours["h"]
    untouched = echo(httpx.get(servers.url(f"/sessions/{A}/echo"), headers={"Cookie": "a=1;b=2"}))
    assert untouched["h"]["cookie"] == ["a=1;b=2"]


def test_hop_by_hop_headers_are_dropped_both_ways(servers: Servers):
    headers = {
        "Connection": "keep-alive, X-Named-Hop",
        "X-Named-Hop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "Proxy-Authorization": "Basic eA==",
        "Proxy-Connection": "keep-alive",
        "X-End-To-End": "kept",
    }
    data = echo(httpx.get(servers.url(f"/sessions/{A}/echo"), headers=headers))
    for name in headers:
        if name != "X-End-To-End":
            assert name.lower() not in data["h"], name
    assert data["h"]["x-end-to-end"] == ["kept"]
    assert {"user-agent", "accept-encoding", "accept"} <= set(data["h"])  # the client's, not aiohttp's
    assert data["h"]["user-agent"][0].startswith("python-httpx")
    conn = http.client.HTTPConnection("127.0.0.1", servers.port, timeout=10)
    conn.request("POST", f"/sessions/{A}/echo", body=b"x=1", headers={"Accept-Encoding": "br"})
    bare = json.loads(conn.getresponse().read())
    conn.close()
    sent = {name.lower(): value for name, value in bare["headers"]}
    assert sent["accept-encoding"] == "br" and sent["content-length"] == "3"
    assert not {"user-agent", "accept", "content-type"} & set(sent), sent  # aiohttp added none of its own

    response = httpx.get(servers.url(f"/sessions/{A}/hop"))
    assert response.headers["x-kept"] == "keep me"
    for name in ("x-hop-named", "keep-alive", "proxy-authenticate"):
        assert name not in response.headers, name
    assert response.headers.get_list("date") and len(response.headers.get_list("date")) == 1
    assert "aiohttp" not in response.headers.get("server", "")


LOCATIONS = {
    # upstream's Location -> what the browser gets (request at /sessions/A/help/x/redirect)
    "http://localhost:8787/sessions/{A}/auth-sign-in?appUri=%2F": "https://byoi.example.org/sessions/{A}/auth-sign-in?appUri=%2F",
    "http://127.0.0.1:8787/auth-sign-in": "https://byoi.example.org/sessions/{A}/auth-sign-in",
    "http://10.0.3.7/sessions/{A}/": "https://byoi.example.org/sessions/{A}/",
    "//localhost:8787/x": "https://byoi.example.org/sessions/{A}/x",
    "http://byoi.example.org/sessions/{A}/x": "https://byoi.example.org/sessions/{A}/x",
    "https://byoi.example.org/sessions/{A}/x": "https://byoi.example.org/sessions/{A}/x",
    "https://byoi.example.org/console/": "https://byoi.example.org/console/",
    "../doc/index.html?topic=a#b": "/sessions/{A}/help/doc/index.html?topic=a#b",
    "../../../../../../etc/passwd": "/sessions/{A}/etc/passwd",
    "./": "/sessions/{A}/help/x/",
    "/sessions/{A}/auth-sign-in": "/sessions/{A}/auth-sign-in",
    "next/page": "next/page",
}


@pytest.mark.parametrize("given", list(LOCATIONS))
def test_location_rewriting(servers: Servers, given: str):
    to = urllib.parse.quote(given.format(A=A), safe="")
    response = httpx.get(servers.url(f"/sessions/{A}/help/x/redirect?to={to}"))
    assert response.status_code == 302
    assert response.headers["location"] == LOCATIONS[given].format(A=A)


def test_refresh_rewriting(servers: Servers):
    refresh = urllib.parse.quote("0; url=http://127.0.0.1:8787/sessions/" + A + "/", safe="")
    response = httpx.get(servers.url(f"/sessions/{A}/redirect?status=200&to=/x&refresh={refresh}"))
    assert response.headers["refresh"] == f"0; url=https://byoi.example.org/sessions/{A}/"


SET_COOKIES = {
    "user-id=alice|x|y; path=/sessions/{A}; HttpOnly": "user-id=alice|x|y; path=/sessions/{A}; HttpOnly",
    "rs-csrf-token=7f; path=/sessions/{A}/; HttpOnly; SameSite=Lax; secure": (
        "rs-csrf-token=7f; path=/sessions/{A}/; HttpOnly; SameSite=Lax; secure"
    ),
    "evil=1; Path=/; Domain=.example.org": "evil=1; Path=/sessions/{A}",
    "other=1; path=/sessions/{B}; HttpOnly": "other=1; HttpOnly; Path=/sessions/{A}",
    "sneaky=1; path=/sessions/{A}x": "sneaky=1; Path=/sessions/{A}",
    "trav=1; path=/sessions/{A}/../{B}": "trav=1; Path=/sessions/{A}",
    "nopath=1; Expires=Wed, 09 Jun 2027 10:18:14 GMT; HttpOnly": (
        "nopath=1; Expires=Wed, 09 Jun 2027 10:18:14 GMT; HttpOnly; Path=/sessions/{A}"
    ),
    "deep=1; domain=localhost; path=/sessions/{A}/p/1234": "deep=1; path=/sessions/{A}/p/1234",
}


def test_set_cookie_rewriting(servers: Servers):
    given = [c.format(A=A, B=B) for c in SET_COOKIES] + [f"{STRIP}=stolen; Path=/; HttpOnly"]
    conn = http.client.HTTPConnection("127.0.0.1", servers.port, timeout=10)
    conn.request("GET", f"/sessions/{A}/cookies?set=" + urllib.parse.quote(json.dumps(given)))
    response = conn.getresponse()
    response.read()
    conn.close()
    received = [v for k, v in response.getheaders() if k.lower() == "set-cookie"]
    assert received == [c.format(A=A, B=B) for c in SET_COOKIES.values()]


# -- streaming --------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class PeakRss:
    """The proxy process's RSS sampled every 20 ms while the block runs: start and peak, in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 1024


def test_a_1gib_download_streams_with_flat_memory(servers: Servers):
    n = 2**30
    httpx.get(servers.url(f"/sessions/{A}/stream?n={4 * MiB}"))  # warm the pool and the buffers
    digest, size = hashlib.sha256(), 0
    started = time.monotonic()
    with PeakRss(servers.pid) as rss, httpx.stream("GET", servers.url(f"/sessions/{A}/stream?n={n}"), timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-length"] == str(n)
        for chunk in r.iter_raw(BLOCK):
            digest.update(chunk)
            size += len(chunk)
    elapsed = time.monotonic() - started
    print(f"\n1 GiB download: {elapsed:.1f} s, proxy RSS {rss.start / 1024:.1f} MiB -> peak {rss.peak / 1024:.1f} MiB")
    assert size == n
    assert digest.hexdigest() == stream_sha256(n)
    assert rss.growth_mib < 60, f"the proxy grew by {rss.growth_mib:.1f} MiB"


def test_a_chunked_download_streams(servers: Servers):
    n = 3 * MiB + 17
    response = httpx.get(servers.url(f"/sessions/{A}/stream?n={n}&chunked=1"))
    assert "content-length" not in response.headers
    assert hashlib.sha256(response.content).hexdigest() == stream_sha256(n)


def test_a_200mb_upload_streams_with_flat_memory(servers: Servers):
    n = 200 * 10**6
    expected = stream_sha256(n)
    headers = {"Content-Length": str(n), "Content-Type": "application/octet-stream"}
    with PeakRss(servers.pid) as rss:
        response = httpx.post(
            servers.url(f"/sessions/{A}/upload"), content=stream_bytes(n), headers=headers, timeout=60
        )
    print(f"\n200 MB upload: proxy RSS {rss.start / 1024:.1f} MiB -> peak {rss.peak / 1024:.1f} MiB")
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["size"], report["sha256"]) == (n, expected)
    assert (report["content_length"], report["transfer_encoding"]) == (str(n), None)
    assert rss.growth_mib < 60, f"the proxy grew by {rss.growth_mib:.1f} MiB"


def test_an_upload_without_length_goes_chunked(servers: Servers):
    n = 5 * MiB + 3
    response = httpx.post(servers.url(f"/sessions/{A}/upload"), content=stream_bytes(n))
    report = response.json()
    assert (report["size"], report["sha256"]) == (n, stream_sha256(n))
    assert (report["content_length"], report["transfer_encoding"]) == (None, "chunked")


def test_a_client_that_leaves_releases_the_held_request(servers: Servers):
    before = servers.upstream("a", "/_state")["abandoned"]
    with socket.create_connection(("127.0.0.1", servers.port)) as s:
        s.sendall(f"GET /sessions/{A}/hold?s=30 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.5)
    _wait(lambda: servers.upstream("a", "/_state")["abandoned"] == before + 1, "the upstream to see the close", 5)


def test_an_upstream_that_dies_midway_gives_a_truncated_answer(servers: Servers):
    conn = http.client.HTTPConnection("127.0.0.1", servers.port, timeout=10)
    conn.request("GET", f"/sessions/{A}/midway")
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    conn.close()


@pytest.mark.slow
def test_a_held_request_is_not_timed_out(servers: Servers):
    """RStudio holds /events/get_events for 50 s; the proxy sets no read timeout at all (see below), so a 12 s
    hold stands for any length. The client waits up to 60 s: only the proxy could cut it short."""
    started = time.monotonic()
    response = httpx.get(servers.url(f"/sessions/{A}/hold?s=12"), timeout=60)
    assert (response.status_code, response.text) == (200, "held")
    assert time.monotonic() - started >= 12


def test_the_pool_has_a_connect_timeout_only():
    timeout = Pool(connect_timeout=7)._timeout
    assert (timeout.total, timeout.sock_read, timeout.sock_connect) == (None, None, 7)


# -- failures and refusals ------------------------------------------------------------------------------------


def test_a_missing_socket_is_a_502_page(servers: Servers):
    response = httpx.get(servers.url(f"/sessions/{M}/"))
    assert response.status_code == 502
    assert "RStudio is not answering" in response.text
    assert "Traceback" not in response.text and str(servers.sockets) not in response.text


def test_the_gate_answers_unknown_and_foreign_sessions(servers: Servers):
    assert httpx.get(servers.url(f"/sessions/{UNKNOWN}/")).status_code == 404
    assert httpx.get(servers.url(f"/sessions/{B}/")).status_code == 403


# -- WebSockets ------------------------------------------------------------------------------------------


def ws_url(servers: Servers, session: str, path: str = "ws") -> str:
    return f"ws://127.0.0.1:{servers.port}/sessions/{session}/{path}"


def touches(servers: Servers) -> dict[str, int]:
    return httpx.get(servers.url("/_test/touches")).json()


def test_websocket_relays_text_and_binary_and_the_upstream_close_code(servers: Servers):
    before = touches(servers).get(A, 0)
    with ws_connect(ws_url(servers, A), subprotocols=["rstudio-terminal"], open_timeout=5, max_size=None) as ws:
        assert ws.subprotocol == "rstudio-terminal"
        ws.send("hello")
        assert ws.recv(5) == "echo:hello"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(5) == b"echo:\x00\x01\xff"
        big = os.urandom(3 * MiB)
        ws.send(big)
        assert ws.recv(10) == b"echo:" + big
        ws.send("close:4123")
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            ws.recv(5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4123, "upstream says bye")
    assert touches(servers)[A] - before == 8  # the handshake, 4 frames in, 3 frames out


def test_websocket_passes_the_client_close_code_upstream(servers: Servers):
    with ws_connect(ws_url(servers, A), open_timeout=5) as ws:
        assert ws.subprotocol is None
        ws.send("ping")
        assert ws.recv(5) == "echo:ping"
        ws.close(code=4002, reason="client bye")
    _wait(lambda: servers.upstream("a", "/_state")["last_close"] == 4002, "the upstream to see 4002", 5)


def test_websocket_is_refused_for_the_403_and_unknown_sessions(servers: Servers):
    hits = servers.upstream("b", "/_hits").get("/ws", 0)
    for session, status in ((B, 403), (UNKNOWN, 404), (M, 502)):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            ws_connect(ws_url(servers, session), open_timeout=5)
        assert refused.value.response.status_code == status, session
    assert servers.upstream("b", "/_hits").get("/ws", 0) == hits
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        ws_connect(ws_url(servers, A, "gone"), open_timeout=5)
    assert refused.value.response.status_code == 404  # upstream's own refusal, passed on
    with ws_connect(ws_url(servers, B), additional_headers={"Cookie": f"{STRIP}=bob"}, open_timeout=5) as ws:
        ws.send("hi")
        assert ws.recv(5) == "echo:hi"


# -- activity and the probe -----------------------------------------------------------------------------


def test_each_request_touches_its_session(servers: Servers):
    before = touches(servers)
    for _ in range(3):
        httpx.get(servers.url(f"/sessions/{A}/echo"))
    httpx.get(servers.url(f"/sessions/{B}/echo"))  # refused by the gate: no activity
    after = touches(servers)
    assert after[A] - before.get(A, 0) == 3
    assert after.get(B, 0) == before.get(B, 0)


class _NoGate:
    async def decide(self, scope, path):  # pragma: no cover - the probe never asks the gate
        raise AssertionError("the probe asked the gate")


class _NoActivity:
    def touch(self, session_id: str) -> None:  # pragma: no cover
        raise AssertionError("the probe touched a session")


def test_probe_reports_the_status_or_none(servers: Servers):
    async def run() -> tuple[int | None, int | None]:
        proxy = SessionProxy(_NoGate(), _NoActivity(), PUBLIC, frozenset({STRIP}))
        try:
            up = await proxy.probe(Endpoint(socket=str(servers.sockets / "a.sock")), f"/sessions/{A}", 5)  # 302
            down = await proxy.probe(Endpoint(socket=str(servers.sockets / "m.sock")), f"/sessions/{M}", 5)
            return up, down
        finally:
            await proxy.close()

    assert asyncio.run(run()) == (302, None)  # rserver's sign-in redirect, not followed
