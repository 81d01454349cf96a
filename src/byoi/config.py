"""Server configuration: one typed object, built from CLI options and environment variables."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs
import regex

from byoi.inspect.config import InspectionConfig

DEFAULT_REGISTRY = "http://127.0.0.1:5000"
DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
CREDENTIALS_PROFILE = "byoi"  # the profile byoi writes its administrator key under


def default_data_dir() -> Path:
    env = os.environ.get("BYOI_DATA_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("byoi"))


@dataclass(frozen=True)
class RegistryConfig:
    """One registry byoi may resolve images in, with optional credentials."""

    url: str  # scheme://host[:port]
    username: str | None = None
    password: str | None = None
    token: str | None = None  # a ready bearer token / identity token, for registries that issue them
    ca_file: str | None = None  # PEM bundle to verify an HTTPS registry with a private CA

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1].rstrip("/")

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]


_REGISTRY_URL = regex.compile(r"(https?)://([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\])(:[0-9]{1,5})?/?")


def parse_registry_url(url: str) -> str:
    """Normalise a registry URL; raise ValueError naming what is wrong."""
    if "://" not in url:
        url = "https://" + url
    if not _REGISTRY_URL.fullmatch(url):
        raise ValueError(f"registry URL {url!r} must look like http(s)://host[:port]")
    return url.rstrip("/")


def load_registries_file(path: Path) -> list[RegistryConfig]:
    """Read `[[registry]]` tables (url, username, password or password_env, token) from a TOML file."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    result = []
    for i, entry in enumerate(data.get("registry", [])):
        if "url" not in entry:
            raise ValueError(f"{path}: registry entry {i + 1} has no url")
        password = entry.get("password")
        if entry.get("password_env"):
            password = os.environ.get(entry["password_env"])
            if password is None:
                raise ValueError(f"{path}: environment variable {entry['password_env']} is not set")
        result.append(
            RegistryConfig(
                url=parse_registry_url(entry["url"]),
                username=entry.get("username"),
                password=password,
                token=entry.get("token"),
                ca_file=entry.get("ca_file"),
            )
        )
    return result


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database_url: str | None = None  # None: SQLite file in the data dir
    # The first registry is the default one: a BaseImage without a registry host resolves there.
    registries: tuple[RegistryConfig, ...] = (RegistryConfig(DEFAULT_REGISTRY),)
    docker_config: Path | None = None  # a Docker config.json with "auths" to read credentials from
    region: str = "us-east-1"
    account_id: str = "000000000000"
    platform: str = "linux/amd64"
    # Background work
    worker_concurrency: int = 4
    lease_seconds: float = 30.0
    resolve_attempts: int = 4  # transient registry errors are retried this many times in all
    retry_base_delay: float = 1.0  # seconds; doubles each attempt
    registry_timeout: float = 20.0
    # Request signing
    max_clock_skew_seconds: int = 300
    master_key: str | None = None  # Fernet key for secrets at rest; None: <data-dir>/master.key
    # Image inspection (rules, levels, limits): byoi.inspect.config, from --inspection-config FILE
    inspection: InspectionConfig = field(default_factory=InspectionConfig)
    # HTTPS: a PEM certificate (chain) and its private key; None serves plain HTTP
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Where sessions run (`byoi server --runtime`): docker or kubernetes; None: BYOI_RUNTIME, else docker
    runtime: str | None = None
    # How images are built (`byoi server --builder`): docker or kubernetes; None: BYOI_BUILDER, else docker
    builder: str | None = None

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "byoi.db"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.sqlite_path}"

    @property
    def default_registry(self) -> RegistryConfig:
        return self.registries[0]

    @property
    def endpoint_url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"


# Settings tunable from the environment only: BYOI_<NAME>, its type, and the bound a value must respect
# (a lease or timeout of 0 never holds, a pool of 0 workers never runs anything).
TUNING: dict[str, tuple[type, str]] = {
    "lease_seconds": (float, "> 0"),
    "resolve_attempts": (int, ">= 1"),
    "retry_base_delay": (float, ">= 0"),
    "worker_concurrency": (int, ">= 1"),
    "registry_timeout": (float, "> 0"),
}


def tuning_from_env(env: Mapping[str, str]) -> dict[str, float | int]:
    """The TUNING values set in `env`; raise ValueError naming the variable and the bad value."""
    values: dict[str, float | int] = {}
    for name, (kind, bound) in TUNING.items():
        key = f"BYOI_{name.upper()}"
        if key not in env:
            continue
        raw = env[key]
        what = "a whole number" if kind is int else "a number"
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ValueError(f"{key} must be {what}, not {raw!r}") from None
        op, limit = bound.split()
        in_range = value > float(limit) if op == ">" else value >= float(limit)
        if not math.isfinite(value) or not in_range:  # float() also takes "nan" and "inf"
            raise ValueError(f"{key} must be {what} {bound}, not {raw!r}")
        values[name] = value
    return values
