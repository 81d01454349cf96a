"""A push-mode tar reader: fed decompressed bytes as they arrive, it reports each member's header and,
only for members the caller asks for, their content. Memory stays bounded whatever the input: file
data that is not wanted is skipped without being copied, and PAX / GNU long-name headers are refused
above a size limit (a "huge header" would otherwise be buffered whole).

It understands ustar, GNU (long names and links, base-256 numbers) and PAX (path, linkpath, size, uid,
gid) headers, which covers what Docker, BuildKit, buildah and plain `tar` write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from byoi.inspect.errors import InspectionError, LimitExceeded

BLOCK = 512

REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO = "0", "1", "2", "3", "4", "5", "6"
_REGULAR_TYPES = {"0", "\0", "7"}
_KNOWN_TYPES = {"0", "\0", "1", "2", "3", "4", "5", "6", "7", "x", "g", "L", "K", "S"}

_HEADER, _SKIP, _COLLECT, _END = range(4)


@dataclass(slots=True)
class Member:
    path: str  # as written in the archive (normalised by the caller)
    type: str  # one of the type flags above ("0" for every regular file)
    mode: int
    uid: int
    gid: int
    size: int
    linkname: str


def _number(field: bytes, what: str) -> int:
    if field and not field[0] & 0x80:
        try:  # the common case: octal digits ended by NUL or space
            return int(field.rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            pass  # leading spaces, embedded NULs: the careful path below
    if field and field[0] & 0x80:  # GNU base-256: big sizes, uids
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InspectionError(f"tar header has a {what} field that is not a number ({text[:20]!r})") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "replace")


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    return stored == signed


def parse_pax(data: bytes) -> dict[str, str]:
    """PAX extended header records: `<length> <key>=<value>\\n`."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise InspectionError("tar PAX header has a record without a valid length") from None
        if length <= 0 or pos + length > len(data):
            raise InspectionError("tar PAX header has a record whose length runs past the header")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return records


class TarReader:
    """Feed bytes with `feed`, then call `close`. `on_member(member)` returns the number of content bytes
    it wants (0 for none); wanted content arrives through `on_content(member, data)`."""

    def __init__(
        self,
        on_member: Callable[[Member], int],
        on_content: Callable[[Member, bytes], None],
        max_header_bytes: int,
    ) -> None:
        self.on_member = on_member
        self.on_content = on_content
        self.max_header_bytes = max_header_bytes
        self._state = _HEADER
        self._buf = bytearray()
        self._remaining = 0  # bytes left to skip or collect
        self._after = 0  # padding to skip after collecting
        self._collecting: tuple[str, Member | None, int] = ("", None, 0)  # (kind, member, bytes wanted)
        self._pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._long_link: str | None = None
        self.ended = False

    def feed(self, data: bytes | memoryview) -> None:
        mv = memoryview(data)
        pos, n = 0, len(mv)
        while pos < n:
            state = self._state
            if state == _SKIP:
                take = min(self._remaining, n - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _HEADER
            elif state == _HEADER:
                if not self._buf and n - pos >= BLOCK:
                    block = bytes(mv[pos : pos + BLOCK])
                    pos += BLOCK
                else:
                    take = min(BLOCK - len(self._buf), n - pos)
                    self._buf += mv[pos : pos + take]
                    pos += take
                    if len(self._buf) < BLOCK:
                        continue
                    block = bytes(self._buf)
                    self._buf.clear()
                self._header(block)
            elif state == _COLLECT:
                take = min(self._remaining, n - pos)
                self._buf += mv[pos : pos + take]
                pos += take
                self._remaining -= take
                if not self._remaining:
                    collected = bytes(self._buf)
                    self._buf.clear()
                    self._collected(collected)
            else:  # _END: the rest (zero padding) is read by the caller only to verify the blob digest
                return

    def close(self) -> None:
        """Raise if the archive stops in the middle of a header or of a member's data."""
        if self._state == _END:
            return
        if self._state != _HEADER or self._buf:
            raise InspectionError("layer is truncated: its tar stream ends in the middle of a member")
        if self._pax or self._long_name is not None or self._long_link is not None:
            raise InspectionError("layer is truncated: its tar stream ends after an extended header")
        self.ended = True  # EOF on a header boundary without the end marker: accepted, as Go's reader does

    # -- headers --------------------------------------------------------------------------------

    def _skip(self, count: int) -> None:
        if count:
            self._state, self._remaining = _SKIP, count
        else:
            self._state = _HEADER

    def _collect(self, kind: str, member: Member | None, size: int, wanted: int) -> None:
        """Collect `wanted` bytes of a member of `size` bytes, then skip the rest and its padding."""
        self._collecting = (kind, member, wanted)
        self._after = size - wanted + (-size % BLOCK)
        if wanted:
            self._state, self._remaining = _COLLECT, wanted
        else:
            self._collected(b"")

    def _collected(self, data: bytes) -> None:
        kind, member, _ = self._collecting
        if kind == "pax":
            self._pax.update(parse_pax(data))
        elif kind == "long-name":
            self._long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == "long-link":
            self._long_link = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == "content" and member is not None and self._collecting[2]:
            self.on_content(member, data)
        self._skip(self._after)

    def _header(self, block: bytes) -> None:
        if block.count(0) == BLOCK:
            self._state = _END
            self.ended = True
            return
        try:
            valid = _checksum_ok(block)
        except InspectionError:
            valid = False
        if not valid:
            raise InspectionError("layer is corrupt: a tar header fails its checksum (not a tar stream?)")
        typeflag = chr(block[156])
        size = _number(block[124:136], "size")
        if size < 0:
            raise InspectionError("tar header has a negative size")
        if typeflag in ("x", "g", "L", "K"):
            if size > self.max_header_bytes:
                raise LimitExceeded(
                    f"tar extended header of {size} bytes is larger than the {self.max_header_bytes}-byte limit"
                )
            kind = {"x": "pax", "g": "global", "L": "long-name", "K": "long-link"}[typeflag]
            self._collect(kind, None, size, size if kind != "global" else 0)
            return
        name = _text(block[0:100])
        if block[257:263] == b"ustar\x00":  # POSIX ustar: the prefix field extends the name
            prefix = _text(block[345:500])
            if prefix:
                name = f"{prefix}/{name}"
        linkname = _text(block[157:257])
        pax, self._pax = self._pax, {}
        if self._long_name is not None:
            name, self._long_name = self._long_name, None
        if self._long_link is not None:
            linkname, self._long_link = self._long_link, None
        name = pax.get("path", name)
        linkname = pax.get("linkpath", linkname)
        try:
            if "size" in pax:
                size = int(pax["size"])
            uid = int(pax["uid"]) if "uid" in pax else _number(block[108:116], "uid")
            gid = int(pax["gid"]) if "gid" in pax else _number(block[116:124], "gid")
        except ValueError:
            raise InspectionError(f"tar PAX header of {name!r} has a size, uid or gid that is not a number") from None
        mode = _number(block[100:108], "mode") & 0o7777
        if typeflag in _REGULAR_TYPES or typeflag not in _KNOWN_TYPES:
            typeflag = REGULAR  # unknown types are read as regular files, as Go's archive/tar does
        if typeflag == "S":  # GNU sparse: the data in the archive is the map plus the non-hole parts
            typeflag = REGULAR
        member = Member(name, typeflag, mode, uid, gid, size, linkname)
        # Links, devices, directories and FIFOs carry no data whatever their size field says (as in Go).
        data_size = size if typeflag == REGULAR else 0
        wanted = min(self.on_member(member), data_size)
        self._collect("content", member, data_size, wanted)
