"""What a session container is, independent of the backend that runs it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

RSERVER = "/usr/lib/rstudio-server/bin/rserver"
SESSION_PORT = 8787
# Inside the container: a tmpfs owned by the session user holds RStudio's runtime state.
RUN_DIR = "/run/byoi"
SERVER_DATA_DIR = f"{RUN_DIR}/rserver"
DATABASE_DIR = f"{RUN_DIR}/db"
# Files byoi gives the container, mounted read-only over the image's (so the session user cannot change them).
DATABASE_CONFIG = "/etc/byoi/database.conf"
FILE_LOCKS = "/etc/rstudio/file-locks"
# rserver's HMAC key for its signed cookies: per session, in the session's writable tmpfs (rserver creates it).
SECURE_COOKIE_KEY = f"{RUN_DIR}/secure-cookie-key"
# Where the session's socket directory (a host directory only byoi can traverse) appears in the container.
SOCKET_DIR = "/run/byoi-www"
SOCKET_NAME = "rserver.sock"


@dataclass(frozen=True)
class SessionSpec:
    name: str  # container name, unique on the engine
    image: str  # registry/repository@sha256:... (pinned by digest, never a tag)
    uid: int
    gid: int
    user_name: str  # --server-user
    home_host_path: str  # a directory on the Docker host, owned by uid:gid
    home_mount_path: str  # where it appears in the container (and HOME)
    root_path: str  # --www-root-path, e.g. /sessions/<id>/
    nano_cpus: int
    memory_bytes: int
    network: str
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    port: int = SESSION_PORT
    # True: rserver listens on a Unix socket (--www-socket, RStudio 2024.12 and later), reached only through
    # byoi's proxy. False: the fallback for older RStudio, a port published on the host's loopback.
    listen_socket: bool = True
    pids_limit: int = 4096
    run_dir_bytes: int = 256 * 1024 * 1024
    instance_type: str = ""  # the ml.* type: on Kubernetes its node selector, tolerations and GPUs
    # Absolute path in the container -> content: byoi's files (Renviron.site, database.conf, file-locks, the
    # metadata), there read-only from the start (Docker: bind mounts of host files; Kubernetes: a Secret).
    files: Mapping[str, bytes] = field(default_factory=dict)

    def rserver_command(self) -> list[str]:
        if self.listen_socket:
            listen = [f"--www-socket={SOCKET_DIR}/{SOCKET_NAME}"]
        else:
            listen = ["--www-address=0.0.0.0", f"--www-port={self.port}"]
        return [
            RSERVER,
            "--server-daemonize=0",
            *listen,
            "--auth-none=1",
            f"--server-user={self.user_name}",
            f"--www-root-path={self.root_path}",
            "--www-frame-origin=same",
            "--www-verify-user-agent=0",
            f"--server-data-dir={SERVER_DATA_DIR}",
            f"--database-config-file={DATABASE_CONFIG}",
            f"--secure-cookie-key-file={SECURE_COOKIE_KEY}",
        ]


@dataclass(frozen=True)
class PullProgress:
    """Bytes of the image's layers fetched so far, summed over the layers the engine reported."""

    done: int = 0
    total: int = 0
    layers: int = 0
    layers_done: int = 0
