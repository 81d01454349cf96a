"""Helpers for the session (CreateApp) tests: RStudio domains, images registered from the test images,
waiting for app statuses, and evaluating R in a running stand-in over its WebSocket.

The RStudio Server used here is the STAND-IN (tests/images/rstudio-standin): a TEST DOUBLE for the IDE binary
only; the registry, the image, the container, Docker Engine and R are real.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from botocore.exceptions import ClientError

from tests.support.docker_images import containers, push_test_image

ROLE = "arn:aws:iam::000000000000:role/byoi-test"
# Session servers of the tests: quick reconciling, short stops, activity written every half second. The stand-in
# ignores SIGTERM (R as PID 1, no init: tests/images/rstudio-standin/README.md), so every stop waits out the
# stop timeout before the kill: 1 s, not more.
SESSION_ENV = {
    "BYOI_SESSION_RECONCILE_SECONDS": "1",
    "BYOI_SESSION_START_TIMEOUT": "60",
    "BYOI_SESSION_STOP_TIMEOUT": "1",
    "BYOI_SESSION_ACTIVITY_SECONDS": "0.5",
}
CONFIG = "rstudio-config"
CONNECT_URL = "https://connect.example.test/team"
PACKAGE_MANAGER_URL = "https://packages.example.test/cran/__linux__/bookworm/latest"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def rstudio_domain(sm: Any, images: list[dict[str, Any]] | None = None) -> str:
    settings = {
        "ExecutionRole": ROLE,
        "RSessionAppSettings": {"CustomImages": images or []},
    }
    domain = sm.create_domain(
        DomainName=unique("sessions"),
        AuthMode="IAM",
        DefaultUserSettings=settings,
        DomainSettings={
            "RStudioServerProDomainSettings": {
                "DomainExecutionRoleArn": ROLE,
                "RStudioConnectUrl": CONNECT_URL,
                "RStudioPackageManagerUrl": PACKAGE_MANAGER_URL,
            }
        },
    )
    return str(domain["DomainId"])


def ensure_config(sm: Any) -> None:
    try:
        sm.create_app_image_config(AppImageConfigName=CONFIG)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUse":
            raise


def register(sm: Any, registry: str, image: str, test_image: str, tag: str, create: bool = True) -> int:
    """Push tests/images/<test_image> as <image>:<tag> and register it as a new CREATED version of <image>."""
    push_test_image(test_image, registry, f"sessions/{image}", tag)
    if create:
        sm.create_image(ImageName=image, RoleArn=ROLE)
    arn = sm.create_image_version(ImageName=image, BaseImage=f"{registry}/sessions/{image}:{tag}")["ImageVersionArn"]
    number = int(arn.rsplit("/", 1)[1])
    sm.get_waiter("image_version_created").wait(
        ImageName=image, Version=number, WaiterConfig={"Delay": 0.2, "MaxAttempts": 600}
    )
    return number


def app_status(sm: Any, domain: str, user: str, name: str, app_type: str = "RSessionGateway") -> dict[str, Any]:
    return sm.describe_app(DomainId=domain, UserProfileName=user, AppType=app_type, AppName=name)  # type: ignore[no-any-return]


def wait_app(
    sm: Any, domain: str, user: str, name: str, statuses: tuple[str, ...], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        described = app_status(sm, domain, user, name)
        if described["Status"] in statuses:
            return described
        if time.monotonic() > deadline:
            raise TimeoutError(f"app {name} is {described['Status']}, not {statuses}: {described}")
        time.sleep(0.3)


def progress(ext: Any, domain: str, user: str, name: str) -> dict[str, Any]:
    return ext.describe_app_progress(DomainId=domain, UserProfileName=user, AppName=name)  # type: ignore[no-any-return]


def evaluate(endpoint: str, code: str, timeout: float = 30, headers: dict[str, str] | None = None) -> Any:
    """Evaluate R in a running stand-in through its WebSocket (its protocol: {"code"} -> {"result","error"}).

    `endpoint` is DescribeAppProgress's Endpoint, the runtime's own reach (the tests run as root, as byoi does):
    `unix:<socket>` (rserver's --www-socket) or `host:port` (the loopback fallback for old RStudio); or an
    http(s) URL, e.g. a session's Url through byoi's proxy (then `headers` carry the browser's cookie)."""
    from websockets.sync.client import connect, unix_connect

    if endpoint.startswith("unix:"):
        opened = unix_connect(endpoint[5:], "ws://session/websocket", open_timeout=timeout, close_timeout=2)
    elif endpoint.startswith(("http://", "https://")):
        url = endpoint.replace("http", "ws", 1).rstrip("/") + "/websocket"
        opened = connect(url, open_timeout=timeout, close_timeout=2, additional_headers=headers)
    else:
        opened = connect(f"ws://{endpoint}/websocket", open_timeout=timeout, close_timeout=2)
    with opened as ws:
        ws.send(json.dumps({"code": code, "id": 1}))
        answer = json.loads(ws.recv(timeout=timeout))
    if answer.get("error"):
        raise RuntimeError(f"R error: {answer['error']}")
    return answer["result"]


def containers_of(installation_label: str) -> list[Any]:
    return containers(label=f"byoi.installation={installation_label}")


def extension(server: Any) -> Any:
    """The Byoi.* client (botocore, from byoi's extension model) signed with the server's administrator key."""
    import os

    from byoi.cli.client import extension_client

    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(server.credentials_file)
    return extension_client(server.endpoint, "byoi")


def installation_of(data_dir: Any, database_url: str | None = None) -> str | None:
    """The installation id a test server labels its containers with: from its store (the SQLite file in its data
    dir, or `database_url`), where byoi keeps it; an old data dir's `installation-id` file as a last resort."""
    import sqlite3
    from pathlib import Path

    query = "SELECT value FROM installation_settings WHERE key = 'installation-id'"
    if database_url:
        import psycopg

        with psycopg.connect(database_url) as conn:
            row = conn.execute(query).fetchone()
        return str(row[0]) if row else None
    db = Path(data_dir) / "byoi.db"
    if db.exists():
        conn = sqlite3.connect(db)
        try:
            row = conn.execute(query).fetchone()
            if row:
                return str(row[0])
        except sqlite3.OperationalError:
            pass  # a store from before the table  # noqa: S110
        finally:
            conn.close()
    marker = Path(data_dir) / "installation-id"
    return marker.read_text().strip() if marker.exists() else None


def remove_sessions_of(data_dir: Any, domains: Any = None, database_url: str | None = None) -> None:
    """Test teardown: sessions outlive their server by design, so remove the containers a test server started;
    with `domains` (ids), only those of apps in these domains (a shared server's other sessions are kept)."""
    installation = installation_of(data_dir, database_url)
    if installation:
        import docker.errors

        wanted = [f":app/{d}/" for d in domains] if domains is not None else None
        for c in containers_of(installation):
            arn = c.labels.get("byoi.app-arn", "")
            if wanted is not None and not any(w in arn for w in wanted):
                continue
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass  # removed meanwhile (the server's own stop or reconciler)  # noqa: S110
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: a removal is already in progress
                    raise


class Relay:
    """A second loopback address for a registry: a TCP relay that can be throttled (`rate`, bytes per second per
    connection, so a pull lasts long enough to be watched) and closed (a registry that went away). Versions
    registered through it name the relay's host:port in their ContainerImage, so Docker pulls through it too."""

    CHUNK = 16384

    def __init__(self, target_port: int) -> None:
        import asyncio
        import threading

        from tests.support.processes import free_port

        self.target_port = target_port
        self.port = free_port()
        self.rate: float | None = None
        self._writers: set[Any] = set()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: Any, writer: Any) -> None:
        import asyncio

        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: Any, dst: Any, throttled: bool) -> None:
            try:
                while data := await src.read(self.CHUNK):
                    dst.write(data)
                    await dst.drain()
                    if throttled and self.rate:
                        await asyncio.sleep(len(data) / self.rate)
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    def close(self) -> None:
        """Stop listening and drop every connection: from now on the registry is unreachable at this address."""
        import asyncio

        if not self._thread.is_alive():
            return

        async def shut() -> None:
            self._server.close()
            for w in self._writers:
                w.transport.abort()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def push_noise_image(registry_host: str, repo: str, tag: str, mib: int) -> None:
    """Push the stand-in plus a layer of `mib` MiB of random bytes to registry_host/repo:tag, then drop the image
    from Docker: that layer exists on no other image, so launching this one has to download it."""
    import os
    import tempfile
    from pathlib import Path

    from tests.support.docker_images import build_test_image, docker_client

    client = docker_client()
    base = build_test_image("rstudio-standin")
    with tempfile.TemporaryDirectory() as context:
        Path(context, "noise.bin").write_bytes(os.urandom(mib << 20))
        Path(context, "Dockerfile").write_text(f"FROM {base}\nCOPY noise.bin /opt/byoi-test-noise.bin\n")
        image, _ = client.images.build(path=context, rm=True, forcerm=True)
    target = f"{registry_host}/{repo}"
    image.tag(target, tag)
    try:
        for chunk in client.api.push(target, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise RuntimeError(f"pushing {target}:{tag} failed: {chunk['error']}")
    finally:
        client.images.remove(image.id, force=True)


def register_as(sm: Any, image: str, base_image: str, create: bool = True) -> int:
    """Register `base_image` (any registry host, e.g. a Relay's) as a new version of `image`; wait for CREATED."""
    if create:
        sm.create_image(ImageName=image, RoleArn=ROLE)
    arn = sm.create_image_version(ImageName=image, BaseImage=base_image)["ImageVersionArn"]
    number = int(arn.rsplit("/", 1)[1])
    sm.get_waiter("image_version_created").wait(
        ImageName=image, Version=number, WaiterConfig={"Delay": 0.2, "MaxAttempts": 600}
    )
    return number


def run_in_terminal(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a command with its stdout and stderr on a pseudo-terminal (as a user at a shell would: rich draws its
    progress bars only on a terminal); return its exit code and everything it wrote, ANSI sequences removed."""
    import os
    import pty
    import re
    import select
    import subprocess

    master, slave = pty.openpty()
    proc = subprocess.Popen(args, env={**env, "COLUMNS": "160", "LINES": "40"}, stdout=slave, stderr=slave)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
        if proc.poll() is None:
            proc.kill()
        code = proc.wait(30)
    finally:
        os.close(master)
    text = out.decode(errors="replace")
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", text).replace("\r", "\n")
