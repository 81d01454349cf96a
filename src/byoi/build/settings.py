"""Build settings, read from the environment by the composition root (`BuildSettings.from_env()`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class BuildSettings:
    concurrency: int = 2  # builds running at once; the rest wait QUEUED, in the order they were started
    context_limit: int = 2 * GiB  # bytes of a build context (uncompressed, after the upload)
    log_limit: int = 16 * MiB  # bytes of a build's log on disk; later output is dropped, the end is kept
    resume_attempts: int = 2  # times a build is restarted after its server died before it is marked FAILED
    context_ttl: float = 3600.0  # seconds an uploaded context waits for StartImageBuild
    docker_host: str | None = None  # Docker Engine URL; None: DOCKER_HOST or the local socket
    # Uploaded contexts and build logs; None: <data dir>/builds. Replicas share one (a shared file system), so a
    # context uploaded to one is built by any, and a build a stopped replica ran is resumed by another.
    dir: Path | None = None
    builder: str = "docker"  # docker | kubernetes (BYOI_BUILDER, `byoi server --builder`)
    # Builds on Kubernetes: a rootless BuildKit Job per build (docs/kubernetes.md)
    kube_config: Path | None = None  # a kubeconfig; None: in-cluster config, else KUBECONFIG / ~/.kube/config
    kube_namespace: str = ""  # "": byoi's own namespace in the cluster, else "default"
    kube_image: str = "moby/buildkit:rootless"  # BuildKit's rootless image (mirror it where the cluster pulls)
    # Where the Job fetches the context from: a URL of byoi the cluster reaches; "": byoi's public URL
    context_base_url: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> BuildSettings:
        """BYOI_BUILD_CONCURRENCY, BYOI_BUILD_CONTEXT_LIMIT, BYOI_BUILD_LOG_LIMIT, BYOI_BUILD_RESUME_ATTEMPTS,
        BYOI_BUILD_CONTEXT_TTL, BYOI_BUILD_DIR, and DOCKER_HOST."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            key = "BYOI_BUILDER" if f.name == "builder" else f"BYOI_BUILD_{f.name.upper()}"
            if f.name in ("builder", "kube_namespace", "kube_image", "context_base_url"):
                if env.get(key):
                    values[f.name] = env[key]
            elif f.name == "kube_config":
                values[f.name] = Path(env[key]) if env.get(key) else None
            elif f.name == "docker_host":
                values[f.name] = env.get("BYOI_BUILD_DOCKER_HOST") or env.get("DOCKER_HOST") or None
            elif f.name == "dir":
                raw = env.get(key) or ""
                if raw and (not raw.startswith("/") or any(p in (".", "..") for p in raw.split("/"))):
                    raise ValueError(f"{key}={raw!r} must be an absolute path without . or .. parts")
                values[f.name] = Path(raw) if raw else None
            elif key in env:
                cast = float if f.type in ("float", float) else int
                try:
                    values[f.name] = cast(env[key])
                except ValueError:
                    raise ValueError(f"{key} must be a number, not {env[key]!r}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.concurrency < 1:
            raise ValueError("BYOI_BUILD_CONCURRENCY must be at least 1")
        if settings.builder not in ("docker", "kubernetes"):
            raise ValueError(f"BYOI_BUILDER={settings.builder!r} must be docker or kubernetes")
        base = settings.context_base_url
        if base and not (base.startswith(("http://", "https://")) and "?" not in base and "#" not in base):
            raise ValueError(f"BYOI_BUILD_CONTEXT_BASE_URL={base!r} must be an http:// or https:// URL")
        return settings
