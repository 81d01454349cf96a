"""The Docker Engine `POST /containers/create` body for a session: a pure function of a SessionSpec.

Everything that makes a session safe is here, in one place a unit test compares as a dict: the pinned
image, rserver as the entrypoint, a non-root user, every capability dropped, no privilege escalation,
CPU / memory / pids limits, the session network (byoi's bridge with inter-container traffic off, so sessions
cannot reach one another), and how rserver is reached: its socket directory bind-mounted from the host, with
no port published at all; only for an RStudio too old for `--www-socket`, port 8787 published on 127.0.0.1
(a random host port), which any local user of the host can reach (the compatibility report warns).

byoi's files for the session (`spec.files`) are host files bind-mounted read-only, one by one, over the
image's paths: they are in place at create, with no archive written into the container's layer (the Engine
mounts the container's filesystem for that: 60 ms of an idle launch here, 150 to 200 ms on a busy host).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import Any

from byoi.runtime.spec import RUN_DIR, SOCKET_DIR, SessionSpec

LISTEN_LABEL = "byoi.listen"  # "socket" or "tcp": how the runtime finds the endpoint of an adopted container


def file_sources(files_host_dir: str, paths: Iterable[str]) -> dict[str, str]:
    """Path in the container -> the host file mounted there: `<files dir>/<n>-<base name>`, numbered in path
    order (two files may share a base name). A path that is not absolute and normal is refused."""
    sources = {}
    for n, path in enumerate(sorted(paths)):
        if not path.startswith("/") or posixpath.normpath(path) != path or path == "/":
            raise ValueError(f"a session file's path must be absolute and normal, not {path!r}")
        sources[path] = posixpath.join(files_host_dir, f"{n:02d}-{posixpath.basename(path)}")
    return sources


def container_args(
    spec: SessionSpec, socket_host_dir: str | None = None, files_host_dir: str | None = None
) -> dict[str, Any]:
    port = f"{spec.port}/tcp"
    env = {**spec.env, "HOME": spec.home_mount_path, "USER": spec.user_name}
    mounts: list[dict[str, Any]] = [
        {"Type": "bind", "Source": spec.home_host_path, "Target": spec.home_mount_path, "ReadOnly": False}
    ]
    if spec.listen_socket:
        if not socket_host_dir:
            raise ValueError("a session listening on a socket needs its socket directory")
        mounts.append({"Type": "bind", "Source": socket_host_dir, "Target": SOCKET_DIR, "ReadOnly": False})
        exposed: dict[str, Any] = {}
        bindings: dict[str, Any] = {}
    else:
        exposed = {port: {}}
        bindings = {port: [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    if spec.files:
        if not files_host_dir:
            raise ValueError("a session with files needs the host directory holding them")
        for target, source in file_sources(files_host_dir, spec.files).items():
            mounts.append({"Type": "bind", "Source": source, "Target": target, "ReadOnly": True})
    return {
        "Image": spec.image,
        "Entrypoint": spec.rserver_command()[:1],
        "Cmd": spec.rserver_command()[1:],
        "User": f"{spec.uid}:{spec.gid}",
        "WorkingDir": spec.home_mount_path,
        "Env": [f"{k}={v}" for k, v in sorted(env.items())],
        "Labels": {**spec.labels, LISTEN_LABEL: "socket" if spec.listen_socket else "tcp"},
        "ExposedPorts": exposed,
        "StopSignal": "SIGTERM",
        "HostConfig": {
            "Init": True,  # rserver (or R, in the stand-in) must not be PID 1, so SIGTERM stops it
            "NetworkMode": spec.network,
            "PortBindings": bindings,
            "Mounts": mounts,
            "Tmpfs": {RUN_DIR: f"rw,nosuid,nodev,size={spec.run_dir_bytes},uid={spec.uid},gid={spec.gid},mode=0700"},
            "NanoCpus": spec.nano_cpus,
            "Memory": spec.memory_bytes,
            "MemorySwap": spec.memory_bytes,  # no swap beyond the instance type's memory
            "PidsLimit": spec.pids_limit,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Privileged": False,
            "ReadonlyRootfs": False,  # users may change their session's image layer; it is thrown away
            "RestartPolicy": {"Name": "no"},
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
        },
    }


def network_args(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """The sessions' bridge: containers on it reach the outside world (package repositories) through NAT,
    but not each other (`enable_icc=false`), and nothing on the host's loopback."""
    return {
        "Name": name,
        "Driver": "bridge",
        "CheckDuplicate": True,
        "Labels": dict(labels),
        "Options": {"com.docker.network.bridge.enable_icc": "false"},
    }
