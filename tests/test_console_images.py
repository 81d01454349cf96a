"""The console's Images pages through a real browser (Playwright driving Debian's Chromium) against the shared
real `byoi server` (tests/support/console.py): the list with its search and paging, creating, editing, tags,
aliases and deleting as an administrator, and what a user may see and do. Images are made through the form or,
where a test needs many, through boto3; every test uses its own unique names.

The one registered version (the alias test) is the `plain-r` test image pushed to the session's real registry
and resolved by the server; nothing here needs the RStudio stand-in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from playwright.sync_api import expect

from tests.support import sessions as s
from tests.support.console import check_accessible, csrf_token, make_user, post_form, screenshot, sign_in, user_page

MANY = 30  # images sharing one prefix: two pages of 25


@pytest.fixture(scope="module")
def sm(console_server: Any) -> Any:
    return console_server.client()


@pytest.fixture(scope="module")
def many(sm: Any) -> tuple[str, list[str]]:
    """MANY images with one unique prefix, made through boto3; the newest has a version (one that fails to
    resolve: its registry does not exist, which is quick and still a real version with a status)."""
    prefix = s.unique("pg")
    names = [f"{prefix}-{i:02d}" for i in range(MANY)]
    for name in names:
        sm.create_image(ImageName=name, RoleArn=s.ROLE, DisplayName=f"Paged {name[-2:]}")
    sm.create_image_version(ImageName=names[-1], BaseImage="127.0.0.1:9/none/such:v1")
    return prefix, names


@pytest.fixture(scope="module")
def admin_context(chromium: Any, console_server: Any, console_admin: str) -> Iterator[Any]:
    """One browser profile signed in as the console's administrator for the whole module (signing in costs
    seconds: the password hash); each test opens its own page in it (`admin`)."""
    context = chromium.new_context()
    try:
        sign_in(context.new_page(), console_server.endpoint, console_admin)
        yield context
    finally:
        context.close()


@pytest.fixture
def admin(admin_context: Any) -> Iterator[Any]:
    page = admin_context.new_page()
    try:
        yield page
    finally:
        page.close()


@pytest.fixture
def images_url(console_server: Any) -> str:
    return console_server.endpoint + "/console/images"


def rows(page: Any) -> list[str]:
    """The image names in the list's table, in order."""
    return page.locator("#images-table tbody tr td:first-child a").all_inner_texts()


def test_admin_creates_an_image_through_the_form_and_finds_it(admin, images_url, sm):
    page = admin
    name = s.unique("made")
    page.goto(images_url)
    page.get_by_role("link", name="New image").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New image")
    expect(page.get_by_label("Role ARN")).to_have_value("arn:aws:iam::000000000000:role/byoi")
    check_accessible(page, "new image form")
    screenshot(page, "image-new")
    page.get_by_label("Image name").fill(name)
    page.get_by_label("Display name").fill("R with tidyverse")
    page.get_by_label("Description").fill("For the data team")
    page.get_by_role("button", name="Create image").click()
    expect(page).to_have_url(re.compile(rf"/console/images/{name}\?notice=created$"))
    expect(page.locator("#notice")).to_contain_text("The image was created")
    expect(page.locator("#display-name")).to_have_text("R with tidyverse")
    expect(page.locator("#description")).to_have_text("For the data team")
    expect(page.locator("#image-arn")).to_have_text(sm.describe_image(ImageName=name)["ImageArn"])
    expect(page.get_by_role("link", name="New version")).to_have_attribute(
        "href", f"/console/images/{name}/versions/new"
    )
    expect(page.locator("#no-versions")).to_be_visible()
    check_accessible(page, "image page")
    screenshot(page, "image")

    # The list, searched as you type: htmx swaps the results and pushes the URL (the page is not reloaded).
    page.goto(images_url)
    page.evaluate("() => { window.notReloaded = true }")
    page.get_by_label("Search image names").fill(name)
    expect(page).to_have_url(re.compile(rf"\?q={name}$"))
    expect(page.locator("#images-table tbody tr")).to_have_count(1)
    assert rows(page) == [name]
    assert page.evaluate("() => window.notReloaded === true")
    row = page.locator("#images-table tbody tr").first
    expect(row.locator("td[data-label='Display name']")).to_have_text("R with tidyverse")
    expect(row.locator("td[data-label='Status']")).to_have_text("CREATED")
    expect(row.locator("td[data-label='Latest version']")).to_have_text("No versions")
    check_accessible(page, "images list, searched")
    screenshot(page, "images")
    # A search the API refuses, typed: the swapped results say why.
    page.get_by_label("Search image names").fill("no spaces")
    expect(page.locator("#search-error")).to_contain_text("search")
    assert page.evaluate("() => window.notReloaded === true")


def test_a_bad_or_taken_name_is_shown_next_to_the_form_with_what_was_typed(admin, images_url, sm):
    page = admin
    page.goto(images_url + "/new")
    page.get_by_label("Image name").fill("bad name!")
    page.get_by_label("Display name").fill("Kept display name")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Create image").click()
    assert answer.value.status == 400
    error = page.get_by_role("alert")
    expect(error).to_contain_text("image name")
    expect(page.get_by_label("Image name")).to_have_value("bad name!")
    expect(page.get_by_label("Image name")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Display name")).to_have_value("Kept display name")
    expect(page.get_by_label("Display name")).not_to_have_attribute("aria-invalid", "true")
    check_accessible(page, "new image form with an error")

    taken = s.unique("taken")
    sm.create_image(ImageName=taken, RoleArn=s.ROLE)
    page.get_by_label("Image name").fill(taken.upper())  # names are unique ignoring case
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Create image").click()
    assert answer.value.status == 409
    expect(page.get_by_role("alert")).to_contain_text("already exists")
    expect(page.get_by_label("Image name")).to_have_value(taken.upper())


def test_search_and_paging_through_thirty_images(admin, images_url, sm, many):
    prefix, names = many
    sm.create_image(ImageName=s.unique("other"), RoleArn=s.ROLE)  # newer than them all, and not matching
    page = admin
    page.goto(f"{images_url}?q={prefix}")
    first = rows(page)
    assert first == list(reversed(names))[:25]  # newest first
    newest = page.locator("#images-table tbody tr").first.locator("td[data-label='Latest version']")
    expect(newest).to_contain_text("Version 1")
    expect(newest.get_by_role("link", name="Version 1")).to_have_attribute(
        "href", f"/console/images/{names[-1]}/versions/1"
    )
    expect(page.get_by_role("link", name="First page")).to_have_count(0)

    page.get_by_role("link", name="Next page").click()
    expect(page).to_have_url(re.compile(rf"\?q={prefix}&token="))
    second = rows(page)
    assert second == list(reversed(names))[25:]
    assert sorted(first + second) == sorted(names)
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    expect(page.get_by_label("Search image names")).to_have_value(prefix)
    check_accessible(page, "images list, second page")

    page.get_by_role("link", name="First page").click()
    expect(page).to_have_url(re.compile(rf"\?q={prefix}$"))
    assert rows(page) == first

    # A search the API refuses (NameContains allows letters, digits, - and .) is an error on the page, not a 500.
    answer = page.goto(f"{images_url}?q=no%20spaces")
    assert answer is not None and answer.status == 400
    expect(page.locator("#search-error")).to_contain_text("search")
    expect(page.get_by_label("Search image names")).to_have_value("no spaces")
    check_accessible(page, "images list with a refused search")


def test_the_list_fits_a_narrow_window(admin, images_url, many):
    prefix, _ = many
    page = admin
    page.set_viewport_size({"width": 380, "height": 800})
    page.goto(f"{images_url}?q={prefix}")
    expect(page.locator("#images-table tbody tr")).to_have_count(25)
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    # The table folds into labelled blocks: each cell says which column it is.
    label = page.locator("#images-table tbody tr").first.locator("td[data-label='Latest version']")
    assert "Latest version: " in label.evaluate("(e) => getComputedStyle(e, '::before').content")
    check_accessible(page, "images list, narrow")
    screenshot(page, "images-narrow")


def test_edit_display_name_and_description(admin, images_url, sm):
    page = admin
    name = s.unique("edit")
    sm.create_image(ImageName=name, RoleArn=s.ROLE, DisplayName="Old name", Description="Old words")
    page.goto(f"{images_url}/{name}")
    page.get_by_role("link", name="Edit").click()
    expect(page.get_by_label("Display name")).to_have_value("Old name")
    expect(page.get_by_label("Description")).to_have_value("Old words")
    check_accessible(page, "edit image")
    page.get_by_label("Display name").fill("New name")
    page.get_by_label("Description").fill("")
    page.get_by_role("button", name="Save changes").click()
    expect(page).to_have_url(re.compile(rf"/console/images/{name}\?notice=updated$"))
    expect(page.locator("#display-name")).to_have_text("New name")
    described = sm.describe_image(ImageName=name)
    assert described["DisplayName"] == "New name" and "Description" not in described

    # An edit the API refuses keeps what was typed.
    page.goto(f"{images_url}/{name}/edit")
    page.get_by_label("Display name").fill("x" * 10)
    page.get_by_label("Description").evaluate("(e) => e.removeAttribute('maxlength')")
    page.get_by_label("Description").fill("y" * 513)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Save changes").click()
    assert answer.value.status == 400
    expect(page.get_by_role("alert")).to_contain_text("description")
    expect(page.get_by_label("Description")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Display name")).to_have_value("x" * 10)
    assert sm.describe_image(ImageName=name)["DisplayName"] == "New name"


def test_add_and_remove_a_tag(admin, images_url, sm):
    page = admin
    name = s.unique("tags")
    arn = sm.create_image(ImageName=name, RoleArn=s.ROLE)["ImageArn"]
    page.goto(f"{images_url}/{name}")
    expect(page.locator("#no-tags")).to_be_visible()
    page.get_by_label("Key").fill("team")
    page.get_by_label("Value").fill("data-science")
    page.get_by_role("button", name="Save tag").click()
    expect(page.locator("#notice")).to_contain_text("tag was saved")
    expect(page.locator("#tags-table tbody tr")).to_have_count(1)
    expect(page.locator("#tags-table")).to_contain_text("data-science")
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "data-science"}]

    page.get_by_label("Key").fill("bad#key")
    page.get_by_label("Value").fill("v")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Save tag").click()
    assert answer.value.status == 400
    expect(page.locator("#tag-error")).to_contain_text("tag key")
    expect(page.get_by_label("Key")).to_have_value("bad#key")
    expect(page.get_by_label("Key")).to_have_attribute("aria-invalid", "true")
    check_accessible(page, "image page with a tag error")

    page.get_by_role("button", name="Remove tag team").click()
    expect(page.locator("#notice")).to_contain_text("tag was removed")
    expect(page.locator("#no-tags")).to_be_visible()
    assert sm.list_tags(ResourceArn=arn)["Tags"] == []


def test_add_and_remove_an_alias_of_a_registered_version(admin, images_url, sm, registry, pusher):
    # A real version of a small synthetic image pushed over the registry's HTTP API (tests/support/oci.py):
    # pushing the plain-r test image through Docker took minutes on a loaded machine; this takes milliseconds,
    # and the server still resolves and inspects it (its lenient rules let a synthetic image end CREATED).
    name = s.unique("alias")
    pusher.image(f"console/{name}", "v1")
    sm.create_image(ImageName=name, RoleArn=s.ROLE)
    arn = sm.create_image_version(ImageName=name, BaseImage=f"{registry}/console/{name}:v1")["ImageVersionArn"]
    number = int(arn.rsplit("/", 1)[1])
    sm.get_waiter("image_version_created").wait(
        ImageName=name, Version=number, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150}
    )
    described = sm.describe_image_version(ImageName=name, Version=number)
    page = admin
    page.goto(f"{images_url}/{name}")
    row = page.locator(f"#version-{number}")
    expect(row.locator("td[data-label='Status']")).to_contain_text("CREATED")
    expect(row.locator("td[data-label='Base image']")).to_have_text(described["BaseImage"])
    expect(row.locator("td[data-label='Pinned digest']")).to_have_text(described["ContainerImage"].split("@")[1])
    expect(row.get_by_role("link", name=f"Version {number}")).to_have_attribute(
        "href", f"/console/images/{name}/versions/{number}"
    )

    page.get_by_label(f"New alias for version {number}").fill("stable")
    page.get_by_role("button", name=f"Add alias to version {number}").click()
    expect(page.locator("#notice")).to_contain_text("alias was added")
    expect(page.locator(f"#version-{number} ul.aliases li")).to_have_count(1)
    expect(page.locator(f"#version-{number} ul.aliases code")).to_have_text("stable")
    assert sm.list_aliases(ImageName=name, Version=number)["SageMakerImageVersionAliases"] == ["stable"]

    page.get_by_label(f"New alias for version {number}").fill("-bad")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name=f"Add alias to version {number}").click()
    assert answer.value.status == 400
    expect(page.locator(f"#alias-error-{number}")).to_contain_text("-bad")
    expect(page.get_by_label(f"New alias for version {number}")).to_have_value("-bad")
    check_accessible(page, "image page with a version and an alias error")
    screenshot(page, "image-versions")

    # Forms posted by hand: a version that does not exist, and no version at all, are errors, never a 500.
    token = csrf_token(page)
    answer = post_form(page, f"{images_url}/{name}/aliases", {"csrf_token": token, "version": "99", "alias": "x"})
    assert answer.status == 404 and "No ImageVersion" in answer.text()
    answer = post_form(page, f"{images_url}/{name}/aliases", {"csrf_token": token, "version": "one", "alias": "x"})
    assert answer.status == 400 and "names no version" in answer.text()

    page.get_by_role("button", name=f"Remove alias stable of version {number}").click()
    expect(page.locator("#notice")).to_contain_text("alias was removed")
    expect(page.locator(f"#version-{number} ul.aliases")).to_have_count(0)
    assert sm.list_aliases(ImageName=name, Version=number)["SageMakerImageVersionAliases"] == []


def detach_all(ext: Any, domain: str, profile: str | None = None) -> None:
    key = {"DomainId": domain, **({"UserProfileName": profile} if profile else {})}
    revision = ext.describe_attached_images(**key)["Revision"]
    ext.update_attached_images(**key, CustomImages=[], ExpectedRevision=revision)


def test_delete_names_what_attaches_the_image_and_shows_the_refusal(admin, images_url, sm, console_ext):
    name = s.unique("del")
    sm.create_image(ImageName=name, RoleArn=s.ROLE)
    sm.create_image_version(ImageName=name, BaseImage="127.0.0.1:9/none/such:v1")
    s.ensure_config(sm)
    entry = {"ImageName": name, "AppImageConfigName": s.CONFIG}
    domain = s.rstudio_domain(sm, [entry])
    profile = s.unique("p")
    sm.create_user_profile(
        DomainId=domain, UserProfileName=profile, UserSettings={"RSessionAppSettings": {"CustomImages": [entry]}}
    )
    page = admin
    page.goto(f"{images_url}/{name}")
    page.get_by_role("link", name="Delete").click()
    delete_url = page.url
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Delete image {name}?")
    table = page.locator("#referrers-table tbody tr")
    expect(table).to_have_count(2)
    expect(table.nth(0)).to_contain_text(domain)
    expect(table.nth(0)).to_contain_text("DefaultUserSettings.RSessionAppSettings.CustomImages")
    expect(table.nth(1)).to_contain_text(profile)
    expect(table.nth(1)).to_contain_text("UserSettings.RSessionAppSettings.CustomImages")
    expect(page.locator("#delete-effect")).to_contain_text("its 1 version (version 1)")
    check_accessible(page, "delete confirmation")
    screenshot(page, "image-delete")

    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name=f"Delete image {name}").click()
    assert answer.value.status == 409
    expect(page.locator("#delete-error")).to_contain_text(f"domain {domain}")
    expect(page.locator("#delete-error")).to_contain_text("detach it first")
    check_accessible(page, "delete refused")
    assert sm.describe_image(ImageName=name)["ImageStatus"] == "CREATED"

    detach_all(console_ext, domain)
    detach_all(console_ext, domain, profile)
    page.goto(delete_url)  # (a reload would post the form again)
    expect(page.locator("#not-attached")).to_be_visible()
    page.get_by_role("button", name=f"Delete image {name}").click()
    expect(page).to_have_url(re.compile(r"/console/images\?notice=deleted&deleted="))
    expect(page.locator("#notice")).to_contain_text(f"Image {name} is being deleted")
    try:
        assert sm.describe_image(ImageName=name)["ImageStatus"] == "DELETING"
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "ResourceNotFound"


@pytest.fixture
def user_with_one_image(chromium, console_server, console_ext, sm) -> Iterator[tuple[Any, str, str, str]]:
    """A user whose domain attaches one of two images with a common prefix: (page, prefix, attached, other)."""
    prefix = s.unique("mine")
    attached, other = f"{prefix}-a", f"{prefix}-b"
    for image in (attached, other):
        sm.create_image(ImageName=image, RoleArn=s.ROLE)
    s.ensure_config(sm)
    domain = s.rstudio_domain(sm, [{"ImageName": attached, "AppImageConfigName": s.CONFIG}])
    user = make_user(sm, console_ext, domain)
    page = user_page(chromium, console_server.endpoint, user)
    try:
        yield page, prefix, attached, other
    finally:
        page.context.close()


def test_a_user_sees_only_the_attached_image_and_no_controls(user_with_one_image, images_url, sm):
    page, prefix, attached, other = user_with_one_image
    page.goto(f"{images_url}?q={prefix}")
    assert rows(page) == [attached]
    expect(page.get_by_role("link", name="New image")).to_have_count(0)
    check_accessible(page, "images list as a user")

    page.get_by_role("link", name=attached).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Image {attached}")
    for control in ("Edit", "Delete", "New version"):
        expect(page.get_by_role("link", name=control)).to_have_count(0)
    expect(page.locator("form[method=post][action^='/console/images']")).to_have_count(0)
    expect(page.get_by_role("heading", name="Tags")).to_have_count(0)
    check_accessible(page, "image page as a user")

    answer = page.goto(f"{images_url}/{other}")
    assert answer is not None and answer.status == 403
    answer = page.goto(f"{images_url}/new")
    assert answer is not None and answer.status == 403
    check_accessible(page, "403 page")

    # Posting anyway, with a valid CSRF token: the API refuses, and the page says so.
    page.goto(images_url)
    refused = s.unique("notmine")
    form = {"csrf_token": csrf_token(page), "name": refused, "role_arn": s.ROLE}
    answer = post_form(page, images_url, form)
    assert answer.status == 403
    assert "You are not allowed to do this" in answer.text()
    answer = post_form(page, f"{images_url}/{attached}/delete", {"csrf_token": csrf_token(page)})
    assert answer.status == 403
    with pytest.raises(ClientError):
        sm.describe_image(ImageName=refused)
    assert sm.describe_image(ImageName=attached)["ImageStatus"] == "CREATED"


def test_a_form_without_its_csrf_token_is_refused(admin, images_url, sm):
    page = admin
    name = s.unique("csrf")
    answer = post_form(page, images_url, {"name": name, "role_arn": s.ROLE})
    assert answer.status == 403
    assert "security token" in answer.text()
    with pytest.raises(ClientError):
        sm.describe_image(ImageName=name)

    sm.create_image(ImageName=name, RoleArn=s.ROLE)
    answer = post_form(page, f"{images_url}/{name}/delete", {"csrf_token": "forged"})
    assert answer.status == 403
    assert sm.describe_image(ImageName=name)["ImageStatus"] == "CREATED"


def test_not_found_image_is_a_404_page(admin, images_url):
    page = admin
    answer = page.goto(f"{images_url}/{s.unique('nosuch')}")
    assert answer is not None and answer.status == 404
    expect(page.locator("#error-message")).to_contain_text("No Image with the name")
    check_accessible(page, "404 page")


def test_create_and_search_without_javascript(chromium, console_server, admin_context, sm):
    # The administrator's cookies, in a profile with JavaScript off: every form still works.
    context = chromium.new_context(java_script_enabled=False, storage_state=admin_context.storage_state())
    page = context.new_page()
    name = s.unique("nojs")
    try:
        page.goto(console_server.endpoint + "/console/images")
        page.get_by_role("link", name="New image").click()
        page.get_by_label("Image name").fill(name)
        page.get_by_role("button", name="Create image").click()
        expect(page).to_have_url(re.compile(rf"/console/images/{name}\?notice=created$"))
        expect(page.locator("#notice")).to_be_visible()
        assert sm.describe_image(ImageName=name)["RoleArn"] == "arn:aws:iam::000000000000:role/byoi"

        page.goto(console_server.endpoint + "/console/images")
        page.get_by_label("Search image names").fill(name)
        page.get_by_role("button", name="Search").click()
        expect(page).to_have_url(re.compile(rf"\?q={name}$"))
        assert rows(page) == [name]
    finally:
        context.close()
