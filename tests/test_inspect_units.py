"""Pure logic of byoi.inspect: the push tar reader, streaming decompression and its limits, layer
application, symlink resolution, DESCRIPTION parsing, version ordering, rules config and the cache."""

from __future__ import annotations

import asyncio
import gzip
import re
import tarfile
import zlib

import pytest
import pyzstd

from byoi.inspect.cache import LayerCache
from byoi.inspect.config import InspectionConfig, Limits, parse_inspection_config
from byoi.inspect.decompress import Budget, LayerDecompressor
from byoi.inspect.diff import version_key
from byoi.inspect.errors import InspectionError, LimitExceeded, SymlinkLoop
from byoi.inspect.facts import image_facts, parse_dcf, parse_os_release
from byoi.inspect.inspector import Inspector
from byoi.inspect.layer import LayerIndex, LayerIndexer
from byoi.inspect.tree import Tree
from tests.support.layers import Layer, compatible_layer, raw_member, raw_tar
from tests.support.oci import digest_of


def index_of(tar: bytes, chunk: int = 7, limits: Limits | None = None, blob: bytes | None = None) -> LayerIndex:
    """Index a layer fed in small, odd-sized chunks (headers and data split across feeds)."""
    limits = limits or Limits()
    data = blob if blob is not None else tar
    indexer = LayerIndexer("sha256:" + "0" * 64, limits, Budget(limits), [0])
    for i in range(0, len(data), chunk):
        indexer.feed(data[i : i + chunk])
    return indexer.finish()


def test_tar_reader_handles_long_names_pax_and_gnu_formats_across_chunk_boundaries():
    long_dir = "usr/lib/R/site-library/" + "x" * 150
    layer = Layer().file(f"{long_dir}/DESCRIPTION", "Package: x\n").symlink("a/" + "l" * 120, "/" + "t" * 150)
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        index = index_of(layer.tar(fmt), chunk=13)
        paths = {e[0]: e for e in index.entries}
        assert f"{long_dir}/DESCRIPTION" in paths and index.contents[f"{long_dir}/DESCRIPTION"] == b"Package: x\n"
        assert paths["a/" + "l" * 120][6] == "/" + "t" * 150


def test_pax_headers_override_size_uid_and_path():
    layer = Layer().pax_file("short", b"hello", {"path": "etc/passwd", "uid": "4242"})
    index = index_of(layer.tar())
    assert index.entries == [("etc/passwd", "f", 0o644, 4242, 0, 5, "")]
    assert index.contents == {"etc/passwd": b"hello"}


def test_only_wanted_files_are_captured_and_big_ones_are_not():
    layer = Layer().file("etc/passwd", "root:x:0:0::/root:/bin/sh\n").file("etc/shadow", "secret")
    layer.file("lib/x/DESCRIPTION", b"y" * (2 << 20))  # over max_capture_bytes
    index = index_of(layer.tar(), chunk=4096)
    assert set(index.contents) == {"etc/passwd"}
    assert len(index.entries) == 3


def test_root_and_dot_slash_prefixes_are_normalised():
    tar = raw_tar(raw_member(b"./", typeflag=b"5"), raw_member(b"./etc//passwd", b"r"), raw_member(b".", typeflag=b"5"))
    assert [e[0] for e in index_of(tar).entries] == ["etc/passwd"]


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (raw_member(b"/abs"), "is an absolute path"),
        (raw_member(b"a/../../b"), "contains '..'"),
        (raw_member(b"l", typeflag=b"1", linkname=b"/etc/passwd"), "target '/etc/passwd' is an absolute path"),
        (raw_member(b"dev-not/null", typeflag=b"3"), "is a character device"),
    ],
)
def test_bad_members_raise(member, message):
    with pytest.raises(InspectionError, match=message):
        index_of(raw_tar(member))


def test_huge_extended_header_is_refused_before_it_is_buffered():
    tar = Layer().pax_file("f", b"", {"comment": "c" * 5000}).tar()
    with pytest.raises(LimitExceeded, match="extended header of .* bytes is larger than the 4096-byte limit"):
        index_of(tar, limits=Limits(max_header_bytes=4096))


def test_truncation_is_detected_in_tar_gzip_and_zstd():
    tar = compatible_layer().tar()
    with pytest.raises(InspectionError, match="tar stream ends in the middle of a member"):
        index_of(tar[:700])
    with pytest.raises(InspectionError, match="gzip stream ends before the end"):
        index_of(tar, blob=gzip.compress(tar)[:-20])
    with pytest.raises(InspectionError, match="zstd stream ends before the end"):
        index_of(tar, blob=pyzstd.compress(tar)[:-20])


def test_whiteouts_and_aufs_metadata():
    layer = Layer().whiteout("etc/passwd").opaque("usr/local").file("usr/.wh..wh.plnk/123.456", "x")
    assert index_of(layer.tar()).entries == [("etc/passwd", "w", 0, 0, 0, 0, ""), ("usr/local", "o", 0, 0, 0, 0, "")]


def test_decompressor_limits_total_layer_and_ratio():
    zeros = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = zeros.compress(b"\0" * (20 << 20)) + zeros.flush()
    limits = Limits(max_ratio=50, ratio_grace_bytes=1 << 20)
    with pytest.raises(LimitExceeded, match="expands more than 50 times"):
        LayerDecompressor(lambda b: None, limits, Budget(limits)).feed(bomb)
    limits = Limits(max_layer_bytes=1 << 20)
    with pytest.raises(LimitExceeded, match="layer limit"):
        LayerDecompressor(lambda b: None, limits, Budget(limits)).feed(bomb)
    limits = Limits(max_total_bytes=3 << 20)
    budget = Budget(limits)
    budget.take(2 << 20)  # an earlier layer of the same image
    with pytest.raises(LimitExceeded, match="total limit"):
        LayerDecompressor(lambda b: None, limits, budget).feed(bomb)


def test_decompressor_output_is_bounded_per_call():
    sizes: list[int] = []
    d = LayerDecompressor(lambda b: sizes.append(len(b)), Limits(), Budget(Limits()))
    d.feed(pyzstd.compress(b"\0" * (40 << 20)))
    d.finish()
    assert sum(sizes) == 40 << 20 and max(sizes) <= 4 << 20


def tree_of(*layers: Layer) -> Tree:
    tree = Tree()
    for i, layer in enumerate(layers, 1):
        tree.apply(index_of(layer.tar(), chunk=1 << 16), i)
    return tree


def test_tree_whiteouts_opaque_and_replacement():
    lower = Layer().file("a/b/c", "1").file("a/d", "2").file("keep/x", "3").file("etc/passwd", "p")
    upper = Layer().opaque("a").file("a/new", "4").whiteout("keep").file("a/b", "now a file").whiteout("etc/passwd")
    tree = tree_of(lower, upper)
    assert tree.listdir("a") == ["b", "new"] and tree.nodes["a/b"][0] == "f"
    assert "keep" not in tree.nodes and "keep/x" not in tree.nodes and tree.read("etc/passwd") is None
    assert tree.listdir("") == ["a", "etc"]


def test_tree_symlinks_resolve_inside_the_root_and_loops_raise():
    layer = Layer().file("opt/R/lib/R/bin/R", "x").symlink("usr/lib/R", "/opt/R/lib/R")
    layer.symlink("up", "../../../../opt").symlink("loop1", "loop2").symlink("loop2", "loop1")
    tree = tree_of(layer)
    assert tree.resolve("usr/lib/R/bin/R") == "opt/R/lib/R/bin/R" and tree.is_file("/usr/lib/R/bin/R")
    assert tree.resolve("up/R") == "opt/R" and tree.resolve("usr/lib/R/nothing") is None
    with pytest.raises(SymlinkLoop, match="symlink loop while resolving /loop1/x"):
        tree.resolve("loop1/x")


def test_hard_links_copy_the_target_and_missing_targets_raise():
    tree = tree_of(Layer().file("etc/passwd", "root:x:0:0::/:/bin/sh\n").hardlink("etc/passwd-", "etc/passwd"))
    assert tree.read("etc/passwd-") == tree.read("etc/passwd") and tree.nodes["etc/passwd-"][0] == "f"
    with pytest.raises(InspectionError, match="layer 1 has a hard link 'x' to 'nope', which does not exist"):
        tree_of(Layer().hardlink("x", "nope"))


def test_parse_dcf_and_os_release():
    desc = parse_dcf(b"Package: jsonlite\nVersion: 1.8.4\nDescription: A long\n  description.\nBuilt: R 4.2.2\n")
    assert desc["Package"] == "jsonlite" and desc["Description"] == "A long\ndescription."
    osr = parse_os_release(b'# comment\nID=debian\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nBAD LINE\n')
    assert osr == {"ID": "debian", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"}


def test_r_version_ordering():
    assert version_key("1.1.10") > version_key("1.1.9") > version_key("1.1-2")
    assert version_key("0.10.1") > version_key("0.9.12") and version_key("4.2.2") < version_key("4.3.0")


def test_config_from_toml_and_its_errors():
    config = parse_inspection_config(
        {"rules": {"reticulate": "off", "non-root-user": "required"}, "limits": {"max_ratio": 10}}
    )
    assert config.level("reticulate") == "off" and config.level("non-root-user") == "required"
    assert config.level("r-present") == "required" and config.limits.max_ratio == 10.0
    whole = parse_inspection_config({"limits": {"max_total_bytes": 2e11}, "cache_dir": ""})
    assert whole.limits.max_total_bytes == 200_000_000_000 and whole.cache_dir is None
    for bad, message in [
        ({"rules": {"no-such-rule": "off"}}, "unknown rule 'no-such-rule'"),
        ({"rules": {"r-present": "fatal"}}, "level 'fatal'; use one of required, warning, info, off"),
        ({"limits": {"max_ratio": -1}}, "limit max_ratio must be a positive number"),
        ({"limits": {"nope": 1}}, "unknown limit 'nope'"),
        ({"colour": "blue"}, "unknown key 'colour'"),
        ({"rules": ["reticulate"]}, "rules must be a table \\(\\[rules\\]\\), not an array"),
        ({"limits": 5}, "limits must be a table"),
        ({"limits": {"max_layers": 1.5}}, "limit max_layers must be a positive integer, not 1.5"),
        ({"cache_dir": 5}, "cache_dir must be a directory path \\(a string\\), not 5"),
        ({"cache_dir": "   "}, "cache_dir must be a directory path"),
        ({"concurrency": True}, "concurrency must be an integer from 1 to 16, not True"),
        ({"cache_dir": True}, "cache_dir must be a directory path \\(a string\\), not True"),
        ({"rules": "reticulate=off"}, "rules must be a table \\(\\[rules\\]\\), not a string"),
        ({"limits": {"max_ratio": float("nan")}}, "limit max_ratio must be a positive number, not nan"),
        ({"limits": {"max_entries": True}}, "limit max_entries must be a positive integer, not True"),
        ({"enabled": "yes"}, "enabled must be true or false, not 'yes'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_inspection_config(bad)


def test_cache_round_trip_ignores_corrupt_files_and_refuses_odd_digests(tmp_path):
    cache = LayerCache(tmp_path)
    index = index_of(compatible_layer().tar())
    index.digest = "sha256:" + "ab" * 32
    cache.put(index)
    again = cache.get(index.digest)
    assert again is not None and again.entries == index.entries and again.contents == index.contents
    path = next(tmp_path.rglob("*.json.gz"))
    path.write_bytes(b"garbage")
    assert cache.get(index.digest) is None
    with pytest.raises(ValueError, match=re.escape("not a sha256 digest: 'sha256:../../etc/passwd'")):
        cache.get("sha256:../../etc/passwd")


def test_inspector_rejects_bad_manifests(tmp_path):
    inspector = Inspector(InspectionConfig(), tmp_path)

    async def never(_digest: str):
        raise AssertionError("no blob should be read")
        yield b""

    good = {"digest": "sha256:" + "0" * 64}
    cases = [
        ({}, "has no config descriptor \\(config is null\\)"),
        ({"config": good, "layers": "x"}, "has no layer list \\(layers is a string\\)"),
        (
            {"config": good, "layers": [{"digest": "md5:x"}]},
            "layer 1 has no valid sha256 digest \\(digest is 'md5:x'\\)",
        ),
        ({"config": good, "layers": ["sha256:" + "0" * 64]}, "layer 1 is a string, not a descriptor object"),
        ({"config": {**good, "size": "12"}, "layers": []}, "the config descriptor has size a string, not a non"),
        ({"config": {**good, "size": 1.5}, "layers": []}, "the config descriptor has size 1.5, not a non-neg"),
        ({"config": {**good, "size": True}, "layers": []}, "the config descriptor has size a boolean"),
        ({"config": good, "layers": [{**good, "size": -1}]}, "layer 1 has size -1, not a non-negative integer"),
        ({"config": {**good, "mediaType": 7}, "layers": []}, "the config descriptor has a mediaType that is a number"),
        ({"config": {**good, "size": 1 << 40}, "layers": []}, "config is larger"),
    ]
    for manifest, message in cases:
        with pytest.raises(InspectionError, match=message):
            asyncio.run(inspector.inspect(manifest, never))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"config": ["a"]}, "config is an array, not an object"),
        ({"config": {"ExposedPorts": ["8787"]}}, "config.ExposedPorts is an array, not an object"),
        ({"config": {"Env": "PATH=/bin"}}, "config.Env is a string, not an array of strings"),
        ({"config": {"Env": ["A=1", 5]}}, "config.Env\\[1\\] is a number, not a string"),
        ({"config": {"Cmd": {"a": 1}}}, "config.Cmd is an object, not an array of strings"),
        ({"config": {"User": 1000}}, "config.User is a number, not a string"),
        ({"rootfs": "x"}, "rootfs is a string, not an object"),
        ({"rootfs": {"diff_ids": [None]}}, "rootfs.diff_ids\\[0\\] is null, not a string"),
        ({"os": ["linux"]}, "os is an array, not a string"),
    ],
)
def test_image_facts_refuse_config_members_of_the_wrong_type(config, message):
    with pytest.raises(InspectionError, match="the image config is malformed: " + message):
        image_facts(Tree(), config)


def test_image_facts_accept_nulls_and_a_single_string_cmd():
    config = {"os": "linux", "config": {"Env": None, "ExposedPorts": None, "Entrypoint": None, "Cmd": "rserver"}}
    facts = image_facts(Tree(), config)
    assert (facts["Env"], facts["ExposedPorts"], facts["Entrypoint"], facts["Cmd"]) == ([], [], [], ["rserver"])


def test_inspector_end_to_end_on_in_memory_blobs(tmp_path):
    tar = compatible_layer().tar()
    blob = gzip.compress(tar)
    config = (
        b'{"os": "linux", "architecture": "amd64", "config": {}, "rootfs": {"diff_ids": ["%s"]}}'
        % digest_of(tar).encode()
    )
    blobs = {digest_of(blob): blob, digest_of(config): config}

    async def stream(digest: str):
        data = blobs[digest]
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    manifest = {"config": {"digest": digest_of(config)}, "layers": [{"digest": digest_of(blob)}]}
    report = asyncio.run(Inspector(InspectionConfig(), tmp_path).inspect(manifest, stream))
    assert report["Compatible"] is True and report["LayersFromCache"] == 0
    assert {p["Name"] for p in report["RPackages"]} == {"base", "stats", "reticulate", "jsonlite"}
    # The stored report (what the launcher reads) has every fact, whether or not the API model lists it.
    assert report["RStudioServer"]["SupportsSocket"] is False and report["RSession"] is None  # 2024.04.2+764
    assert {r["Name"]: r["Outcome"] for r in report["Rules"]}["rstudio-socket"] == "FAILED"
    blobs[digest_of(blob)] = b"not used: the layer index is cached"
    assert asyncio.run(Inspector(InspectionConfig(), tmp_path).inspect(manifest, stream))["LayersFromCache"] == 1


def test_corrupt_zstd_and_gzip_raise_inspection_errors():
    tar = compatible_layer().tar()
    for blob in (pyzstd.compress(tar), gzip.compress(tar)):
        bad = bytearray(blob)
        bad[12:40] = b"\xff" * 28
        with pytest.raises(InspectionError, match="layer is corrupt: its (zstd|gzip) stream cannot be decompressed"):
            index_of(tar, blob=bytes(bad), chunk=1000)
