"""What can go wrong talking to a registry. `transient` says whether trying again may help."""

from __future__ import annotations


class RegistryError(Exception):
    transient = False


def unreachable_message(host: str, why: str) -> str:
    """The one way byoi says a registry does not answer (its client here, the Engine's pushes and pulls)."""
    return f"The registry {host} is not reachable: {why}"


class RegistryUnreachable(RegistryError):
    """The registry does not answer: stopped, a wrong address, or the network in between."""

    transient = True

    def __init__(self, host: str, why: str) -> None:
        super().__init__(unreachable_message(host, why))
        self.host = host


class RegistryServerError(RegistryError):
    transient = True


class RegistryAuthError(RegistryError):
    """The registry refused our credentials, or wants credentials we do not have."""


class RegistryNotFound(RegistryError):
    """The repository, tag or digest does not exist."""


class RegistryBadContent(RegistryError):
    """A digest mismatch, an unknown media type or a manifest that cannot be read."""


class PlatformNotFound(RegistryError):
    pass


class RegistryTLSError(RegistryError):
    """The registry's TLS certificate could not be verified: retrying will not help, configuration will."""
