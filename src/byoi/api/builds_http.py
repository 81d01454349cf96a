"""The build routes that are not `POST /` operations, signed with SigV4 like every call:

- `POST /byoi/build-contexts`: upload a build context (tar or tar.gz) as the raw body. The request must sign
  `X-Amz-Content-SHA256` with the body's real SHA-256 (as S3 uploads do), so the body is streamed to disk
  and checked against it instead of being held in memory. Answers `{"ContextId", "ContextSize", "Files"}`.
- `POST /byoi/build-contexts/by-digest/{sha256}` (no body): a new ContextId for a context this caller uploaded
  with that SHA-256 within the context TTL, without sending it again (`"Reused": true`); ResourceNotFound
  when the server has none, and the client uploads. `byoi build` asks first, so a rebuild of an unchanged
  directory sends nothing.
- `GET /byoi/builds/{build_id}/events`: the build log as `text/event-stream`, from the start (or from the
  byte offset in `Last-Event-ID` / `?offset=`), following the build until it ends with an `end` event.
- `GET /byoi/builds/{build_id}/log`: the whole log as plain text.

Only parsing and rendering live here; the rules are in `byoi.services.builds`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import regex
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from byoi.api.model import EXTENSION_PREFIX, operation
from byoi.api.protocol import error_response
from byoi.api.shaping import shape_output
from byoi.auth.principal import Principal
from byoi.build import context_url
from byoi.build.logstore import read_records, render_text, wait_appended
from byoi.errors import (
    ByoiError,
    InternalFailure,
    ValidationException,
)

log = logging.getLogger("byoi.api.builds")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
POLL = 0.2  # seconds between reads of a growing log
STATUS_POLL = 1.0  # seconds between status reads while following
HEARTBEAT = 15.0  # seconds between SSE comments that keep idle connections open
# A byte offset in the log: ASCII digits only (str.isdigit() takes "²", which int() refuses), and at most 18
# of them, so it fits the 64-bit offsets files are read at.
_OFFSET = regex.compile(r"[0-9]{1,18}")

State = dict[str, Any]


async def _authorize(request: Request, state: State, operation: str, streamed_body: bool = False) -> Principal:
    """Verify the signature (for uploads the signed X-Amz-Content-SHA256 header stands for the body, checked
    while it streams in; the other routes take no body), then the policy, as `dispatch` does for `POST /`."""
    endpoint = state["endpoint"]
    principal = await endpoint.authenticate(request, None if streamed_body else b"")
    await endpoint.dispatcher.authorize(principal, operation, {})
    return principal


async def _guarded(handler: Callable[[], Any]) -> Response:
    rid = str(uuid.uuid4())
    try:
        response: Response = await handler()
        return response
    except ByoiError as err:
        return error_response(err, rid)
    except Exception:
        log.exception("unexpected failure in a build route")
        return error_response(InternalFailure("An internal error occurred"), rid)


def install(app: FastAPI, state: State) -> None:
    """Add the build routes to `app`; `state` is filled by the app's lifespan (endpoint, services)."""

    def builds() -> Any:
        return state["services"].builds

    @app.post("/byoi/build-contexts")
    async def upload_context(request: Request) -> Response:
        async def handle() -> Response:
            # verify() insists on a signed X-Amz-Content-SHA256 that is a real SHA-256 (body=None), so the hash
            # the body is checked against while it streams in is the one the caller signed.
            principal = await _authorize(request, state, "StartImageBuild", streamed_body=True)
            body_hash = request.headers["x-amz-content-sha256"]
            length = request.headers.get("content-length", "")
            result = await builds().accept_context(
                request.stream(), int(length) if _OFFSET.fullmatch(length) else None, body_hash, principal.name
            )
            return JSONResponse(result)

        return await _guarded(handle)

    @app.post("/byoi/build-contexts/by-digest/{sha256}")
    async def reuse_context(sha256: str, request: Request) -> Response:
        async def handle() -> Response:
            principal = await _authorize(request, state, "StartImageBuild")
            return JSONResponse(await builds().reuse_context(sha256, principal.name))

        return await _guarded(handle)

    @app.get("/byoi/builds/{build_id}/context.tar")
    async def context_for_builder(build_id: str, request: Request) -> Response:
        """The build's checked context for a builder that fetches it itself (a BuildKit Job): no SigV4, a signed
        short-lived URL instead (build/context_url.py). 403 for a bad or old URL, 404 once the build settled."""
        problem = context_url.check(
            state["ctx"].secrets.derived_key(context_url.KEY_PURPOSE),
            build_id,
            request.query_params.get("expires", ""),
            request.query_params.get("sig", ""),
        )
        if problem is not None:
            log.warning("refused a build context URL for %s: %s", build_id[:40], problem)
            return PlainTextResponse(f"refused: {problem}\n", status_code=403)
        path = builds().root / build_id / "context.tar"
        if not path.is_file():
            return PlainTextResponse("this build has no context to fetch (it has settled)\n", status_code=404)
        return FileResponse(path, media_type="application/x-tar")

    @app.get("/byoi/builds/{build_id}/log")
    async def full_log(build_id: str, request: Request) -> Response:
        async def handle() -> Response:
            await _authorize(request, state, "DescribeImageBuild")
            await builds().build_status(build_id)  # ResourceNotFound for unknown builds
            text = await asyncio.to_thread(render_text, builds().log_path(build_id))
            return PlainTextResponse(text)

        return await _guarded(handle)

    @app.get("/byoi/builds/{build_id}/events")
    async def events(build_id: str, request: Request) -> Response:
        async def handle() -> Response:
            await _authorize(request, state, "DescribeImageBuild")
            await builds().build_status(build_id)
            return StreamingResponse(
                _follow(builds(), build_id, _start_offset(request)),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )

        return await _guarded(handle)


def _start_offset(request: Request) -> int:
    """Where to start the event stream: `?offset=`, else the `Last-Event-ID` a reconnecting client sends."""
    if "offset" in request.query_params:
        name, raw = "offset", request.query_params["offset"]
    elif "last-event-id" in request.headers:
        name, raw = "Last-Event-ID", request.headers["last-event-id"]
    else:
        return 0
    if not _OFFSET.fullmatch(raw):
        raise ValidationException(
            f"{name} {raw[:40]!r} is not a byte offset in the log: 1 to 18 digits 0-9 (the id of an earlier event)"
        )
    return int(raw)


def _event(record: dict[str, Any], event_id: int) -> str:
    return f"id: {event_id}\nevent: {record.get('k', 'log')}\ndata: {json.dumps(record)}\n\n"


def _output_shape(name: str) -> Any:
    model = operation(EXTENSION_PREFIX, name)
    if model is None:  # pragma: no cover - the extension model defines it
        raise RuntimeError(f"the extension model has no Byoi.{name}")
    return model.output_shape


_DESCRIBE_OUTPUT = _output_shape("DescribeImageBuild")


async def _described(service: Any, build_id: str) -> dict[str, Any]:
    """`{"Build": …}`, the build as DescribeImageBuild answers it (shaped by its model, as the JSON protocol
    shapes it), for the stream's `end`: a follower then needs no call of its own. Empty if it cannot be read
    now (the follower then asks)."""
    try:
        described = await service.describe_image_build(build_id)
    except ByoiError:
        return {}
    return {"Build": shape_output(_DESCRIBE_OUTPUT, described)}


async def _follow(service: Any, build_id: str, offset: int) -> AsyncIterator[str]:
    """Stream records as they are appended; end with `event: end` once the build is over and drained."""
    path = service.log_path(build_id)
    status, checked, beat = await service.build_status(build_id), time.monotonic(), time.monotonic()
    while True:
        records, offset = await asyncio.to_thread(read_records, path, offset)
        finished = False
        for end, record in records:
            yield _event(record, end)
            if record.get("k") == "status" and record.get("s") in TERMINAL:
                status, finished = record["s"], True  # written after the store's final update: nothing follows
        if records:
            beat = time.monotonic()
        if finished or (status in TERMINAL and not records):
            yield f"event: end\ndata: {json.dumps({'BuildStatus': status, **await _described(service, build_id)})}\n\n"
            return
        now = time.monotonic()
        if now - checked >= STATUS_POLL:
            status, checked = await service.build_status(build_id), now
            if status in TERMINAL:
                await wait_appended(path, POLL)  # the final status record follows the store update
                continue
        if now - beat >= HEARTBEAT:
            beat = now
            yield ": keep-alive\n\n"
        # Until the next record this process writes, or POLL seconds (a build run by another replica).
        await wait_appended(path, POLL)
