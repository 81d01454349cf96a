"""Why an inspection could not complete. Messages are plain words: they become a FailureReason."""

from __future__ import annotations


class InspectionError(Exception):
    """The image's content is malformed, unsafe or too large to inspect."""


class LimitExceeded(InspectionError):
    """A size, ratio or count limit (decompression bombs, huge headers)."""


class SymlinkLoop(InspectionError):
    pass
