"""Inspection of real images built by Docker from the test Dockerfiles and pushed to a real registry:
plain Debian fails for R, R from Debian fails for RStudio Server, the RStudio stand-in (a TEST DOUBLE for
the IDE binary only; R and its packages are real) passes. The diff is checked on two real versions that
differ by one R package installed with `R CMD INSTALL`, and the CLI prints both."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from byoi.cli.client import extension_client
from tests.support.docker_images import (
    build_test_image,
    docker_available,
    docker_client,
    ensure_base_image,
    push_test_image,
)
from tests.test_inspect_synthetic import outcomes, register

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)"),
]
BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"

HELLO_PACKAGE = {
    "DESCRIPTION": (
        "Package: hellobyoi\nVersion: 0.1.0\nTitle: Says Hello\nDescription: A package added in a test image.\n"
        "License: MIT\nAuthor: byoi tests\nMaintainer: byoi tests <tests@example.test>\n"
    ),
    "NAMESPACE": "export(hello)\n",
    "R/hello.R": 'hello <- function() "hello from byoi"\n',
}


@pytest.fixture
def sm(strict):
    return strict.client()


@pytest.fixture
def ext(strict):
    strict.session()
    return extension_client(strict.endpoint, "byoi")


def push_local(local_tag: str, registry: str, repo: str, tag: str = "v1") -> None:
    client = docker_client()
    client.images.get(local_tag).tag(f"{registry}/{repo}", tag=tag)
    for chunk in client.api.push(f"{registry}/{repo}", tag=tag, stream=True, decode=True):
        assert "error" not in chunk, chunk


def build_with_added_package(tmp_path: Path) -> str:
    """plain-r plus one R package installed by R itself (one more layer on top)."""
    build_test_image("plain-r")  # cached by context hash
    context = tmp_path / "ctx"
    for path, content in HELLO_PACKAGE.items():
        (context / "hellobyoi" / path).parent.mkdir(parents=True, exist_ok=True)
        (context / "hellobyoi" / path).write_text(content)
    (context / "Dockerfile").write_text(
        "FROM byoi-test/plain-r:latest\nCOPY hellobyoi /tmp/hellobyoi\n"
        "RUN R CMD INSTALL /tmp/hellobyoi && rm -rf /tmp/hellobyoi\n"
    )
    tag = "byoi-test/plain-r-hello:latest"
    for chunk in docker_client().api.build(path=str(context), tag=tag, rm=True, decode=True):
        assert "error" not in chunk, chunk
    return tag


def test_plain_debian_fails_for_r(sm, ext, registry):
    push_local(ensure_base_image(), registry, "real/debian")
    name, d = register(sm, "real/debian:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "R is missing" in d["FailureReason"] and "RStudio Server is missing" in d["FailureReason"]
    rep = ext.describe_image_version_report(ImageName=name)["Report"]
    assert rep["Os"]["Id"] == "debian" and rep["Os"]["VersionId"] == "12"
    assert "root" in {u["Name"] for u in rep["Users"]}
    assert rep["RPackages"] == [] and rep["RInstallations"] == []
    assert outcomes(rep)["linux-platform"] == "PASSED"


def test_r_from_debian_fails_for_rstudio_server_only(sm, ext, registry):
    push_test_image("plain-r", registry, "real/plain-r", "v1")
    name, d = register(sm, "real/plain-r:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    reason = d["FailureReason"]
    assert "RStudio Server is missing: /usr/lib/rstudio-server/bin/rserver does not exist" in reason
    assert "r-present" not in reason
    rep = ext.describe_image_version_report(ImageName=name)["Report"]
    assert outcomes(rep)["r-present"] == "PASSED"
    (install,) = rep["RInstallations"]
    assert install["Home"] == "/usr/lib/R" and install["Binary"] == "/usr/bin/R"
    assert install["Version"].startswith("4.2.")
    names = {p["Name"] for p in rep["RPackages"]}
    assert {"base", "stats", "utils", "methods"} <= names


def test_rstudio_standin_passes_with_r_and_its_packages(sm, ext, registry, strict):
    push_test_image("rstudio-standin", registry, "real/standin", "v1")
    name, d = register(sm, "real/standin:v1")
    assert d["ImageVersionStatus"] == "CREATED", d.get("FailureReason")
    rep = ext.describe_image_version_report(ImageName=name)["Report"]
    assert rep["Compatible"] is True and rep["RInstallations"][0]["Version"].startswith("4.2.")
    packages = {p["Name"]: p for p in rep["RPackages"]}
    assert packages["httpuv"]["Library"] == "/usr/lib/R/site-library"
    assert packages["jsonlite"]["Version"] and packages["base"]["Library"] == "/usr/lib/R/library"
    assert rep["RStudioServer"]["Path"] == "/usr/lib/rstudio-server/bin/rserver"
    assert "rstudio" in {u["Name"] for u in rep["Users"]} and outcomes(rep)["non-root-user"] == "PASSED"
    assert rep["ExposedPorts"] == ["8787/tcp"] and outcomes(rep)["entrypoint-override"] == "FAILED"
    # The CLI's table and JSON views of the same report.
    env = strict.aws_env()
    table = subprocess.run([str(BIN / "byoi"), "versions", "report", name], env=env, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert "compatible" in table.stdout and "httpuv" in table.stdout and "rstudio-server" in table.stdout
    raw = subprocess.run(
        [str(BIN / "byoi"), "versions", "report", name, "--version", "1", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert json.loads(raw.stdout)["Report"]["RPackages"] == rep["RPackages"]


def test_diff_of_two_real_versions_that_differ_by_an_r_package(sm, ext, registry, tmp_path, strict):
    push_test_image("plain-r", registry, "real/hello", "v1")
    push_local(build_with_added_package(tmp_path), registry, "real/hello", "v2")
    name = "hello-" + uuid.uuid4().hex[:6]
    register(sm, "real/hello:v1", name)
    _, d2 = register(sm, "real/hello:v2", name)
    assert d2["ImageVersionStatus"] == "CREATE_FAILED"  # still no RStudio Server: the report is complete anyway
    first = ext.describe_image_version_report(ImageName=name, Version=1)["Report"]
    second = ext.describe_image_version_report(ImageName=name, Version=2)["Report"]
    # Only the layers added on top (COPY and RUN) were read; plain-r's were indexed already.
    assert second["LayersFromCache"] == first["LayerCount"] == second["LayerCount"] - 2
    diff = ext.diff_image_versions(ImageName=name, FromVersion=1, ToVersion=2)
    assert [(p["Name"], p["Version"], p["Library"]) for p in diff["PackagesAdded"]] == [
        ("hellobyoi", "0.1.0", "/usr/local/lib/R/site-library")
    ]
    assert diff["PackagesRemoved"] == diff["PackagesUpgraded"] == diff["PackagesDowngraded"] == []
    assert diff["RVersion"]["Changed"] is False and diff["EnvAdded"] == [] and diff["UsersAdded"] == []
    assert diff["UncompressedSize"]["Delta"] > 0
    out = subprocess.run(
        [str(BIN / "byoi"), "versions", "diff", name, "1", "2"], env=strict.aws_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "added" in out.stdout and "hellobyoi" in out.stdout and "0.1.0" in out.stdout
