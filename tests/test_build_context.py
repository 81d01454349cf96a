"""Build contexts without a server: `.dockerignore` semantics, packing, and the checks on uploaded tars."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from byoi.build.base import BuildFailed
from byoi.build.context import ContextError, DockerIgnore, check_upload, filter_context, pack_directory
from byoi.build.logstore import BuildLog, read_records, render_text
from byoi.build.settings import BuildSettings
from byoi.services.build_runner import failure_reason


def test_dockerignore_follows_docker_semantics():
    ignore = DockerIgnore("# comment\n*.log\ndata/\n!data/keep.txt\n**/__pycache__\n/secret\nbuild*\n")
    excluded = ["a.log", "data", "data/big.bin", "src/__pycache__/m.pyc", "__pycache__/x", "secret", "secret/x"]
    kept = ["x/a.log", "data/keep.txt", "src/buildme", "Dockerfile", "secrets"]
    assert [p for p in excluded if not ignore.excluded(p)] == []
    assert [p for p in kept if ignore.excluded(p)] == []
    assert ignore.excluded("buildme")  # "build*" matches at the top level only, as in Docker


def test_dockerignore_classes_are_gos_posix_classes_included():
    """moby/patternmatcher hands `[...]` to Go's regexp, which knows `[[:digit:]]`: so does the reader here
    (Python's own `re` would take it as `[[:digit:]` followed by `]`, and warn of a nested set)."""
    ignore = DockerIgnore("log[[:digit:]].txt\ncache[!a-c]\n")
    assert ignore.excluded("log7.txt") and not ignore.excluded("logx.txt") and not ignore.excluded("log:].txt")
    assert ignore.excluded("cache!") and not ignore.excluded("cached")  # Go's `[!…]` is a class holding "!"


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None, gz: bool = False) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info in members:
            content = (data or {}).get(info.name)
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    raw = buf.getvalue()
    return io.BytesIO(gzip.compress(raw) if gz else raw)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("/etc/passwd"), "absolute path"),
        (_member("../escape.txt"), "contains '..'"),
        (_member("a/../../escape.txt"), "contains '..'"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "points to the absolute path"),
        (_member("sub/link", tarfile.SYMTYPE, "../../outside"), "outside the context"),
        (_member("hard", tarfile.LNKTYPE, "missing.txt"), "not in the context"),
        (_member("dev", tarfile.CHRTYPE), "device or FIFO"),
        (_member("fifo", tarfile.FIFOTYPE), "device or FIFO"),
    ],
)
def test_unsafe_members_are_refused_and_nothing_is_written(tmp_path: Path, member, message):
    src = _tar([_member("Dockerfile"), member], {"Dockerfile": b"FROM scratch\n"})
    with pytest.raises(ContextError, match=message):
        check_upload(src, tmp_path / "raw.tar", 10_000)
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "escape.txt").exists()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        # A link to the context's root, then a member under it: written wherever the link points.
        ([_member("here", tarfile.SYMTYPE, "."), _member("here/evil", tarfile.SYMTYPE, "../etc/passwd")],
         "tar member 'here/evil' lies under 'here', an earlier symbolic link"),
        ([_member("sub", tarfile.DIRTYPE), _member("sub/up", tarfile.SYMTYPE, ".."),
          _member("sub/up/up2", tarfile.SYMTYPE, "..")], "tar member 'sub/up/up2' lies under 'sub/up'"),
        ([_member("d", tarfile.SYMTYPE, "sub"), _member("d/file")], "tar member 'd/file' lies under 'd'"),
        # A target that is inside by its name but outside once an earlier link is followed.
        ([_member("sub", tarfile.DIRTYPE), _member("sub/root", tarfile.SYMTYPE, ".."),
          _member("sub/m", tarfile.SYMTYPE, "root/..")], "symbolic link 'sub/m' points to 'root/..', outside"),
        # ... or once a link that comes later in the archive is followed.
        ([_member("m", tarfile.SYMTYPE, "sub/r/.."), _member("sub", tarfile.DIRTYPE),
          _member("sub/r", tarfile.SYMTYPE, "..")], "symbolic link 'm' points to 'sub/r/..', outside"),
        ([_member("a", tarfile.SYMTYPE, "b"), _member("b", tarfile.SYMTYPE, "a")], "more than 40 links"),
        ([_member("sub", tarfile.DIRTYPE), _member("sub/a.txt"), _member("d", tarfile.SYMTYPE, "sub"),
          _member("h", tarfile.LNKTYPE, "d/a.txt")], "hard link 'h' points to 'd/a.txt'"),
    ],
)  # fmt: skip
def test_links_are_followed_through_earlier_links(tmp_path: Path, members, message):
    src = _tar([_member("Dockerfile"), *members], {"Dockerfile": b"FROM scratch\n", "d/file": b"x", "sub/a.txt": b"a"})
    with pytest.raises(ContextError, match=message):
        check_upload(src, tmp_path / "raw.tar", 10_000)
    assert list(tmp_path.iterdir()) == []


def test_a_hard_link_to_a_symbolic_link_is_refused(tmp_path: Path):
    """`sub/up -> ..` is inside the context; hard-linked as `up`, an extractor makes a second `..` link at the
    top, which points outside it."""
    members = [_member("sub", tarfile.DIRTYPE), _member("sub/up", tarfile.SYMTYPE, ".."),
               _member("up", tarfile.LNKTYPE, "sub/up")]  # fmt: skip
    src = _tar([_member("Dockerfile"), *members], {"Dockerfile": b"FROM scratch\n"})
    with pytest.raises(ContextError, match="hard link 'up' points to 'sub/up', a symbolic link"):
        check_upload(src, tmp_path / "raw.tar", 10_000)
    assert list(tmp_path.iterdir()) == []


def _pax_tar(pax: dict[str, str], name: str = "Dockerfile", data: bytes = b"FROM scratch\n") -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.pax_headers = len(data), pax
        tar.addfile(info, io.BytesIO(data))
    return io.BytesIO(gzip.compress(buf.getvalue()))


def test_an_oversized_extended_header_is_refused_before_it_is_parsed(tmp_path: Path):
    """A 64 MiB PAX record in a 65 KB upload took CPython's tar code 157 s and about 480 MB to parse."""
    src = _pax_tar({"comment": "x" * (64 << 20)})
    assert len(src.getvalue()) < 200_000
    with pytest.raises(ContextError, match=r"extended tar header of \d+ bytes, over the limit of 65536"):
        check_upload(src, tmp_path / "raw.tar", 10_000)
    assert list(tmp_path.iterdir()) == []
    # A long but real path still passes.
    long_name = "/".join(["d" * 200] * 20) + "/Dockerfile"
    summary = check_upload(_pax_tar({}, name=long_name), tmp_path / "ok.tar", 10_000)
    assert summary.files == 1


def test_pax_owner_fields_and_uncleaned_names_do_not_survive_the_rewrite(tmp_path: Path):
    pax = {"uid": "4242", "gid": "4343", "uname": "mallory", "gname": "wheel", "path": "./sub//Dockerfile",
           "SCHILY.xattr.security.capability": "caps"}  # fmt: skip
    check_upload(_pax_tar(pax), tmp_path / "raw.tar", 10_000)
    with tarfile.open(tmp_path / "raw.tar") as tar:
        (info,) = tar.getmembers()
    assert (info.name, info.uid, info.gid, info.uname, info.gname) == ("sub/Dockerfile", 0, 0, "", "")
    assert info.pax_headers == {}


def test_pack_checks_links_against_each_other(tmp_path: Path):
    root = tmp_path / "ctx"
    (root / "sub").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "sub" / "root").symlink_to("..")
    (root / "sub" / "m").symlink_to("root/..")
    with pytest.raises(ContextError, match="symbolic link 'sub/m' points to 'root/..', outside"):
        pack_directory(root, io.BytesIO())


def test_links_inside_the_context_and_gzip_are_fine(tmp_path: Path):
    members = [_member("Dockerfile"), _member("sub", tarfile.DIRTYPE), _member("sub/a.txt"),
               _member("sub/rel", tarfile.SYMTYPE, "a.txt"), _member("up", tarfile.SYMTYPE, "sub/a.txt"),
               _member("hard", tarfile.LNKTYPE, "sub/a.txt"), _member("sub/self", tarfile.SYMTYPE, "."),
               _member("sub/b.txt", tarfile.SYMTYPE, "self/self/a.txt"),
               _member("sub/top", tarfile.SYMTYPE, "..")]  # fmt: skip
    src = _tar(members, {"Dockerfile": b"FROM scratch\n", "sub/a.txt": b"hello"}, gz=True)
    summary = check_upload(src, tmp_path / "raw.tar", 10_000)
    assert (summary.files, summary.size) == (2, len(b"FROM scratch\nhello"))


def test_size_limit_counts_uncompressed_bytes(tmp_path: Path):
    src = _tar([_member("Dockerfile"), _member("big")], {"Dockerfile": b"FROM scratch\n", "big": b"0" * 5000}, gz=True)
    assert len(src.getvalue()) < 1000  # compresses well: the limit must still apply
    with pytest.raises(ContextError, match="larger than the limit of 1000 bytes"):
        check_upload(src, tmp_path / "raw.tar", 1000)


def test_not_a_tar(tmp_path: Path):
    with pytest.raises(ContextError, match="not a valid tar"):
        check_upload(io.BytesIO(b"this is not a tar archive at all" * 40), tmp_path / "raw.tar", 10_000)


def test_pack_then_filter_honours_dockerignore(tmp_path: Path):
    root = tmp_path / "ctx"
    (root / "data").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (root / ".dockerignore").write_text("secret.txt\ndata\n!data/keep.txt\nDockerfile\n")
    (root / "secret.txt").write_text("s3cret")
    (root / "data" / "big.bin").write_bytes(b"x" * 100)
    (root / "data" / "keep.txt").write_text("keep")
    (root / "app.R").write_text("print(1)")
    out = io.BytesIO()
    packed = pack_directory(root, out)
    names = tarfile.open(fileobj=io.BytesIO(out.getvalue())).getnames()
    assert "secret.txt" not in names and "data/big.bin" not in names
    assert {"Dockerfile", ".dockerignore", "data/keep.txt", "app.R"} <= set(names)  # Dockerfile kept anyway
    assert packed.dockerfile == "Dockerfile" and packed.excluded >= 2
    # The server applies the same rules to a tar that was packed without them (e.g. by a raw API client).
    files = {"Dockerfile": b"FROM scratch\n", ".dockerignore": b"secret.txt\n", "secret.txt": b"x", "app.R": b"1"}
    raw = _tar([_member(n) for n in files], files)
    check_upload(raw, tmp_path / "raw.tar", 10_000)
    summary = filter_context(tmp_path / "raw.tar", tmp_path / "context.tar", "Dockerfile")
    assert summary.excluded == 1
    assert sorted(tarfile.open(tmp_path / "context.tar").getnames()) == [".dockerignore", "Dockerfile", "app.R"]


def test_pack_refuses_links_leaving_the_context_and_oversized_contexts(tmp_path: Path):
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "big").write_bytes(b"0" * 2000)
    with pytest.raises(ContextError, match="larger than the limit"):
        pack_directory(root, io.BytesIO(), limit=1000)
    (root / "big").unlink()
    (root / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ContextError, match="absolute path"):
        pack_directory(root, io.BytesIO())


def test_dockerfile_outside_the_context_is_packed_under_its_own_name(tmp_path: Path):
    root = tmp_path / "ctx"
    root.mkdir()
    (tmp_path / "Other.Dockerfile").write_text("FROM scratch\n")
    out = io.BytesIO()
    packed = pack_directory(root, out, str(tmp_path / "Other.Dockerfile"))
    assert packed.dockerfile == ".byoi.Dockerfile"
    assert tarfile.open(fileobj=io.BytesIO(out.getvalue())).getnames() == [".byoi.Dockerfile"]


def test_log_is_capped_but_keeps_its_end(tmp_path: Path):
    log = BuildLog(tmp_path / "log.jsonl", limit=300)
    for i in range(50):
        log.text(f"line {i}\n")
    log.write("status", s="SUCCEEDED")
    log.close()
    records, _ = read_records(tmp_path / "log.jsonl")
    kinds = [r["k"] for _, r in records]
    assert kinds.count("truncated") == 1 and kinds[-1] == "status"
    assert (tmp_path / "log.jsonl").stat().st_size < 600
    assert render_text(tmp_path / "log.jsonl").endswith("--> SUCCEEDED\n")
    assert list(log.last_lines)[-1] == "line 49"  # failure reasons still see the real last lines


def test_failure_reason_names_the_step_and_last_output():
    exc = BuildFailed("The command '/bin/sh -c make' returned a non-zero code: 2", "Step 3/4 : RUN make")
    reason = failure_reason(exc, [" ---> Running in abc", "cc -o x x.c", "x.c:1: error"], "r/x:1")
    assert reason.startswith("Step 3/4 : RUN make failed: The command")
    assert reason.endswith("last output: cc -o x x.c / x.c:1: error")
    assert "Dockerfile could not be built" in failure_reason(BuildFailed("parse error"), [], "r/x:1")
    assert len(failure_reason(BuildFailed("x" * 5000, "Step 1/1 : RUN y"), [], "r")) == 1024


def test_build_settings_from_env():
    s = BuildSettings.from_env({"BYOI_BUILD_CONCURRENCY": "1", "BYOI_BUILD_CONTEXT_LIMIT": "1000"})
    assert (s.concurrency, s.context_limit) == (1, 1000)
    with pytest.raises(ValueError, match="BYOI_BUILD_LOG_LIMIT must be a number"):
        BuildSettings.from_env({"BYOI_BUILD_LOG_LIMIT": "lots"})
