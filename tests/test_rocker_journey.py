"""The README's whole journey on the REAL rocker/rstudio image, browser included: the image contract checked
against the real IDE in one command,

    .venv/bin/pytest -m rocker tests/test_rocker_journey.py

It runs whenever rocker/rstudio:4.4.2 can be pulled, or is already in the local Docker Engine (`docker load`,
or `skopeo copy … docker-daemon:`); BYOI_ROCKER_IMAGE names another tag for the air-gapped path. It runs the
README's own blocks, as tests/test_docs_blocks.py does with the stand-in: with a reachable public registry
the `online` ones (`byoi build examples/rocker --register`), with the image only in the local Engine the
`air-gapped` ones (an OCI archive made from it, copied into the registry with skopeo). Then Chromium follows
alice's sign-in link and must show RStudio's own IDE and run R in its console, and the session must listen
on a Unix socket (`--www-socket`: the image's RStudio Server is 2024.12 or later).

Where neither is possible, as on the machines the suite is developed on (no public registry is reachable), it
is skipped saying so. It is marked `rocker`, not `docker`: the CI guard (tests/support/ci_guard.py) fails a CI
run for a skipped `docker` or `postgres` test, which here would mean a service was lost; this skip is expected
wherever the image cannot be had, and `test_its_skip_does_not_fail_a_ci_run` keeps it so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import docblocks
from tests.support import sessions as s
from tests.support.docblocks import REPO
from tests.support.docker_images import docker_available, docker_client
from tests.support.processes import ByoiServer

ROCKER = os.environ.get("BYOI_ROCKER_IMAGE", "rocker/rstudio:4.4.2")
RUN_IT = ".venv/bin/pytest -m rocker tests/test_rocker_journey.py"
DOMAIN, USER = "team-r", "alice"  # as the README names them


def rocker_image() -> str:
    """'online' when the image could be pulled (a public registry is reachable), 'air-gapped' when it is only
    in the local Docker Engine; pytest.skip with the reason otherwise."""
    if not docker_available():
        pytest.skip(f"Docker Engine is not reachable (scripts/services.sh); then: {RUN_IT}")
    import docker.errors

    client = docker_client()
    try:
        client.images.pull(ROCKER)
        return "online"
    except docker.errors.APIError as exc:
        pull_error = exc.explanation or str(exc)
    try:
        client.images.get(ROCKER)
        return "air-gapped"
    except docker.errors.ImageNotFound:
        pytest.skip(
            f"{ROCKER} is not in the local Docker Engine and cannot be pulled ({pull_error.strip()}): no public "
            f"registry is reachable from here. Where one is, or once the image is in the Engine, run: {RUN_IT}"
        )


@pytest.fixture
def journey_server(registry: str, tmp_path: Path) -> Iterator[ByoiServer]:
    """A byoi server as `byoi up` runs one: the contract's default rules, the data dir at the default place in
    the journey's own HOME, real RStudio's own stop and start times."""
    srv = ByoiServer(
        data_dir=tmp_path / "home" / ".local" / "share" / "byoi",
        registries=[f"http://{registry}"],
        inspection_config=None,
    ).start()
    yield srv
    srv.stop()
    s.remove_sessions_of(srv.data_dir)


@pytest.mark.rocker
@pytest.mark.slow
@pytest.mark.timeout(3600)  # a pull of about 1 GB, the example's build, and real RStudio's first start
def test_the_readme_journey_on_rocker_rstudio(chromium: Any, tmp_path: Path, request) -> None:
    mode = rocker_image()
    registry: str = request.getfixturevalue("registry")
    server: ByoiServer = request.getfixturevalue("journey_server")
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "examples").symlink_to(REPO / "examples")
    if mode == "air-gapped":  # what `skopeo copy docker://rocker/rstudio:… oci-archive:rstudio.tar` makes
        subprocess.run(
            ["skopeo", "copy", "--quiet", f"docker-daemon:{ROCKER}", f"oci-archive:{workdir / 'rstudio.tar'}"],
            check=True,
            capture_output=True,
            timeout=1800,
        )
    run = docblocks.against_server(workdir, tmp_path / "home", server.endpoint, server.credentials_file, registry)
    run.timeout = 1800
    opened = False
    for block in docblocks.collect(REPO, [REPO / "README.md"]):
        if block.tags and mode not in block.tags:
            continue
        output = docblocks.run_block(block, run).output
        for link in docblocks.presigned_links(output):
            open_rstudio(chromium, link)
            check_socket_and_report(server)
            opened = True
    assert opened, "the README's journey printed no sign-in link to a session"


def open_rstudio(chromium: Any, link: str) -> None:
    """Follow alice's sign-in link in Chromium: it must land on the session through byoi's proxy and show the
    real IDE, whose console evaluates R."""
    from playwright.sync_api import expect

    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(link)
        page.wait_for_url(re.compile(r".*/sessions/[0-9a-f]+/.*"), timeout=120_000)
        console = page.locator("#rstudio_console_input")
        console.wait_for(timeout=180_000)  # RStudio's GWT client loading, then rsession starting
        assert "RStudio" in page.title(), page.title()
        console.click()
        page.keyboard.type("cat(6 * 7, 'from R', R.version.string)")
        page.keyboard.press("Enter")
        expect(page.locator("#rstudio_console_output")).to_contain_text("42 from R R version 4.", timeout=60_000)
    finally:
        context.close()


def check_socket_and_report(server: ByoiServer) -> None:
    """What byoi found inside the real image, and how it reached it: RStudio Server new enough for a Unix
    socket, and the session on one (no port published on the host)."""
    sm, ext = server.client(), s.extension(server)
    report = ext.describe_image_version_report(ImageName="rstudio")["Report"]
    assert report["Compatible"] is True, report.get("FailureReason")
    # The version byoi read from the image's RStudio Server (its VERSION file): 2024.12 or later.
    assert report["RStudioServer"].get("SupportsSocket") is True, report["RStudioServer"]
    domain = next(d["DomainId"] for d in sm.list_domains()["Domains"] if d["DomainName"] == DOMAIN)
    progress = s.progress(ext, domain, USER, "analysis")
    assert progress["Endpoint"].startswith("unix:"), progress


def test_its_skip_does_not_fail_a_ci_run(tmp_path: Path) -> None:
    """With CI=true a skipped `docker` test fails the run (tests/support/ci_guard.py); this one's skip must not,
    and must say why and how to run it. An image on a loopback port where nothing listens cannot be pulled."""
    env = {**os.environ, "CI": "true", "BYOI_ROCKER_IMAGE": "127.0.0.1:9/byoi-test/absent:never"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "readme_journey", __file__],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 skipped" in run.stdout and "skipped under CI" not in run.stdout, run.stdout
    skip = next(line for line in run.stdout.splitlines() if line.startswith("SKIPPED"))
    assert "127.0.0.1:9/byoi-test/absent:never is not in the local Docker Engine and cannot be pulled" in skip, skip
    assert RUN_IT in skip, skip
