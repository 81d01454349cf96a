"""Docker Engine as the builder (build/docker.py) and the session runtime (runtime/docker.py) reach it: one
client class, and one way to say that the Engine does not answer.

aiodocker fails in three ways when there is no Engine: an AssertionError while it opens the client (no
DOCKER_HOST and no socket where it looks), DockerError 900 when nothing answers at the address, and aiohttp
or OS errors when a connection drops midway. `EngineClient` turns the first two into the caller's own
exception (each seam has one) saying "Docker Engine is not reachable at <address>: <why>", `gone()` says the
same for the third, and every answer and every such failure goes to the address's `Reachability`, so the
log says once that the Engine went away and once that it is back.

The Engine also reaches registries for byoi (a build's push, a session's pull); `registry_failure` words its
network errors as byoi's registry client does (registry/errors.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import aiodocker
import aiohttp
import regex

from byoi.reachability import Reachability, connection_failure
from byoi.registry.errors import unreachable_message

DEFAULT_ADDRESS = "unix:///var/run/docker.sock"
START_HINT = "is Docker Engine running? Start it with `sudo systemctl start docker` (or `sudo dockerd &`)"
# What a connection to the Engine that drops midway raises (not any OSError: reading a build context can fail too).
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)
# The Engine's words (Go's net package) when it cannot reach a registry.
_NETWORK_WORDS = regex.compile(
    r"dial tcp|connection refused|no such host|i/o timeout|connection reset by peer|TLS handshake timeout"
)

_watches: dict[str, Reachability] = {}


def watch(address: str) -> Reachability:
    """The one `Reachability` of an Engine address, shared by the builder and the runtime that use it."""
    if address not in _watches:
        _watches[address] = Reachability(f"Docker Engine at {address}")
    return _watches[address]


def unreachable_reason(address: str, cause: BaseException | str, during: str = "") -> str:
    """ "Docker Engine is not reachable at <address>: <why>", with what to do when there is something to do."""
    why = cause if isinstance(cause, str) else connection_failure(cause)
    if during:
        why += f" {during}"
    if isinstance(cause, BaseException) and address.startswith("unix://"):
        if isinstance(_os_error(cause), PermissionError):
            why += " (run byoi as root, or add its user to the docker group)"
        elif isinstance(_os_error(cause), (FileNotFoundError, ConnectionRefusedError)):
            why += f"; {START_HINT}"
    return f"Docker Engine is not reachable at {address}: {why}"


def _os_error(exc: BaseException) -> BaseException | None:
    return getattr(exc, "os_error", None) or (exc if isinstance(exc, OSError) else None)


def registry_failure(host: str, message: str) -> str:
    """The Engine's message for a failed push or pull, led by "The registry <host> is not reachable" when the
    Engine could not connect to it."""
    return unreachable_message(host, message) if _NETWORK_WORDS.search(message) else message


class EngineClient(aiodocker.Docker):
    """aiodocker's client, raising `unreachable(reason)` when the Engine does not answer."""

    def __init__(self, url: str | None, unreachable: Callable[[str], Exception]) -> None:
        self._unreachable = unreachable
        self.address = url or os.environ.get("DOCKER_HOST") or DEFAULT_ADDRESS
        try:
            super().__init__(url=url)
        except AssertionError:  # aiodocker found no DOCKER_HOST, no Docker context and no socket
            raise self.gone(f"no socket there and DOCKER_HOST is not set; {START_HINT}") from None
        except ValueError as exc:  # e.g. "Missing protocol scheme in docker_host."
            example = "unix:///var/run/docker.sock or tcp://host:2375"
            raise self.gone(f"{exc} (DOCKER_HOST must look like {example})") from None
        self.address = str(self._connection_info)
        self.watch = watch(self.address)

    def gone(self, cause: BaseException | str, during: str = "") -> Exception:
        """The caller's exception for an Engine that does not answer (reported once to the log)."""
        reason = unreachable_reason(self.address, cause, during)
        watch(self.address).lost(reason)
        return self._unreachable(reason)

    async def ping(self) -> None:
        """Ask the Engine whether it is there: `GET /_ping` answers in under a millisecond, where `version()`
        (which asks containerd and runc for theirs) took 9 ms on every build and launch here."""
        async with self._query("_ping") as response:
            await response.read()

    async def _do_query(self, *args: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        """Every request to the Engine passes here (aiodocker's one place for it)."""
        try:
            response = await super()._do_query(*args, **kwargs)
        except aiodocker.DockerError as exc:
            if exc.status != 900:  # 900: aiodocker's code for "cannot connect"
                self.watch.answered()
                raise
            raise self.gone(exc.__context__ or exc) from None
        self.watch.answered()
        return response
