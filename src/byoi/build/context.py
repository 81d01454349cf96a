"""Build contexts: `.dockerignore`, packing a directory, and checking an uploaded tar without extracting it.

A context reaches the builder only as a tar that `check_upload` and `filter_context` wrote: every member has a relative,
normalised name with no `..`; links stay inside the context; there are no devices or FIFOs; the total size
is under the limit; and what `.dockerignore` excludes is gone (except the Dockerfile and `.dockerignore`
themselves, which the builder needs, as Docker's own client does). Nothing is ever extracted to disk.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

if TYPE_CHECKING:
    import regex

DOCKERIGNORE = ".dockerignore"
# Tar streams are read, written and copied in blocks of 64 KiB. With tarfile's defaults (10 KiB stream buffers,
# 16 KiB copies) checking a 16 MB upload took 24 ms and packing it 22 ms; with 64 KiB for both, 11 ms and 18 ms.
# Larger is slower: tarfile's stream buffer is a bytes object sliced on every read (1 MiB: 48 ms to check), and
# in a new process (the CLI) each block over glibc's mmap threshold (128 KiB at first) is mapped and faulted in.
_BLOCK = 1 << 16
MAX_MEMBERS = 200_000
# Extended headers (PAX, and GNU long names and link names) are read whole and, for PAX, parsed by CPython in
# time quadratic in their size: a 65 KB upload with a 64 MiB PAX header took 157 s and about 480 MB. A real
# path is at most a few KiB, so anything bigger is refused before tarfile reads it.
MAX_EXTENDED_HEADER_BYTES = 64 << 10
_EXTENDED_HEADERS = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


class ContextError(ValueError):
    """The build context is not acceptable; the message names the member and what is wrong."""


def _blocks(tar: tarfile.TarFile) -> tarfile.TarFile:
    """`tar`, copying members' data in blocks of _BLOCK (tarfile.open takes `copybufsize`, but its stubs do not)."""
    tar.copybufsize = _BLOCK  # type: ignore[attr-defined]
    return tar


# -- .dockerignore (the semantics of moby/patternmatcher, which `docker build` uses) ---------------


class _Pattern(NamedTuple):
    text: str
    exclusion: bool
    rx: regex.Pattern[str]


def _compile(pattern: str) -> regex.Pattern[str]:
    """The pattern as the regular expression moby/patternmatcher makes of it, compiled by `regex`, not `re`: its
    `[...]` classes pass through to Go's regexp, which knows POSIX classes (`[[:alpha:]]`), as `regex` does and
    `re` does not. Imported here, so packing a context without a .dockerignore never loads it (10 ms)."""
    import regex

    out, i = ["^"], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 1
                if i + 1 < len(pattern) and pattern[i + 1] == "/":
                    i += 1  # "**/" is treated as "**"
                out.append(".*" if i + 1 >= len(pattern) else "(.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            i += 1
            out.append(regex.escape(pattern[i]) if i < len(pattern) else "\\\\")
        elif ch in ".+()|{}$^" and ch != "^":
            out.append("\\" + ch)
        else:
            out.append(ch)  # letters, "/", and "[...]" classes pass through as in filepath.Match
        i += 1
    out.append("$")
    try:
        return regex.compile("".join(out))
    except regex.error as exc:
        raise ContextError(f".dockerignore pattern {pattern!r} is not valid: {exc}") from None


class DockerIgnore:
    """Patterns from a `.dockerignore`; `excluded(path)` as `docker build` decides it (last match wins,
    `!` re-includes, a pattern matching a parent directory matches everything under it)."""

    def __init__(self, text: str = "") -> None:
        self.patterns: list[_Pattern] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            cleaned = posixpath.normpath(line)
            if len(cleaned) > 1 and cleaned.startswith("/"):
                cleaned = cleaned.lstrip("/")
            self.patterns.append(_Pattern(cleaned, exclusion, _compile(cleaned)))

    @property
    def has_exceptions(self) -> bool:
        return any(p.exclusion for p in self.patterns)

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        parents = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        matched = False
        for p in self.patterns:
            if p.exclusion != matched:
                continue
            hit = bool(p.rx.match(path)) or any(p.rx.match(parent) for parent in parents)
            if hit:
                matched = not p.exclusion
        return matched


# -- names and members ------------------------------------------------------------------------------


def clean_relative(path: str, what: str) -> str:
    """A normalised relative path inside the context, or ContextError naming `what`."""
    if not path or "\0" in path:
        raise ContextError(f"{what} {path!r} is empty or contains a NUL byte")
    if path.startswith("/"):
        raise ContextError(f"{what} {path!r} is an absolute path; paths in a build context must be relative")
    if ".." in path.split("/"):
        raise ContextError(f"{what} {path!r} contains '..'; paths in a build context must stay inside it")
    cleaned = posixpath.normpath(path)
    if cleaned in ("", "."):
        return "."
    return cleaned


MAX_LINK_HOPS = 40  # as Linux's limit on symbolic links followed in one path lookup


class Members:
    """Checks a tar's members in order, as an extractor would meet them.

    Names are checked as written, and link targets as an extractor would follow them: through the symbolic
    links met so far. A member whose parent directory is (or goes through) an earlier symbolic link is refused
    (`here -> .` then `here/evil`): it would be written wherever that link points. Because a link may point at
    a name that only later becomes a link, `finish()` checks every link again against the whole archive.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.links: dict[str, str] = {}  # symbolic link member -> its target, as written

    def __len__(self) -> int:
        return len(self.seen)

    def check(self, info: tarfile.TarInfo) -> str:
        """Check one member; return its cleaned name (the caller adds it with `add`)."""
        name = clean_relative(info.name, "tar member")
        if info.isdev() or info.isfifo():
            raise ContextError(f"tar member {info.name!r} is a device or FIFO; a build context holds only files, "
                               "directories and links")  # fmt: skip
        if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
            raise ContextError(f"tar member {info.name!r} has an unsupported type {info.type!r}")
        via = self._link_on_path(name)
        if via is not None:
            raise ContextError(
                f"tar member {info.name!r} lies under {via!r}, an earlier symbolic link in the archive; "
                "members must be inside real directories"
            )
        if info.issym():
            if info.linkname.startswith("/"):
                raise ContextError(
                    f"symbolic link {info.name!r} points to the absolute path {info.linkname!r}, outside the context"
                )
            self._resolve_link(name, info.linkname, info.name)
        if info.islnk():
            target = clean_relative(info.linkname, f"hard link {info.name!r} target")
            if target not in self.seen:
                raise ContextError(f"hard link {info.name!r} points to {info.linkname!r}, which is not in the context")
            if target in self.links:
                # Extracted, it would be a second symbolic link with the same target text in another directory,
                # where that text was never checked (`sub/up -> ..` hard-linked as `up`, which then points
                # outside the context).
                raise ContextError(
                    f"hard link {info.name!r} points to {info.linkname!r}, a symbolic link; a hard link must point "
                    "to a file"
                )
            if self._link_on_path(target) is not None:
                raise ContextError(
                    f"hard link {info.name!r} points to {info.linkname!r} through the symbolic link "
                    f"{self._link_on_path(target)!r}"
                )
        return name

    def add(self, name: str, info: tarfile.TarInfo) -> None:
        self.seen.add(name)
        if info.issym():
            self.links[name] = info.linkname
        else:
            self.links.pop(name, None)  # a later member replaces an earlier link of the same name

    def finish(self) -> None:
        """Check every symbolic link again, now that all links are known."""
        for name, target in self.links.items():
            self._resolve_link(name, target, name)

    def _link_on_path(self, name: str) -> str | None:
        """The first proper parent of `name` that is a symbolic link member, if any."""
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in self.links:
                return parent
        return None

    def _resolve_link(self, name: str, target: str, shown: str) -> None:
        """Follow `target` from the link's directory through the links known so far; refuse it if it leaves
        the context (or loops)."""
        parts = name.split("/")[:-1]
        pending = list(reversed(target.split("/")))
        hops = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise ContextError(f"symbolic link {shown!r} points to {target!r}, outside the context")
                parts.pop()
                continue
            parts.append(part)
            via = self.links.get("/".join(parts))
            if via is None:
                continue
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise ContextError(
                    f"symbolic link {shown!r} points to {target!r}, which goes through more than {MAX_LINK_HOPS} "
                    "links (a loop)"
                )
            parts.pop()
            pending.extend(reversed(via.split("/")))


def check_member(info: tarfile.TarInfo, members: Members) -> str:
    """Check one member against those before it, and record it; return its cleaned name."""
    name = members.check(info)
    if name != ".":
        members.add(name, info)
    return name


# -- packing a directory (client side) -------------------------------------------------------------


class PackResult(NamedTuple):
    size: int  # bytes of file content packed
    files: int
    excluded: int
    dockerfile: str  # the Dockerfile's path inside the tar


def _walk(root: Path, ignore: DockerIgnore) -> Iterator[tuple[Path, str]]:
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        keep = []
        for d in sorted(dirnames):
            rel = d if rel_dir == "." else f"{rel_dir}/{d}"
            full = Path(dirpath) / d
            # A symlinked directory is packed as a link, never followed.
            if full.is_symlink():
                filenames.append(d)
            elif not (ignore.excluded(rel) and not ignore.has_exceptions):
                keep.append(d)
                yield full, rel
        dirnames[:] = keep
        for f in sorted(filenames):
            yield Path(dirpath) / f, (f if rel_dir == "." else f"{rel_dir}/{f}")


def pack_directory(root: Path, out: BinaryIO, dockerfile: str | None = None, limit: int | None = None) -> PackResult:
    """Write `root` as an uncompressed tar to `out`, honouring `root/.dockerignore`.

    `dockerfile` may lie outside `root` (like `docker build -f`); it is then packed as `.byoi.Dockerfile`.
    Raises ContextError for a context over `limit` bytes, links leaving it, devices, or a missing Dockerfile.
    """
    root = root.resolve()
    if not root.is_dir():
        raise ContextError(f"build context {root} is not a directory")
    ignore_file = root / DOCKERIGNORE
    ignore = DockerIgnore(ignore_file.read_text(errors="replace") if ignore_file.is_file() else "")
    df_path = Path(dockerfile) if dockerfile else root / "Dockerfile"
    if not df_path.is_absolute():
        df_path = (Path.cwd() / df_path) if dockerfile else df_path
    df_path = df_path.resolve()
    if not df_path.is_file():
        raise ContextError(f"Dockerfile {df_path} does not exist")
    inside = df_path.is_relative_to(root)
    df_name = df_path.relative_to(root).as_posix() if inside else ".byoi.Dockerfile"
    always = {DOCKERIGNORE, df_name}
    size = files = excluded = 0
    members = Members()
    with _blocks(tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_BLOCK)) as tar:
        for full, rel in _walk(root, ignore):
            if rel not in always and ignore.excluded(rel):
                excluded += 1
                continue
            info = tar.gettarinfo(str(full), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            check_member(info, members)
            if info.isfile():
                size += info.size
                files += 1
                if limit is not None and size > limit:
                    raise ContextError(f"build context {root} is larger than the limit of {limit} bytes")
                with full.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
        if not inside:
            data = df_path.read_bytes()
            info = tarfile.TarInfo(df_name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(df_path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
        members.finish()
    return PackResult(size, files, excluded, df_name)


# -- checking an uploaded tar (server side) --------------------------------------------------------


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses an oversized extended header before tarfile reads and parses it."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADERS and self.size > MAX_EXTENDED_HEADER_BYTES:
            raise ContextError(
                f"build context has an extended tar header of {self.size} bytes, over the limit of "
                f"{MAX_EXTENDED_HEADER_BYTES}; a path or link name that long cannot be built"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]


class ContextSummary(NamedTuple):
    size: int  # bytes of file content kept
    files: int
    excluded: int


def check_upload(src: BinaryIO, raw_path: Path, limit: int) -> ContextSummary:
    """Check every member of the uploaded tar (or tar.gz) `src`, streamed, and copy it to `raw_path` with
    cleaned names and no owners. Raises ContextError (leaving no file) when any member is unacceptable."""
    total = files = 0
    members = Members()
    try:
        with (
            raw_path.open("wb") as raw,
            tarfile.open(fileobj=src, mode="r|*", tarinfo=_BoundedTarInfo, bufsize=_BLOCK) as tin,
            _blocks(tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_BLOCK)) as tout,
        ):
            for info in tin:
                name = check_member(info, members)
                if len(members) > MAX_MEMBERS:
                    raise ContextError(f"build context has more than {MAX_MEMBERS} entries")
                if name == ".":
                    continue
                info.name = name
                if info.islnk():
                    info.linkname = clean_relative(info.linkname, "hard link target")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                # The member's PAX records take priority over its fields when it is written again, so keeping them
                # would bring back the owners (uid, gid, uname, gname) and the uncleaned path and link names, and
                # carry extended attributes (file capabilities among them) into the build. tarfile writes the
                # records a member needs (long names, large sizes) from its fields.
                info.pax_headers = {}
                if info.isfile():
                    total += info.size
                    files += 1
                    if total > limit:
                        raise ContextError(f"build context is larger than the limit of {limit} bytes (uncompressed)")
                    tout.addfile(info, tin.extractfile(info))
                else:
                    tout.addfile(info)
            members.finish()
    except tarfile.TarError as exc:
        raw_path.unlink(missing_ok=True)
        raise ContextError(f"build context is not a valid tar archive: {exc}") from None
    except EOFError:
        raw_path.unlink(missing_ok=True)
        raise ContextError("build context tar archive is truncated") from None
    except BaseException:
        raw_path.unlink(missing_ok=True)
        raise
    return ContextSummary(total, files, 0)


def _read_member(tar: tarfile.TarFile, name: str, limit: int = 1 << 20) -> str | None:
    try:
        info = tar.getmember(name)
    except KeyError:
        return None
    fh = tar.extractfile(info) if info.isfile() else None
    return fh.read(limit).decode(errors="replace") if fh else None


def context_has_file(raw_path: Path, name: str) -> bool:
    """Whether the checked context holds a file (or link) called `name`."""
    with tarfile.open(raw_path, mode="r:") as tar:
        try:
            return not tar.getmember(name).isdir()
        except KeyError:
            return False


def filter_context(raw_path: Path, dst_path: Path, dockerfile: str) -> ContextSummary:
    """Copy the checked context to `dst_path` leaving out what its `.dockerignore` excludes. The Dockerfile
    and `.dockerignore` are always kept (Docker's client does the same; the daemon drops them from COPY).
    Without a `.dockerignore` nothing is left out: `dst_path` is then a hard link to the checked context rather
    than a copy of it (a 16 MB context took 30 to 100 ms to copy)."""
    size = files = excluded = 0
    with tarfile.open(raw_path, mode="r:") as tin:
        rules = _read_member(tin, DOCKERIGNORE)
        if rules is None:
            kept = [info for info in tin.getmembers() if info.isfile()]
            with contextlib.suppress(OSError):  # a file system without hard links: copied below
                os.link(raw_path, dst_path)
                return ContextSummary(sum(info.size for info in kept), len(kept), 0)
        ignore = DockerIgnore(rules or "")
        always = {DOCKERIGNORE, dockerfile}
        with (
            dst_path.open("wb") as dst,
            _blocks(tarfile.open(fileobj=dst, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_BLOCK)) as tout,
        ):
            for info in tin:
                if info.name not in always and ignore.excluded(info.name):
                    excluded += 1
                    continue
                if info.isfile():
                    size += info.size
                    files += 1
                    tout.addfile(info, tin.extractfile(info))
                else:
                    tout.addfile(info)
    return ContextSummary(size, files, excluded)
