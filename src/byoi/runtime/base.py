"""The session runtime seam: what `services/` may ask of whatever runs session containers.

A backend (Docker Engine today, Kubernetes next) implements `SessionRuntime`. Services speak only in the
typed values below: a `SessionSpec` in (runtime/spec.py), a `SessionState` and an `Endpoint` out. Nothing
outside `runtime/` reads a backend's own documents (a Docker inspect, a pod status), so the launcher, the
reconciler and the proxy work unchanged on any backend.

The endpoint is the runtime's answer to "how does the proxy reach this session": on Docker a Unix socket
in a host directory only byoi can traverse (or, for an RStudio too old to listen on a socket, a port on
the host's loopback); on Kubernetes the pod's Service. It is stored with the app's record, so the proxy
finds it with one read.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from byoi.runtime.instance_types import HostCapacity
from byoi.runtime.spec import PullProgress, SessionSpec

ProgressCallback = Callable[[PullProgress], Awaitable[None]]


class RuntimeFailure(Exception):
    """The backend refused or failed an operation; the message is fit for a FailureReason."""


class Unreachable(RuntimeFailure):
    """The backend itself does not answer (Docker Engine stopped, its socket missing, the API server down)."""


class StateKind(enum.StrEnum):
    CREATED = "created"  # exists, not started yet
    RUNNING = "running"
    EXITED = "exited"  # stopped by itself, with an exit code
    OUT_OF_MEMORY = "out-of-memory"  # killed for reaching its memory limit
    GONE = "gone"  # not there, or being removed


@dataclass(frozen=True)
class SessionState:
    kind: StateKind
    exit_code: int | None = None
    error: str | None = None  # the backend's own words, when it gives a reason
    finished_at: str | None = None

    @property
    def running(self) -> bool:
        return self.kind is StateKind.RUNNING

    @property
    def gone(self) -> bool:
        return self.kind is StateKind.GONE

    def describe(self) -> str:
        """How the session ended, in a FailureReason's words."""
        if self.kind is StateKind.OUT_OF_MEMORY:
            return (
                f"exit code {self.exit_code if self.exit_code is not None else 'unknown'} (out of memory: the "
                "instance type's memory limit was reached)"
            )
        how = " (killed)" if self.exit_code in (137, 143) else ""
        return f"exit code {self.exit_code if self.exit_code is not None else 'unknown'}{how}"


GONE = SessionState(StateKind.GONE)


@dataclass(frozen=True)
class Endpoint:
    """How the proxy reaches a session's RStudio: a Unix socket on this host, or host:port over TCP."""

    socket: str | None = None
    host: str | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if (self.socket is None) == (self.host is None or self.port is None):
            raise ValueError("an Endpoint is a Unix socket or a host and a port")

    @property
    def is_socket(self) -> bool:
        return self.socket is not None

    def display(self) -> str:
        return f"unix:{self.socket}" if self.socket else f"{self.host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {"Socket": self.socket} if self.socket else {"Host": self.host, "Port": self.port}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Endpoint | None:
        if not data:
            return None
        if data.get("Socket"):
            return cls(socket=str(data["Socket"]))
        if data.get("Host") and data.get("Port"):
            return cls(host=str(data["Host"]), port=int(data["Port"]))
        return None


@dataclass(frozen=True)
class ManagedSession:
    """One session the backend runs for this installation (running or not), as `list_managed` sees it."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    running: bool = False
    created_at: float = 0.0


class SessionRuntime(Protocol):
    """What runs session containers. Every method raises `RuntimeFailure` (or `Unreachable`) with a message
    fit for a FailureReason; none returns a backend's own document."""

    name: str

    async def ping(self) -> None:
        """Raise `Unreachable` unless the backend answers now (the health check asks)."""
        ...

    async def capacity(self) -> HostCapacity:
        """The CPUs and memory one session may be given at most (instance types are checked against it)."""
        ...

    async def ensure_image(self, ref: str, auth: dict[str, str] | None, on_progress: ProgressCallback) -> bool:
        """Make the pinned image available to run; True when it had to be fetched (progress reported)."""
        ...

    async def create(self, spec: SessionSpec) -> None:
        """Create the session (not started) under `spec.name`, with its home and its endpoint prepared and
        `spec.files` in place: root-owned, world-readable and read-only for the session, over the image's own."""
        ...

    async def read_image_file(self, image: str, path: str) -> bytes | None:
        """A file of the pinned image as the image has it (None when absent, or when the backend cannot read an
        image's files before a session runs it): the launcher merges the image's Renviron.site with byoi's."""
        ...

    async def start(self, name: str) -> None: ...

    async def state(self, name: str) -> SessionState: ...

    async def endpoint(self, name: str) -> Endpoint | None:
        """Where the proxy reaches the session's RStudio; None while the backend cannot say yet."""
        ...

    async def answers(self, name: str, root_path: str, timeout: float = 2.0, endpoint: Endpoint | None = None) -> bool:
        """Whether RStudio answers HTTP at the session's endpoint (any status), asked as the proxy asks; at
        `endpoint` when the caller has it already (one request, nothing else asked of the backend)."""
        ...

    async def logs_tail(self, name: str, lines: int = 50) -> list[str]: ...

    async def remove(self, name: str, stop_timeout: int = 10) -> None:
        """Stop (TERM, then KILL after `stop_timeout`) and remove; a session that is not there is fine."""
        ...

    async def list_managed(self, labels: dict[str, str]) -> list[ManagedSession]:
        """Sessions carrying all these labels, running or not."""
        ...

    async def close(self) -> None: ...
