"""The test images themselves work; the failing Dockerfiles fail as intended.

Most of this module checks the RStudio Server STAND-IN (tests/images/rstudio-standin), a TEST DOUBLE for the
rserver binary only, against the behaviour of real rserver that a path-prefix proxy relies on (see that folder's
README.md). It is reached the way byoi reaches it, through a Unix socket in a bind-mounted host directory, and
with the prefix already stripped: this module plays the proxy.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import json
import re
import stat
import time
from dataclasses import dataclass
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx2 as httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import unix_connect

from tests.support.docker_images import build_test_image, docker_available, docker_client

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)"),
]

RSERVER = "/usr/lib/rstudio-server/bin/rserver"
MOUNT = "/byoi-test"  # where the host directory with the socket and the key file appears in the container
SOCKET = "rserver.sock"
KEY_FILE = "keys/secure-cookie-key"  # does not exist yet: the stand-in creates it, like rserver
HOST = "rstudio.test"  # the Host header of every request (the public host as the proxy forwards it)
ROOT = "/s/abc"
FLAGS = [
    "--server-daemonize=0", f"--www-socket={MOUNT}/{SOCKET}", "--www-address=0.0.0.0", "--www-port=8787",
    "--auth-none=1", "--server-user=rstudio", f"--www-root-path={ROOT}/", "--www-frame-origin=same",
    "--www-verify-user-agent=0", "--server-data-dir=/tmp/rs", "--database-config-file=/tmp/db.conf",
    f"--secure-cookie-key-file={MOUNT}/{KEY_FILE}", "--www-thread-pool-size=2", "--rsession-which-r=/usr/bin/R",
    "--auth-timeout-minutes=60", "--www-enable-origin-check=1", "--some-future-flag=1",
]  # fmt: skip
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@dataclass
class Standin:
    container: Any
    dir: Path

    def client(self, socket: str = SOCKET, timeout: float = 10) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.dir / socket))
        return httpx.Client(transport=transport, base_url=f"http://{HOST}", timeout=timeout)

    def exec(self, *cmd: str) -> tuple[int, str]:
        code, out = self.container.exec_run(list(cmd), user="rstudio")
        return code, out.decode()


def wait_for_socket(standin: Standin, socket: str, what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with standin.client(socket, timeout=2) as http:
                if http.get("/health-check").status_code == 200:
                    return
        except httpx.TransportError:
            pass  # not listening yet  # noqa: S110
        assert time.monotonic() < deadline, f"{what} did not answer: {standin.container.logs()[-2000:]!r}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory):
    client = docker_client()
    tag = build_test_image("rstudio-standin")
    host_dir = tmp_path_factory.mktemp("standin")
    host_dir.chmod(0o777)  # the container's user (uid 1000) creates the socket and the key file here
    container = client.containers.run(
        tag, [RSERVER, *FLAGS], detach=True, init=True, user="rstudio",
        volumes={str(host_dir): {"bind": MOUNT, "mode": "rw"}},
    )  # fmt: skip
    try:
        s = Standin(container, host_dir)
        wait_for_socket(s, SOCKET, "the stand-in")
        yield s
    finally:
        container.remove(force=True)


# --- what a proxy and a browser would do -------------------------------------------------------------------------


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """The response's Set-Cookie headers by cookie name (the whole header value)."""
    return {raw.split("=", 1)[0]: raw for raw in response.headers.get_list("set-cookie")}


def cookie_value(raw: str) -> str:
    return raw.split(";", 1)[0].split("=", 1)[1]


def attributes(raw: str) -> list[str]:
    return [a.strip() for a in raw.split(";")[1:]]


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


def sign_in(http: httpx.Client) -> dict[str, str]:
    """The auth-none hop through /auth-sign-in; returns the cookies the browser then holds (name -> value)."""
    r = http.get("/auth-sign-in", params={"appUri": "/"})
    assert r.status_code == 302, r.text
    return {name: cookie_value(raw) for name, raw in set_cookies(r).items()}


def signed(key: bytes, value: str, expires: str) -> str:
    mac = base64.b64encode(hmac.new(key, (value + expires).encode(), hashlib.sha256).digest()).decode()
    return "|".join(quote(part, safe="") for part in (value, expires, mac))


def client_init(http: httpx.Client, cookies: dict[str, str]) -> tuple[str, dict[str, str]]:
    r = http.post(
        "/rpc/client_init",
        json={"method": "client_init", "params": [f"http://{HOST}{ROOT}/"], "clientId": ""},
        headers={"Cookie": cookie_header(cookies), "X-RS-CSRF-Token": cookies["rs-csrf-token"]},
    )
    assert r.status_code == 200 and "error" not in r.json(), r.text
    return r.json()["result"]["clientId"], set_cookies(r)


def rpc(http: httpx.Client, cookies: dict[str, str], method: str, client_id: str, *params: Any) -> dict:
    r = http.post(
        f"/rpc/{method}",
        json={"method": method, "params": list(params), "clientId": client_id},
        headers={"Cookie": cookie_header(cookies), "X-RS-CSRF-Token": cookies["rs-csrf-token"]},
    )
    assert r.status_code == 200, r.text
    return r.json()


def get_events(http: httpx.Client, cookies: dict[str, str], client_id: str, last: int) -> dict:
    r = http.post(
        "/events/get_events",
        json={"method": "get_events", "params": [last], "clientId": client_id},
        headers={"Cookie": cookie_header(cookies)},
    )
    assert r.status_code == 200, r.text
    return r.json()


def refused_websocket(standin: Standin, path: str, **kwargs: Any) -> tuple[int, str]:
    """The close code and reason of a WebSocket the stand-in refuses: rserver would answer the upgrade with an
    HTTP status, which httpuv cannot do, so the stand-in closes at once with code 4000 + that status."""
    with unix_connect(str(standin.dir / SOCKET), f"ws://{HOST}{path}", **kwargs) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def port_path(token: str, port: int, server: bool = False) -> str:
    """rserver's port obscuring (src/cpp/server_core/UrlPorts.cpp transformPort), to build /p/ URLs."""
    multiplier, key = int(token[:4], 16), int(token[4:], 16)
    value = (((port * 8854) % 65535) * multiplier) ^ key
    if server:
        value |= max(0x100000000, (key << 8) & 0xF00000000)
    return f"{value:08x}"


# --- flags, version, socket ------------------------------------------------------------------------------------


def test_help_version_and_version_file(standin):
    code, out = standin.exec(RSERVER, "--help")
    assert code == 0
    for flag in ["--www-root-path", "--server-data-dir", "--database-config-file", "--www-thread-pool-size",
                 "--www-socket", "--rsession-which-r", "--secure-cookie-key-file", "--www-same-site"]:  # fmt: skip
        assert flag in out, f"{flag} missing from --help:\n{out}"
    assert standin.exec(RSERVER, "--version") == (0, "2026.09.0+byoi.standin\n")
    _, version_file = standin.exec("cat", "/usr/lib/rstudio-server/VERSION")
    assert version_file.splitlines()[0] == "2026.09.0+byoi.standin"


def test_listens_only_on_its_unix_socket_mode_0600(standin):
    mode = (standin.dir / SOCKET).stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    with standin.client() as http:
        info = http.get("/api/info").json()
    assert info["listen"] == f"unix:{MOUNT}/{SOCKET}" and info["user"] == "rstudio"
    assert info["options"]["www-thread-pool-size"] == "2" and info["options"]["rsession-which-r"] == "/usr/bin/R"
    assert info["unknown_options"] == ["some-future-flag"] and info["r_version"].startswith("R version 4")
    # --www-address/--www-port are ignored: nothing listens on 8787 in the container
    code, out = standin.exec("Rscript", "-e", "socketConnection('127.0.0.1', 8787, timeout = 2)")
    assert code != 0 and "cannot open" in out


def test_startup_errors_exit_1(standin):
    ok = "--www-socket=/tmp/errors.sock --server-data-dir=/tmp/errors"
    cases = {
        "is empty": f"touch /tmp/empty && exec {RSERVER} {ok} --secure-cookie-key-file=/tmp/empty",
        "not strong enough": f"printf tooshort > /tmp/short && exec {RSERVER} {ok} --secure-cookie-key-file=/tmp/short",
        "--www-port must be a port number": f"exec {RSERVER} --www-port=http --server-data-dir=/tmp/errors",
        "cannot create --server-data-dir": f"exec {RSERVER} --www-socket=/tmp/errors.sock --server-data-dir=/proc/x",
    }
    for message, script in cases.items():
        code, out = standin.exec("sh", "-c", script)
        assert code == 1 and message in out, f"{script}: exit {code}\n{out}"


# --- URL space, root path, Location ----------------------------------------------------------------------------


def test_serves_at_slash_only_and_prefixed_paths_get_404(standin):
    with standin.client() as http:
        assert http.get("/health-check").text.strip() == "alive"
        for path in [f"{ROOT}/", f"{ROOT}/health-check", f"{ROOT}/auth-sign-in", f"{ROOT}/rpc/client_init"]:
            assert http.get(path).status_code == 404, path
        assert http.post(f"{ROOT}/events/get_events", json={}).status_code == 404


@pytest.mark.parametrize(
    ("headers", "location"),
    [
        ({}, f"http://{HOST}{ROOT}/auth-sign-in?appUri=%2F"),
        ({"X-RStudio-Root-Path": "/sessions/x1/"}, f"http://{HOST}/sessions/x1/auth-sign-in?appUri=%2F"),
        ({"X-RStudio-Root-Path": "sessions/x1"}, f"http://{HOST}/sessions/x1/auth-sign-in?appUri=%2F"),
        # "//" is kept in the root path, but dot and empty segments are removed from the Location
        ({"X-RStudio-Root-Path": "/u/a//r/./"}, f"http://{HOST}/u/a/r/auth-sign-in?appUri=%2F"),
        ({"X-Forwarded-Proto": "https"}, f"https://{HOST}{ROOT}/auth-sign-in?appUri=%2F"),
        (
            {"X-Forwarded-Host": "pub.example", "X-Forwarded-Port": "8443", "X-Forwarded-Proto": "https"},
            f"https://pub.example:8443{ROOT}/auth-sign-in?appUri=%2F",
        ),
        ({"X-Forwarded-Host": "pub.example:1", "X-Forwarded-Port": "2"}, f"http://pub.example:2{ROOT}/auth-sign-in?appUri=%2F"),
        ({"X-Forwarded-Host": "a.example,b.example"}, f"http://a.example,b.example{ROOT}/auth-sign-in?appUri=%2F"),
        (
            {"Forwarded": "for=10.0.0.1;host=fw.example:9000;proto=https", "X-Forwarded-Host": "ignored.example"},
            f"https://fw.example:9000{ROOT}/auth-sign-in?appUri=%2F",
        ),
        ({"Forwarded": "host=my-host.example"}, f"http://my{ROOT}/auth-sign-in?appUri=%2F"),  # a hyphen ends it
        (
            {"X-RStudio-Request": "https://req.example:7/whatever", "Forwarded": "host=fw.example"},
            f"https://req.example:7{ROOT}/auth-sign-in?appUri=%2F",
        ),
    ],
)  # fmt: skip
def test_location_is_absolute_from_root_path_and_forwarded_headers(standin, headers, location):
    with standin.client() as http:
        r = http.get("/", headers=headers)
    assert r.status_code == 302 and r.headers["location"] == location


def test_root_path_header_sets_the_cookie_path(standin):
    with standin.client() as http:
        r = http.get("/auth-sign-in", headers={"X-RStudio-Root-Path": "/sessions/x1/"})
        assert r.headers["location"] == f"http://{HOST}/sessions/x1/"
        assert all("path=/sessions/x1" in attributes(raw) for raw in set_cookies(r).values())
        r = http.get("/auth-sign-in", headers={"X-RStudio-Root-Path": "/u/a//r"})
        assert all("path=/u/a//r" in attributes(raw) for raw in set_cookies(r).values())


# --- sign-in, page, CSRF, client id ----------------------------------------------------------------------------


def test_sign_in_cookie_dance_with_hmac_signed_cookies(standin):
    key_path = standin.dir / KEY_FILE
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = key_path.read_bytes()
    assert len(key) >= 32
    with standin.client() as http:
        first = http.get("/")
        assert first.status_code == 302 and first.headers["location"] == f"http://{HOST}{ROOT}/auth-sign-in?appUri=%2F"
        deleted = set_cookies(first)
        assert set(deleted) == {"user-id", "user-list-id", "persist-auth"}
        for raw in deleted.values():
            assert cookie_value(raw) == "" and "HttpOnly" in attributes(raw) and f"path={ROOT}" in attributes(raw)
            expires = next(a for a in attributes(raw) if a.startswith("expires="))
            assert parsedate_to_datetime(expires.removeprefix("expires=")).timestamp() < time.time()

        r = http.get("/auth-sign-in", params={"appUri": "/"})
        assert r.status_code == 302 and r.headers["location"] == f"http://{HOST}{ROOT}/"
        raw = set_cookies(r)
        assert set(raw) == {"user-id", "user-list-id", "persist-auth", "rs-csrf-token", "csrf-token"}
        for cookie in raw.values():
            assert f"path={ROOT}" in attributes(cookie) and "HttpOnly" in attributes(cookie)
            assert "secure" not in attributes(cookie) and not any(a.startswith("SameSite") for a in attributes(cookie))
        assert cookie_value(raw["persist-auth"]) == "0"
        csrf = cookie_value(raw["rs-csrf-token"])
        assert UUID.fullmatch(csrf) and cookie_value(raw["csrf-token"]) == csrf
        for name, expected in [("user-id", "rstudio"), ("user-list-id", None)]:
            value, expires, mac = (unquote(p) for p in cookie_value(raw[name]).split("|"))
            assert expected is None or value == expected
            assert mac == base64.b64encode(hmac.new(key, (value + expires).encode(), hashlib.sha256).digest()).decode()
            assert 3500 < parsedate_to_datetime(expires).timestamp() - time.time() <= 3600  # auth-timeout-minutes=60
            assert not any(a.startswith("expires=") for a in attributes(raw[name]))  # a session cookie

        cookies = {name: cookie_value(c) for name, c in raw.items()}
        page = http.get("/", headers={"Cookie": cookie_header(cookies)})
        assert page.status_code == 200 and "byoi test stand-in" in page.text
        assert page.headers["x-frame-options"] == "SAMEORIGIN"
        assert "no-store" in page.headers["cache-control"] and page.headers["pragma"] == "no-cache"
        assert f'<meta name="csrf-token" content="{csrf}">' in page.text
        assert 'id="code"' in page.text and 'id="out"' in page.text and "<button" in page.text
        assert re.findall(r'(?:src|href)="([^"]+)"', page.text) == ["css/standin.css", "js/console.js"]
        script = http.get("/js/console.js")
        assert script.status_code == 200 and 'new URL("websocket", location.href' in script.text
        assert 'dataset.ws = "open"' in script.text
        assert http.get("/css/standin.css").status_code == 200

        # a signed-in visit to the sign-in page goes back to the app
        again = http.get("/auth-sign-in", params={"appUri": "/"}, headers={"Cookie": cookie_header(cookies)})
        assert again.status_code == 302 and again.headers["location"] == f"http://{HOST}{ROOT}/"

        # a forged signature, a tampered user and an expired (properly signed) cookie are all refused
        user, expires, mac = cookie_value(raw["user-id"]).split("|")
        past = format_datetime(parsedate_to_datetime(unquote(expires)).replace(year=2020), usegmt=True)
        for bad in [f"{user}|{expires}|{mac[:-6]}AAAA%3D", f"root|{expires}|{mac}", signed(key, "rstudio", past)]:
            r = http.get("/", headers={"Cookie": cookie_header({**cookies, "user-id": bad})})
            assert r.status_code == 302 and "/auth-sign-in" in r.headers["location"], bad
        # and one signed with the key but expiring later is accepted: the key and the HMAC are rserver's
        later = format_datetime(parsedate_to_datetime(unquote(expires)).replace(year=2100), usegmt=True)
        r = http.get("/", headers={"Cookie": cookie_header({**cookies, "user-id": signed(key, "rstudio", later)})})
        assert r.status_code == 200


def test_sign_out_form_needs_the_csrf_token(standin):
    with standin.client() as http:
        cookies = sign_in(http)
        jar = {"Cookie": cookie_header(cookies)}
        r = http.post("/auth-sign-out", data={"rs-csrf-token": "wrong"}, headers=jar)
        assert r.status_code == 400 and r.text == "Missing or incorrect token."
        r = http.post("/auth-sign-out", data={"rs-csrf-token": cookies["rs-csrf-token"]}, headers=jar)
        assert r.status_code == 302 and r.headers["location"] == f"http://{HOST}{ROOT}/auth-sign-in"
        cleared = set_cookies(r)
        assert set(cleared) == {"user-id", "user-list-id", "persist-auth"}
        assert all(cookie_value(raw) == "" for raw in cleared.values())


def test_cookies_are_secure_when_the_proxied_scheme_is_https(standin):
    with standin.client() as http:
        for headers in [{"X-Forwarded-Proto": "https"}, {"X-RStudio-Request": f"https://{HOST}{ROOT}/"}]:
            r = http.get("/auth-sign-in", headers=headers)
            assert r.headers["location"] == f"https://{HOST}{ROOT}/"
            assert all("secure" in attributes(raw) for raw in set_cookies(r).values()), headers


def test_rpc_needs_csrf_and_a_client_id(standin):
    with standin.client() as http:
        cookies = sign_in(http)
        body = {"method": "client_init", "params": [f"http://{HOST}{ROOT}/"], "clientId": ""}
        unauthorized = {"error": {"code": 3, "message": "Unauthorized"}}
        jar = {"Cookie": cookie_header(cookies)}
        assert http.post("/rpc/client_init", json=body, headers=jar).json() == unauthorized
        wrong = {**jar, "X-RS-CSRF-Token": "0" * 36}
        assert http.post("/rpc/client_init", json=body, headers=wrong).json() == unauthorized
        no_user = {"Cookie": f"rs-csrf-token={cookies['rs-csrf-token']}", "X-RS-CSRF-Token": cookies["rs-csrf-token"]}
        assert http.post("/rpc/client_init", json=body, headers=no_user).json() == unauthorized
        # the old names (before 2022.06) are still accepted
        old = {"Cookie": cookie_header({k: v for k, v in cookies.items() if k != "rs-csrf-token"})}
        r = http.post("/rpc/client_init", json=body, headers={**old, "X-CSRF-Token": cookies["csrf-token"]})
        assert "clientId" in r.json()["result"]

        client_id, raw = client_init(http, cookies)
        assert client_id and set(raw) == {"port-token"}
        assert re.fullmatch(r"[0-9a-f]{12}", cookie_value(raw["port-token"]))
        assert {"HttpOnly", f"path={ROOT}"} <= set(attributes(raw["port-token"]))

        invalid = {"error": {"code": 4, "message": "Invalid client id"}}
        assert rpc(http, cookies, "console_input", "not-the-client-id", "1 + 1") == invalid
        assert rpc(http, cookies, "set_client_state", "", {}) == invalid
        assert get_events(http, cookies, "stale", -1) == invalid
        result = rpc(http, cookies, "console_input", client_id, "x <- 20 + 1; x * 2")["result"]
        assert result == {"result": 42, "output": "", "error": None}
        # a new client_init takes over: the previous client id is no longer valid
        newer, _ = client_init(http, cookies)
        assert rpc(http, cookies, "console_input", client_id, "x") == invalid
        assert rpc(http, cookies, "console_input", newer, "x")["result"]["result"] == 21


def test_get_events_answers_pending_events_at_once_and_holds_without_blocking(standin):
    with standin.client() as http:
        cookies = sign_in(http)
        client_id, _ = client_init(http, cookies)
        rpc(http, cookies, "console_input", client_id, "'first'")
        started = time.monotonic()
        events = get_events(http, cookies, client_id, -1)
        assert time.monotonic() - started < 5 and events["ep"] == "false"
        last = max(e["id"] for e in events["result"])
        assert events["result"][-1]["type"] == "console_output"
        assert events["result"][-1]["data"]["result"] == "first"

    def held() -> tuple[dict, float]:
        with standin.client(timeout=70) as h:
            t0 = time.monotonic()
            return get_events(h, cookies, client_id, last), time.monotonic() - t0

    with concurrent.futures.ThreadPoolExecutor(1) as pool, standin.client() as http:
        future = pool.submit(held)
        time.sleep(1.5)
        assert not future.done(), "get_events answered although no event was pending"
        # while it is held, the single-threaded stand-in still serves other requests
        started = time.monotonic()
        assert http.get("/health-check").status_code == 200
        assert rpc(http, cookies, "console_input", client_id, "'second'")["result"]["result"] == "second"
        assert time.monotonic() - started < 5
        events, waited = future.result(timeout=10)
        assert 1 <= waited < 10
        assert [e["data"]["result"] for e in events["result"]] == ["second"] and events["ep"] == "false"


# --- /p/ port proxy, WebSockets, origin check -------------------------------------------------------------------


def test_port_proxy_http_and_terminal_websocket(standin):
    with standin.client() as http:
        cookies = sign_in(http)
        _, raw = client_init(http, cookies)
        cookies["port-token"] = cookie_value(raw["port-token"])
        token, jar = cookies["port-token"], {"Cookie": cookie_header(cookies)}

        app = http.get(f"/p/{port_path(token, 8080)}/some/path", params={"a": "1"}, headers=jar)
        assert app.status_code == 200
        assert app.json() | {"query": None} == {
            "standin_local_app": True, "port": 8080, "server": False, "ipv6": False, "host": "localhost:8080",
            "method": "GET", "path": "/some/path", "query": None,
        }  # fmt: skip
        assert app.json()["query"] == "a=1"
        server = http.get(f"/p/{port_path(token, 3838, server=True)}/", headers=jar).json()
        assert server["port"] == 3838 and server["server"] is True
        # without the cookie, rserver falls back to its default token
        assert http.get(f"/p/{port_path('a433e59dc087', 4321)}/", headers={"Cookie": cookie_header({
            k: v for k, v in cookies.items() if k != "port-token"})}).json()["port"] == 4321  # fmt: skip
        # an undecodable token (a 9th digit that does not match the key) gets a 404
        nine = port_path(token, 8080, server=True)
        assert http.get(f"/p/{'f' if nine[0] != 'f' else 'e'}{nine[1:]}/", headers=jar).status_code == 404
        # the local app's redirects come back absolute, under the root path and /p/
        hexport = port_path(token, 8080)
        moved = http.get(f"/p/{hexport}/redirect", params={"to": "/next/"}, headers=jar)
        assert moved.status_code == 302 and moved.headers["location"] == f"http://{HOST}{ROOT}/p/{hexport}/next/"
        # not signed in: sign in, then continue to the same URL
        anon = http.get(f"/p/{hexport}/x")
        assert anon.status_code == 302
        assert anon.headers["location"] == f"http://{HOST}{ROOT}/auth-sign-in?appUri=%2Fp%2F{hexport}%2Fx"

    socket = str(standin.dir / SOCKET)
    url = f"ws://{HOST}/p/{hexport}/terminal/1/"
    with unix_connect(socket, url, additional_headers=jar) as ws:
        for text in ["hello", "ls -l\r", "x" * 5000]:
            ws.send(text)
            assert ws.recv(timeout=10) == text
    assert refused_websocket(standin, f"/p/{hexport}/terminal/1/")[0] == 4302  # not signed in
    prefixed = f"{ROOT}/p/{hexport}/terminal/1/"  # the proxy did not strip its prefix
    assert refused_websocket(standin, prefixed, additional_headers=jar) == (4404, f"{prefixed} not found")
    undecodable = f"/p/{'f' if nine[0] != 'f' else 'e'}{nine[1:]}/terminal/1/"
    assert refused_websocket(standin, undecodable, additional_headers=jar)[0] == 4404


def test_origin_check(standin):
    with standin.client() as http:
        assert http.get("/health-check", headers={"Origin": f"http://{HOST}"}).status_code == 200
        assert http.get("/health-check", headers={"Origin": "http://evil.example"}).status_code == 400
        assert http.get("/health-check", headers={"Referer": f"https://{HOST}:8443{ROOT}/"}).status_code == 400
        forwarded = {"Origin": "https://pub.example:8443", "X-Forwarded-Host": "pub.example:8443"}
        assert http.get("/health-check", headers=forwarded).status_code == 200
        assert http.request("DELETE", "/health-check").status_code == 405
    assert refused_websocket(standin, "/websocket", origin="http://evil.example")[0] == 4400
    with unix_connect(str(standin.dir / SOCKET), f"ws://{HOST}/websocket", origin=f"http://{HOST}") as ws:
        ws.send(json.dumps({"code": "1"}))
        assert json.loads(ws.recv(timeout=10))["result"] == 1


def test_evaluates_r_over_websocket(standin):
    socket = str(standin.dir / SOCKET)
    with unix_connect(socket, f"ws://{HOST}/websocket") as ws:
        replies = []
        for code in ["x <- 20 + 1; x * 2", "x", "print('hi'); invisible(NULL)", "stop('boom')"]:
            ws.send(json.dumps({"code": code, "id": code}))
            replies.append(json.loads(ws.recv(timeout=10)))
    assert replies[0]["result"] == 42 and replies[0]["error"] is None
    assert replies[1]["result"] == 21  # state persists between messages, like an R session
    assert replies[2]["output"] == '[1] "hi"'
    assert replies[3]["error"] == "boom" and replies[3]["id"] == "stop('boom')"
    assert refused_websocket(standin, f"{ROOT}/websocket")[0] == 4404
    assert refused_websocket(standin, "/elsewhere")[0] == 4404


def test_same_site_none_force_secure_user_agent_and_stale_socket(standin):
    """A second rserver in the same container, on a socket path where a stale file lies."""
    stale = standin.dir / "second.sock"
    stale.write_text("stale")  # root's file, but in a directory the container's user may write to
    standin.container.exec_run(
        [RSERVER, f"--www-socket={MOUNT}/second.sock", "--www-same-site=none", "--auth-cookies-force-secure=1",
         "--auth-timeout-minutes=0", "--server-data-dir=/tmp/rs2", f"--secure-cookie-key-file={MOUNT}/{KEY_FILE}"],
        user="rstudio", detach=True,
    )  # fmt: skip
    wait_for_socket(standin, "second.sock", "the second stand-in")
    assert stat.S_ISSOCK((standin.dir / "second.sock").stat().st_mode)
    with standin.client("second.sock") as http:
        r = http.get("/auth-sign-in")
        assert r.headers["location"] == f"http://{HOST}/"  # no root path: Host and the request path
        raw = set_cookies(r)
        # auth-timeout-minutes=0: no persist-auth
        names = ["user-id", "user-list-id", "rs-csrf-token", "csrf-token"]
        assert set(raw) == set(names) | {f"{n}-legacy" for n in names}
        for name in names:
            assert {"SameSite=None", "secure", "path=/", "HttpOnly"} <= set(attributes(raw[name]))
            legacy = raw[f"{name}-legacy"]
            assert cookie_value(legacy) == cookie_value(raw[name]) and "secure" in attributes(legacy)
            assert not any(a.startswith("SameSite") for a in attributes(legacy))
        # the key file is shared, so the first server's signature is valid here too; -legacy is read as a fallback
        cookies = {f"{n}-legacy": cookie_value(raw[n]) for n in names}
        browser = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
        page = http.get("/", headers={"Cookie": cookie_header(cookies), "User-Agent": browser})
        assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
        tool = http.get("/", headers={"Cookie": cookie_header(cookies), "User-Agent": "python-httpx/2"})
        assert tool.status_code == 302 and tool.headers["location"] == f"http://{HOST}/unsupported_browser.htm"
        assert http.get("/unsupported_browser.htm").status_code == 200


# --- the other images --------------------------------------------------------------------------------------------


def test_old_rstudio_refuses_www_socket():
    client = docker_client()
    tag = build_test_image("rstudio-standin-old")

    def run(*args: str) -> tuple[int, str]:
        container = client.containers.run(tag, list(args), detach=True, user="rstudio")
        try:
            code = container.wait(timeout=60)["StatusCode"]
            return code, container.logs(stdout=True, stderr=True).decode()
        finally:
            container.remove(force=True)

    code, out = run("sh", "-c", f"head -n1 /usr/lib/rstudio-server/VERSION && {RSERVER} --version && {RSERVER} --help")
    assert code == 0
    lines = out.splitlines()
    assert lines[:2] == ["2023.06.0+421", "2023.06.0+421"]
    assert "--www-root-path" in out and "--www-socket" not in out
    code, out = run(RSERVER, "--server-daemonize=0", "--www-socket=/tmp/rserver.sock", "--server-data-dir=/tmp/rs")
    assert code == 1 and out.strip() == "unrecognised option '--www-socket' on command line"


def test_failing_test_images_fail():
    with pytest.raises(RuntimeError, match="returned a non-zero code: 3"):
        build_test_image("run-fails")
    with pytest.raises(RuntimeError, match="unknown instruction"):
        build_test_image("syntax-error")
