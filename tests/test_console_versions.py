"""The console's version pages through a real browser (Playwright driving Debian's Chromium) against the shared
real `byoi server` (tests/support/console.py), the session's real registry and the real Docker Engine: building
a version from an uploaded Dockerfile with its log followed live, the version page with its compatibility report
and R package table, registering from a reference (checked as it is typed), the diff of two versions, a failed
version, what a user may see and do, CSRF, JavaScript off and a narrow window.

The versions here are registered from the reference of the session's RStudio stand-in (`rstudio_image`, already
pushed to the real registry and inspected by this server, so registering it again is quick) in images of their
own; the built one is FROM it, with a fake R package (a DESCRIPTION file) and an ENV added.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from playwright.sync_api import expect

from tests.support import sessions as s
from tests.support.console import check_accessible, csrf_token, make_user, post_form, screenshot, sign_in, user_page
from tests.support.docker_images import docker_available

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)"),
]
SLOW = 120_000  # ms: a build, its push and the inspection of what it pushed
DESCRIPTION = b"Package: consolepkg\nVersion: 1.2.3\nTitle: A package the console's build adds\n"


@pytest.fixture(scope="module")
def sm(console_server: Any) -> Any:
    return console_server.client()


def wait_status(sm: Any, image: str, version: int, statuses: tuple[str, ...] = ("CREATED", "CREATE_FAILED")) -> str:
    deadline = time.monotonic() + 120
    while True:
        status = str(sm.describe_image_version(ImageName=image, Version=version)["ImageVersionStatus"])
        if status in statuses or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


@pytest.fixture(scope="module")
def base_ref(sm: Any, rstudio_image: str) -> str:
    """The stand-in in the real registry (tagged in Docker Engine too): what the versions here are registered
    from and the build starts FROM. Its layers are in this server's inspection cache already."""
    return str(sm.describe_image_version(ImageName=rstudio_image, Version=1)["BaseImage"])


@pytest.fixture(scope="module")
def registered(sm: Any, base_ref: str) -> str:
    """An image with version 1 registered from `base_ref` (CREATED, with its report); its name."""
    name = s.unique("cv")
    sm.create_image(ImageName=name, RoleArn=s.ROLE)
    sm.create_image_version(ImageName=name, BaseImage=base_ref)
    assert wait_status(sm, name, 1) == "CREATED"
    return name


def url(server: Any, image: str, rest: str = "") -> str:
    return f"{server.endpoint}/console/images/{image}/versions{rest}"


def column(page: Any, name: str) -> list[str]:
    return page.locator(f"#package-table tbody td.package-{name}").all_inner_texts()


@pytest.mark.slow
def test_build_then_register_from_a_reference_and_compare(admin_page, console_server, sm, base_ref, registered):
    """The whole flow as an administrator: build from a pasted Dockerfile with an uploaded context file and a
    build argument, follow the log until the version is CREATED, read its report and package table; check
    references as they are typed; register the second version and compare the two."""
    page, image = admin_page, s.unique("cb")
    sm.create_image(ImageName=image, RoleArn=s.ROLE)
    page.goto(url(console_server, image, "/new"))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"New version of {image}")
    check_accessible(page, "new version")
    screenshot(page, "version-new")
    page.get_by_label("Pasted Dockerfile").fill(
        f"FROM {base_ref}\nARG GREETING\nCOPY DESCRIPTION /usr/local/lib/R/site-library/consolepkg/DESCRIPTION\n"
        f'ENV BUILT_BY=console\nRUN echo "$GREETING from {image}" | tee /greeting.txt\n'
    )
    page.set_input_files("#f-context", files=[{"name": "DESCRIPTION", "mimeType": "text/plain", "buffer": DESCRIPTION}])
    page.get_by_label("Build arguments").fill("GREETING=hello")
    page.get_by_role("button", name="Build and register").click()
    page.wait_for_url(re.compile(r"/console/builds/b-[0-9a-f]{16}$"))
    # The log arrives line by line (htmx fetches what follows its offset) while the status section polls.
    log = page.locator("#build-log")
    expect(log).to_contain_text("Step", timeout=SLOW)
    check_accessible(page, "build page while it runs")
    expect(log).to_contain_text(f"hello from {image}", timeout=SLOW)  # a RUN step's output
    expect(log).to_contain_text("--> SUCCEEDED", timeout=SLOW)
    expect(page.locator("#open-version")).to_be_visible(timeout=SLOW)  # the version is checked: CREATED
    expect(page.locator("#build-status")).to_contain_text("CREATED")
    assert page.locator("#log-tail").count() == 0  # the log stopped following at its last line
    check_accessible(page, "build page, ended")
    screenshot(page, "build")
    page.locator("#open-version").click()
    page.wait_for_url(re.compile(r"/versions/1$"))

    # The version page: facts, the report's rules with what to do, R, and the packages.
    expect(page.locator("#version-state")).to_have_text("CREATED")
    expect(page.locator("#pinned-image")).to_contain_text("@sha256:")
    expect(page.locator("#compatible")).to_have_text("yes")
    urls = page.locator("#rules tr[data-rule=rstudio-urls]")  # the stand-in sets neither URL: a warning
    expect(urls.locator(".outcome")).to_have_text("WARN")
    expect(urls.locator(".advice")).to_contain_text("Set them with ENV in the Dockerfile")
    expect(page.locator("#rules tr[data-rule=rstudio-server] .outcome")).to_have_text("PASS")
    expect(page.locator("#rules tr[data-rule=rstudio-server] .advice")).to_have_text("")
    expect(page.locator("#r-installations")).to_contain_text("/usr/lib/R")
    names = column(page, "name")
    assert "consolepkg" in names and "jsonlite" in names and names == sorted(names, key=str.casefold)
    check_accessible(page, "version page")
    screenshot(page, "version")
    # Sorting by a header and searching swap only the table (htmx) and keep the address in step.
    page.locator("#package-table th a", has_text="Version").click()
    expect(page.locator("#package-table th[aria-sort=ascending]")).to_contain_text("Version")
    expect(page).to_have_url(re.compile(r"sort=version"))
    page.locator("#package-table th a", has_text="Version").click()
    expect(page.locator("#package-table th[aria-sort=descending]")).to_contain_text("Version")
    page.get_by_label("Search by name or library").fill("consolepkg")
    expect(page.locator("#package-table caption")).to_contain_text("1 of")
    assert column(page, "version") == ["1.2.3"]
    expect(page).to_have_url(re.compile(r"q=consolepkg.*sort=version.*order=desc"))  # the header's sort kept
    page.get_by_label("Search by name or library").fill("no-such-package")
    expect(page.locator("#no-packages")).to_be_visible()

    # From a reference: the check says why a bad one fails, and what a good one resolves to.
    page.goto(url(console_server, image, "/new"))
    field = page.get_by_label("Image reference")
    field.fill(base_ref.rsplit(":", 1)[0] + "-missing:v1")
    field.press("Tab")
    expect(page.locator("#reference-error")).to_contain_text("does not exist")
    check_accessible(page, "new version, bad reference")
    field.fill(base_ref)
    field.press("Tab")
    resolves = re.compile(r"resolves to sha256:[0-9a-f]{64} \(linux/amd64, [0-9.]+ MB\)")
    expect(page.locator("#reference-resolved")).to_contain_text(resolves)
    page.get_by_role("button", name="Create version").click()
    page.wait_for_url(re.compile(r"/versions/2\?notice=created$"))
    expect(page.locator("#notice")).to_be_visible()
    expect(page.locator("#version-state")).to_have_text("CREATED", timeout=SLOW)  # polled, then reloaded
    expect(page.locator("#compatible")).to_have_text("yes")

    # Compare 2 with 1: the package and the ENV only version 1 has.
    page.get_by_label("Version to compare with").select_option("1")
    page.get_by_role("button", name="Compare").click()
    page.wait_for_url(re.compile(r"/versions/2/diff\?other=1$"))
    expect(page.locator("#diff-direction")).to_contain_text("from version 1 to version 2")
    expect(page.locator("#packages-removed")).to_contain_text("consolepkg")
    expect(page.locator("#env-changes")).to_contain_text("BUILT_BY=console")
    expect(page.locator("#packages-added")).to_have_count(0)
    check_accessible(page, "diff page")
    screenshot(page, "version-diff")


def test_describe_image_reference_resolves_without_creating_anything(console_ext, base_ref, registry):
    """The extension operation behind the reference check (Byoi.DescribeImageReference, administrators only)."""
    found = console_ext.describe_image_reference(ImageReference=base_ref)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", found["Digest"]) and found["Platform"] == "linux/amd64"
    assert found["PinnedImage"] == f"{base_ref.rsplit(':', 1)[0]}@{found['Digest']}"
    assert found["CompressedSize"] > 1_000_000 and found["LayerCount"] > 1
    for reference, code, words in (
        (f"{registry}/console/never-pushed:v1", "ResourceNotFound", "does not exist"),
        ("Not A Reference", "ValidationException", "ImageReference is not valid"),
        ("127.0.0.1:9/nothing/here:v1", "ValidationException", "reach"),
    ):
        with pytest.raises(ClientError) as refused:
            console_ext.describe_image_reference(ImageReference=reference)
        error = refused.value.response["Error"]
        assert error["Code"] == code and words in error["Message"], error


def test_a_failed_version_shows_its_reason(admin_page, console_server, sm, registry):
    image = s.unique("cf")
    sm.create_image(ImageName=image, RoleArn=s.ROLE)
    sm.create_image_version(ImageName=image, BaseImage=f"{registry}/console/never-pushed:v1")
    assert wait_status(sm, image, 1) == "CREATE_FAILED"
    page = admin_page
    answer = page.goto(url(console_server, image, "/1"))
    assert answer is not None and answer.status == 200
    expect(page.locator("#version-state")).to_have_text("CREATE_FAILED")
    expect(page.locator("#failure-reason")).to_contain_text("Cannot resolve BaseImage")
    expect(page.locator("#no-report")).to_contain_text("no compatibility report")
    assert page.locator("#package-table").count() == 0
    check_accessible(page, "failed version")
    # A version that does not exist, and a diff without a version to compare with.
    answer = page.goto(url(console_server, image, "/7"))
    assert answer is not None and answer.status == 404
    check_accessible(page, "missing version")
    answer = page.goto(url(console_server, image, "/1/diff?other=x"))
    assert answer is not None and answer.status == 400
    expect(page.locator("#diff-error")).to_be_visible()
    check_accessible(page, "diff without a version")


@pytest.fixture
def user_of(chromium, console_server, console_ext, sm, registered) -> Iterator[Any]:
    """A user of a domain the registered image is attached to, signed in."""
    s.ensure_config(sm)
    domain = s.rstudio_domain(sm, [{"ImageName": registered, "AppImageConfigName": s.CONFIG}])
    page = user_page(chromium, console_server.endpoint, make_user(sm, console_ext, domain))
    try:
        yield page
    finally:
        page.context.close()


def test_a_user_reads_the_version_but_cannot_make_one(user_of, console_server, registered, base_ref, sm):
    page = user_of
    answer = page.goto(url(console_server, registered, "/1"))
    assert answer is not None and answer.status == 200
    expect(page.locator("#version-state")).to_have_text("CREATED")
    expect(page.locator("#package-table")).to_contain_text("jsonlite")
    expect(page.locator("#new-version")).to_have_count(0)
    check_accessible(page, "version page as a user")
    token = csrf_token(page)  # the error page below has no forms
    answer = page.goto(url(console_server, registered, "/new"))
    assert answer is not None and answer.status == 403
    check_accessible(page, "new version as a user")
    before = len(sm.list_image_versions(ImageName=registered)["ImageVersions"])
    refused = post_form(page, url(console_server, registered, "/new"), {"csrf_token": token, "BaseImage": base_ref})
    assert refused.status == 403 and "not allowed" in refused.text()
    built = page.request.post(
        url(console_server, registered, "/build"),
        multipart={"csrf_token": token, "dockerfile_text": f"FROM {base_ref}\n"},
        max_redirects=0,
    )
    assert built.status == 403 and "not allowed" in built.text()
    assert len(sm.list_image_versions(ImageName=registered)["ImageVersions"]) == before


def test_forms_without_their_csrf_token_are_refused(admin_page, console_server, registered, base_ref, sm):
    page = admin_page
    page.goto(url(console_server, registered, "/1"))
    before = len(sm.list_image_versions(ImageName=registered)["ImageVersions"])
    refused = post_form(page, url(console_server, registered, "/new"), {"BaseImage": base_ref})
    assert refused.status == 403
    built = page.request.post(
        url(console_server, registered, "/build"), multipart={"dockerfile_text": f"FROM {base_ref}\n"}, max_redirects=0
    )
    assert built.status == 403
    assert len(sm.list_image_versions(ImageName=registered)["ImageVersions"]) == before


@pytest.mark.slow
def test_without_javascript(chromium, console_server, console_admin, registered, base_ref):
    """The reference's error comes back with the POST, the new version's page refreshes itself until it is
    CREATED, and the package search is a plain GET form. (axe-core needs JavaScript: these pages are checked
    with it on in the other tests.)"""
    context = chromium.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        sign_in(page, console_server.endpoint, console_admin)
        page.goto(url(console_server, registered, "/new"))
        missing = base_ref.rsplit(":", 1)[0] + ":no-such-tag"
        page.get_by_label("Image reference").fill(missing)
        with page.expect_navigation() as nav:
            page.get_by_role("button", name="Create version").click()
        assert nav.value is not None and nav.value.status == 404
        expect(page.locator("#reference-error")).to_contain_text("not found")
        expect(page.get_by_label("Image reference")).to_have_value(missing)
        expect(page.get_by_label("Image reference")).to_have_attribute("aria-invalid", "true")
        page.get_by_label("Image reference").fill(base_ref)
        page.get_by_role("button", name="Create version").click()
        page.wait_for_url(re.compile(r"/versions/[0-9]+\?notice=created$"))
        expect(page.locator("#version-state")).to_have_text("CREATED", timeout=SLOW)  # <noscript> meta refresh
        page.get_by_label("Search by name or library").fill("digest")
        page.get_by_role("button", name="Search").click()
        page.wait_for_url(re.compile(r"q=digest"))
        assert column(page, "name") == ["digest"]
    finally:
        context.close()


def test_the_version_page_fits_a_narrow_window(chromium, console_server, console_admin, registered):
    context = chromium.new_context(viewport={"width": 380, "height": 800})
    page = context.new_page()
    try:
        sign_in(page, console_server.endpoint, console_admin)
        for rest in ("/1", "/new"):
            page.goto(url(console_server, registered, rest))
            fits = page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
            assert fits, f"{rest} is wider than the window"
        check_accessible(page, "new version, narrow")
        page.goto(url(console_server, registered, "/1"))
        check_accessible(page, "version page, narrow")
        screenshot(page, "version-narrow")
    finally:
        context.close()
