"""The Docker Engine backend of the `SessionRuntime` seam (runtime/base.py), through aiodocker: I/O only
(the container's arguments come from docker_args).

Pull with progress, read a file of an image, create (with byoi's files bind-mounted read-only), start, read
its state, tail logs, stop and remove, and list byoi's containers by label. Engine failures become
`RuntimeFailure` with the engine's own message, so a service can put it in a FailureReason; an Engine that
does not answer is `Unreachable` ("Docker Engine is not reachable at <address>: <why>", docker_engine.py);
the engine's inspect documents stay in here.

Each session gets a socket directory on the host, `<socket_root>/<hash of the container name>/`, owned by
the session's UID with mode 0700, inside `socket_root` (mode 0700, owned by byoi's user): rserver listens on
`rserver.sock` in it (`--www-socket`), so nobody but byoi (and root) on the host can reach it, and no port
is published. The fallback for an RStudio too old for `--www-socket` publishes port 8787 on 127.0.0.1.
Beside it, `<socket_root>/<hash>.files/` (byoi's, mode 0755) holds the session's files (`SessionSpec.files`),
root-owned and mode 0644, each bind-mounted read-only at its path in the container; both go with the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiodocker
import httpx2 as httpx

from byoi.docker_engine import CONNECTION_ERRORS, EngineClient, registry_failure
from byoi.runtime.base import (
    GONE,
    Endpoint,
    ManagedSession,
    ProgressCallback,
    RuntimeFailure,
    SessionState,
    StateKind,
    Unreachable,
)
from byoi.runtime.docker_args import LISTEN_LABEL, container_args, file_sources, network_args
from byoi.runtime.instance_types import HostCapacity
from byoi.runtime.spec import SESSION_PORT, SOCKET_DIR, SOCKET_NAME, PullProgress, SessionSpec

__all__ = ["DockerRuntime", "RuntimeFailure", "PullTracker", "default_socket_root", "socket_path_problem"]

PROGRESS_INTERVAL = 0.5  # seconds between progress callbacks
PING_TIMEOUT = 5.0  # seconds the Engine has to answer a ping (the health check)
MAX_SYMLINKS = 8
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
SOCKET_DIR_NAME_LEN = 16
READ_PURPOSE = {"byoi.managed": "true", "byoi.purpose": "read-image-file"}  # labels of read_image_file's containers
READ_LEFTOVER_AGE = 60.0  # seconds: a read container older than this was left by a byoi that stopped mid-read


def default_socket_root(base: Path) -> Path:
    """`<base>/sockets` (`base` is the directory holding the homes root: the data dir unless
    BYOI_SESSION_HOMES_ROOT moves the homes, so replicas sharing homes share sockets too), or, when socket paths
    under it would be too long for a Unix socket (a directory deep in a temporary tree), a directory of that base's
    own under /run/byoi (root-only, as byoi runs)."""
    preferred = base / "sockets"
    if socket_path_problem(preferred) is None or not os.access("/run", os.W_OK):
        return preferred
    return Path("/run/byoi") / hashlib.sha256(str(base).encode()).hexdigest()[:12]


def socket_path_problem(socket_root: Path) -> str | None:
    """Why sessions' sockets cannot live under `socket_root` (a Unix socket path is at most 107 bytes), or None."""
    longest = len(os.fsencode(str(socket_root))) + 1 + SOCKET_DIR_NAME_LEN + 1 + len(SOCKET_NAME)
    if longest > MAX_SOCKET_PATH:
        return (
            f"session sockets under {socket_root} would have paths of {longest} bytes, more than the "
            f"{MAX_SOCKET_PATH} a Unix socket allows: set BYOI_SESSION_SOCKET_DIR to a shorter directory"
        )
    return None


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

    def __init__(self, docker_host: str | None = None, socket_root: Path | None = None) -> None:
        self._host = docker_host
        self._docker: EngineClient | None = None
        self._capacity: HostCapacity | None = None
        self.socket_root = socket_root
        self._swept_reads = False

    def socket_dir(self, name: str) -> Path:
        """The host directory holding the session's socket (bind-mounted at spec.SOCKET_DIR)."""
        if self.socket_root is None:
            raise RuntimeFailure("no socket directory is configured for sessions (BYOI_SESSION_SOCKET_DIR)")
        return self.socket_root / hashlib.sha256(name.encode()).hexdigest()[:SOCKET_DIR_NAME_LEN]

    def files_dir(self, name: str) -> Path:
        """The host directory holding the session's files (each bind-mounted read-only at its path)."""
        return files_dir_of(self.socket_dir(name))

    @property
    def docker(self) -> EngineClient:
        """The Engine client, opened on first use (raises Unreachable while there is no Engine to open it on)."""
        if self._docker is None:
            self._docker = EngineClient(self._host, Unreachable)
        return self._docker

    async def ping(self) -> None:
        """Raise Unreachable unless the Engine answers within PING_TIMEOUT."""
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self.docker.ping()
        except TimeoutError:
            raise self.docker.gone(f"no answer within {PING_TIMEOUT:g} s") from None
        except aiodocker.DockerError as exc:
            raise RuntimeFailure(f"Docker Engine at {self.docker.address} answered: {_message(exc)}") from None

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def capacity(self) -> HostCapacity:
        """CPUs and memory of the Docker host (cached: they do not change while byoi runs)."""
        if self._capacity is None:
            try:
                info = await self.docker.system.info()
            except aiodocker.DockerError as exc:
                raise RuntimeFailure(_message(exc)) from None
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
                    message = str(event.get("errorDetail", {}).get("message") or event["error"])
                    raise RuntimeFailure(registry_failure(ref.split("/", 1)[0], message))
                tracker.feed(event)
                if time.monotonic() - last >= PROGRESS_INTERVAL:
                    last = time.monotonic()
                    await on_progress(tracker.progress())
        except aiodocker.DockerError as exc:
            raise RuntimeFailure(registry_failure(ref.split("/", 1)[0], _message(exc))) from None
        except CONNECTION_ERRORS as exc:
            raise self.docker.gone(exc, "during the pull") from None
        final = tracker.progress()
        await on_progress(final)
        return final

    async def ensure_image(self, ref: str, auth: dict[str, str] | None, on_progress: ProgressCallback) -> bool:
        if await self.image_present(ref):
            return False
        await self.pull(ref, auth, on_progress)
        return True

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

    async def create(self, spec: SessionSpec) -> None:
        await self.ensure_network(spec.network, {"byoi.managed": "true"})
        socket_dir = files = None
        if spec.listen_socket:
            socket_dir = self.socket_dir(spec.name)
            await asyncio.to_thread(_fresh_socket_dir, socket_dir, spec.uid, spec.gid)
        if spec.files:
            files = self.files_dir(spec.name)
            try:
                await asyncio.to_thread(_write_session_files, files, spec.files)
            except (OSError, ValueError) as exc:
                raise RuntimeFailure(f"cannot write the session's files under {files}: {exc}") from None
        try:
            await self.docker.containers.create(
                container_args(spec, str(socket_dir) if socket_dir else None, str(files) if files else None),
                name=spec.name,
            )
        except aiodocker.DockerError as exc:
            raise RuntimeFailure(_message(exc)) from None
        except CONNECTION_ERRORS as exc:
            raise self.docker.gone(exc) from None

    async def read_image_file(self, image: str, path: str, max_bytes: int = 1 << 20) -> bytes | None:
        """A file of `image`, read from a container created for it and never started (the Engine reads files of
        containers, not of images), removed at once. The launcher asks once per pinned image. The first read of
        this process also removes read containers a byoi left when it stopped mid-read (older than
        READ_LEFTOVER_AGE: younger ones may be another replica's, reading now)."""
        if not self._swept_reads:
            self._swept_reads = True
            await self._remove_leftover_reads()
        name = f"byoi-read-{uuid.uuid4().hex[:12]}"
        config: dict[str, Any] = {
            "Image": image,
            "Entrypoint": ["/byoi-never-started"],  # an image without a command can be created too
            "Cmd": [],
            "NetworkDisabled": True,
            "Labels": dict(READ_PURPOSE),
            "HostConfig": {"NetworkMode": "none"},
        }
        try:
            await self.docker.containers.create(config, name=name)
        except aiodocker.DockerError as exc:
            raise RuntimeFailure(f"cannot read {path} of {image}: {_message(exc)}") from None
        except CONNECTION_ERRORS as exc:
            raise self.docker.gone(exc) from None
        try:
            return await self._container_file(name, path, max_bytes)
        finally:
            with contextlib.suppress(aiodocker.DockerError, *CONNECTION_ERRORS):
                await self.docker.containers.container(name).delete(force=True, v=True)

    async def _remove_leftover_reads(self) -> None:
        cutoff = time.time() - READ_LEFTOVER_AGE
        with contextlib.suppress(RuntimeFailure, aiodocker.DockerError, *CONNECTION_ERRORS):
            for leftover in await self.list_managed(READ_PURPOSE):
                if leftover.created_at < cutoff:
                    await self.docker.containers.container(leftover.name).delete(force=True, v=True)

    async def _container_file(self, container: str, path: str, max_bytes: int) -> bytes | None:
        """A file's content in a created container, following symlinks; None when it does not exist."""
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

    async def start(self, container: str) -> None:
        try:
            await self.docker.containers.container(container).start()
        except aiodocker.DockerError as exc:
            raise RuntimeFailure(_message(exc)) from None

    async def _inspect(self, container: str) -> dict[str, Any] | None:
        """The engine's inspect document (kept inside this module), or None when the container does not exist."""
        try:
            c = await self.docker.containers.get(container)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise RuntimeFailure(_message(exc)) from None
        except CONNECTION_ERRORS as exc:
            raise self.docker.gone(exc) from None
        return dict(c._container)

    async def state(self, name: str) -> SessionState:
        return container_state(await self._inspect(name))

    async def endpoint(self, name: str) -> Endpoint | None:
        info = await self._inspect(name)
        if info is None:
            return None
        if ((info.get("Config") or {}).get("Labels") or {}).get(LISTEN_LABEL) == "socket":
            # Where the container's socket directory really is (another replica may have created it under its own
            # socket root), else where this server would have put it.
            mounted = mounted_socket_dir(info, name)
            return Endpoint(socket=str((mounted or self.socket_dir(name)) / SOCKET_NAME))
        port = host_port(info, SESSION_PORT)
        return Endpoint(host="127.0.0.1", port=port) if port else None

    async def answers(self, name: str, root_path: str, timeout: float = 2.0, endpoint: Endpoint | None = None) -> bool:
        """Whether the session's RStudio answers HTTP at its endpoint (any status: rserver serves). A launch
        waiting for it passes the `endpoint` it has already read, so a probe is one HTTP request and no inspect.

        The probe is plain HTTP: its transport gets no TLS context (`verify=False` only skips loading the CA
        bundle, which took 70 ms a probe here, more than the probe itself). A Unix socket that rserver has not made
        yet is seen with one stat, without a client or a connection: 100 launches waiting at once on 2 cores spent
        a core on failed probes (bench/kubernetes_launch.py, Docker levels)."""
        endpoint = endpoint or await self.endpoint(name)
        if endpoint is None:
            return False
        if endpoint.socket and not os.path.exists(endpoint.socket):
            return False
        if endpoint.socket:
            transport = httpx.AsyncHTTPTransport(uds=endpoint.socket, verify=False)
            url = "http://session/"
        else:
            transport = httpx.AsyncHTTPTransport(verify=False)
            url = f"http://{endpoint.host}:{endpoint.port}/"
        headers = {"X-RStudio-Root-Path": root_path.rstrip("/") or "/"}
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
            try:
                await http.get(url, headers=headers)
                return True
            except httpx.TransportError:
                return False

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

    async def remove(self, name: str, stop_timeout: int = 10) -> None:
        """Stop (SIGTERM, then SIGKILL after `stop_timeout`) and remove, with its socket directory; a missing
        container is fine."""
        c = self.docker.containers.container(name)
        mounted = None
        with contextlib.suppress(RuntimeFailure):  # the socket directory to remove: where the container has it
            mounted = mounted_socket_dir(await self._inspect(name) or {}, name)
        try:
            await c.stop(t=stop_timeout)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                await self._remove_session_dirs(name, mounted)
                return
            # 304 (already stopped) and other states: removal below forces it
        except CONNECTION_ERRORS as exc:
            raise self.docker.gone(exc) from None
        try:
            await c.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):  # 409: removal already in progress
                raise RuntimeFailure(_message(exc)) from None
        await self._remove_session_dirs(name, mounted)

    async def _remove_session_dirs(self, name: str, mounted: Path | None = None) -> None:
        """The session's socket directory and files directory: where the container has them, and where this
        server would have put them."""
        dirs = [mounted] if mounted is not None else []
        if self.socket_root is not None:
            dirs.append(self.socket_dir(name))
        for d in dirs:
            await asyncio.to_thread(shutil.rmtree, d, True)
            await asyncio.to_thread(shutil.rmtree, files_dir_of(d), True)

    async def list_managed(self, labels: dict[str, str]) -> list[ManagedSession]:
        """Containers (running or not) carrying all these labels."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        try:
            data = await self.docker._query_json(
                "containers/json", method="GET", params={"all": "1", "filters": filters}
            )
        except aiodocker.DockerError as exc:
            raise RuntimeFailure(_message(exc)) from None
        except CONNECTION_ERRORS as exc:
            raise self.docker.gone(exc) from None
        return [
            ManagedSession(
                name=(c.get("Names") or ["/"])[0].lstrip("/"),
                labels=dict(c.get("Labels") or {}),
                running=c.get("State") == "running",
                created_at=float(c.get("Created") or 0),
            )
            for c in data
        ]


def container_state(info: dict[str, Any] | None) -> SessionState:
    """The typed state of an inspected container. Being removed counts as gone: `docker rm -f` marks it
    "removing" before it kills it, so its exit code is the kill's, not RStudio's."""
    if info is None:
        return GONE
    state = info.get("State") or {}
    status = state.get("Status")
    if status == "removing":
        return GONE
    if state.get("Running"):
        return SessionState(StateKind.RUNNING)
    if status == "created":
        return SessionState(StateKind.CREATED)
    code = state.get("ExitCode")
    kind = StateKind.OUT_OF_MEMORY if state.get("OOMKilled") else StateKind.EXITED
    return SessionState(
        kind,
        exit_code=int(code) if code is not None else None,
        error=state.get("Error") or None,
        finished_at=state.get("FinishedAt") or None,
    )


def mounted_socket_dir(info: dict[str, Any], name: str) -> Path | None:
    """The host directory bind-mounted as the container's socket directory, when it is one byoi made for this
    container (its own name is the hash of the container name), so no other directory is ever taken for it."""
    expected = hashlib.sha256(name.encode()).hexdigest()[:SOCKET_DIR_NAME_LEN]
    for mount in info.get("Mounts") or []:
        if mount.get("Destination") == SOCKET_DIR and mount.get("Type") == "bind":
            source = Path(str(mount.get("Source") or ""))
            if source.is_absolute() and source.name == expected:
                return source
    return None


def host_port(info: dict[str, Any], port: int) -> int | None:
    bindings = ((info.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
    for b in bindings:
        if b.get("HostIp") in ("127.0.0.1", "") and b.get("HostPort"):
            return int(b["HostPort"])
    return None


def files_dir_of(socket_dir: Path) -> Path:
    return socket_dir.with_name(socket_dir.name + ".files")


def _write_session_files(path: Path, files: Mapping[str, bytes]) -> None:
    """A fresh directory of the session's files (0755; files 0644, byoi's user's: root-owned as byoi runs), named
    as docker_args.file_sources mounts them. Its parent (socket_root) is mode 0700: nobody else on the host reads
    them; in the container each is a read-only bind mount."""
    _own_socket_root(path.parent)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)  # noqa: S103  (world-readable on purpose: the session user reads these files)
    for target, source in file_sources(str(path), files).items():
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(files[target])
        os.chmod(source, 0o644)


def _own_socket_root(root: Path) -> None:
    """`socket_root`, made if missing: a real directory of byoi's user, mode 0700, so nobody else on the host
    traverses to a session's socket or files."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.lstat()
    if info.st_uid != os.getuid() or not os.path.isdir(root) or os.path.islink(root):
        raise RuntimeFailure(f"the session socket directory {root} is not a directory owned by byoi's user")
    os.chmod(root, 0o700)


def _fresh_socket_dir(path: Path, uid: int, gid: int) -> None:
    """An empty directory for the session's socket, owned by the session user (rserver creates the socket)
    and closed to everyone else; its parent (socket_root) is byoi's, mode 0700, so nobody else can traverse."""
    _own_socket_root(path.parent)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    os.chown(path, uid, gid)
    os.chmod(path, 0o700)
