"""The Docker Engine builder backend: Engine API `/build` (the classic builder) and `/images/{name}/push`,
through aiodocker, with the JSON progress streams turned into build-log events.

Cancelling `build()` closes the HTTP request, and the Engine then stops the build and removes its
intermediate containers (`forcerm`). BuildKit-only Dockerfile features (`RUN --mount`, heredocs) are not
available with this backend.

An Engine that does not answer is `BuilderUnavailable` saying "Docker Engine is not reachable at <address>:
<why>" (docker_engine.py); a push to a registry the Engine cannot reach fails saying "The registry <host> is
not reachable: …".
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import regex

from byoi.build.base import BuilderUnavailable, BuildFailed, BuildRequest, Emit, PushRequest
from byoi.build.dockerfile import triggers_are_plain
from byoi.docker_engine import CONNECTION_ERRORS, EngineClient, registry_failure

_STEP = regex.compile(r"Step (\d+)/(\d+) : (.*)")
_CHUNK = 1 << 20
PROGRESS_INTERVAL = 0.25  # seconds between progress events per layer
PING_TIMEOUT = 10.0  # seconds the Engine has to answer before a build starts


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while True:
            data = await asyncio.to_thread(fh.read, _CHUNK)
            if not data:
                return
            yield data


async def _json_lines(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    while True:
        line = await response.content.readline()
        if not line:
            return
        line = line.strip()
        if line:
            try:
                yield json.loads(line)
            except ValueError:
                yield {"stream": line.decode(errors="replace") + "\n"}


def _error_message(exc: aiodocker.DockerError) -> str:
    message = exc.message
    if isinstance(message, dict):
        message = message.get("message", json.dumps(message))
    return str(message).strip()


def registry_auth_header(auth: dict[str, str] | None, server: str) -> str:
    """The X-Registry-Auth header value: base64url JSON of the credentials (or an empty object)."""
    payload = {**auth, "serveraddress": server} if auth else {}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def registry_config_header(auths: dict[str, dict[str, str]]) -> str:
    """The X-Registry-Config header value of a build: base64url JSON of the credentials per registry host."""
    payload = {host: {**auth, "serveraddress": host} for host, auth in auths.items()}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


class DockerBuilder:
    name = "docker"

    def __init__(self, docker_host: str | None = None) -> None:
        self._host = docker_host
        self._docker: EngineClient | None = None
        self._push_locks: dict[str, asyncio.Lock] = {}

    @property
    def docker(self) -> EngineClient:
        """The Engine client, opened on first use (raises BuilderUnavailable while there is no Engine)."""
        if self._docker is None:
            self._docker = EngineClient(self._host, BuilderUnavailable)
        return self._docker

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self.docker.ping()
        except TimeoutError:
            raise self.docker.gone(f"no answer within {PING_TIMEOUT:g} s") from None
        except aiodocker.DockerError as exc:
            raise BuilderUnavailable(f"Docker Engine at {self.docker.address} answered: {_error_message(exc)}") from exc

    async def base_image_ids(self, refs: Sequence[str], platform: str | None = None) -> dict[str, str] | None:
        """The classic builder uses the Engine's own copy of a base image when it has one (for the platform asked
        for) and pulls it otherwise: the ids of the copies it has, or None when one is missing (the build would
        pull it). `refs` are valid references (build/dockerfile.py checks them): nothing else reaches the URL."""
        wanted = platform.split("/")[:2] if platform else None
        ids: dict[str, str] = {}
        try:
            for ref in refs:
                try:
                    found = await self.docker.images.inspect(ref)
                except aiodocker.DockerError:
                    return None  # not here (the build would pull it), or a reference the build itself refuses
                if not triggers_are_plain((found.get("Config") or {}).get("OnBuild")):
                    return None
                if wanted and [found.get("Os"), found.get("Architecture")] != wanted:
                    return None
                ids[ref] = str(found["Id"])
        except CONNECTION_ERRORS as exc:
            raise self.docker.gone(exc, "while looking up the base images") from exc
        return ids

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def build(self, request: BuildRequest, emit: Emit) -> str:
        params: dict[str, Any] = {"dockerfile": request.dockerfile, "rm": "1", "forcerm": "1"}
        if request.build_args:
            params["buildargs"] = json.dumps(request.build_args)
        if request.labels:
            params["labels"] = json.dumps(request.labels)
        if request.target:
            params["target"] = request.target
        if request.platform:
            params["platform"] = request.platform
        if request.no_cache:
            params["nocache"] = "1"
        headers = {"content-type": "application/x-tar"}
        if request.pull_auths:  # for base images from registries that want credentials
            headers["X-Registry-Config"] = registry_config_header(request.pull_auths)
        step: str | None = None
        image_id: str | None = None
        try:
            async with self.docker._query(
                "build",
                "POST",
                params=params,
                data=_file_chunks(request.context_tar),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=30),
            ) as response:
                pending = ""  # the Engine cuts output anywhere: a line can come in two stream messages

                def lines(text: str) -> None:
                    nonlocal step
                    for line in text.splitlines():
                        if not line.strip():
                            continue
                        m = _STEP.match(line)
                        if m:
                            step = line
                            emit({"k": "step", "n": int(m[1]), "of": int(m[2]), "m": line})
                        else:
                            emit({"k": "log", "m": line})

                try:
                    async for item in _json_lines(response):
                        if "error" in item or "errorDetail" in item:
                            lines(pending)
                            detail = item.get("errorDetail") or {}
                            raise BuildFailed(str(detail.get("message") or item.get("error")).strip(), step)
                        text = item.get("stream") or (item.get("status") and f"{item['status']}\n")
                        if text:
                            whole, newline, pending = (pending + text).rpartition("\n")
                            lines(whole + newline)
                            if len(pending) > _CHUNK:
                                lines(pending)
                                pending = ""
                        aux = item.get("aux")
                        if isinstance(aux, dict) and aux.get("ID"):
                            image_id = aux["ID"]
                    lines(pending)
                finally:
                    # Closing the connection is what tells the Engine to stop a build that is cancelled.
                    response.close()
        except aiodocker.DockerError as exc:
            # 4xx before any step: e.g. "dockerfile parse error line 3: unknown instruction: RUNN".
            raise BuildFailed(_error_message(exc), step) from exc
        except CONNECTION_ERRORS as exc:
            raise self.docker.gone(exc, "during the build") from exc
        if image_id is None:
            raise BuildFailed("the Docker Engine finished the build without reporting an image id", step)
        return image_id

    async def push(self, request: PushRequest, emit: Emit) -> str:
        server = request.repository.split("/", 1)[0]
        lock = self._push_locks.setdefault(f"{request.repository}:{request.tag}", asyncio.Lock())
        # Tagging and pushing under one lock: two builds of the same repository:tag must not push each
        # other's image.
        async with lock:
            try:
                await self.docker.images.tag(request.image_id, request.repository, tag=request.tag)
                return await self._push(request, server, emit)
            except aiodocker.DockerError as exc:
                raise BuildFailed(registry_failure(server, _error_message(exc)), phase="push") from exc
            except CONNECTION_ERRORS as exc:
                raise self.docker.gone(exc, "during the push") from exc

    async def _push(self, request: PushRequest, server: str, emit: Emit) -> str:
        async with self.docker._query(
            f"images/{request.repository}/push",
            "POST",
            params={"tag": request.tag},
            headers={"X-Registry-Auth": registry_auth_header(request.auth, server)},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=30),
        ) as response:
            try:
                digest = await _read_push(response, emit, server)
            finally:
                response.close()  # a cancelled push must not leave the Engine streaming to nobody
        if digest is None:
            raise BuildFailed(f"pushing {request.repository}:{request.tag} reported no digest", phase="push")
        return digest


async def _read_push(response: aiohttp.ClientResponse, emit: Emit, server: str) -> str | None:
    """Turn the push stream into events: a `push` event when a layer's status changes, and its byte progress
    at most every PROGRESS_INTERVAL; return the manifest digest the Engine reports at the end."""
    digest: str | None = None
    last_status: dict[str, str] = {}
    last_progress: dict[str, float] = {}
    async for item in _json_lines(response):
        if "error" in item or "errorDetail" in item:
            detail = item.get("errorDetail") or {}
            message = str(detail.get("message") or item.get("error")).strip()
            raise BuildFailed(registry_failure(server, message), phase="push")
        aux = item.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = aux["Digest"]
            continue
        layer, status = item.get("id"), item.get("status")
        if not status:
            continue
        if not layer:
            emit({"k": "log", "m": status})
            continue
        if last_status.get(layer) != status:
            last_status[layer] = status
            emit({"k": "push", "id": layer, "s": status})
        progress = item.get("progressDetail") or {}
        now = time.monotonic()
        if progress.get("total") and now - last_progress.get(layer, 0.0) >= PROGRESS_INTERVAL:
            last_progress[layer] = now
            emit({"k": "push", "id": layer, "s": status, "c": progress.get("current", 0), "n": progress["total"]})
    return digest
