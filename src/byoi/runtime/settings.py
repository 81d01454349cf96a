"""Session runtime settings, read from the environment by the composition root (`RuntimeSettings.from_env()`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import regex

_USER_NAME = regex.compile(r"[a-z_][a-z0-9_-]{0,31}")
_MOUNT = regex.compile(r"(/[A-Za-z0-9._-]+)+")
_NETWORK = regex.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")


@dataclass(frozen=True)
class RuntimeSettings:
    uid: int = 1000  # sessions run as this UID:GID, never as root
    gid: int = 100
    user_name: str = "rstudio"  # --server-user when the image has no user with that UID
    home_mount: str = "/home/sagemaker-user"  # where every session sees its user's home
    start_timeout: float = 180.0  # seconds from container start until RStudio must answer
    reconcile_seconds: float = 10.0  # how often containers and records are compared
    launch_attempts: int = 3  # a launch interrupted (server died) this often ends Failed
    stop_timeout: int = 10  # seconds rserver gets to stop before it is killed
    pids_limit: int = 4096
    network: str = "byoi-sessions"  # the bridge sessions run on (inter-container traffic off)
    launch_concurrency: int = 4  # launches (pull to first answer) at once; more wait Pending ("queued")
    instance_types: Path | None = None  # TOML file of [types."ml.*"] vcpu, memory_gib
    docker_host: str | None = None  # Docker Engine URL; None: DOCKER_HOST or the local socket

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> RuntimeSettings:
        """BYOI_SESSION_<FIELD> for each field (e.g. BYOI_SESSION_UID), BYOI_INSTANCE_TYPES, DOCKER_HOST."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            key = f"BYOI_SESSION_{f.name.upper()}"
            if f.name == "docker_host":
                values[f.name] = env.get(key) or env.get("DOCKER_HOST") or None
            elif f.name == "instance_types":
                values[f.name] = Path(env["BYOI_INSTANCE_TYPES"]) if env.get("BYOI_INSTANCE_TYPES") else None
            elif key in env:
                cast = {"int": int, "float": float}.get(str(f.type), str)
                try:
                    values[f.name] = cast(env[key])  # type: ignore[operator]
                except ValueError:
                    raise ValueError(f"{key} must be a number, not {env[key]!r}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        if self.uid <= 0 or self.gid < 0:
            raise ValueError("BYOI_SESSION_UID must be a non-root UID (> 0) and BYOI_SESSION_GID >= 0")
        if not _USER_NAME.fullmatch(self.user_name):
            raise ValueError(f"BYOI_SESSION_USER_NAME {self.user_name!r} is not a valid user name")
        if not _MOUNT.fullmatch(self.home_mount) or "/../" in self.home_mount + "/":
            raise ValueError(f"BYOI_SESSION_HOME_MOUNT {self.home_mount!r} must be an absolute path")
        if not _NETWORK.fullmatch(self.network):
            raise ValueError(f"BYOI_SESSION_NETWORK {self.network!r} is not a valid network name")
        if self.launch_concurrency < 1:
            raise ValueError("BYOI_SESSION_LAUNCH_CONCURRENCY must be at least 1")
        if self.start_timeout <= 0 or self.reconcile_seconds <= 0 or self.launch_attempts < 1:
            raise ValueError("session timeouts, the reconcile interval and launch attempts must be positive")
