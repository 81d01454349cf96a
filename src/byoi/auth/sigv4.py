"""Verify AWS Signature Version 4 on incoming requests, with botocore's own signer.

The signature is recomputed from exactly the signed headers, the raw body and the time in
`X-Amz-Date` (botocore's `add_auth` would stamp the current time, so the lower-level steps are used).
Failures raise the error AWS uses for each case.

The payload hash is always byoi's own: botocore's signer takes a signed `X-Amz-Content-SHA256` header at its
word (it is how S3 signs streamed bodies), so a client could sign `UNSIGNED-PAYLOAD` or one body's hash and
send another body. A claimed hash must therefore equal the body's, except on the upload route, which streams
the body and checks the signed hash itself (`body=None`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import regex
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from byoi.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)

_AUTH = regex.compile(
    r"AWS4-HMAC-SHA256\s+"
    r"Credential=(?P<key>[^/\s,]+)/(?P<date>\d{8})/(?P<region>[^/\s,]+)/(?P<service>[^/\s,]+)/aws4_request,\s*"
    r"SignedHeaders=(?P<headers>[a-z0-9\-;]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
SERVICE = "sagemaker"


@dataclass(frozen=True)
class SignedIdentity:
    access_key_id: str
    region: str


SecretLookup = Callable[[str], Awaitable[str | None]]


async def verify(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes | None,
    lookup_secret: SecretLookup,
    max_skew_seconds: int = 300,
    now: dt.datetime | None = None,
    region: str | None = None,
) -> SignedIdentity:
    """Return who signed the request, or raise the AWS authentication error that fits.

    `body=None` means the caller streams the body and checks it against the signed `X-Amz-Content-SHA256`,
    which must then be a real SHA-256. `region`, when given, is the only region a signature may be scoped to.
    `X-Amz-Target`, when present, must be signed: it names the operation, so an unsigned one would let a
    signature captured from one call (DescribeApp) be replayed as another (DeleteApp).
    """
    header = headers.get("authorization")
    if not header:
        raise MissingAuthenticationTokenException("Missing Authentication Token")
    m = _AUTH.fullmatch(header.strip())
    if not m:
        raise IncompleteSignatureException(
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters "
            "for AWS4-HMAC-SHA256"
        )
    signed = m["headers"].split(";")
    if "host" not in signed:
        raise IncompleteSignatureException("The host header must be signed")
    if "x-amz-target" in headers and "x-amz-target" not in signed:
        raise IncompleteSignatureException("The X-Amz-Target header must be signed (it names the operation)")
    missing = [h for h in signed if h not in headers]
    if missing:
        raise IncompleteSignatureException(f"Signed header(s) missing from the request: {', '.join(missing)}")
    amz_date = headers.get("x-amz-date")
    if not amz_date:
        raise IncompleteSignatureException("Authorization header requires existence of an X-Amz-Date header")
    try:
        signed_at = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise IncompleteSignatureException(f"X-Amz-Date '{amz_date}' is not in the form YYYYMMDDTHHMMSSZ") from None
    if m["date"] != amz_date[:8]:
        raise InvalidSignatureException("The credential scope date does not match X-Amz-Date")
    if m["service"] != SERVICE:
        raise InvalidSignatureException(f"Credential should be scoped to correct service: '{SERVICE}'")
    if region is not None and m["region"] != region:
        raise InvalidSignatureException(
            f"Credential should be scoped to a valid region: this byoi serves '{region}', not '{m['region']}'"
        )
    current = now or dt.datetime.now(dt.UTC)
    if abs((current - signed_at).total_seconds()) > max_skew_seconds:
        raise InvalidSignatureException(
            f"Signature expired: {amz_date} is now earlier or later than "
            f"{max_skew_seconds // 60} minutes from the current time {current:%Y%m%dT%H%M%SZ}"
        )

    _check_payload_hash(headers, signed, body)

    secret = await lookup_secret(m["key"])
    if secret is None:
        raise UnrecognizedClientException("The security token included in the request is invalid")

    url = f"http://{headers['host']}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body or b"", headers={h: headers[h] for h in signed})
    request.context["timestamp"] = amz_date
    request.context["payload_signing_enabled"] = True
    token = headers.get("x-amz-security-token")
    signer = SigV4Auth(Credentials(m["key"], secret, token), m["service"], m["region"])
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, m["signature"]):
        raise InvalidSignatureException(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method."
        )
    return SignedIdentity(access_key_id=m["key"], region=m["region"])


_SHA256_HEX = regex.compile(r"[0-9a-f]{64}")


def _check_payload_hash(headers: Mapping[str, str], signed: list[str], body: bytes | None) -> None:
    claimed = headers.get("x-amz-content-sha256")
    if body is None:
        if "x-amz-content-sha256" not in signed or not _SHA256_HEX.fullmatch(claimed or ""):
            raise IncompleteSignatureException("This request must sign X-Amz-Content-SHA256 with the body's SHA-256")
        return
    if claimed is not None and claimed != hashlib.sha256(body).hexdigest():
        raise InvalidSignatureException(
            "The X-Amz-Content-SHA256 header does not match the request body "
            "(byoi signs every payload: UNSIGNED-PAYLOAD is not accepted)"
        )
