"""Signed requests: every call needs a valid SigV4 signature; secrets are encrypted at rest."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import stat

import httpx2 as httpx
import pytest
from botocore.credentials import Credentials
from cryptography.fernet import Fernet

from tests.conftest import ROLE
from tests.support.signing import admin_credentials, send, signed

BODY = json.dumps({}).encode()


@pytest.fixture(scope="module")
def creds(server):
    return admin_credentials(server.credentials_file)


def error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["__type"]


def test_valid_signature_is_accepted(server, creds):
    assert send(signed(server.endpoint, "SageMaker.ListImages", BODY, creds)).status_code == 200


def test_unsigned_request(server):
    r = send(signed(server.endpoint, "SageMaker.ListImages", BODY, None))
    assert error(r) == (403, "MissingAuthenticationTokenException")
    assert r.headers["x-amzn-requestid"]


def test_malformed_authorization_header(server, creds):
    req = signed(server.endpoint, "SageMaker.ListImages", BODY, creds)
    req.headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=garbage"
    assert error(send(req)) == (403, "IncompleteSignatureException")
    req = signed(server.endpoint, "SageMaker.ListImages", BODY, creds)
    del req.headers["X-Amz-Date"]
    assert error(send(req)) == (403, "IncompleteSignatureException")


def test_wrong_secret_and_unknown_key(server, creds):
    wrong = Credentials(creds.access_key, creds.secret_key + "x")
    assert error(send(signed(server.endpoint, "SageMaker.ListImages", BODY, wrong))) == (
        403,
        "InvalidSignatureException",
    )
    unknown = Credentials("AKIAUNKNOWNKEY000000", creds.secret_key)
    assert error(send(signed(server.endpoint, "SageMaker.ListImages", BODY, unknown))) == (
        403,
        "UnrecognizedClientException",
    )


def test_tampered_body_and_target(server, creds):
    req = signed(server.endpoint, "SageMaker.ListImages", BODY, creds)
    headers = {k: v for k, v in req.headers.items() if k.lower() != "content-length"}
    tampered = httpx.Request("POST", req.url, headers=headers, content=b'{"MaxResults": 5}')
    assert error(send(tampered)) == (403, "InvalidSignatureException")
    req = signed(server.endpoint, "SageMaker.ListImages", BODY, creds)
    req.headers["X-Amz-Target"] = "SageMaker.DeleteImage"  # the target is a signed header
    assert error(send(req)) == (403, "InvalidSignatureException")


def test_a_signed_payload_hash_must_be_the_bodys(server, creds, name):
    """A client may sign X-Amz-Content-SHA256 instead of the body (S3 style); then it must be the body's hash,
    or anyone holding one signed request could send any body with it."""
    signed_body = json.dumps({"ImageName": name + "-signed", "RoleArn": ROLE}).encode()
    other_body = json.dumps({"ImageName": name + "-tampered", "RoleArn": ROLE}).encode()
    for claimed in ("UNSIGNED-PAYLOAD", hashlib.sha256(signed_body).hexdigest()):
        req = signed(server.endpoint, "SageMaker.CreateImage", signed_body, creds, content_sha256=claimed)
        headers = {k: v for k, v in req.headers.items() if k.lower() != "content-length"}
        tampered = httpx.Request("POST", req.url, headers=headers, content=other_body)
        r = send(tampered)
        assert error(r) == (403, "InvalidSignatureException"), claimed
        assert "X-Amz-Content-SHA256" in r.json()["Message"]
    honest = signed(
        server.endpoint,
        "SageMaker.CreateImage",
        signed_body,
        creds,
        content_sha256=hashlib.sha256(signed_body).hexdigest(),
    )
    assert send(honest).status_code == 200
    names = [i["ImageName"] for i in server.client().list_images(NameContains=name)["Images"]]
    assert names == [name + "-signed"]


@pytest.mark.parametrize("minutes", [-6, 6])
def test_stale_or_future_signature(server, creds, minutes):
    when = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)
    r = send(signed(server.endpoint, "SageMaker.ListImages", BODY, creds, when=when))
    assert error(r) == (403, "InvalidSignatureException")
    assert "Signature expired" in r.json()["Message"]


def test_recent_signature_within_skew_is_accepted(server, creds):
    when = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=4)
    assert send(signed(server.endpoint, "SageMaker.ListImages", BODY, creds, when=when)).status_code == 200


def test_wrong_service_scope(server, creds):
    r = send(signed(server.endpoint, "SageMaker.ListImages", BODY, creds, service="s3"))
    assert error(r) == (403, "InvalidSignatureException")


def test_credentials_file_and_secret_at_rest(server, creds):
    mode = stat.S_IMODE(server.credentials_file.stat().st_mode)
    assert mode == 0o600
    text = server.credentials_file.read_text()
    assert text.startswith("[byoi]") and "region = us-east-1" in text
    assert stat.S_IMODE((server.data_dir / "master.key").stat().st_mode) == 0o600
    # A copy of the database alone does not give the secret away.
    raw = (server.data_dir / "byoi.db").read_bytes() + (server.data_dir / "byoi.db-wal").read_bytes()
    assert creds.secret_key.encode() not in raw
    with sqlite3.connect(server.data_dir / "byoi.db") as db:
        (cipher,) = db.execute("SELECT secret_ciphertext FROM access_keys").fetchone()
    assert creds.secret_key not in cipher
    assert Fernet((server.data_dir / "master.key").read_bytes()).decrypt(cipher.encode()).decode() == creds.secret_key


def test_master_key_from_environment(server_factory, registry, tmp_path):
    key = Fernet.generate_key().decode()
    srv = server_factory([f"http://{registry}"], env={"BYOI_MASTER_KEY": key})
    assert not (srv.data_dir / "master.key").exists()
    assert srv.client().list_images()["Images"] == []
    # Restarting with the same key and data dir keeps the same administrator key working.
    srv.stop()
    srv.start()
    assert srv.client().list_images()["Images"] == []
