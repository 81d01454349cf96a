"""Parse container image references (`[registry/]repository[:tag][@sha256:digest]`), as Docker does."""

from __future__ import annotations

import re
from typing import NamedTuple

# From the distribution reference grammar.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG = re.compile(r"[\w][\w.-]{0,127}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?"
)


# Docker Hub's names: a reference without a registry means it, and the Engine (and BuildKit) look its credentials up
# under the key its CLI writes, DOCKER_HUB_KEY.
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_KEY = "https://index.docker.io/v1/"


class InvalidReference(ValueError):
    pass


class Reference(NamedTuple):
    registry: str | None  # host[:port]; None means "the default registry"
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def selector(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag (default `latest`)."""
        return self.digest or self.tag or "latest"

    def with_registry(self, registry: str) -> Reference:
        return Reference(registry, self.repository, self.tag, self.digest)

    def pinned(self, digest: str) -> str:
        return f"{self.registry}/{self.repository}@{digest}"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}" if self.registry else self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse(text: str) -> Reference:
    """Parse a reference; raise InvalidReference with a message that says what is wrong."""
    if not text or text != text.strip():
        raise InvalidReference(f"image reference {text!r} is empty or has surrounding spaces")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST.fullmatch(digest):
            raise InvalidReference(f"digest {digest!r} in {text!r} is not of the form sha256:<64 hex digits>")
    registry = None
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.fullmatch(first):
            raise InvalidReference(f"registry host {first!r} in {text!r} is not a valid host[:port]")
        registry, rest = first, remainder
    tag = None
    name, colon, maybe_tag = rest.rpartition(":")
    if colon and "/" not in maybe_tag:
        rest, tag = name, maybe_tag
        if not TAG.fullmatch(tag):
            raise InvalidReference(f"tag {tag!r} in {text!r} is not a valid tag")
    if not REPOSITORY.fullmatch(rest) or len(rest) > 255:
        raise InvalidReference(
            f"repository {rest!r} in {text!r} is not a valid repository name "
            "(lower-case letters, digits and separators . _ __ - between path components)"
        )
    return Reference(registry, rest, tag, digest)


def image_registry(text: str) -> str:
    """The registry host[:port] a reference pulls from: `docker.io` when it names none (or is not valid)."""
    try:
        return parse(text).registry or "docker.io"
    except InvalidReference:
        return "docker.io"
