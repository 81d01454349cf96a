"""Session proxy benchmark: the direct connection to RStudio (the runtime's own reach: its Unix socket), byoi's
proxy, nginx with forward-auth (docs/nginx-forward-auth.conf) and configurable-http-proxy (JupyterHub's proxy,
the peer), side by side in one run, each as a ratio to direct. Prints JSON on stdout, progress on stderr.

    .venv/bin/python bench/proxy.py [--duration 10] [--quick] [--connections 16] [--threads 2]
                                    [--ws-messages 2000] [--downloads 3]

Figures, per target and path: HTTP requests per second, p50 and p99 of small responses (`wrk -t2 -c16 -d10s
--latency`, and a bounded Python generator: 16 keep-alive connections for the same fixed duration, raw HTTP/1.1
over asyncio, which can speak to a Unix socket where wrk cannot); the throughput of a streamed 100 MB download
(best of `--downloads`, MB = 10^6 bytes); and WebSocket round trips (`--ws-messages` sequential small messages
after 200 of warm-up; p50/p99). Ratios to direct: rps_ratio (path / direct), added_p50_ms and added_p99_ms (path
- direct), download_ratio (path / direct), ws_ratio (path's WebSocket p50 / direct's: above 1 is slower).

Two targets:

- `session`: a real session, RStudio being the STAND-IN image (tests/images/rstudio-standin, a TEST DOUBLE for
  the rserver binary only; R's httpuv serves it; R, the container, the registry and Docker Engine are real). It
  serves only a few hundred requests a second, so it mostly measures itself: `/health-check` for HTTP (direct,
  byoi and nginx with the Python generator over the same 16 connections; byoi and nginx with wrk too, wrk
  having no direct figure here since it cannot open a Unix socket), its `/websocket` R console for round trips
  (`{"code": "1"}`), and no download (the stand-in serves no large file).
- `fast`: the proxies' own cost, against a small static nginx (its config written here, one worker) listening
  on a Unix socket and on a 127.0.0.1 port, answering any path with a 100-byte body and `/big.bin` with a
  100 MB file (sendfile), and a WebSocket echo server (bench/proxy_upstream.py) on a Unix socket and a port.
  Direct is nginx's TCP port for wrk (the same nginx as its socket) and its socket for the Python generator and
  the download; the echo server's socket for round trips.

How each path reaches the fast target through byoi's REAL server path (cookie -> principal, the gate's decision
and its 2 s cache, the proxy, the pool): two more real sessions are launched and, once InService, each one's
stored endpoint (the `Endpoint` member of its app row's `backend` JSON in `<data dir>/byoi.db`, as
`Endpoint.to_json` writes it) is pointed at the fast nginx's socket and at the echo server's socket. This is a
benchmark-only rewiring of two records, so that byoi's full request path can be measured against a fast
target; it happens before any request through the proxy, and the script waits longer than the gate's 2 s
cache afterwards all the same. nginx with forward-auth runs docs/nginx-forward-auth.conf as it is (only
`__LISTEN__` and `__BYOI__` filled in, as tests/test_session_proxy.py does), in front of the same byoi server,
so it reaches the same sessions (the auth subrequest returns the socket). configurable-http-proxy has no
authentication and cannot target a Unix socket: it gets routes `/sessions/<fast id>` -> the fast nginx's port
and `/sessions/<echo id>` -> the echo server's port, with `--no-include-prefix` (the prefix stripped, as the
others do); it cannot reach the stand-in session at all (it has no TCP endpoint), so those figures are null
with the reason. Every request carries the same byoi_session cookie header on every path.

configurable-http-proxy is installed by this script itself when missing: `npm install --prefix bench/.node`
with the version pinned in bench/package.json (never globally; bench/.node gets a `.gitignore` of `*`, so
nothing of it is tracked). When npm fails, its figures are null and a note says why; the rest still runs.

Everything listens on 127.0.0.1 or on Unix sockets in a temporary directory; the load is bounded (fixed duration,
fixed connections); every server, container and tag the script started is stopped or removed at the end, also
on an error or SIGTERM. Goals, evaluated at the end (true/false with the numbers): byoi ahead of
configurable-http-proxy on every figure; byoi's download ratio at least nginx's; byoi's added p50 within 2x of
nginx's. The machine has 2 cores: the load generator, the proxies and the targets share them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx2 as httpx  # noqa: E402
from tests.support import sessions as s  # noqa: E402
from tests.support.processes import ByoiServer, free_port, start_registry  # noqa: E402

BENCH = ROOT / "bench"
NODE_DIR = BENCH / ".node"
CHP_BIN = NODE_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
SMALL_BODY = "byoi proxy benchmark: a small response from the fast target, one hundred bytes long, for every path\n"
DOWNLOAD_BYTES = 100_000_000
USER = "bench"
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[bench/proxy {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def stop_process(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, httpx.TransportError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not come up within {timeout}s")


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by these processes and all their descendants (nginx's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, used = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    wanted, grown = set(pids), True
    while grown:
        more = {pid for pid, ppid in parent.items() if ppid in wanted} - wanted
        wanted |= more
        grown = bool(more)
    return sum(used.get(pid, 0.0) for pid in wanted)


def with_cpu(pids: list[int], run: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one load measurement; add the CPU its proxy processes used per request (and the machine's load)."""
    load = os.getloadavg()[0]
    before = cpu_seconds(pids) if pids else 0.0
    figures = run(*args)
    if pids and figures.get("requests"):
        figures["proxy_cpu_ms_per_request"] = round((cpu_seconds(pids) - before) * 1000 / figures["requests"], 3)
    figures["loadavg_1m_before"] = round(load, 2)
    return figures


# -- the servers --------------------------------------------------------------------------------------------


def fast_nginx(work: Path) -> tuple[subprocess.Popen, str, int]:
    """The fast target: static nginx, one worker, on a Unix socket and a 127.0.0.1 port."""
    prefix = work / "fast-nginx"
    prefix.mkdir()
    with (prefix / "big.bin").open("wb") as f:
        for _ in range(DOWNLOAD_BYTES // 10_000_000):
            f.write(os.urandom(10_000_000))
    sock, port = str(work / "fast.sock"), free_port()
    (prefix / "nginx.conf").write_text(f"""
user root;
worker_processes 1;
error_log stderr warn;
pid nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path client_body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen unix:{sock};
        listen 127.0.0.1:{port};
        location = /big.bin {{ root {prefix}; default_type application/octet-stream; }}
        location / {{ default_type text/plain; return 200 "{SMALL_BODY.strip()}\\n"; }}
    }}
}}
""")
    proc = nginx_process(prefix)
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/x", timeout=1).status_code == 200, "fast nginx")
    return proc, sock, port


def nginx_process(prefix: Path) -> subprocess.Popen:
    log_file = (prefix / "nginx.log").open("wb")
    return subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip


def forward_auth_nginx(work: Path, byoi_port: int) -> tuple[subprocess.Popen, int]:
    """docs/nginx-forward-auth.conf with its placeholders filled in, as tests/test_session_proxy.py does."""
    prefix = work / "forward-auth-nginx"
    prefix.mkdir()
    port = free_port()
    conf = (ROOT / "docs" / "nginx-forward-auth.conf").read_text()
    conf = conf.replace("__LISTEN__", f"127.0.0.1:{port}").replace("__BYOI__", f"127.0.0.1:{byoi_port}")
    (prefix / "nginx.conf").write_text(conf)
    proc = nginx_process(prefix)
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code in (200, 503), "nginx")
    return proc, port


def echo_server(work: Path) -> tuple[subprocess.Popen, str, int]:
    sock, port = str(work / "echo.sock"), free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "proxy_upstream.py"), sock, str(port)],
        stdout=subprocess.PIPE, stderr=(work / "echo.log").open("wb"), text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the echo server did not start: {(work / 'echo.log').read_text()[-2000:]}")
    return proc, sock, port


def ensure_chp() -> tuple[Path | None, str | None]:
    """configurable-http-proxy in bench/.node (installed with npm when missing), or None and why not."""
    if CHP_BIN.exists():
        return CHP_BIN, None
    npm = shutil.which("npm")
    if npm is None:
        return None, "npm is not installed: configurable-http-proxy was skipped"
    NODE_DIR.mkdir(exist_ok=True)
    (NODE_DIR / ".gitignore").write_text("*\n")  # nothing installed here is ever tracked
    shutil.copyfile(BENCH / "package.json", NODE_DIR / "package.json")
    log("installing configurable-http-proxy: npm install --prefix bench/.node")
    try:
        done = subprocess.run(
            [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, "npm install of configurable-http-proxy timed out: it was skipped"
    if done.returncode != 0 or not CHP_BIN.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return None, f"npm install of configurable-http-proxy failed ({' / '.join(tail)}): it was skipped"
    return CHP_BIN, None


def start_chp(work: Path, binary: Path, routes: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """configurable-http-proxy on 127.0.0.1, its API on 127.0.0.1 too, prefixes stripped; `routes` added."""
    port, api_port, token = free_port(), free_port(), secrets.token_hex(16)
    proc = subprocess.Popen(
        [str(binary), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1", "--api-port",
         str(api_port), "--no-include-prefix", "--log-level", "warn"],
        env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token},
        stdout=(work / "chp.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    api, auth = f"http://127.0.0.1:{api_port}/api/routes", {"Authorization": f"token {token}"}
    wait_until(lambda: httpx.get(api, headers=auth, timeout=1).status_code == 200, "configurable-http-proxy")
    for prefix, target in routes.items():
        answer = httpx.post(api + prefix, headers=auth, json={"target": target}, timeout=5)
        if answer.status_code != 201:
            raise RuntimeError(f"configurable-http-proxy refused route {prefix}: {answer.status_code} {answer.text}")
    return proc, port


def rewire(db_path: Path, session_id: str, socket_path: str) -> None:
    """Benchmark only: point one session's stored endpoint at another Unix socket (see the docstring)."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as conn, conn:
        (backend,) = conn.execute("SELECT backend FROM apps WHERE session_id = ?", (session_id,)).fetchone()
        state = json.loads(backend) if isinstance(backend, str) else dict(backend or {})
        state["Endpoint"] = {"Socket": socket_path}
        conn.execute("UPDATE apps SET backend = ? WHERE session_id = ?", (json.dumps(state), session_id))


# -- the load generators --------------------------------------------------------------------------------------

# A path's reach: ("tcp", host, port) or ("unix", socket path).
Reach = tuple[Any, ...]


def reach_of(url_or_socket: str) -> Reach:
    if url_or_socket.startswith("unix:"):
        return ("unix", url_or_socket[5:])
    host, port = url_or_socket.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return ("tcp", host, int(port))


def host_header(reach: Reach) -> str:
    return f"{reach[1]}:{reach[2]}" if reach[0] == "tcp" else "localhost"


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, cookie: str, duration: float, threads: int, connections: int) -> dict[str, Any]:
    args = [WRK, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "10s",
            "-H", f"Cookie: byoi_session={cookie}", url]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    figures: dict[str, Any] = {"generator": f"wrk -t{threads} -c{connections} -d{duration:g}s --latency"}
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        figures[key] = round(float(m.group(1)) * _UNIT_MS[m.group(2)], 3) if m else None
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    figures["rps"] = round(float(m.group(1)), 1) if m else None
    m = re.search(r"^\s*(\d+) requests in", out, re.M)
    figures["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non_2xx_3xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    figures["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return figures


async def _open(reach: Reach) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if reach[0] == "unix":
        return await asyncio.open_unix_connection(reach[1])
    return await asyncio.open_connection(reach[1], reach[2])


async def _response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; its status and whether the server closes the connection after it."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed before the response")
    status = int(status_line.split()[1])
    length, chunked, close = None, False, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    if chunked:
        while size := int((await reader.readline()).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
    elif length is not None:
        await reader.readexactly(length)
    elif status >= 200 and status not in (204, 304):
        await reader.read()
        close = True
    return status, close


async def _python_load(reach: Reach, path: str, cookie: str, duration: float, connections: int) -> dict[str, Any]:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host_header(reach)}\r\nUser-Agent: bench\r\n"
        f"Cookie: byoi_session={cookie}\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    counts = {"non_2xx_3xx": 0, "socket_errors": 0}
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + duration
    finished = [started]

    async def worker() -> None:
        reader, writer = await _open(reach)
        try:
            while loop.time() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                try:
                    status, close = await _response(reader)
                except (ConnectionError, asyncio.IncompleteReadError, OSError):
                    counts["socket_errors"] += 1
                    close = True
                else:
                    latencies.append(time.perf_counter() - t0)
                    finished[0] = loop.time()
                    if not 200 <= status < 400:
                        counts["non_2xx_3xx"] += 1
                if close:
                    writer.close()
                    reader, writer = await _open(reach)
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(connections))), duration + 60)
    latencies.sort()
    elapsed = max(finished[0] - started, 1e-9)
    return {
        "generator": f"python asyncio, {connections} keep-alive connections, {duration:g}s",
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3) if latencies else None,
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3)
        if latencies
        else None,
        "requests": len(latencies),
        **counts,
    }


def python_load(reach: Reach, path: str, cookie: str, duration: float, connections: int) -> dict[str, Any]:
    return run_async(_python_load(reach, path, cookie, duration, connections))  # type: ignore[no-any-return]


def _connect(reach: Reach) -> socket.socket:
    if reach[0] == "unix":
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(60)
        sock.connect(reach[1])
        return sock
    return socket.create_connection((reach[1], reach[2]), timeout=60)


def download_once(reach: Reach, path: str, cookie: str) -> float:
    """One streamed GET of the big file: MB/s (10^6 bytes), from sending the request to the last byte."""
    buf = memoryview(bytearray(4 << 20))
    with _connect(reach) as sock:
        started = time.perf_counter()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host_header(reach)}\r\nUser-Agent: bench\r\n"
            f"Cookie: byoi_session={cookie}\r\nConnection: close\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            n = sock.recv_into(buf)
            if not n:
                raise ConnectionError("closed before the headers")
            head += bytes(buf[:n])
        head, _, rest = head.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if status != 200:
            raise RuntimeError(f"download through {reach} {path}: status {status}")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else None
        got = len(rest)
        while length is None or got < length:
            n = sock.recv_into(buf)
            if not n:
                break
            got += n
        elapsed = time.perf_counter() - started
    if got < DOWNLOAD_BYTES:
        raise RuntimeError(f"download through {reach} {path}: {got} bytes, not {DOWNLOAD_BYTES}")
    return DOWNLOAD_BYTES / 1e6 / elapsed


def download(reach: Reach, path: str, cookie: str, runs: int) -> float:
    return round(max(download_once(reach, path, cookie) for _ in range(runs)), 1)


async def _ws_round_trips(reach: Reach, path: str, cookie: str, messages: int, rstudio: bool) -> dict[str, Any]:
    from websockets.asyncio.client import connect, unix_connect

    options: dict[str, Any] = {
        "compression": None,
        "open_timeout": 20,
        "close_timeout": 2,
        "ping_interval": None,
        "additional_headers": {"Cookie": f"byoi_session={cookie}"},
    }
    uri = f"ws://{host_header(reach)}{path}"
    opened = unix_connect(reach[1], uri, **options) if reach[0] == "unix" else connect(uri, **options)
    latencies: list[float] = []
    async with opened as ws:
        for i in range(200 + messages):
            message = json.dumps({"code": "1", "id": i}) if rstudio else f"round trip {i:08d}"
            t0 = time.perf_counter()
            await ws.send(message)
            answer = await asyncio.wait_for(ws.recv(), 30)
            if i >= 200:
                latencies.append(time.perf_counter() - t0)
            if rstudio:
                if json.loads(answer).get("result") != 1:
                    raise RuntimeError(f"the stand-in's console answered {answer!r}")
            elif answer != message:
                raise RuntimeError(f"the echo server answered {answer!r} to {message!r}")
    latencies.sort()
    return {
        "ws_messages": messages,
        "ws_p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "ws_p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3),
    }


def ws_round_trips(reach: Reach, path: str, cookie: str, messages: int, rstudio: bool) -> dict[str, Any]:
    return run_async(_ws_round_trips(reach, path, cookie, messages, rstudio))  # type: ignore[no-any-return]


def check_get(reach: Reach, path: str, cookie: str, expected: str) -> None:
    """Before any load: the path answers 200 with the expected body (a 303 to sign-in would fool wrk)."""
    with _connect(reach) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host_header(reach)}\r\nUser-Agent: bench\r\n"
            f"Cookie: byoi_session={cookie}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if int(head.split()[1]) != 200 or expected.encode() not in body:
        raise RuntimeError(f"{reach} {path} answered {head[:200]!r} … {body[:200]!r}")


# -- the run ---------------------------------------------------------------------------------------------------


def version_of(args: list[str]) -> str | None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else None


def machine(chp: Path | None) -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        None,
    )  # fmt: skip
    packages = {}
    for name in ("byoi", "uvicorn", "aiohttp", "httptools", "uvloop", "websockets"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            packages[name] = importlib.metadata.version(name)
    return {
        "cores": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": version_of([NGINX, "-v"]),
        "wrk": version_of([WRK, "-v"]),
        "node": version_of(["node", "--version"]),
        "configurable_http_proxy": version_of([str(chp), "--version"]) if chp else None,
        "packages": packages,
    }


def with_ratios(path: dict[str, Any], direct: dict[str, Any]) -> None:
    """Ratios to direct, on the path's own figures (and on each generator's figures against direct's)."""

    def ratio(a: Any, b: Any, digits: int = 3) -> float | None:
        return round(a / b, digits) if a is not None and b else None

    def diff(a: Any, b: Any) -> float | None:
        return round(a - b, 3) if a is not None and b is not None else None

    for name, figures in path.get("by_generator", {}).items():
        base = direct.get("by_generator", {}).get(name)
        if base is None or figures is None or base is figures:
            continue
        figures["rps_ratio"] = ratio(figures.get("rps"), base.get("rps"))
        figures["added_p50_ms"] = diff(figures.get("p50_ms"), base.get("p50_ms"))
        figures["added_p99_ms"] = diff(figures.get("p99_ms"), base.get("p99_ms"))
    if path is direct:
        return
    primary = path.get("generator_for_ratios")
    own = path.get("by_generator", {}).get(primary) or {}
    path["rps_ratio"] = own.get("rps_ratio")
    path["added_p50_ms"] = own.get("added_p50_ms")
    path["added_p99_ms"] = own.get("added_p99_ms")
    path["download_ratio"] = ratio(path.get("download_mb_s"), direct.get("download_mb_s"))
    path["ws_ratio"] = ratio(path.get("ws_p50_ms"), direct.get("ws_p50_ms"))
    path["ws_added_p50_ms"] = diff(path.get("ws_p50_ms"), direct.get("ws_p50_ms"))


def fill_primary(path: dict[str, Any]) -> None:
    primary = path.get("generator_for_ratios")
    own = path.get("by_generator", {}).get(primary) or {}
    for key in ("rps", "p50_ms", "p99_ms"):
        path[key] = own.get(key)


def goals(fast: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
    def ahead(target: dict[str, Any], label: str) -> dict[str, Any]:
        byoi, chp = target["paths"]["byoi"], target["paths"]["configurable_http_proxy"]
        if chp.get("unavailable"):
            return {"evaluated": False, "why": chp["unavailable"]}
        figures = {}
        for key, higher_better in (("rps", True), ("p50_ms", False), ("p99_ms", False), ("download_mb_s", True),
                                   ("ws_p50_ms", False), ("ws_p99_ms", False)):  # fmt: skip
            a, b = byoi.get(key), chp.get(key)
            if a is None or b is None:
                continue
            figures[key] = {"byoi": a, "configurable_http_proxy": b, "byoi_ahead": a > b if higher_better else a < b}
        return {"evaluated": True, "target": label, "met": all(f["byoi_ahead"] for f in figures.values()),
                "figures": figures}  # fmt: skip

    def added_p50(target: dict[str, Any], generator: str) -> dict[str, Any]:
        byoi = target["paths"]["byoi"]["by_generator"].get(generator) or {}
        nginx = target["paths"]["nginx_forward_auth"]["by_generator"].get(generator) or {}
        a, b = byoi.get("added_p50_ms"), nginx.get("added_p50_ms")
        if a is None or b is None:
            return {"evaluated": False, "why": f"no direct figure with {generator} on this target"}
        return {"evaluated": True, "generator": generator, "byoi_added_p50_ms": a, "nginx_added_p50_ms": b,
                "limit_ms": round(2 * b, 3), "met": a <= 2 * b}  # fmt: skip

    fb, fn = fast["paths"]["byoi"], fast["paths"]["nginx_forward_auth"]
    download = {
        "target": "fast",
        "byoi_download_ratio": fb.get("download_ratio"),
        "nginx_download_ratio": fn.get("download_ratio"),
        "met": None
        if fb.get("download_ratio") is None or fn.get("download_ratio") is None
        else fb["download_ratio"] >= fn["download_ratio"],
    }
    out = {
        "byoi_ahead_of_configurable_http_proxy_on_every_figure": {
            "fast": ahead(fast, "fast"),
            "session": ahead(session, "session"),
        },
        "byoi_download_ratio_at_least_nginx": download,
        "byoi_added_p50_within_2x_nginx": {
            "fast_wrk": added_p50(fast, "wrk"),
            "fast_python": added_p50(fast, "python"),
            "session_python": added_p50(session, "python"),
        },
    }
    verdicts = [
        out["byoi_ahead_of_configurable_http_proxy_on_every_figure"]["fast"].get("met"),
        download["met"],
        out["byoi_added_p50_within_2x_nginx"]["fast_wrk"].get("met"),
        out["byoi_added_p50_within_2x_nginx"]["session_python"].get("met"),
    ]
    out["all_met"] = all(v is True for v in verdicts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per HTTP load measurement")
    parser.add_argument("--quick", action="store_true", help="3 s per HTTP load measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--ws-messages", type=int, default=2000)
    parser.add_argument("--downloads", type=int, default=3, help="downloads per path (the best counts)")
    args = parser.parse_args()
    duration = 3.0 if args.quick else min(max(args.duration, 1.0), 120.0)
    connections = min(max(args.connections, 1), 256)

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    os.environ["BYOI_TEST_DOCKER"] = "1"

    work = Path(tempfile.mkdtemp(prefix="byoi-bench-proxy-"))
    notes: list[str] = []
    cleanup = contextlib.ExitStack()
    result: dict[str, Any] = {"benchmark": "proxy"}
    try:
        chp_bin, chp_note = ensure_chp()
        if chp_note:
            notes.append(chp_note)
            log(chp_note)
        result["machine"] = machine(chp_bin)

        log("starting the fast target (nginx), the WebSocket echo server, the registry and byoi")
        fast_proc, fast_sock, fast_port = fast_nginx(work)
        cleanup.callback(stop_process, fast_proc)
        echo_proc, echo_sock, echo_port = echo_server(work)
        cleanup.callback(stop_process, echo_proc)
        registry_port = free_port()
        registry_proc = start_registry(work / "registry", registry_port)
        cleanup.callback(stop_process, registry_proc)
        registry = f"127.0.0.1:{registry_port}"
        env = {
            "BYOI_LOG_LEVEL": "WARNING",
            "BYOI_WORKER_CONCURRENCY": "8",
            "BYOI_SESSION_STOP_TIMEOUT": "2",
            "BYOI_SESSION_START_TIMEOUT": "120",
        }
        srv = ByoiServer(data_dir=work / "byoi", registries=[f"http://{registry}"], env=env)
        pushed = f"{registry}/sessions/bench-proxy-standin:v1"  # untagged last: the image itself stays
        cleanup.callback(lambda: subprocess.run(["docker", "rmi", pushed], capture_output=True))
        cleanup.callback(s.remove_sessions_of, srv.data_dir)
        cleanup.callback(srv.stop)
        srv.start()

        log("registering the stand-in image and launching three sessions")
        sm, ext = srv.client(), s.extension(srv)
        image = "bench-proxy-standin"
        s.register(sm, registry, image, "rstudio-standin", "v1")
        s.ensure_config(sm)
        domain = s.rstudio_domain(sm, [{"ImageName": image, "AppImageConfigName": s.CONFIG}])
        sm.create_user_profile(DomainId=domain, UserProfileName=USER)
        ext.create_principal(Name=f"{domain}-{USER}", Role="user", DomainId=domain, UserProfileName=USER)
        image_arn = sm.describe_image(ImageName=image)["ImageArn"]
        names = ["standin", "fast", "echo"]
        launched: list[str] = []

        def delete_apps() -> None:
            for name in launched:
                with contextlib.suppress(Exception):
                    sm.delete_app(DomainId=domain, UserProfileName=USER, AppType="RSessionGateway", AppName=name)
            for name in launched:
                try:
                    s.wait_app(sm, domain, USER, name, ("Deleted", "Failed"), timeout=60)
                except Exception as exc:  # noqa: BLE001 - best-effort clean-up; remove_sessions_of follows
                    log(f"{name} not deleted: {exc}")

        cleanup.callback(delete_apps)
        for name in names:
            sm.create_app(DomainId=domain, UserProfileName=USER, AppType="RSessionGateway", AppName=name,
                          ResourceSpec={"SageMakerImageArn": image_arn})  # fmt: skip
            launched.append(name)
        sessions = {}
        for name in names:
            described = s.wait_app(sm, domain, USER, name, ("InService", "Failed"), timeout=180)
            if described["Status"] != "InService":
                raise RuntimeError(f"session {name} failed: {described.get('FailureReason')}")
            sessions[name] = dict(s.progress(ext, domain, USER, name))
        standin_sock = sessions["standin"]["Endpoint"].removeprefix("unix:")
        rewire(srv.data_dir / "byoi.db", sessions["fast"]["SessionId"], fast_sock)
        rewire(srv.data_dir / "byoi.db", sessions["echo"]["SessionId"], echo_sock)
        url = sm.create_presigned_domain_url(DomainId=domain, UserProfileName=USER)["AuthorizedUrl"]
        signed_in = httpx.get(url, follow_redirects=False, timeout=30)
        if signed_in.status_code != 303 or "byoi_session" not in signed_in.cookies:
            raise RuntimeError(f"the presigned URL did not sign in: {signed_in.status_code} {signed_in.text[:300]}")
        cookie = str(signed_in.cookies["byoi_session"])

        log("starting nginx with forward-auth and configurable-http-proxy")
        fa_proc, fa_port = forward_auth_nginx(work, srv.port)
        cleanup.callback(stop_process, fa_proc)
        chp_port, chp_pid = None, 0
        if chp_bin is not None:
            try:
                chp_proc, chp_port = start_chp(
                    work,
                    chp_bin,
                    {
                        f"/sessions/{sessions['fast']['SessionId']}": f"http://127.0.0.1:{fast_port}",
                        f"/sessions/{sessions['echo']['SessionId']}": f"http://127.0.0.1:{echo_port}",
                    },
                )
                cleanup.callback(stop_process, chp_proc)
                chp_pid = chp_proc.pid
            except (RuntimeError, TimeoutError, OSError) as exc:
                notes.append(f"configurable-http-proxy did not start ({exc}): it was skipped")
                log(notes[-1])
        time.sleep(2.5)  # longer than the gate's 2 s cache of an allowed answer (none was cached: belt and braces)

        byoi_url, fa_url = f"http://127.0.0.1:{srv.port}", f"http://127.0.0.1:{fa_port}"
        chp_url = f"http://127.0.0.1:{chp_port}" if chp_port else None
        fid, eid, sid = (sessions[n]["SessionId"] for n in ("fast", "echo", "standin"))
        no_chp = "configurable-http-proxy is not available (see notes)"
        no_tcp = "configurable-http-proxy cannot reach the session: it targets TCP only, the session has a Unix socket"

        # Per path: its URL for wrk (None: wrk cannot reach it), its reach for the Python generator, the download and
        # the WebSocket, the request paths, and the processes whose CPU is its cost (byoi answers nginx's auth
        # subrequests, so it counts for nginx with forward-auth too).
        assert srv.proc is not None
        byoi_pid = srv.proc.pid
        fast_paths: dict[str, dict[str, Any]] = {
            "direct": {
                "reach": f"fast nginx: wrk on 127.0.0.1:{fast_port}; Python generator and download on unix:"
                f"{fast_sock}; WebSocket on unix:{echo_sock}",
                "wrk": f"http://127.0.0.1:{fast_port}/small",
                "py": ("unix", fast_sock),
                "http": "/small",
                "big": "/big.bin",
                "ws": ("unix", echo_sock),
                "ws_path": "/ws",
                "cpu": [fast_proc.pid],
            },
            "byoi": {"base": byoi_url, "cpu": [byoi_pid]},
            "nginx_forward_auth": {"base": fa_url, "cpu": [fa_proc.pid, byoi_pid]},
            "configurable_http_proxy": {"base": chp_url, "cpu": [chp_pid]} if chp_url else {"unavailable": no_chp},
        }
        for spec in fast_paths.values():
            if "base" in spec:
                base = spec["base"]
                spec.update(
                    reach=f"{base}/sessions/<id>/ (session ids {fid}: fast nginx, {eid}: echo server)",
                    wrk=f"{base}/sessions/{fid}/small",
                    py=reach_of(base),
                    http=f"/sessions/{fid}/small",
                    big=f"/sessions/{fid}/big.bin",
                    ws=reach_of(base),
                    ws_path=f"/sessions/{eid}/ws",
                )
        session_paths: dict[str, dict[str, Any]] = {
            "direct": {
                "reach": f"the session's Unix socket unix:{standin_sock}",
                "wrk": None,
                "py": ("unix", standin_sock),
                "http": "/health-check",
                "ws": ("unix", standin_sock),
                "ws_path": "/websocket",
                "cpu": [],
            },
            "byoi": {"base": byoi_url, "cpu": [byoi_pid]},
            "nginx_forward_auth": {"base": fa_url, "cpu": [fa_proc.pid, byoi_pid]},
            "configurable_http_proxy": {"unavailable": no_tcp},
        }
        for spec in session_paths.values():
            if "base" in spec:
                base = spec["base"]
                spec.update(
                    reach=f"{base}/sessions/{sid}/",
                    wrk=f"{base}/sessions/{sid}/health-check",
                    py=reach_of(base),
                    http=f"/sessions/{sid}/health-check",
                    ws=reach_of(base),
                    ws_path=f"/sessions/{sid}/websocket",
                )

        for spec in fast_paths.values():
            if "unavailable" not in spec:
                check_get(spec["py"], spec["http"], cookie, "one hundred bytes long")
                check_get(reach_of(spec["wrk"]), spec["http"], cookie, "one hundred bytes long")
        for spec in session_paths.values():
            if "unavailable" not in spec:
                check_get(spec["py"], spec["http"], cookie, "alive")

        def measure(label: str, specs: dict[str, dict[str, Any]], download_ok: bool, rstudio: bool) -> dict:
            out: dict[str, Any] = {}
            for name, spec in specs.items():
                if "unavailable" in spec:
                    out[name] = {"unavailable": spec["unavailable"], "rps": None, "p50_ms": None, "p99_ms": None,
                                 "download_mb_s": None, "ws_p50_ms": None, "ws_p99_ms": None}  # fmt: skip
                    continue
                entry: dict[str, Any] = {"reach": spec["reach"], "by_generator": {}}
                if spec["wrk"]:
                    log(f"{label}/{name}: wrk {spec['wrk']}")
                    wrk(spec["wrk"], cookie, 1, args.threads, connections)  # warm-up: pools, connections
                    entry["by_generator"]["wrk"] = with_cpu(
                        spec["cpu"], wrk, spec["wrk"], cookie, duration, args.threads, connections
                    )
                    check_get(reach_of(spec["wrk"]), spec["http"], cookie, "one hundred" if not rstudio else "alive")
                else:
                    entry["by_generator"]["wrk"] = None
                    entry["wrk_unavailable"] = "wrk cannot open a Unix socket"
                log(f"{label}/{name}: Python generator on {spec['py']} {spec['http']}")
                python_load(spec["py"], spec["http"], cookie, 1, connections)  # warm-up
                entry["by_generator"]["python"] = with_cpu(
                    spec["cpu"], python_load, spec["py"], spec["http"], cookie, duration, connections
                )
                if download_ok:
                    log(f"{label}/{name}: {args.downloads} downloads of {DOWNLOAD_BYTES // 10**6} MB")
                    entry["download_mb_s"] = download(spec["py"], spec["big"], cookie, args.downloads)
                else:
                    entry["download_mb_s"] = None
                    entry["download_unavailable"] = "the stand-in serves no large file"
                log(f"{label}/{name}: {args.ws_messages} WebSocket round trips")
                entry.update(ws_round_trips(spec["ws"], spec["ws_path"], cookie, args.ws_messages, rstudio))
                out[name] = entry
            return out

        fast_results = measure("fast", fast_paths, download_ok=True, rstudio=False)
        session_results = measure("session", session_paths, download_ok=False, rstudio=True)
        for results, primary in ((fast_results, "wrk"), (session_results, "python")):
            for entry in results.values():
                if "by_generator" in entry:
                    entry["generator_for_ratios"] = primary
                    fill_primary(entry)
            for entry in results.values():
                if "by_generator" in entry:
                    with_ratios(entry, results["direct"])
        fast = {
            "what": "static nginx (1 worker): a 100-byte body on any path, /big.bin 100 MB (sendfile); a WebSocket "
            "echo server (bench/proxy_upstream.py); byoi and nginx reach them through two real sessions whose "
            "stored endpoints were pointed at their Unix sockets, configurable-http-proxy through routes to their "
            "127.0.0.1 ports",
            "figures_from": "rps/p50/p99: wrk (direct: the target's TCP port); the Python generator's figures "
            "beside them (direct: the target's Unix socket); download and WebSocket: Python clients",
            "paths": fast_results,
        }
        session = {
            "what": "a real session of the RStudio STAND-IN (a TEST DOUBLE for rserver; R's httpuv serves): "
            "GET /health-check; WebSocket: its /websocket R console evaluating `1`",
            "figures_from": "rps/p50/p99: the Python generator (the only one that reaches the socket directly); "
            "wrk's figures for byoi and nginx beside them, with no direct figure",
            "paths": session_results,
        }
        result["load"] = {
            "http": f"{connections} connections, {duration:g} s per measurement after a 1 s warm-up; wrk -t"
            f"{args.threads} -c{connections} -d{duration:g}s --latency, and a Python asyncio generator (uvloop) "
            f"with {connections} keep-alive connections",
            "download": f"{DOWNLOAD_BYTES} bytes streamed, best of {args.downloads}, MB/s = 10^6 bytes/s",
            "websocket": f"{args.ws_messages} sequential round trips after 200 of warm-up, no compression",
            "ratios": "rps_ratio = rps / direct; added_p50_ms, added_p99_ms = path - direct; download_ratio = "
            "MB/s / direct; ws_ratio = WebSocket p50 / direct (above 1: slower); top-level rps/p50/p99 and their "
            "ratios come from `generator_for_ratios`",
        }
        result["targets"] = {"fast": fast, "session": session}
        result["goals"] = goals(fast, session)
    finally:
        log("cleaning up: sessions, servers, containers")
        try:
            cleanup.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    notes += [
        f"{os.cpu_count()} cores, shared by the load generator, the proxies, the targets and (for the session "
        "target) the stand-in's container: absolute figures are this machine's, the ratios are the point",
        "byoi runs at log level WARNING (nginx with access_log off, configurable-http-proxy at warn)",
        "docs/nginx-forward-auth.conf is used as documented: one auth subrequest to byoi per request (byoi's "
        "forward-auth endpoint has no decision cache), and no upstream keepalive to byoi or to the session",
        "configurable-http-proxy is used as JupyterHub runs it: no authentication at all, TCP targets only",
        f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}; other work on the machine (other engineers' "
        "test runs) shows there and in each measurement's loadavg_1m_before; proxy_cpu_ms_per_request (the CPU the "
        "path's own processes used per request; for direct, the fast nginx's) is less sensitive to it",
        f"measured at {time.strftime('%Y-%m-%d %H:%M:%S')} in {time.monotonic() - STARTED:.0f} s",
    ]
    result["notes"] = notes
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
