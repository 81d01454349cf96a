"""Session containers on Docker Engine, through aiodocker: I/O only (the arguments come from docker_args).

Pull with progress, create, write files into a created container, start, inspect, tail logs, stop and
remove, and list byoi's containers by label. Engine failures become `RuntimeFailure` with the engine's
own message, so a service can put it in a FailureReason.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker

from byoi.runtime.docker_args import container_args, network_args
from byoi.runtime.instance_types import HostCapacity
from byoi.runtime.spec import PullProgress, SessionSpec

ProgressCallback = Callable[[PullProgress], Awaitable[None]]
PROGRESS_INTERVAL = 0.5  # seconds between progress callbacks
MAX_SYMLINKS = 8


class RuntimeFailure(Exception):
    """The engine refused or failed an operation; the message is the engine's, fit for a FailureReason."""


def _message(exc: aiodocker.DockerError) -> str:
    message = exc.message
    if isinstance(message, dict):
        message = message.get("message", json.dumps(message))
    return str(message).strip()


class PullTracker:
    """Turns the engine's pull progress stream into bytes done / total over all layers."""

    def __init__(self) -> None:
        self.layers: dict[str, tuple[int, int, bool]] = {}  # id -> (current, total, done)

    def feed(self, event: dict[str, Any]) -> None:
        layer, status = event.get("id"), str(event.get("status") or "")
        if not layer or ":" in layer:  # "Pulling from …", "Digest: …" lines are not layers
            return
        current, total, done = self.layers.get(layer, (0, 0, False))
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            current, total = int(detail.get("current") or 0), int(detail["total"])
        elif status in ("Download complete", "Pull complete", "Already exists"):
            current, done = total, True
        self.layers[layer] = (current, total, done)

    def progress(self) -> PullProgress:
        values = self.layers.values()
        return PullProgress(
            done=sum(c for c, _, _ in values),
            total=sum(t for _, t, _ in values),
            layers=len(self.layers),
            layers_done=sum(1 for _, _, d in values if d),
        )


class DockerRuntime:
    name = "docker"

    def __init__(self, docker_host: str | None = None) -> None:
        self._host = docker_host
        self._docker: aiodocker.Docker | None = None
        self._capacity: HostCapacity | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._host)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def capacity(self) -> HostCapacity:
        """CPUs and memory of the Docker host (cached: they do not change while byoi runs)."""
        if self._capacity is None:
            try:
                info = await self.docker.system.info()
            except (aiodocker.DockerError, OSError) as exc:
                raise RuntimeFailure(f"Docker Engine is not reachable: {exc}") from None
            self._capacity = HostCapacity(int(info.get("NCPU") or 1), int(info.get("MemTotal") or 0))
        return self._capacity

    # -- images ---------------------------------------------------------------------------------

    async def image_present(self, ref: str) -> bool:
        try:
            await self.docker.images.inspect(ref)
            return True
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            raise RuntimeFailure(_message(exc)) from None

    async def pull(self, ref: str, auth: dict[str, str] | None, on_progress: ProgressCallback) -> PullProgress:
        tracker = PullTracker()
        last = 0.0
        try:
            async for event in self.docker.images.pull(ref, auth=auth, stream=True):
                if event.get("error"):
                    raise RuntimeFailure(str(event.get("errorDetail", {}).get("message") or event["error"]))
                tracker.feed(event)
                if time.monotonic() - last >= PROGRESS_INTERVAL:
                    last = time.monotonic()
                    await on_progress(tracker.progress())
        except aiodocker.DockerError as exc:
            raise RuntimeFailure(_message(exc)) from None
        except OSError as exc:
            raise RuntimeFailure(f"Docker Engine is not reachable: {exc}") from None
        final = tracker.progress()
        await on_progress(final)
        return final

    # -- networks -------------------------------------------------------------------------------

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        try:
            await self.docker.networks.get(name)
            return
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise RuntimeFailure(_message(exc)) from None
        try:
            await self.docker.networks.create(network_args(name, labels))
        except aiodocker.DockerError as exc:
            if exc.status != 409:  # created meanwhile by another launch
                raise RuntimeFailure(f"cannot create network {name}: {_message(exc)}") from None

    # -- containers -----------------------------------------------------------------------------

    async def create(self, spec: SessionSpec) -> str:
        try:
            container = await self.docker.containers.create(container_args(spec), name=spec.name)
        except aiodocker.DockerError as exc:
            raise RuntimeFailure(_message(exc)) from None
        return str(container.id)

    async def read_file(self, container: str, path: str, max_bytes: int = 1 << 20) -> bytes | None:
        """A file's content in a (created) container, following symlinks; None when it does not exist."""
        for _ in range(MAX_SYMLINKS):
            try:
                archive = await self.docker.containers.container(container).get_archive(path)
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return None
                raise RuntimeFailure(_message(exc)) from None
            with archive:
                member = next(iter(archive.getmembers()), None)
                if member is None:
                    return None
                if member.issym():
                    path = posixpath.normpath(posixpath.join(posixpath.dirname(path), member.linkname))
                    continue
                if not member.isfile() or member.size > max_bytes:
                    return None
                fh = archive.extractfile(member)
                return fh.read() if fh else None
        return None

    async def write_files(self, container: str, files: dict[str, bytes]) -> None:
        """Write root-owned, world-readable files (absolute paths) into a created container's own layer."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            made: set[str] = set()
            for path, data in files.items():
                parts = path.strip("/").split("/")
                for i in range(1, len(parts)):
                    parent = "/".join(parts[:i])
                    if parent not in made:
                        made.add(parent)
                        d = tarfile.TarInfo(parent)
                        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                        tar.addfile(d)
                info = tarfile.TarInfo("/".join(parts))
                info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        try:
            await self.docker.containers.container(container).put_archive("/", buf.getvalue())
        except aiodocker.DockerError as exc:
            raise RuntimeFailure(f"cannot write files into the container: {_message(exc)}") from None

    async def start(self, container: str) -> None:
        try:
            await self.docker.containers.container(container).start()
        except aiodocker.DockerError as exc:
            raise RuntimeFailure(_message(exc)) from None

    async def inspect(self, container: str) -> dict[str, Any] | None:
        """The engine's inspect document, or None when the container does not exist."""
        try:
            c = await self.docker.containers.get(container)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise RuntimeFailure(_message(exc)) from None
        return dict(c._container)

    @staticmethod
    def host_port(info: dict[str, Any], port: int) -> int | None:
        bindings = ((info.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
        for b in bindings:
            if b.get("HostIp") in ("127.0.0.1", "") and b.get("HostPort"):
                return int(b["HostPort"])
        return None

    async def logs_tail(self, container: str, lines: int = 50) -> list[str]:
        try:
            chunks = await self.docker.containers.container(container).log(
                stdout=True, stderr=True, tail=str(lines), timestamps=False
            )
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return []
            raise RuntimeFailure(_message(exc)) from None
        text = "".join(chunks)
        return [line for line in text.splitlines() if line.strip()][-lines:]

    async def remove(self, container: str, stop_timeout: int = 10) -> None:
        """Stop (SIGTERM, then SIGKILL after `stop_timeout`) and remove; a missing container is fine."""
        c = self.docker.containers.container(container)
        try:
            await c.stop(t=stop_timeout)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return
            # 304 (already stopped) and other states: removal below forces it
        try:
            await c.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):  # 409: removal already in progress
                raise RuntimeFailure(_message(exc)) from None

    async def list_labelled(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Containers (running or not) carrying all these labels: Id, Names, Labels, State, Status."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        try:
            data = await self.docker._query_json(
                "containers/json", method="GET", params={"all": "1", "filters": filters}
            )
        except aiodocker.DockerError as exc:
            raise RuntimeFailure(_message(exc)) from None
        except OSError as exc:
            raise RuntimeFailure(f"Docker Engine is not reachable: {exc}") from None
        return list(data)
