"""Inspection through a real server and a real registry, with images assembled in the test: every rule,
whiteouts, links, multi-platform indexes, gzip / zstd / uncompressed layers, the per-layer cache, and
every kind of bad input (each must end CREATE_FAILED with a clear reason, never a crash)."""

from __future__ import annotations

import gzip
import json
import os
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from byoi.cli.client import extension_client
from byoi.inspect.config import DEFAULT_LEVELS
from tests.conftest import ROLE
from tests.support.gate import Gate
from tests.support.layers import (
    GOOD_ENV,
    LAYER_TYPES,
    Layer,
    StaticRegistry,
    base_files,
    compatible_layer,
    gzip_bomb,
    push_image,
    push_index,
    push_layers,
    push_raw_index,
    r_install,
    r_packages,
    raw_member,
    raw_tar,
    rstudio,
)
from tests.support.oci import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, digest_of


@pytest.fixture
def sm(strict):
    return strict.client()


@pytest.fixture
def ext(strict):
    strict.session()
    return extension_client(strict.endpoint, "byoi")


def register(sm, base_image: str, name: str | None = None) -> tuple[str, dict]:
    """Create an image (if `name` is new) and a version of it; wait for the version to settle."""
    name = name or "insp-" + uuid.uuid4().hex[:8]
    try:
        sm.create_image(ImageName=name, RoleArn=ROLE)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "ResourceInUse"
    version = int(sm.create_image_version(ImageName=name, BaseImage=base_image)["ImageVersionArn"].rsplit("/", 1)[1])
    deadline = time.monotonic() + 180  # test_inspect_images registers real images of some 400 MB with it
    while time.monotonic() < deadline:
        d = sm.describe_image_version(ImageName=name, Version=version)
        if d["ImageVersionStatus"] != "CREATING":
            return name, d
        time.sleep(0.2)
    raise AssertionError(f"version {version} of {name} still CREATING")


def report(ext, name: str, **kw) -> dict:
    return ext.describe_image_version_report(ImageName=name, **kw)["Report"]


def outcomes(rep: dict) -> dict[str, str]:
    return {r["Name"]: r["Outcome"] for r in rep["Rules"]}


def repo() -> str:
    return "insp/" + uuid.uuid4().hex[:8]


# -- rules -----------------------------------------------------------------------------------------


def test_compatible_image_is_created_with_a_full_report(sm, ext, pusher, registry):
    r = repo()
    pushed = push_image(pusher, r, "v1", [compatible_layer()], extra_config={"ExposedPorts": {"8787/tcp": {}}})
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATED", d.get("FailureReason")
    assert "FailureReason" not in d
    rep = report(ext, name, Version=1)
    assert rep["Status"] == "COMPLETED" and rep["Compatible"] is True
    assert rep["ContainerImage"] == f"{registry}/{r}@{pushed.digest}" and rep["Digest"] == pushed.digest
    assert rep["Platform"] == "linux/amd64" and rep["LayerCount"] == 1
    assert rep["Os"] == {"Id": "debian", "VersionId": "12", "PrettyName": "Debian GNU/Linux 12 (bookworm)"}
    assert rep["RInstallations"] == [{"Home": "/usr/lib/R", "Version": "4.2.2", "Binary": "/usr/bin/R"}]
    # SupportsSocket is in the stored report (False: 2024.04 predates --www-socket); the API shows it once its
    # model lists the member.
    assert rep["RStudioServer"].pop("SupportsSocket", False) is False
    assert rep["RStudioServer"] == {
        "Path": "/usr/lib/rstudio-server/bin/rserver",
        "Version": "2024.04.2+764",
        "Executable": True,
    }
    assert {(p["Name"], p["Version"], p["Library"]) for p in rep["RPackages"]} == {
        ("jsonlite", "1.8.4", "/usr/local/lib/R/site-library"),
        ("reticulate", "1.34.0", "/usr/local/lib/R/site-library"),
        ("base", "4.2.2", "/usr/lib/R/library"),
        ("stats", "4.2.2", "/usr/lib/R/library"),
    }
    assert rep["RLibraries"] == ["/usr/local/lib/R/site-library", "/usr/lib/R/library"]
    assert [u["Name"] for u in rep["Users"]] == ["root", "daemon", "ruser"]
    assert rep["ExposedPorts"] == ["8787/tcp"] and rep["Env"] == GOOD_ENV
    assert rep["UncompressedSize"] > rep["CompressedSize"] > 0
    # Every rule passes but the socket warning: RStudio Server 2024.04 predates --www-socket (2024.12).
    assert outcomes(rep) == {**dict.fromkeys(DEFAULT_LEVELS, "PASSED"), "rstudio-socket": "FAILED"}
    # DescribeImageVersion's own response is exactly the SageMaker model's: no report members leak into it.
    model = sm.meta.service_model.operation_model("DescribeImageVersion").output_shape.members
    assert set(d) - {"ResponseMetadata"} <= set(model)


def test_missing_r_and_rstudio_fail_with_every_rule_named(sm, ext, pusher):
    r = repo()
    push_image(pusher, r, "v1", [Layer().files(base_files())], env=["PATH=/usr/bin:/bin"])
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    reason = d["FailureReason"]
    assert reason.startswith("Not compatible with RStudio: ")
    assert "R is missing: no R on PATH (/usr/bin:/bin)" in reason and "[r-present]" in reason
    assert "/usr/lib/rstudio-server/bin/rserver does not exist [rstudio-server]" in reason
    assert "linux-platform" not in reason  # passed
    rep = report(ext, name)
    o = outcomes(rep)
    assert (o["r-present"], o["rstudio-server"], o["linux-platform"]) == ("FAILED", "FAILED", "PASSED")
    # The warnings are recorded, not fatal, and not in the reason.
    assert (o["non-root-user"], o["rstudio-urls"], o["reticulate"]) == ("FAILED", "FAILED", "FAILED")
    assert "reticulate" not in reason
    assert rep["Compatible"] is False and rep["FailureReason"] == reason


def test_warnings_leave_the_version_created(sm, ext, pusher):
    layer = Layer().files(base_files())  # root only: no non-root user
    for path, content in {**r_install(), **rstudio()}.items():
        layer.file(path, content, 0o755)
    r = repo()
    push_image(
        pusher,
        r,
        "v1",
        [layer],
        env=["PATH=/usr/bin", "RSTUDIO_CONNECT_URL="],
        extra_config={"Entrypoint": ["/init"], "Cmd": ["bash"]},
    )
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATED"
    rules = {x["Name"]: x for x in report(ext, name)["Rules"]}
    assert rules["non-root-user"]["Outcome"] == "FAILED" and rules["non-root-user"]["Level"] == "warning"
    assert rules["rstudio-urls"]["Message"] == (
        "RSTUDIO_CONNECT_URL and RSTUDIO_PACKAGE_MANAGER_URL are not set in the image's environment"
    )
    assert rules["reticulate"]["Outcome"] == "FAILED"
    assert rules["entrypoint-override"]["Level"] == "info" and rules["entrypoint-override"]["Outcome"] == "FAILED"
    assert "ENTRYPOINT ['/init'] and CMD ['bash'] will not run" in rules["entrypoint-override"]["Message"]


def test_rserver_that_is_not_executable_fails(sm, pusher):
    layer = compatible_layer()
    layer.file("usr/lib/rstudio-server/bin/rserver", "#!/bin/sh\n", 0o644)  # a later member wins
    r = repo()
    push_image(pusher, r, "v1", [layer])
    _, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "rserver is not executable [rstudio-server]" in d["FailureReason"]


WORKBENCH_SESSION = (
    "This is a Posit Workbench session image (/usr/lib/rstudio-server/bin/rsession without rserver, as "
    "r-session-complete): byoi runs the open-source RStudio Server, which this image does not have. Build a "
    "compatible image, for example FROM rocker/rstudio:4.4.2, or install rstudio-server from Posit's open-source .deb"
)


def test_a_workbench_session_image_fails_with_a_plain_message(sm, ext, pusher):
    """As Posit's r-session-complete: R in /opt/R, Workbench's rsession, no rserver."""
    layer = Layer().files(base_files([("rstudio-user", 1000)]))
    for path, content in r_install("opt/R/4.4.2/lib/R", "4.4.2", None).items():
        layer.file(path, content, 0o755)
    layer.file("usr/lib/rstudio-server/bin/rsession", "#!/bin/sh\n", 0o755)
    layer.file("usr/lib/rstudio-server/VERSION", "2024.12.1+563\n")
    r = repo()
    push_image(pusher, r, "v1", [layer])
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert d["FailureReason"] == f"Not compatible with RStudio: {WORKBENCH_SESSION} [rstudio-server]"
    rep = report(ext, name)
    assert "RStudioServer" not in rep
    rules = {x["Name"]: x for x in rep["Rules"]}
    assert (rules["rstudio-server"]["Outcome"], rules["rstudio-server"]["Message"]) == ("FAILED", WORKBENCH_SESSION)
    assert rules["rstudio-socket"]["Outcome"] == "PASSED"


def test_rstudio_server_older_than_2024_12_warns_that_it_cannot_listen_on_a_socket(sm, ext, pusher):
    r = repo()
    name = "insp-" + uuid.uuid4().hex[:8]
    for tag, version in (("old", "2023.06.0+421"), ("new", "2024.12.0+467")):
        layer = compatible_layer().file("usr/lib/rstudio-server/VERSION", version + "\n")  # a later member wins
        push_image(pusher, r, tag, [layer])
        _, d = register(sm, f"{r}:{tag}", name)
        assert d["ImageVersionStatus"] == "CREATED", d.get("FailureReason")  # a warning only
    old = {x["Name"]: x for x in report(ext, name, Version=1)["Rules"]}["rstudio-socket"]
    assert old == {
        "Name": "rstudio-socket",
        "Level": "warning",
        "Outcome": "FAILED",
        "Message": (
            "RStudio Server 2023.06.0+421 cannot listen on a Unix socket (--www-socket needs 2024.12 or later): "
            "byoi reaches it on a port published on the host's 127.0.0.1, where any local user of the Docker host "
            "can connect to it without signing in. Rebuild on RStudio Server 2024.12 or later (for example FROM "
            "rocker/rstudio:4.4.2)"
        ),
    }
    new = {x["Name"]: x for x in report(ext, name, Version=2)["Rules"]}["rstudio-socket"]
    assert (new["Outcome"], new["Message"]) == (
        "PASSED",
        "RStudio Server 2024.12.0+467 listens on a Unix socket (--www-socket): byoi publishes no port for it",
    )
    d = ext.diff_image_versions(ImageName=name, FromVersion=1, ToVersion=2)
    assert d["RStudioServerVersion"] == {"From": "2023.06.0+421", "To": "2024.12.0+467"}
    assert d["RulesChanged"] == [{"Name": "rstudio-socket", "From": "FAILED", "To": "PASSED"}]


def test_r_found_in_opt_and_on_path_only(sm, ext, pusher):
    layer = compatible_layer()
    for path, content in r_install("opt/R/4.3.1/lib/R", "4.3.1", None).items():
        layer.file(path, content, 0o755)
    r = repo()
    push_image(pusher, r, "v1", [layer])
    name, _ = register(sm, f"{r}:v1")
    homes = {(i.get("Home"), i.get("Version")) for i in report(ext, name)["RInstallations"]}
    assert homes == {("/usr/lib/R", "4.2.2"), ("/opt/R/4.3.1/lib/R", "4.3.1")}
    # R only on PATH (a custom build elsewhere): present, version unknown.
    only_path = Layer().files(base_files([("u", 1000)])).file("usr/local/bin/R", "#!/bin/sh\n", 0o755)
    only_path.files(rstudio(), 0o755)
    push_image(pusher, r, "v2", [only_path])
    name2, d = register(sm, f"{r}:v2")
    assert d["ImageVersionStatus"] == "CREATED"
    assert report(ext, name2)["RInstallations"] == [{"Binary": "/usr/local/bin/R"}]


# -- layers: whiteouts, opaque directories, links ------------------------------------------------------


def test_whiteouts_and_opaque_directories_apply_to_lower_layers(sm, ext, pusher):
    lower = compatible_layer({"reticulate": "1.34.0", "jsonlite": "1.8.4", "digest": "0.6.31"})
    upper = (
        Layer()
        .whiteout("usr/lib/rstudio-server")  # removes the whole directory below
        .opaque("usr/local/lib/R/site-library")  # hides jsonlite, digest and reticulate...
        .files(r_packages({"jsonlite": "1.9.0"}))  # ...but this layer's own content stays
    )
    r = repo()
    push_image(pusher, r, "v1", [lower, upper])
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "RStudio Server is missing" in d["FailureReason"]
    rep = report(ext, name)
    site = {p["Name"]: p["Version"] for p in rep["RPackages"] if p["Library"] == "/usr/local/lib/R/site-library"}
    assert site == {"jsonlite": "1.9.0"}
    assert "RStudioServer" not in rep and rep["LayerCount"] == 2  # absent members are omitted, as AWS does


def test_whiteout_order_inside_a_layer_does_not_matter_and_files_replace_directories(sm, ext, pusher):
    lower = compatible_layer()
    # The re-added file comes before the whiteout in the tar: the whiteout still only hits the lower layer.
    upper = Layer().file("etc/passwd", "root:x:0:0::/root:/bin/sh\nnew:x:1001:1001::/home/new:/bin/sh\n")
    upper.whiteout("etc/passwd")
    upper.file("usr/local/lib/R/site-library", "now a file")  # replaces the lower directory and its packages
    r = repo()
    push_image(pusher, r, "v1", [lower, upper])
    name, _ = register(sm, f"{r}:v1")
    rep = report(ext, name)
    assert [u["Name"] for u in rep["Users"]] == ["root", "new"]
    assert {p["Name"] for p in rep["RPackages"]} == {"base", "stats"}


def test_symlinks_and_hard_links_are_followed(sm, ext, pusher):
    layer = Layer().files(base_files([("ruser", 1000)]))
    for path, content in {**r_install("opt/R/4.4.0/lib/R", "4.4.0", None), **rstudio()}.items():
        layer.file(path, content, 0o755)
    layer.symlink("usr/lib/R", "/opt/R/4.4.0/lib/R")  # absolute target, resolved inside the image
    layer.symlink("usr/bin/R", "../lib/R/bin/R")
    layer.dir("data/libs").files(r_packages({"reticulate": "1.35.0"}, "data/libs"))
    layer.symlink("usr/local/lib/R/site-library", "../../../../data/libs")  # `..` past the root stays in it
    layer.hardlink("etc/os-release", "etc/passwd")  # a hard link shares content: os-release reads as passwd
    r = repo()
    push_image(pusher, r, "v1", [layer])
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATED", d.get("FailureReason")
    rep = report(ext, name)
    assert rep["RInstallations"] == [{"Home": "/usr/lib/R", "Version": "4.4.0", "Binary": "/usr/bin/R"}]
    assert ("reticulate", "/data/libs") in {(p["Name"], p["Library"]) for p in rep["RPackages"]}
    assert rep["Os"] == {}


def test_hard_link_to_a_missing_target_fails(sm, pusher):
    r = repo()
    push_image(pusher, r, "v1", [compatible_layer().hardlink("usr/bin/Rscript", "usr/lib/R/bin/Rscript")])
    _, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert d["FailureReason"].startswith("Cannot inspect ")
    assert "hard link 'usr/bin/Rscript' to 'usr/lib/R/bin/Rscript', which does not exist" in d["FailureReason"]


def test_symlink_loop_in_an_r_library_path_fails(sm, ext, pusher):
    layer = compatible_layer()
    layer.members = [(i, c) for i, c in layer.members if "site-library" not in i.name]
    layer.symlink("usr/local/lib/R/site-library", "loop-a").symlink("usr/local/lib/R/loop-a", "site-library")
    r = repo()
    push_image(pusher, r, "v1", [layer])
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "symlink loop while resolving /usr/local/lib/R/site-library" in d["FailureReason"]
    rep = report(ext, name)
    assert rep["Status"] == "FAILED" and "symlink loop" in rep["Error"]


# -- formats, platforms ----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_gzip_zstd_and_uncompressed_layers(sm, ext, pusher, compression):
    r = repo()
    extra = Layer().files(r_packages({"digest": "0.6.33"}))
    push_image(pusher, r, "v1", [compatible_layer(), extra], compression=compression)
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATED", d.get("FailureReason")
    rep = report(ext, name)
    assert "digest" in {p["Name"] for p in rep["RPackages"]}
    if compression == "none":
        assert rep["UncompressedSize"] == rep["CompressedSize"]
    else:
        assert rep["UncompressedSize"] > rep["CompressedSize"]


def test_docker_manifest_with_multi_member_gzip(sm, ext, pusher):
    tar = compatible_layer().tar()
    half = len(tar) // 2
    blob = gzip.compress(tar[:half], mtime=0) + gzip.compress(tar[half:], mtime=0)  # two gzip members
    r = repo()
    push_layers(pusher, r, "v1", [(blob, digest_of(tar))], media_type=DOCKER_MANIFEST)
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATED", d.get("FailureReason")
    assert len(report(ext, name)["RPackages"]) == 4


def test_multi_platform_index_inspects_the_runtime_platform(sm, ext, pusher):
    r = repo()
    index = push_index(
        pusher, r, "multi", {"linux/arm64": [compatible_layer()], "linux/amd64": [Layer().files(base_files())]}
    )
    name, d = register(sm, f"{r}:multi")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"  # the amd64 image, not the compatible arm64 one
    rep = report(ext, name)
    assert rep["IndexDigest"] == index.digest and rep["Platform"] == "linux/amd64"


def test_single_image_for_another_platform_fails_the_platform_rule(sm, pusher):
    r = repo()
    push_image(pusher, r, "arm", [compatible_layer()], architecture="arm64")
    _, d = register(sm, f"{r}:arm")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert (
        "the image is for linux/arm64, but the runtime platform is linux/amd64 [linux-platform]" in d["FailureReason"]
    )
    push_image(pusher, r, "win", [compatible_layer()], os_name="windows")
    _, d = register(sm, f"{r}:win")
    assert "the image is for windows/amd64, not a Linux image for linux/amd64" in d["FailureReason"]


# -- the per-layer cache ---------------------------------------------------------------------------


def test_a_version_that_adds_a_layer_reads_only_that_layer(sm, ext, pusher, strict):
    r = repo()
    unique = uuid.uuid4().hex  # layers are content-addressed: other tests' identical layers are cached already
    base = [
        compatible_layer().file("unique", unique),
        Layer().files(r_packages({"digest": "0.6.33"})).file("u", unique),
    ]
    push_image(pusher, r, "v1", base)
    name, _ = register(sm, f"{r}:v1")
    first = report(ext, name, Version=1)
    assert first["LayersFromCache"] == 0
    push_image(pusher, r, "v2", [*base, Layer().files(r_packages({"glue": "1.7.0"}))])
    register(sm, f"{r}:v2", name)
    second = report(ext, name, Version=2)
    assert second["LayersFromCache"] == 2 and second["LayerCount"] == 3
    assert {p["Name"] for p in second["RPackages"]} - {p["Name"] for p in first["RPackages"]} == {"glue"}
    cache = strict.data_dir / "inspect-cache"
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files and all(p.name.endswith(".json.gz") and not p.name.startswith(".tmp") for p in files)


# -- bad input -------------------------------------------------------------------------------------

BAD_TARS = {
    "absolute": (raw_tar(raw_member(b"/etc/evil", b"x")), "tar entry '/etc/evil' is an absolute path"),
    "dotdot": (raw_tar(raw_member(b"usr/../../evil", b"x")), "tar entry 'usr/../../evil' contains '..'"),
    "device": (Layer().device("usr/bin/disk", tarfile.BLKTYPE, 8, 0).tar(), "'usr/bin/disk' is a block device"),
    "hardlink-dotdot": (
        raw_tar(raw_member(b"a", b"x"), raw_member(b"b", typeflag=b"1", linkname=b"../a")),
        "hard link 'b' target '../a' contains '..'",
    ),
    "huge-pax": (
        Layer().pax_file("big", b"x", {"comment": "y" * (2 << 20)}).tar(),
        "extended header of 2097",
    ),
    "not-tar": (b"this is not a tar stream at all, just text" * 20, "a tar header fails its checksum"),
}


@pytest.mark.parametrize("case", sorted(BAD_TARS))
def test_bad_tar_content_fails_clearly(sm, ext, pusher, case):
    tar, expected = BAD_TARS[case]
    r = repo()
    push_image(pusher, r, "v1", [compatible_layer(), tar])
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert d["FailureReason"].startswith("Cannot inspect 127.0.0.1:") and "layer 2 (sha256:" in d["FailureReason"]
    assert expected in d["FailureReason"]
    rep = report(ext, name)
    assert rep["Status"] == "FAILED" and expected in rep["Error"]
    assert not Path("/etc/evil").exists() and not Path("/evil").exists()


def test_devices_under_dev_and_fifos_are_fine(sm, pusher):
    layer = compatible_layer().device("dev/null").fifo("run/initctl")
    r = repo()
    push_image(pusher, r, "v1", [layer])
    _, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATED", d.get("FailureReason")


def test_truncated_and_corrupt_layers_fail_clearly(sm, pusher):
    tar = compatible_layer().files({f"pad/{i}": os.urandom(2048) for i in range(20)}).tar()
    blob = gzip.compress(tar, mtime=0)
    r = repo()
    push_layers(pusher, r, "trunc", [(blob[: len(blob) // 2], digest_of(tar))])
    _, d = register(sm, f"{r}:trunc")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "layer 1 (sha256:" in d["FailureReason"] and "is truncated" in d["FailureReason"]
    corrupt = bytearray(blob)
    corrupt[len(corrupt) // 3 : len(corrupt) // 3 + 64] = b"\xff" * 64
    push_layers(pusher, r, "corrupt", [(bytes(corrupt), digest_of(tar))])
    _, d = register(sm, f"{r}:corrupt")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "layer is corrupt" in d["FailureReason"]
    raw = raw_member(b"file", b"y" * 5000)[:3000]  # an uncompressed tar cut in the middle of a member
    push_layers(pusher, r, "cut", [(raw, digest_of(raw))])
    _, d = register(sm, f"{r}:cut")
    assert "its tar stream ends in the middle of a member" in d["FailureReason"]


def test_a_blob_that_does_not_match_its_digest_fails(sm, pusher, registry_root):
    # A unique file makes this blob this test's own: the registry would serve the corrupted copy to anyone
    # pushing the same bytes later.
    tar = compatible_layer().file("etc/test-id", uuid.uuid4().hex).tar()
    blob = gzip.compress(tar, mtime=0)
    r = repo()
    push_layers(pusher, r, "v1", [(blob, digest_of(tar))])
    digest = digest_of(blob).split(":")[1]
    stored = registry_root / "anon" / "storage" / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    data = bytearray(stored.read_bytes())
    data[-20] ^= 0xFF  # the registry now serves bytes that hash to something else
    stored.write_bytes(bytes(data))
    _, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert f"blob sha256:{digest} of {r} does not match its digest" in d["FailureReason"]


def test_a_registry_connection_lost_midway_through_a_layer_is_retried(server_factory, registry, pusher):
    """A network drop in the middle of a blob is transient (unlike a blob that is really truncated): the
    inspection is tried again and the version ends CREATED with its report."""
    r = repo()
    layer = compatible_layer().file("opt/noise.bin", os.urandom(3 << 20))  # incompressible: a 3 MiB blob
    push_image(pusher, r, "v1", [layer])
    gate = Gate(int(registry.rsplit(":", 1)[1]))
    try:
        srv = server_factory([f"http://127.0.0.1:{gate.port}"])
        gate.cut_once_after(1 << 20)  # manifests and configs are far smaller: only the layer's body crosses this
        _, d = register(srv.client(), f"{r}:v1")
        assert gate.cuts == 1
        assert d["ImageVersionStatus"] == "CREATED", d.get("FailureReason")
        rep = report(extension_client(srv.endpoint, "byoi"), d["ImageVersionArn"].split("/")[-2], Version=1)
        assert rep["Status"] == "COMPLETED" and rep["Compatible"] is True
        log = (srv.data_dir / "server.log").read_text()
        assert "stopped sending blob" in log and "Traceback" not in log
    finally:
        gate.close()


def test_decompression_bomb_fails_on_the_ratio(sm, pusher):
    blob, diff_id = gzip_bomb(300 << 20)  # 300 MiB of zeros in about 300 kB
    r = repo()
    push_layers(pusher, r, "bomb", [(blob, diff_id)])
    _, d = register(sm, f"{r}:bomb")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "the layer expands more than 250 times" in d["FailureReason"] and "decompression bomb" in d["FailureReason"]


# -- malformed configs, manifests and indexes: CREATE_FAILED naming the member, never stuck CREATING ----

BAD_CONFIGS = {
    "config-array": ({"config": ["a"]}, "config is an array, not an object"),
    "exposed-ports-array": (
        {"config": {"Env": GOOD_ENV, "ExposedPorts": ["8787"]}},
        "config.ExposedPorts is an array, not an object",
    ),
    "rootfs-string": ({"rootfs": "x"}, "rootfs is a string, not an object"),
    "env-string": ({"config": {"Env": "PATH=/usr/bin"}}, "config.Env is a string, not an array of strings"),
    "entrypoint-number": (
        {"config": {"Env": GOOD_ENV, "Entrypoint": [7]}},
        "config.Entrypoint[0] is a number, not a string",
    ),
    "os-object": ({"os": {"name": "linux"}}, "os is an object, not a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_an_image_config_with_members_of_the_wrong_type_fails_clearly(sm, ext, pusher, registry, case):
    fields, expected = BAD_CONFIGS[case]
    r = repo()
    pushed = push_image(pusher, r, "v1", [compatible_layer()], config_fields=fields)
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert d["FailureReason"] == (
        f"Cannot inspect {registry}/{r}@{pushed.digest}: the image config is malformed: {expected}"
    )
    assert report(ext, name)["Status"] == "FAILED"


def test_a_config_descriptor_with_a_negative_size_fails_clearly(sm, pusher):
    r = repo()
    push_image(pusher, r, "v1", [compatible_layer()], descriptor_fields={"size": -1})
    _, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert d["FailureReason"].endswith(
        "the image manifest is malformed: the config descriptor has size -1, not a non-negative integer"
    )


def test_an_index_without_a_manifest_list_or_with_a_bad_entry_fails_clearly(sm, pusher, registry):
    r = repo()
    push_raw_index(pusher, r, "null", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": None})
    _, d = register(sm, f"{r}:null")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert d["FailureReason"] == (
        f"Cannot resolve BaseImage {r}:null: the index {registry}/{r}:null is malformed: "
        "its manifests member is null, not an array"
    )
    image = push_image(pusher, r, "amd64", [compatible_layer()])
    entry = {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": -1, "platform": {"os": "linux"}}
    entry["platform"]["architecture"] = "amd64"
    push_raw_index(pusher, r, "neg", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    _, d = register(sm, f"{r}:neg")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert d["FailureReason"].endswith("entry 1 of its manifests has size -1, not a non-negative integer")


@pytest.fixture
def lax_registry():
    static = StaticRegistry()
    yield static
    static.close()


def _entry(digest: str, **members) -> dict:
    return {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": 500,
        "platform": {"os": "linux", "architecture": "amd64"},
        **members,
    }


def test_wrong_types_that_only_a_lax_registry_serves_fail_clearly(sm, lax_registry):
    """Distribution refuses these on push; a registry that stores manifests unchecked serves them."""
    host = lax_registry.host
    config = json.dumps({"os": "linux", "architecture": "amd64", "config": {"Env": GOOD_ENV}}).encode()
    layer = gzip.compress(compatible_layer().tar(), mtime=0)
    image = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": lax_registry.blob(config)},
        "layers": [{"mediaType": LAYER_TYPES["gzip"], "digest": lax_registry.blob(layer), "size": len(layer)}],
    }
    image["config"]["size"] = "12"
    digest = lax_registry.manifest("lax/img", "size", image, OCI_MANIFEST)
    _, d = register(sm, f"{host}/lax/img:size")
    assert d["FailureReason"] == (
        f"Cannot inspect {host}/lax/img@{digest}: the image manifest is malformed: "
        "the config descriptor has size a string, not a non-negative integer"
    )
    image["config"]["size"] = len(config)
    good = lax_registry.manifest("lax/idx", "amd64", image, OCI_MANIFEST)
    cases = {
        "str": (["x"], "entry 1 of its manifests is a string, not a descriptor object"),
        "plat": (
            [_entry(good, platform="linux/amd64")],
            "entry 1 of its manifests has a platform that is a string, not an object",
        ),
        "os": ([_entry(good, platform={"os": 5})], "entry 1 of its manifests has platform.os a number, not a string"),
        "dig": ([_entry(good), _entry(5)], "entry 2 of its manifests has no valid sha256 digest (digest is a number)"),
        "size": ([_entry(good, size="500")], "entry 1 of its manifests has size a string, not a non-negative integer"),
        "type": (
            [_entry(good, mediaType=7)],
            "entry 1 of its manifests has a mediaType that is a number, not a string",
        ),
        "list": ({"a": 1}, "its manifests member is an object, not an array"),
    }
    for tag, (manifests, expected) in cases.items():
        lax_registry.manifest(
            "lax/idx", tag, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, OCI_INDEX
        )
        _, d = register(sm, f"{host}/lax/idx:{tag}")
        assert d["ImageVersionStatus"] == "CREATE_FAILED", tag
        assert d["FailureReason"] == (
            f"Cannot resolve BaseImage {host}/lax/idx:{tag}: the index {host}/lax/idx:{tag} is malformed: {expected}"
        ), tag
    lax_registry.manifest(
        "lax/idx", "ok", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [_entry(good)]}, OCI_INDEX
    )
    _, d = register(sm, f"{host}/lax/idx:ok")  # the same image through a well-formed index: inspected as usual
    assert d["ImageVersionStatus"] == "CREATED", d.get("FailureReason")


# -- operations and their errors -------------------------------------------------------------------


def test_report_operation_errors(sm, ext, pusher):
    name = "insp-" + uuid.uuid4().hex[:8]
    with pytest.raises(ClientError) as e:
        ext.describe_image_version_report(ImageName=name)
    assert e.value.response["Error"]["Code"] == "ResourceNotFound"
    sm.create_image(ImageName=name, RoleArn=ROLE)
    with pytest.raises(ClientError) as e:
        ext.describe_image_version_report(ImageName=name)
    assert e.value.response["Error"]["Message"] == f"Image {name} has no versions"
    _, d = register(sm, "insp/does-not-exist:v1", name)
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    with pytest.raises(ClientError) as e:
        ext.describe_image_version_report(ImageName=name, Version=1)
    message = e.value.response["Error"]["Message"]
    assert message.startswith(f"Version 1 of image {name} has no compatibility report (it is CREATE_FAILED: ")
    with pytest.raises(ClientError) as e:
        ext.describe_image_version_report(ImageName=name, Version=1, Alias="a")
    assert e.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as e:
        ext.diff_image_versions(ImageName=name, FromVersion=1)
    assert e.value.response["Error"]["Message"] == "Specify ToVersion or ToAlias"
    with pytest.raises(ClientError) as e:
        ext.describe_image_version_report(ImageName=name, Alias="no-such-alias")
    assert "No ImageVersion with the alias no-such-alias" in e.value.response["Error"]["Message"]


def test_diff_of_synthetic_versions(sm, ext, pusher):
    r = repo()
    name = "insp-" + uuid.uuid4().hex[:8]
    push_image(pusher, r, "v1", [compatible_layer({"reticulate": "1.34.0", "jsonlite": "1.8.4", "rlang": "1.1.0"})])
    register(sm, f"{r}:v1", name)
    upper = Layer().files(r_packages({"jsonlite": "1.8.0", "rlang": "1.1.10", "glue": "1.7.0"}))
    upper.whiteout("usr/local/lib/R/site-library/reticulate")
    upper.file("etc/passwd", "root:x:0:0::/root:/bin/sh\nanalyst:x:1000:1000::/home/a:/bin/sh\n")
    env = [*GOOD_ENV[:2], "RSTUDIO_PACKAGE_MANAGER_URL=https://other.example.test", "TZ=UTC"]
    push_image(
        pusher,
        r,
        "v2",
        [compatible_layer({"reticulate": "1.34.0", "jsonlite": "1.8.4", "rlang": "1.1.0"}), upper],
        env=env,
    )
    register(sm, f"{r}:v2", name)
    sm.update_image_version(ImageName=name, Version=2, AliasesToAdd=["latest-good"])
    d = ext.diff_image_versions(ImageName=name, FromVersion=1, ToAlias="latest-good")
    assert (d["From"]["Version"], d["To"]["Version"]) == (1, 2)
    assert [p["Name"] for p in d["PackagesAdded"]] == ["glue"]
    assert [p["Name"] for p in d["PackagesRemoved"]] == ["reticulate"]
    assert [(p["Name"], p["From"], p["To"]) for p in d["PackagesUpgraded"]] == [("rlang", "1.1.0", "1.1.10")]
    assert [(p["Name"], p["From"], p["To"]) for p in d["PackagesDowngraded"]] == [("jsonlite", "1.8.4", "1.8.0")]
    assert d["EnvAdded"] == ["TZ=UTC"] and d["EnvRemoved"] == []
    assert d["EnvChanged"] == [
        {
            "Name": "RSTUDIO_PACKAGE_MANAGER_URL",
            "From": "https://packages.example.test",
            "To": "https://other.example.test",
        }
    ]
    assert d["UsersAdded"] == ["analyst"] and d["UsersRemoved"] == ["daemon", "ruser"]
    assert d["RVersion"] == {"From": "4.2.2", "To": "4.2.2", "Changed": False}
    assert d["UncompressedSize"]["Delta"] == d["UncompressedSize"]["To"] - d["UncompressedSize"]["From"] > 0
    assert {"Name": "reticulate", "From": "PASSED", "To": "FAILED"} in d["RulesChanged"]


def test_cli_report_and_diff(sm, pusher, strict):
    import subprocess

    byoi = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "byoi")
    r = repo()
    push_image(pusher, r, "v1", [compatible_layer({"reticulate": "1.34.0"})])
    push_image(pusher, r, "v2", [compatible_layer({"reticulate": "1.35.0", "glue": "1.7.0"})])
    name, _ = register(sm, f"{r}:v1")
    register(sm, f"{r}:v2", name)
    sm.update_image_version(ImageName=name, Version=2, AliasesToAdd=["stable"])
    env = strict.aws_env()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([byoi, "versions", *args], env={**env, "COLUMNS": "200"}, capture_output=True, text=True)

    table = run("report", name, "--alias", "stable")
    assert table.returncode == 0, table.stderr
    assert "version 2 (CREATED): compatible" in table.stdout and "R         4.2.2 at /usr/lib/R" in table.stdout
    assert "glue" in table.stdout and "reticulate" in table.stdout and "PASSED" in table.stdout
    as_json = json.loads(run("report", name, "--version", "1", "--output", "json").stdout)
    assert as_json["Version"] == 1 and as_json["Report"]["Compatible"] is True
    diff = run("diff", name, "1", "stable")
    assert diff.returncode == 0, diff.stderr
    lines = {" ".join(line.replace("│", " ").split()) for line in diff.stdout.splitlines()}
    assert "added glue 1.7.0" in lines and "upgraded reticulate 1.34.0 1.35.0" in lines
    diff_json = json.loads(run("diff", name, "1", "2", "--output", "json").stdout)
    assert [p["Name"] for p in diff_json["PackagesAdded"]] == ["glue"]
    missing = run("report", name + "-nope")
    assert missing.returncode == 5 and "ResourceNotFound" in missing.stderr and "Traceback" not in missing.stderr
