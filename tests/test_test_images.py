"""The test images themselves work: the RStudio stand-in (a TEST DOUBLE for the IDE binary only) serves its
page under the root path and evaluates R over a WebSocket; the failing Dockerfiles fail as intended."""

from __future__ import annotations

import asyncio
import json
import time

import httpx2 as httpx
import pytest
import websockets

from tests.support.docker_images import build_test_image, docker_available, docker_client

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)"),
]

FLAGS = [
    "--server-daemonize=0", "--www-address=0.0.0.0", "--www-port=8787", "--auth-none=1", "--server-user=rstudio",
    "--www-root-path=/s/abc/", "--www-frame-origin=same", "--www-verify-user-agent=0",
    "--server-data-dir=/tmp/rs", "--database-config-file=/tmp/db.conf", "--some-future-flag=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def standin():
    client = docker_client()
    tag = build_test_image("rstudio-standin")
    container = client.containers.run(
        tag, ["/usr/lib/rstudio-server/bin/rserver", *FLAGS], detach=True, init=True, user="rstudio",
        ports={"8787/tcp": ("127.0.0.1", None)},
    )  # fmt: skip
    try:
        container.reload()
        port = container.ports["8787/tcp"][0]["HostPort"]
        base = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://{base}/s/abc/health-check", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet  # noqa: S110
            assert time.monotonic() < deadline, f"the stand-in did not answer: {container.logs()[-2000:]!r}"
            time.sleep(0.2)
        yield base
    finally:
        container.remove(force=True)


def test_standin_serves_page_under_root_path_and_at_slash(standin):
    page = httpx.get(f"http://{standin}/s/abc/")
    assert page.status_code == 200 and "byoi test stand-in" in page.text
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    assert httpx.get(f"http://{standin}/", headers={"X-RStudio-Root-Path": "/s/abc/"}).status_code == 200
    redirect = httpx.get(f"http://{standin}/s/abc")
    assert redirect.status_code == 302 and redirect.headers["location"] == "/s/abc/"
    info = httpx.get(f"http://{standin}/s/abc/api/info").json()
    assert info["user"] == "rstudio" and info["options"]["server-user"] == "rstudio"
    assert info["unknown_options"] == ["some-future-flag"]
    assert info["r_version"].startswith("R version 4")


def test_standin_evaluates_r_over_websocket(standin):
    async def talk() -> list[dict]:
        async with websockets.connect(f"ws://{standin}/s/abc/websocket") as ws:
            replies = []
            for code in ["x <- 20 + 1; x * 2", "x", "print('hi'); invisible(NULL)", "stop('boom')"]:
                await ws.send(json.dumps({"code": code, "id": code}))
                replies.append(json.loads(await ws.recv()))
            return replies

    r = asyncio.run(talk())
    assert r[0]["result"] == 42 and r[0]["error"] is None
    assert r[1]["result"] == 21  # state persists between messages, like an R session
    assert r[2]["output"] == '[1] "hi"'
    assert r[3]["error"] == "boom" and r[3]["id"] == "stop('boom')"


def test_failing_test_images_fail():
    with pytest.raises(RuntimeError, match="returned a non-zero code: 3"):
        build_test_image("run-fails")
    with pytest.raises(RuntimeError, match="unknown instruction"):
        build_test_image("syntax-error")
