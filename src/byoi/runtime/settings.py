"""Session runtime settings, read from the environment by the composition root (`RuntimeSettings.from_env()`).

Every bad value raises `SessionConfigError` (a ValueError) whose message names the variable and the value, so
`byoi server` can stop with one line before it starts serving, never with a traceback from the app's startup.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import regex

_USER_NAME = regex.compile(r"[a-z_][a-z0-9_-]{0,31}")
_MOUNT = regex.compile(r"(/[A-Za-z0-9._-]+)+")
_NETWORK = regex.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
MAX_ID = 2**31 - 2  # Linux UIDs/GIDs are 32-bit; 2**32-1 is "no id" and 2**31-1 is nobody's on some tools


class SessionConfigError(ValueError):
    """A session setting (BYOI_SESSION_*, BYOI_INSTANCE_TYPES) is unusable; the message names it and its value."""


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
    idle_timeout_minutes: float = 0.0  # stop sessions unused this long (0: off); a domain tag overrides it
    activity_seconds: float = 15.0  # how often the proxy's activity is written and idle sessions are stopped
    socket_dir: Path | None = None  # where sessions' socket directories live; None: `sockets` beside homes_root
    homes_root: Path | None = None  # where homes live on the Docker host; None: <data dir>/homes (one per replica)
    runtime: str = "docker"  # docker | kubernetes (BYOI_RUNTIME, `byoi server --runtime`)
    kube_config: Path | None = None  # a kubeconfig; None: in-cluster config, else KUBECONFIG / ~/.kube/config
    # Where session pods, Services, Secrets and home claims live; "": byoi's own namespace when it runs in the
    # cluster (its service account's), else "default".
    kube_namespace: str = ""
    # The most one node gives a session, when byoi may not list nodes (its Role is namespaced); 0: list them.
    kube_node_cpus: int = 0
    kube_node_memory_gib: float = 0.0
    kube_storage_class: str = ""  # the home claims' StorageClass; "": the cluster's default
    kube_access_mode: str = "ReadWriteOnce"  # ReadWriteMany for a shared file system (NFS, EFS, CephFS)
    kube_home_size: str = "10Gi"
    kube_pull_secrets: str = ""  # comma-separated imagePullSecrets every pod gets (besides byoi's own)
    kube_control_plane_labels: str = "app.kubernetes.io/name=byoi,app.kubernetes.io/component=control-plane"
    kube_control_plane_namespace: str = ""  # "": byoi runs in the sessions' namespace
    kube_start_timeout: float = 900.0  # seconds from pod creation until its container runs (pull included)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> RuntimeSettings:
        """BYOI_SESSION_<FIELD> for each field (e.g. BYOI_SESSION_UID), BYOI_INSTANCE_TYPES, DOCKER_HOST."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            key = "BYOI_RUNTIME" if f.name == "runtime" else f"BYOI_SESSION_{f.name.upper()}"
            if f.name == "docker_host":
                values[f.name] = env.get(key) or env.get("DOCKER_HOST") or None
            elif f.name == "kube_config":
                values[f.name] = Path(env[key]) if env.get(key) else None
            elif f.name in ("socket_dir", "homes_root"):
                if f.name == "homes_root" and env.get(key) and not _is_plain_absolute(env[key]):
                    raise SessionConfigError(f"{key}={env[key]!r} must be an absolute path without . or .. parts")
                values[f.name] = Path(env[key]) if env.get(key) else None
            elif f.name == "instance_types":
                values[f.name] = Path(env["BYOI_INSTANCE_TYPES"]) if env.get("BYOI_INSTANCE_TYPES") else None
            elif key in env:
                values[f.name] = _parse(key, env[key], str(f.type))
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def homes(self, data_dir: Path) -> Path:
        """The root of the sessions' homes on the Docker host: BYOI_SESSION_HOMES_ROOT, else `<data dir>/homes`."""
        return self.homes_root or data_dir / "homes"

    def check(self) -> None:
        """SessionConfigError naming the first unusable setting (the variable and its value)."""
        bounds: list[tuple[str, float, bool]] = [
            # (field, lowest allowed, whether the lowest itself is allowed)
            ("uid", 1, True),  # never root
            ("gid", 0, True),
            ("start_timeout", 0, False),
            ("reconcile_seconds", 0, False),
            ("launch_attempts", 1, True),
            ("stop_timeout", 0, True),
            ("pids_limit", 1, True),
            ("launch_concurrency", 1, True),
            ("idle_timeout_minutes", 0, True),
            ("activity_seconds", 0, False),
            ("kube_node_cpus", 0, True),
            ("kube_node_memory_gib", 0, True),
            ("kube_start_timeout", 0, False),
        ]
        for name, low, inclusive in bounds:
            value = getattr(self, name)
            ok = math.isfinite(value) and (value >= low if inclusive else value > low)
            if name in ("uid", "gid"):
                ok = ok and value <= MAX_ID
            if not ok:
                why = (
                    "sessions never run as root"
                    if name == "uid" and value == 0
                    else f"it must be {_bound(low, inclusive)}"
                )
                raise SessionConfigError(f"BYOI_SESSION_{name.upper()}={value!r} is refused: {why}")
        if not _USER_NAME.fullmatch(self.user_name):
            raise SessionConfigError(
                f"BYOI_SESSION_USER_NAME={self.user_name!r} is not a valid user name (lower case letters, digits, "
                "_ and -, at most 32)"
            )
        if not _MOUNT.fullmatch(self.home_mount) or "/../" in self.home_mount + "/" or "/./" in self.home_mount + "/":
            raise SessionConfigError(
                f"BYOI_SESSION_HOME_MOUNT={self.home_mount!r} must be an absolute path without . or .. parts"
            )
        if self.homes_root is not None and not _is_plain_absolute(self.homes_root):
            raise SessionConfigError(
                f"BYOI_SESSION_HOMES_ROOT={str(self.homes_root)!r} must be an absolute path without . or .. parts"
            )
        if self.runtime not in ("docker", "kubernetes"):
            raise SessionConfigError(f"BYOI_RUNTIME={self.runtime!r} must be docker or kubernetes")
        if (self.kube_node_cpus > 0) != (self.kube_node_memory_gib > 0):
            raise SessionConfigError(
                "BYOI_SESSION_KUBE_NODE_CPUS and BYOI_SESSION_KUBE_NODE_MEMORY_GIB go together: set both, or neither "
                "(then byoi lists the cluster's nodes)"
            )
        if self.kube_access_mode not in ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"):
            raise SessionConfigError(
                f"BYOI_SESSION_KUBE_ACCESS_MODE={self.kube_access_mode!r} must be ReadWriteOnce, ReadWriteMany "
                "or ReadWriteOncePod"
            )
        if not _NETWORK.fullmatch(self.network):
            raise SessionConfigError(f"BYOI_SESSION_NETWORK={self.network!r} is not a valid Docker network name")


def _is_plain_absolute(path: Path | str) -> bool:
    text = str(path)
    return text.startswith("/") and not any(part in (".", "..") for part in text.split("/"))


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def kube_namespace(configured: str, in_cluster_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """BYOI_SESSION_KUBE_NAMESPACE, else the namespace byoi's own pod runs in, else "default"."""
    if configured:
        return configured
    try:
        return in_cluster_file.read_text().strip() or "default"
    except OSError:
        return "default"


def label_pairs(raw: str) -> dict[str, str]:
    """`k=v,k=v` (BYOI_SESSION_KUBE_CONTROL_PLANE_LABELS) as a dict."""
    return dict(pair.split("=", 1) for pair in raw.split(",") if "=" in pair)


def _bound(low: float, inclusive: bool) -> str:
    return f"{'>=' if inclusive else '>'} {low:g}"


def _parse(key: str, raw: str, kind: str) -> object:
    if kind == "str":
        return raw
    what = "a whole number" if kind == "int" else "a number"
    try:
        return int(raw.strip()) if kind == "int" else float(raw.strip())
    except ValueError:
        raise SessionConfigError(f"{key} must be {what}, not {raw!r}") from None
