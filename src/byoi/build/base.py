"""What an image builder backend does, independent of how (Docker Engine today; BuildKit or buildah later)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import regex

# The ids byoi hands out: shared by the service (which checks requests) and the CLI (which checks arguments).
CONTEXT_ID = regex.compile(r"ctx-[0-9a-f]{32}")
BUILD_ID = regex.compile(r"b-[0-9a-f]{16}")
BUILD_ID_FORMAT = "'b-' followed by 16 hex digits"
# An event for the build log: {"k": "log", "m": text} | {"k": "step", "n": 2, "of": 5, "m": "RUN ..."}
# | {"k": "push", "id": layer, "s": status, "c": current, "n": total}.
Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class PushRequest:
    image_id: str  # what `build` returned ("" when the request goes with the build: BuildRequest.push_to)
    repository: str  # host[:port]/path
    tag: str
    auth: dict[str, str] | None = None  # {"username", "password"} or {"identitytoken"}; None: anonymous
    insecure: bool = False  # the registry is served over plain HTTP (its configured URL is http://)


@dataclass(frozen=True)
class BuildRequest:
    context_tar: Path  # an uncompressed, already checked tar (see byoi.build.context.sanitize_context)
    dockerfile: str = "Dockerfile"  # path inside the context
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    platform: str | None = None
    no_cache: bool = False
    build_id: str = ""  # names a backend's own objects (a Kubernetes Job) and the context's signed URL
    # Where the image will be pushed: a backend that pushes while it builds (BuildKit) needs it before `push`;
    # Docker Engine's ignores it and pushes in `push`.
    push_to: PushRequest | None = None
    # Credentials per registry host for the images the build pulls (FROM, COPY --from): every registry byoi has
    # credentials for, as the Engine's X-Registry-Config or BuildKit's Docker config carries them.
    pull_auths: dict[str, dict[str, str]] = field(default_factory=dict)


class BuildFailed(Exception):
    """The build or push failed for a reason the user can act on (a failing step, a parse error, a denied push).

    `step` is the Dockerfile step that failed (e.g. `Step 3/4 : RUN make`), when there was one.
    """

    def __init__(self, message: str, step: str | None = None, phase: str = "build") -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.phase = phase


class BuilderUnavailable(Exception):
    """The backend cannot be reached (e.g. Docker Engine is not running); the message says where and why, fit
    for the build's FailureReason as it is."""


class Builder(Protocol):
    name: str

    async def build(self, request: BuildRequest, emit: Emit) -> str:
        """Build; stream events through `emit`; return the image id. Cancelling the call stops the build."""
        ...

    async def push(self, request: PushRequest, emit: Emit) -> str:
        """Tag and push; stream per-layer progress through `emit`; return the pushed manifest digest."""
        ...

    async def ping(self) -> None:
        """Raise BuilderUnavailable when the backend cannot build now."""
        ...

    async def base_image_ids(self, refs: Sequence[str], platform: str | None = None) -> dict[str, str] | None:
        """The image id each reference names where this backend builds, as its build would use it, for the
        build-result cache (services/build_reuse.py); None when it cannot say: an image it would pull first (one
        missing, or, when the build asks for a `platform`, one for another platform), a
        base image whose ONBUILD triggers reach outside the context, or a backend whose builds resolve their
        base images elsewhere (then nothing it builds is reused)."""
        ...

    async def close(self) -> None: ...
