"""The build path's client, on the standard library alone: SigV4, JSON calls and plain HTTP.

Why: a warm `byoi build` (unchanged context, answered from the server's build-result cache) is mostly the CLI's
own start-up, and most of that was imports: botocore's session, client and signer (~80 ms), httpx2/httpcore2
(~55 ms), for a handful of requests. This module does what the build needs from them, the same way:

- the endpoint, profile, credentials and region are found as botocore finds them (byoi.cli.credentials, whose
  names are re-exported here);
- requests are signed as botocore's `SigV4Auth.add_auth` signs them (tests/test_cli_wire.py compares the two);
- `Byoi.*` and SageMaker operations are called as botocore's JSON protocol calls them, retried as its standard
  mode retries what is safe to retry (3 attempts), with output parsed from the model's output shapes (members
  in the model's order, timestamps as datetimes), so `--output json|yaml` documents are the same.

HTTP/1.1 itself is byoi.cli.http1's (a socket, not http.client: see why there). Heavy standard modules (ssl,
configparser) are imported where first needed: `byoi --help` imports this module through `byoi.cli.builds` and
needs none of them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from urllib.parse import quote, urlsplit

from byoi.cli.credentials import (  # noqa: F401 - re-exported: the client's one import
    ClientSetupError,
    Credentials,
    NoCredentials,
    Setup,
    endpoint,
    is_ipv6_url,
    setup,
)
from byoi.cli.http1 import HTTPError

TYPE_CHECKING = False  # typing, dataclasses, pathlib and datetime cost a plain build's start 15 ms
if TYPE_CHECKING:
    import datetime as dt
    import ssl
    from typing import IO, Any

    from byoi.cli.http1 import Connection
    from byoi.cli.http1 import Response as HTTPResponse

SERVICE = "sagemaker"  # every byoi operation is signed for SageMaker
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
SAGEMAKER_PREFIX, EXTENSION_PREFIX = "SageMaker", "Byoi"  # X-Amz-Target prefixes (byoi.api.model's)
MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "api", "models")  # its fragments
ATTEMPTS = 4  # botocore's standard mode as the CLI configures it: max_attempts 3 are retries, 4 calls in all
TIMEOUT = 60.0  # seconds, botocore's connect and read timeouts


class WireError(Exception):
    """A call that got no usable answer; the message is the CLI's one line for it."""


class Unreachable(WireError):
    """The server did not answer (refused, reset or closed before an answer) after every attempt."""

    def __init__(self, url: str) -> None:
        super().__init__(f"cannot reach byoi at {url}: is `byoi up` running?")
        self.url = url


class TransportError(WireError):
    """A plain HTTP request to a build route failed below HTTP; the message is the socket's own."""


class ApiError(WireError):
    """The server's error answer to a JSON call: botocore's ClientError, as `Code: Message`."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


# -- SigV4 -------------------------------------------------------------------------------------------------

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_UNSIGNED_HEADERS = frozenset(  # botocore's SIGNED_HEADERS_BLACKLIST
    (
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    )
)


def host_of(url: str) -> str:
    """The Host a signature covers: lower-case, without a default port (botocore's `_host_from_url`)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if is_ipv6_url(url):
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def _canonical_path(path: str) -> str:
    """botocore's `normalize_url_path` (dot segments and empty segments removed), URI-encoded."""
    if not path:
        return "/"
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and kept else ""
    return quote(first + "/".join(kept) + last, safe="/~")


def _canonical_query(query: str) -> str:
    pairs = sorted(pair.partition("=")[::2] for pair in query.split("&")) if query else []
    return "&".join(f"{k}={v}" for k, v in pairs)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(
    credentials: Credentials,
    region: str,
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    amz_date: str | None = None,
) -> dict[str, str]:
    """`headers` with X-Amz-Date, X-Amz-Security-Token (with a session token) and Authorization added, as
    botocore's `SigV4Auth(credentials, "sagemaker", region).add_auth` leaves an AWSRequest of these parts. The
    payload hash is a signed X-Amz-Content-SHA256 header's value when there is one, else the body's."""
    amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    drop = {"authorization", "x-amz-date"} | ({"x-amz-security-token"} if credentials.token else set())
    out = {k: v for k, v in (headers or {}).items() if k.lower() not in drop}
    out["X-Amz-Date"] = amz_date
    if credentials.token:
        out["X-Amz-Security-Token"] = credentials.token
    to_sign = {k.lower(): v for k, v in out.items() if k.lower() not in _UNSIGNED_HEADERS}
    to_sign.setdefault("host", host_of(url))
    names = sorted(to_sign)
    signed_headers = ";".join(names)
    payload = next((v for k, v in out.items() if k.lower() == "x-amz-content-sha256"), None)
    parts = urlsplit(url)
    canonical = "\n".join(
        (
            method.upper(),
            _canonical_path(parts.path),
            _canonical_query(parts.query),
            "".join(f"{n}:{' '.join(to_sign[n].split())}\n" for n in names),
            signed_headers,
            payload if payload is not None else hashlib.sha256(body).hexdigest(),
        )
    )
    scope = f"{amz_date[:8]}/{region}/{SERVICE}/aws4_request"
    string_to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()))
    key = _hmac(f"AWS4{credentials.secret_key}".encode(), amz_date[:8])
    for part in (region, SERVICE, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return out


# -- output shapes -----------------------------------------------------------------------------------------

# SageMaker's model is 4 MB of JSON: the output shape of the one SageMaker operation the build path calls is
# kept here, with each member's type (tests/test_cli_wire.py checks it against botocore's model).
_S, _T = {"shape": "String"}, {"shape": "Timestamp"}
SAGEMAKER_SHAPES: dict[str, dict[str, Any]] = {
    "DescribeImageVersionResponse": {
        "type": "structure",
        "members": {
            "BaseImage": _S,
            "ContainerImage": _S,
            "CreationTime": _T,
            "FailureReason": _S,
            "ImageArn": _S,
            "ImageVersionArn": _S,
            "ImageVersionStatus": _S,
            "LastModifiedTime": _T,
            "Version": {"shape": "Integer"},
            "VendorGuidance": _S,
            "JobType": _S,
            "MLFramework": _S,
            "ProgrammingLang": _S,
            "Processor": _S,
            "Horovod": {"shape": "Boolean"},
            "ReleaseNotes": _S,
        },
    },
    "String": {"type": "string"},
    "Timestamp": {"type": "timestamp"},
    "Integer": {"type": "integer"},
    "Boolean": {"type": "boolean"},
}
SAGEMAKER_OUTPUTS = {"DescribeImageVersion": "DescribeImageVersionResponse"}


@cache
def extension_model() -> dict[str, dict[str, Any]]:
    """The extension model's operations and shapes, merged from its fragments as byoi.api.model merges them."""
    model: dict[str, dict[str, Any]] = {"operations": {}, "shapes": {}}
    for fragment in sorted(name for name in os.listdir(MODELS) if name.endswith(".json") and not name.startswith(".")):
        with open(os.path.join(MODELS, fragment), encoding="utf-8") as fh:
            data = json.load(fh)
        for kind in ("operations", "shapes"):
            model[kind].update(data.get(kind, {}))
    return model


def _output_shape(prefix: str, operation: str) -> tuple[dict[str, dict[str, Any]], str | None]:
    if prefix == SAGEMAKER_PREFIX:
        return SAGEMAKER_SHAPES, SAGEMAKER_OUTPUTS[operation]
    model = extension_model()
    return model["shapes"], model["operations"][operation].get("output", {}).get("shape")


def answer(prefix: str, operation: str, value: Any) -> dict[str, Any]:
    """An operation's answer (its JSON, decoded) as `call` returns it, without ResponseMetadata: for the same
    document sent another way (the build event stream's `end` event carries DescribeImageBuild's)."""
    shapes, output = _output_shape(prefix, operation)
    return parse(shapes, output, value) if output else {}  # type: ignore[no-any-return]


def parse(shapes: Mapping[str, Mapping[str, Any]], name: str, value: Any) -> Any:
    """A JSON value as botocore's JSON parser returns it for shape `name`: structures keep only their modelled
    members, in the model's order, without nulls; timestamps become datetimes; blobs bytes."""
    shape = shapes[name]
    kind = shape["type"]
    if kind == "structure":
        if value is None or shape.get("document"):
            return value
        return {
            m: parse(shapes, ref["shape"], value[ref.get("locationName", m)])
            for m, ref in shape["members"].items()
            if value.get(ref.get("locationName", m)) is not None
        }
    if kind == "list":
        return [None if v is None else parse(shapes, shape["member"]["shape"], v) for v in value]
    if kind == "map":
        key, item = shape["key"]["shape"], shape["value"]["shape"]
        return {parse(shapes, key, k): parse(shapes, item, v) for k, v in value.items()}
    if kind == "timestamp":
        return timestamp(value)
    if kind == "blob":
        import base64

        return base64.b64decode(value)
    return value


def timestamp(value: Any) -> dt.datetime:
    """botocore's `parse_timestamp` for what byoi sends (epoch seconds): the time in the local time zone."""
    import datetime as dt

    try:
        seconds = float(value)
    except (TypeError, ValueError):
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(seconds, dt.UTC).astimezone()


# -- HTTP ---------------------------------------------------------------------------------------------------


class Response:
    """A whole HTTP answer, read."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, url: str) -> None:
        self.status, self.headers, self.body, self.url = status, headers, body, url

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


_THROTTLING = frozenset(  # botocore's standard mode: error codes retried as throttling
    (
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    )
)
_TRANSIENT_CODES = frozenset(("RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"))
_RETRIED_STATUSES = frozenset((429, 500, 502, 503, 504))
_REGION = r"^(?![0-9]+$)(?!-)[a-zA-Z0-9-]{,63}(?<!-)$"  # botocore's validate_region_name


class Client:
    """Signed requests to one byoi server: JSON calls (`extension`, `sagemaker`) and the build routes."""

    def __init__(self, found: Setup) -> None:
        if found.credentials is None:
            raise NoCredentials
        self.setup, self.credentials = found, found.credentials
        self.endpoint = found.endpoint.rstrip("/")
        # Plain HTTP needs no TLS context, and building one (loading the CA bundle) took 50 to 130 ms here. HTTPS
        # is verified as botocore verifies it: with AWS_CA_BUNDLE (or the profile's ca_bundle), else the system's
        # CAs. `verify`: False for plain HTTP, True for the system's CAs (the context is made when first used).
        self.verify: bool | ssl.SSLContext = False
        if not self.endpoint.startswith("http://"):
            import ssl

            bundle = found.ca_bundle
            try:
                self.verify = ssl.create_default_context(cafile=bundle) if bundle else True
            except (OSError, ssl.SSLError) as exc:  # a missing or unreadable bundle: said, not a traceback
                raise ClientSetupError(
                    f"the CA bundle {bundle} (AWS_CA_BUNDLE or the profile's ca_bundle): {exc}"
                ) from None

    @classmethod
    def connect(cls, endpoint_url: str | None, profile: str | None) -> Client:
        return cls(setup(endpoint_url, profile))

    def url(self, path: str) -> str:
        return self.endpoint + path

    def headers(self, method: str, path: str, extra: dict[str, str] | None = None, query: str = "") -> dict[str, str]:
        """The headers of a signed request to a build route with an empty (or separately hashed) body."""
        url = self.url(path) + (f"?{query}" if query else "")
        return sign(self.credentials, self.setup.region, method, url, extra)

    # -- plain requests (the build routes) ------------------------------------------------------------------

    def _connection(self, url: str, timeout: float | None) -> Connection:
        from byoi.cli.http1 import Connection

        parts = urlsplit(url)
        if parts.scheme == "http":
            return Connection(parts.hostname or "", parts.port, timeout)
        import ssl

        if not isinstance(self.verify, ssl.SSLContext):
            self.verify = ssl.create_default_context()  # made once, kept for the next request
        return Connection(parts.hostname or "", parts.port, timeout, tls=self.verify)

    @contextmanager
    def open(
        self,
        method: str,
        path: str,
        query: str = "",
        extra: dict[str, str] | None = None,
        body: bytes | IO[bytes] | None = None,
        length: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[HTTPResponse]:
        """A signed request to a build route, its response open to read. A body that is a file is sent as it is,
        `length` bytes, and its SHA-256 must be in `extra`'s X-Amz-Content-SHA256. A failure below HTTP
        (refused, reset, TLS) raises TransportError."""
        url = self.url(path) + (f"?{query}" if query else "")
        payload = body if isinstance(body, bytes) else b""  # a file's hash is in `extra`
        headers = sign(self.credentials, self.setup.region, method, url, extra, payload)
        headers["Host"] = host_of(url)
        if body is not None:
            headers["Content-Length"] = str(len(body) if isinstance(body, bytes) else length)
        connection = self._connection(url, timeout)
        try:
            try:
                connection.request(method, _target(url), body=body, headers=headers)
                response = connection.getresponse()
            except (OSError, HTTPError) as exc:
                raise TransportError(str(exc) or type(exc).__name__) from None
            yield response
        finally:
            connection.close()

    def request(self, method: str, path: str, query: str = "", **kw: Any) -> Response:
        """A signed request to a build route, read whole."""
        with self.open(method, path, query, **kw) as response:
            return read(response, self.url(path) + (f"?{query}" if query else ""))

    # -- JSON calls -------------------------------------------------------------------------------------------

    def extension(self, operation: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A `Byoi.<operation>` call, answered as the botocore extension client answers it."""
        return self.call(EXTENSION_PREFIX, operation, params or {})

    def sagemaker(self, operation: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.call(SAGEMAKER_PREFIX, operation, params or {})

    def call(self, prefix: str, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """POST the operation as botocore's JSON protocol does, retried as its standard mode retries what is safe
        to (no answer at all, 429/500/502/503/504, throttling), ATTEMPTS in all. The result carries botocore's
        ResponseMetadata; a failure raises ApiError, Unreachable or WireError."""
        if not re.match(_REGION, self.setup.region):
            raise WireError(f"Provided region_name '{self.setup.region}' doesn't match a supported format.")
        url = _operation_url(self.setup.endpoint)
        body = json.dumps(dict(params)).encode()
        target = {"X-Amz-Target": f"{prefix}.{operation}", "Content-Type": JSON_CONTENT_TYPE}
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status, headers, answer = self._post(url, target, body)
            except _NoAnswer:
                if attempt == ATTEMPTS:
                    raise Unreachable(url) from None
                _backoff(attempt, throttled=False)
                continue
            if status < 301:
                shapes, output = _output_shape(prefix, operation)
                result = parse(shapes, output, _json_body(answer)) if output else {}
                return {**result, "ResponseMetadata": _metadata(status, headers, attempt)}
            code, message = _error(status, answer)
            throttled = code in _THROTTLING
            if attempt == ATTEMPTS or not (throttled or code in _TRANSIENT_CODES or status in _RETRIED_STATUSES):
                raise ApiError(code, message, status)
            _backoff(attempt, throttled)
        raise AssertionError("not reached")  # pragma: no cover

    def _post(self, url: str, target: dict[str, str], body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """One attempt: (status, headers, body), or _NoAnswer when the server gave none."""
        import ssl

        headers = sign(self.credentials, self.setup.region, "POST", url, target, body)
        headers["Host"] = host_of(url)
        connection = self._connection(url, TIMEOUT)
        try:
            try:
                connection.connect()
            except ssl.SSLError as exc:
                raise WireError(f"SSL validation failed for {url} {exc}") from None
            except OSError:  # refused, unresolvable, timed out: botocore's EndpointConnectionError, retried
                raise _NoAnswer from None
            try:
                connection.request("POST", _target(url), body, headers)
                response = connection.getresponse()
                return response.status, response.getheaders(), response.read()
            except TimeoutError:
                raise WireError(f'Read timeout on endpoint URL: "{url}"') from None
            except (OSError, HTTPError):  # reset or closed before a whole answer: botocore retries these too
                raise _NoAnswer from None
        finally:
            connection.close()


class _NoAnswer(Exception):
    """Connection refused, reset or closed before a whole answer."""


def _target(url: str) -> str:
    """The request target of `url`: its path (at least "/") and query."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _operation_url(endpoint_url: str) -> str:
    """Where botocore POSTs an operation whose requestUri is "/": the endpoint's path, or "/"."""
    parts = urlsplit(endpoint_url)
    return parts._replace(path=parts.path or "/", fragment="").geturl()


def _json_body(body: bytes) -> Any:
    """botocore's `_parse_body_as_json`: {} for an empty body, {"message": text} for one that is not JSON."""
    if not body:
        return {}
    text = body.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return {"message": text}


def _error(status: int, body: bytes) -> tuple[str, str]:
    """(Code, Message) of an error answer, as botocore's JSON parser reads them."""
    stripped = body.strip()
    if status >= 500 and (not stripped or stripped.startswith(b"<html>")):  # a proxy's page, not the API's
        from http import HTTPStatus  # http.client.responses' phrases, without http.client

        try:
            return str(status), HTTPStatus(status).phrase
        except ValueError:
            return str(status), ""
    parsed = _json_body(body)
    if not isinstance(parsed, dict):
        parsed = {"message": body.decode(errors="replace")}
    message = parsed.get("message", parsed.get("Message", ""))
    code = str(parsed.get("__type", status))
    code = code.split(":", 1)[0].rsplit("#", 1)[-1]
    return code, message


def _metadata(status: int, headers: list[tuple[str, str]], attempt: int) -> dict[str, Any]:
    """botocore's ResponseMetadata: RequestId, HTTPStatusCode, HTTPHeaders (lower-case names), RetryAttempts."""
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    request_id = {"RequestId": merged["x-amzn-requestid"]} if "x-amzn-requestid" in merged else {}
    return {**request_id, "HTTPStatusCode": status, "HTTPHeaders": merged, "RetryAttempts": attempt - 1}


def _backoff(attempt: int, throttled: bool) -> None:
    """botocore's standard backoff: a random part of min(base * 2^(attempt-1), 20) s; base 1 s when throttled,
    else 50 ms."""
    jitter = int.from_bytes(os.urandom(4), "big") / 2**32
    time.sleep(jitter * min((1.0 if throttled else 0.05) * 2 ** (attempt - 1), 20.0))


def read(response: HTTPResponse, url: str) -> Response:
    """The rest of `response`, read whole; a failure while reading raises TransportError."""
    try:
        body = response.read()
    except (OSError, HTTPError) as exc:
        raise TransportError(str(exc) or type(exc).__name__) from None
    return Response(response.status, response.getheaders(), body, url)


def lines(response: HTTPResponse) -> Iterator[str]:
    """The lines of a streamed response (an event stream), without their line ends; a failure while reading
    raises TransportError."""
    while True:
        try:
            raw = response.readline()
        except (OSError, HTTPError) as exc:
            raise TransportError(str(exc) or type(exc).__name__) from None
        if not raw:
            return
        yield raw.decode(errors="replace").rstrip("\r\n")
