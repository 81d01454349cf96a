"""Type rules for the JSON registries serve (OCI and Docker manifests, indexes, descriptors).

A registry stores what it is given: Distribution checks the Go types of a manifest it accepts, other
registries check nothing. The registry client (resolving an index) and the inspector (reading a manifest's
descriptors) both check a descriptor before using it; the rules and their wording live here, and each caller
raises its own error with the problem this module describes.
"""

from __future__ import annotations

import re
from typing import Any

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def json_type(value: Any) -> str:
    """A JSON value's type in words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def descriptor_problem(desc: Any, name: str) -> str | None:
    """What is wrong with a content descriptor (`name` says which, e.g. "layer 2"), or None when it is an
    object with a sha256 digest, a non-negative integer size and a string media type (both may be absent)."""
    if not isinstance(desc, dict):
        return f"{name} is {json_type(desc)}, not a descriptor object"
    digest = desc.get("digest")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        shown = repr(digest)[:80] if isinstance(digest, str) else json_type(digest)
        return f"{name} has no valid sha256 digest (digest is {shown})"
    size = desc.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        shown = str(size) if isinstance(size, int | float) and not isinstance(size, bool) else json_type(size)
        return f"{name} has size {shown}, not a non-negative integer"
    media_type = desc.get("mediaType")
    if media_type is not None and not isinstance(media_type, str):
        return f"{name} has a mediaType that is {json_type(media_type)}, not a string"
    return None
