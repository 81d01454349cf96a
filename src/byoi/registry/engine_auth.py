"""The credentials byoi has for a registry host, in the form Docker Engine's `X-Registry-Auth` wants: used for a
session's pull and a build's push, so both find them the same way (a registries-file entry for that host
first, then the Docker config's `auths`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from byoi.config import RegistryConfig
from byoi.registry.client import docker_config_credentials


def engine_auth(registries: Iterable[RegistryConfig], docker_config: Path | None, host: str) -> dict[str, str] | None:
    for reg in registries:
        if reg.host == host:
            if reg.token:
                return {"identitytoken": reg.token}
            if reg.username:
                return {"username": reg.username, "password": reg.password or ""}
    creds = docker_config_credentials(docker_config).get(host)
    if creds is not None and creds.token:
        return {"identitytoken": creds.token}
    if creds is not None and creds.username:
        return {"username": creds.username, "password": creds.password or ""}
    return None
