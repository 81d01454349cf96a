"""One layer's index: every tar member as a normalised entry, plus the content of the few files the
rules read. Layers are content-addressed, so an index is computed once per digest and cached.

Entry kinds: f file, d directory, l symlink, h hard link, c/b character/block device, p FIFO,
w whiteout (the path is deleted from the layers below), o opaque directory (its lower content is hidden).
"""

from __future__ import annotations

import base64
import posixpath
from dataclasses import dataclass, field
from typing import Any

from byoi.inspect.config import Limits
from byoi.inspect.decompress import Budget, LayerDecompressor
from byoi.inspect.errors import InspectionError, LimitExceeded
from byoi.inspect.tar import Member, TarReader

FORMAT = 2  # bump when the index or the capture policy changes: old cache files are then ignored

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_KINDS = {"0": "f", "1": "h", "2": "l", "3": "c", "4": "b", "5": "d", "6": "p"}

# Files whose content the rules read, wherever a layer puts them.
CAPTURED_PATHS = frozenset(
    {
        "etc/os-release",
        "usr/lib/os-release",
        "etc/passwd",
        "usr/lib/rstudio-server/VERSION",
        "usr/lib/rstudio-server/resources/VERSION",
    }
)
CAPTURED_NAMES = frozenset({"DESCRIPTION"})  # R package metadata, in any R library

# An entry: (path, kind, mode, uid, gid, size, link). Tuples keep big indexes small in memory.
Entry = tuple[str, str, int, int, int, int, str]


def wants_content(path: str) -> bool:
    return path in CAPTURED_PATHS or path.rsplit("/", 1)[-1] in CAPTURED_NAMES


def normalise(name: str, what: str, limits: Limits) -> str:
    """The path of a tar member relative to the image root; refuse absolute paths and `..`."""
    if len(name.encode("utf-8", "replace")) > limits.max_path_bytes:
        raise LimitExceeded(f"{what} {name[:80]!r}... is longer than {limits.max_path_bytes} bytes")
    if "\0" in name:
        raise InspectionError(f"{what} {name!r} contains a NUL byte")
    if name.startswith("/"):
        raise InspectionError(f"{what} {name!r} is an absolute path (layers hold paths relative to the root)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InspectionError(f"{what} {name!r} contains '..' (it would reach outside the image root)")
    return "/".join(parts)


@dataclass
class LayerIndex:
    digest: str
    compressed_size: int = 0
    uncompressed_size: int = 0
    format: str = ""
    entries: list[Entry] = field(default_factory=list)
    contents: dict[str, bytes] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "digest": self.digest,
            "compressed_size": self.compressed_size,
            "uncompressed_size": self.uncompressed_size,
            "compression": self.format,
            "entries": self.entries,
            "contents": {p: base64.b64encode(c).decode() for p, c in self.contents.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerIndex:
        if data.get("format") != FORMAT:
            raise ValueError("index written by another version of byoi")
        return cls(
            data["digest"],
            data["compressed_size"],
            data["uncompressed_size"],
            data["compression"],
            [tuple(e) for e in data["entries"]],  # type: ignore[misc]
            {p: base64.b64decode(c) for p, c in data["contents"].items()},
        )


class LayerIndexer:
    """Build a LayerIndex from a layer blob's bytes, pushed in with `feed` as they stream in."""

    def __init__(self, digest: str, limits: Limits, budget: Budget, entry_count: list[int]) -> None:
        self.index = LayerIndex(digest)
        self.limits = limits
        self.entry_count = entry_count  # shared by all the layers of one image: [count]
        self._path = ""  # the normalised path of the member being read
        self.tar = TarReader(self._on_member, self._on_content, limits.max_header_bytes)
        self.decompressor = LayerDecompressor(self._on_tar_bytes, limits, budget)

    def feed(self, data: bytes) -> None:
        self.decompressor.feed(data)

    def finish(self) -> LayerIndex:
        self.decompressor.finish()
        self.tar.close()
        self.index.compressed_size = self.decompressor.compressed
        self.index.uncompressed_size = self.decompressor.uncompressed
        self.index.format = self.decompressor.format or ""
        return self.index

    def _on_tar_bytes(self, data: bytes) -> None:
        self.tar.feed(data)

    def _on_member(self, m: Member) -> int:
        self.entry_count[0] += 1
        if self.entry_count[0] > self.limits.max_entries:
            raise LimitExceeded(f"the image has more than {self.limits.max_entries} tar entries")
        path = self._path = normalise(m.path, "tar entry", self.limits)
        kind = _KINDS[m.type]
        link = ""
        if kind == "h":
            link = normalise(m.linkname, f"hard link {path!r} target", self.limits)
            if not link:
                raise InspectionError(f"hard link {path!r} points at the image root")
        elif kind == "l":
            if len(m.linkname) > self.limits.max_path_bytes:
                raise LimitExceeded(f"symlink {path!r} has a target longer than {self.limits.max_path_bytes} bytes")
            link = m.linkname
        elif kind in ("c", "b") and not (path == "dev" or path.startswith("dev/")):
            # Device nodes belong in /dev (which the runtime replaces anyway); elsewhere they are a way to
            # reach host devices and no image needs them.
            raise InspectionError(f"tar entry {path!r} is a {'character' if kind == 'c' else 'block'} device")
        if not path:
            return 0  # the root directory itself
        parent, name = posixpath.split(path)
        if f"/{WHITEOUT}{WHITEOUT}" in f"/{parent}/" or (name.startswith(WHITEOUT + WHITEOUT) and name != OPAQUE):
            return 0  # aufs metadata (.wh..wh.plnk, .wh..wh.aufs ...): not part of the image's tree
        if name.startswith(WHITEOUT):
            if name == OPAQUE:
                self.index.entries.append((parent, "o", 0, 0, 0, 0, ""))
            else:
                target = posixpath.join(parent, name[len(WHITEOUT) :])
                self.index.entries.append((target, "w", 0, 0, 0, 0, ""))
            return 0
        self.index.entries.append((path, kind, m.mode, m.uid, m.gid, m.size if kind == "f" else 0, link))
        if kind == "f" and m.size <= self.limits.max_capture_bytes and wants_content(path):
            return m.size
        return 0

    def _on_content(self, _m: Member, data: bytes) -> None:
        self.index.contents[self._path] = data  # content follows its own header: _path is still this member's
