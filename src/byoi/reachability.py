"""Whether a part byoi depends on (Docker Engine, a registry) answers: the words for why it does not, and a
log that says so once.

Every call that talks to the part reports how it went to the part's `Reachability` (`lost` with the reason,
`answered`). The log gets one warning when the part stops answering and one info line when it answers
again, however many calls and reconciler passes fail in between, and never a traceback for it. The failure
reasons of resources are not affected: each build or launch that hit the outage still says so itself.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Reachability:
    """One part's state as the calls to it find it: reachable until a call says otherwise."""

    def __init__(self, part: str, logger: logging.Logger | None = None, clock: Callable[[], float] = time.monotonic):
        self.part = part  # e.g. "Docker Engine at unix:///var/run/docker.sock"
        self.reason: str | None = None  # why it does not answer, while it does not
        self._log = logger or log
        self._clock = clock
        self._since = 0.0

    @property
    def reachable(self) -> bool:
        return self.reason is None

    def lost(self, reason: str) -> None:
        """A call found the part unreachable; `reason` is the whole sentence (it names the part)."""
        if self.reason is None:
            self.reason, self._since = reason, self._clock()
            self._log.warning("%s (logged once; byoi logs again when it answers)", reason)

    def answered(self) -> None:
        """A call got an answer (any answer: an error status still means the part is there)."""
        if self.reason is not None:
            self.reason = None
            self._log.info("%s answers again, after %.0f s", self.part, self._clock() - self._since)


def connection_failure(exc: BaseException) -> str:
    """Why a connection failed, in words, from the OS error behind a client library's exception."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        words = _os_words(cause)
        if words:
            return words
        cause = getattr(cause, "os_error", None) or cause.__cause__ or cause.__context__
    return str(exc).strip() or type(exc).__name__


def _os_words(exc: BaseException) -> str | None:
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror or exc})"
    if isinstance(exc, FileNotFoundError):
        return "the socket does not exist"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "the connection was closed"
    if isinstance(exc, TimeoutError):
        return "the connection timed out"
    if type(exc).__name__ == "ServerDisconnectedError":  # aiohttp's, without importing aiohttp here
        return "the connection was closed"
    return None
