"""Send hand-made requests signed with AWS Signature V4 (botocore's signer), to probe the wire protocol."""

from __future__ import annotations

import configparser
import datetime as dt
from pathlib import Path

import httpx2 as httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def admin_credentials(credentials_file: Path) -> Credentials:
    cfg = configparser.ConfigParser()
    cfg.read(credentials_file)
    return Credentials(cfg["byoi"]["aws_access_key_id"], cfg["byoi"]["aws_secret_access_key"])


def signed(
    endpoint: str,
    target: str | None,
    body: bytes,
    creds: Credentials | None,
    when: dt.datetime | None = None,
    service: str = "sagemaker",
    content_sha256: str | None = None,
) -> httpx.Request:
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if content_sha256 is not None:  # signed like any header; botocore then signs this value, not the body's hash
        headers["X-Amz-Content-SHA256"] = content_sha256
    if target:
        headers["X-Amz-Target"] = target
    request = AWSRequest(method="POST", url=endpoint + "/", data=body, headers=headers)
    if creds is not None:
        signer = SigV4Auth(creds, service, "us-east-1")
        if when is None:
            signer.add_auth(request)
        else:
            request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
            request.headers["X-Amz-Date"] = request.context["timestamp"]
            canonical = signer.canonical_request(request)
            signature = signer.signature(signer.string_to_sign(request, canonical), request)
            scope = f"{creds.access_key}/{when:%Y%m%d}/us-east-1/{service}/aws4_request"
            signed_headers = signer.signed_headers(signer.headers_to_sign(request))
            request.headers["Authorization"] = (
                f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders={signed_headers}, Signature={signature}"
            )
    prepared = request.prepare()
    return httpx.Request("POST", prepared.url, headers=dict(prepared.headers), content=prepared.body)


def send(request: httpx.Request) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.send(request)
