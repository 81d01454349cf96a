"""The upload route checks a context as it arrives (build/upload_pipe.py): the pipe itself, and an upload cut
off mid-body on a real server, which must leave nothing behind and no reader waiting for ever."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from byoi.build.upload_pipe import BlockPipe, UploadAborted, in_own_thread
from tests.support.processes import ByoiServer


def test_what_is_put_is_read_whole_in_any_read_sizes():
    data = os.urandom(3 * BlockPipe.BLOCK + 12345)
    sizes = [1, 511, 512, 10_000, BlockPipe.BLOCK + 7, -1]

    def reader(pipe: BlockPipe) -> list[bytes]:
        got = [pipe.read(size) for size in sizes]
        assert pipe.read(100) == b""  # at the end: empty, as a file's read
        return got

    async def main() -> list[bytes]:
        pipe = BlockPipe()
        check = in_own_thread(reader, pipe)
        for i in range(0, len(data), 65536):
            await pipe.put(data[i : i + 65536])
        await pipe.close()
        return await asyncio.wait_for(check, 10)

    got = asyncio.run(main())
    assert [len(g) for g in got[:-1]] == sizes[:-1] and b"".join(got) == data


def test_abort_ends_a_waiting_reader_and_a_reader_done_frees_a_waiting_producer():
    async def aborted() -> None:
        pipe = BlockPipe()
        check = in_own_thread(pipe.read, 10)
        await asyncio.sleep(0.2)
        pipe.abort()
        with pytest.raises(UploadAborted):
            await asyncio.wait_for(check, 2)

    asyncio.run(aborted())

    # a reader that stopped reading (the archive ended) must not leave the upload waiting for room
    async def produce() -> None:
        pipe = BlockPipe()
        asyncio.get_running_loop().call_later(0.3, pipe.done_reading)
        for _ in range(BlockPipe.DEPTH * 3):
            await pipe.put(b"x" * BlockPipe.BLOCK)
        await pipe.close()

    asyncio.run(asyncio.wait_for(produce(), 5))


def test_uploads_at_once_outnumbering_the_default_pool_still_finish():
    """Readers waiting for their upload's next block hold no thread of the loop's default pool: with more uploads
    at once than the pool has threads (one here), each still gets its blocks (it deadlocked when the producer waited
    for room on a pool thread)."""

    def slow_reader(pipe: BlockPipe) -> int:
        total = 0
        while block := pipe.read(256 * 1024):
            total += len(block)
            time.sleep(0.001)
        return total

    async def upload() -> int:
        pipe = BlockPipe()
        check = in_own_thread(slow_reader, pipe)
        for _ in range(12 * 4):
            await pipe.put(b"y" * (256 * 1024))
            await asyncio.to_thread(lambda: None)  # the server uses the pool meanwhile, as uploads do
        await pipe.close()
        return await check

    async def main() -> list[int]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        return await asyncio.wait_for(asyncio.gather(*(upload() for _ in range(4))), 30)

    assert asyncio.run(main()) == [12 << 20] * 4


def _tar(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in (("Dockerfile", b"FROM scratch\nCOPY blob /\n"), ("blob", os.urandom(size))):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _signed_headers(server: ByoiServer, body: bytes) -> dict[str, str]:
    creds = server.session().get_credentials().get_frozen_credentials()
    url = server.endpoint + "/byoi/build-contexts"
    extra = {"Content-Type": "application/x-tar", "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()}
    request = AWSRequest(method="POST", url=url, data=b"", headers=extra)
    SigV4Auth(Credentials(creds.access_key, creds.secret_key), "sagemaker", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def _contexts(server: ByoiServer) -> set[Path]:
    folder = server.data_dir / "builds" / "contexts"
    return set(folder.iterdir()) if folder.exists() else set()


def test_an_upload_cut_off_midway_leaves_nothing_and_the_next_one_is_taken(server: ByoiServer):
    body = _tar(8 << 20)
    headers = _signed_headers(server, body)
    before = _contexts(server)
    parts = urlsplit(server.endpoint)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(
            f"POST /byoi/build-contexts HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        sock.sendall(body[: 3 << 20])  # three blocks of eight, then the client goes
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while _contexts(server) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _contexts(server) == before  # the half-checked copy went with the upload
    # the server is not left with a reader waiting: the whole upload is taken and checked
    response = httpx.post(server.endpoint + "/byoi/build-contexts", content=body, headers=_signed_headers(server, body))
    assert response.status_code == 200, response.text
    assert response.json()["Files"] == 2 and response.json()["ContextSize"] == (8 << 20) + 25


@pytest.fixture(scope="module")
def server(catalog_server: ByoiServer) -> ByoiServer:
    return catalog_server
