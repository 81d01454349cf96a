"""The awsJson1_1 endpoint: `POST /` with `X-Amz-Target: <prefix>.<Operation>`.

This is the one place an exception becomes a response. The door only parses and renders: it reads the body
(capped while reading), verifies the signature and turns the signing key into a `Principal`, decodes the JSON
and hands the rest to `byoi.api.dispatch` (policy, validation, the service call, output shaping, audit).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import regex
from starlette.requests import Request
from starlette.responses import Response

from byoi.api.dispatch import Dispatcher, Operation, snake
from byoi.api.model import operation
from byoi.auth.principal import Principal
from byoi.auth.sigv4 import verify
from byoi.errors import (
    ByoiError,
    InternalFailure,
    RequestEntityTooLargeException,
    SerializationException,
    UnknownOperationException,
)
from byoi.logs import request_id
from byoi.metrics import Metrics

log = logging.getLogger("byoi.api")
CONTENT_TYPE = "application/x-amz-json-1.1"
MAX_BODY_BYTES = 1 << 20
_TARGET = regex.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9]*)\.(?P<op>[A-Za-z][A-Za-z0-9]*)")
KeyLookup = Callable[[str], Awaitable[tuple[str, Principal] | None]]

__all__ = ["AwsJsonEndpoint", "Operation", "error_response", "read_body", "snake"]


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused as soon as it is known to be over `limit` bytes: by its Content-Length before
    anything is read, or while it streams in. Called before the signature is checked, so an unsigned request
    can never make the server hold more than `limit` bytes (one 256 MiB body once cost 503 MiB of RSS)."""
    too_large = RequestEntityTooLargeException(f"Request body is larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise SerializationException(f"Content-Length {declared!r} is not a number of bytes")
        if int(declared) > limit:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def error_response(err: ByoiError, rid: str) -> Response:
    body = json.dumps({"__type": err.code, "Message": err.message})
    return Response(body, status_code=err.status, media_type=CONTENT_TYPE, headers={"x-amzn-RequestId": rid})


class AwsJsonEndpoint:
    def __init__(
        self,
        dispatcher: Dispatcher,
        lookup_key: KeyLookup,
        metrics: Metrics,
        max_skew_seconds: int = 300,
        region: str | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.lookup_key = lookup_key
        self.metrics = metrics
        self.max_skew_seconds = max_skew_seconds
        self.region = region  # the only region a signature may be scoped to (None: any, for unit tests)

    async def __call__(self, request: Request) -> Response:
        rid = str(uuid.uuid4())
        token = request_id.set(rid)
        started = time.perf_counter()
        op_label = "unknown"
        try:
            target = request.headers.get("x-amz-target", "")
            m = _TARGET.fullmatch(target)
            if m:
                op_label = m["op"] if operation(m["prefix"], m["op"]) else "unknown"
            response = await self._handle(request, rid, m)
            outcome = "ok"
        except ByoiError as err:
            response, outcome = error_response(err, rid), err.code
        except Exception:
            log.exception("unexpected failure in %s", op_label)
            response, outcome = error_response(InternalFailure("An internal error occurred"), rid), "InternalFailure"
        finally:
            request_id.reset(token)
        elapsed = time.perf_counter() - started
        self.metrics.record(op_label, outcome, elapsed)
        log.info(
            "%s %s",
            op_label,
            outcome,
            extra={
                "operation": op_label,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
                "error_code": None if outcome == "ok" else outcome,
                "request_id": rid,
            },
        )
        return response

    async def authenticate(self, request: Request, body: bytes | None) -> Principal:
        """The principal whose key signed the request (the signature checked over `body`; None: the body is
        streamed and checked against its signed hash by the caller), or the AWS authentication error."""
        found: dict[str, Principal] = {}

        async def lookup_secret(key_id: str) -> str | None:
            entry = await self.lookup_key(key_id)
            if entry is None:
                return None
            found["principal"] = entry[1]
            return entry[0]

        await verify(
            request.method,
            request.url.path,
            request.url.query,
            request.headers,
            body,
            lookup_secret,
            self.max_skew_seconds,
            region=self.region,
        )
        source = request.client.host if request.client else None
        return dataclasses.replace(found["principal"], door="api", source=source)

    async def _handle(self, request: Request, rid: str, target: Any) -> Response:
        body = await read_body(request)
        principal = await self.authenticate(request, body)
        if target is None:
            raise UnknownOperationException("The X-Amz-Target header must name an operation, e.g. SageMaker.ListImages")
        try:
            decoded = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise SerializationException("The request body is not valid JSON") from None
        if not isinstance(decoded, dict):
            raise SerializationException("The request body must be a JSON object")
        result = await self.dispatcher.dispatch(principal, target["prefix"], target["op"], decoded)
        return Response(json.dumps(result), media_type=CONTENT_TYPE, headers={"x-amzn-RequestId": rid})
