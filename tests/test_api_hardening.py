"""The API door refuses before it spends: an oversized body before the signature check and without holding it,
an unsigned X-Amz-Target, a signature scoped to another region; and it serves HTTPS with --tls-cert/--tls-key."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config

from tests.conftest import ROLE
from tests.support.processes import free_port
from tests.support.signing import admin_credentials, send
from tests.support.tls import make_ca_and_server_cert

MIB = 1 << 20


@pytest.fixture(scope="module")
def creds(server):
    return admin_credentials(server.credentials_file)


def sign(endpoint: str, body: bytes, creds, region: str = "us-east-1", target: str | None = None) -> httpx.Request:
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if target:
        headers["X-Amz-Target"] = target
    request = AWSRequest(method="POST", url=endpoint + "/", data=body, headers=headers)
    SigV4Auth(creds, "sagemaker", region).add_auth(request)
    prepared = request.prepare()
    return httpx.Request("POST", prepared.url, headers=dict(prepared.headers), content=prepared.body)


def error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["__type"], body["Message"]


def test_x_amz_target_must_be_signed(server, creds, sm, name):
    """A signature made without the target would hold for any operation taking the same body: DescribeImage's
    `{"ImageName": …}` replayed as DeleteImage."""
    sm.create_image(ImageName=name, RoleArn=ROLE)
    body = json.dumps({"ImageName": name}).encode()
    signed_describe = sign(server.endpoint, body, creds, target="SageMaker.DescribeImage")
    assert "x-amz-target" in signed_describe.headers["authorization"]  # what boto3 and the AWS CLI do
    assert send(signed_describe).status_code == 200

    unsigned_target = sign(server.endpoint, body, creds)  # signed without any X-Amz-Target ...
    assert "x-amz-target" not in unsigned_target.headers["authorization"]
    for target in ("SageMaker.DescribeImage", "SageMaker.DeleteImage"):  # ... which is added afterwards
        unsigned_target.headers["X-Amz-Target"] = target
        assert error(send(unsigned_target)) == (
            403,
            "IncompleteSignatureException",
            "The X-Amz-Target header must be signed (it names the operation)",
        )
    assert sm.describe_image(ImageName=name)["ImageStatus"] == "CREATED"  # not deleted


def test_a_signature_scoped_to_another_region_is_refused(server, creds):
    response = send(sign(server.endpoint, b"{}", creds, region="eu-west-1", target="SageMaker.ListImages"))
    assert error(response) == (
        403,
        "InvalidSignatureException",
        "Credential should be scoped to a valid region: this byoi serves 'us-east-1', not 'eu-west-1'",
    )
    assert send(sign(server.endpoint, b"{}", creds, target="SageMaker.ListImages")).status_code == 200


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM): what a body held in memory even for a moment adds to."""
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    block = b" " * size
    for _ in range(total // size):
        yield block


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_oversized_unsigned_body_is_refused_without_being_held(server_factory, registry, declared):
    """256 MiB, unsigned: refused by its Content-Length before anything is read, or once 1 MiB has streamed in;
    the server's peak RSS must not grow by anything like the body's size (it grew by 503 MiB before). A server
    of its own per case: the peak is a high-water mark, which another case's body would already have raised."""
    server = server_factory([f"http://{registry}"])
    pid = server.proc.pid
    before = peak_rss_mib(pid)
    base = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker.ListImages"}
    headers = base | ({"Content-Length": str(256 * MIB)} if declared else {})
    outcome: tuple[int, str, str] | str
    try:
        with httpx.Client(timeout=60) as client:
            outcome = error(client.post(server.endpoint + "/", headers=headers, content=chunks(256 * MIB)))
    except httpx.TransportError as exc:  # the server may answer and close while the client is still sending
        outcome = f"closed: {type(exc).__name__}"
    grown = peak_rss_mib(pid) - before
    assert grown < 64, f"peak RSS grew by {grown:.0f} MiB for a 256 MiB body"
    if not isinstance(outcome, str):
        assert outcome == (413, "RequestEntityTooLargeException", "Request body is larger than 1048576 bytes")
    # Refused before the signature is checked: the answer is about the size, not a missing signature.
    small = httpx.post(server.endpoint + "/", headers=base | {"Content-Length": str(2 * MIB)}, content=b" " * 2 * MIB)
    assert error(small)[:2] == (413, "RequestEntityTooLargeException")
    # The cap is the only limit: a body just under it reaches the signature check.
    under = httpx.post(server.endpoint + "/", headers=base, content=b" " * (MIB - 1))
    assert error(under)[:2] == (403, "MissingAuthenticationTokenException")


def test_https_with_tls_cert_and_key(tmp_path, registry, monkeypatch):
    ca, cert, key = make_ca_and_server_cert(tmp_path / "tls")
    port = free_port()
    data_dir = tmp_path / "byoi"
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "byoi", "server", "--port", str(port), "--data-dir", str(data_dir),
         "--registry", f"http://{registry}", "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        endpoint = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(endpoint + "/healthz", verify=str(ca), timeout=1).status_code in (200, 503):
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.2)
        import boto3

        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(data_dir / "credentials"))
        session = boto3.Session(profile_name="byoi")
        sm = session.client(
            "sagemaker", endpoint_url=endpoint, verify=str(ca), config=Config(retries={"max_attempts": 1})
        )
        assert sm.list_images()["Images"] == []
        sm.close()  # an idle TLS keep-alive connection holds uvicorn's graceful shutdown until it times out
        # The hint printed at start names the https endpoint.
        assert f"AWS_ENDPOINT_URL_SAGEMAKER={endpoint}" in (tmp_path / "server.log").read_text()
        # Plain HTTP on the TLS port is not served.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3).raise_for_status()
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "cannot serve HTTPS with --tls-cert"),
    ],
)
def test_tls_options_are_checked_before_start(tmp_path, args, message):
    run = subprocess.run(
        [sys.executable, "-m", "byoi", "server", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
