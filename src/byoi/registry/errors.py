"""What can go wrong talking to a registry. `transient` says whether trying again may help."""

from __future__ import annotations


class RegistryError(Exception):
    transient = False


class RegistryUnreachable(RegistryError):
    transient = True


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
