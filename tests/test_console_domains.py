"""The console's domains, user profiles, attachments and sessions pages through a real browser (Playwright driving
Debian's Chromium) against a real `byoi server` with the real registry and Docker Engine (tests/support/console.py).

The one RStudio session started here runs the STAND-IN image (tests/images/rstudio-standin): a TEST DOUBLE for the
IDE binary only; the registry, the image, inspection, Docker Engine, the container, the proxy and R are real.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support import sessions as s
from tests.support.console import (
    PASSWORD,
    check_accessible,
    csrf_token,
    make_user,
    post_form,
    screenshot,
    sign_in,
    user_page,
)
from tests.support.docker_images import docker_available

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)"),
]


@pytest.fixture(autouse=True, scope="module")
def _a_domain_exists(console_server: Any) -> None:
    """The new-domain form offers byoi's instance types once a domain exists to ask (Byoi.ListInstanceTypes)."""
    s.rstudio_domain(console_server.client())


def domain_of(sm: Any, name: str) -> dict[str, Any]:
    [summary] = [d for d in sm.list_domains(MaxResults=100)["Domains"] if d["DomainName"] == name]
    return sm.describe_domain(DomainId=summary["DomainId"])  # type: ignore[no-any-return]


def attach(page: Any, image: str, version: str = "", config: str = s.CONFIG) -> None:
    """The attach form of the page (domain or profile): image, version ('' = latest), app image config."""
    form = page.locator("#attach-form")
    form.get_by_label("Image", exact=True).select_option(image)
    form.get_by_label("Version").fill(version)
    form.get_by_label("App image config").select_option(config)
    form.get_by_role("button", name=re.compile("^Attach to")).click()
    page.wait_for_load_state()


def build_through_forms(page: Any, endpoint: str, image: str) -> tuple[str, str]:
    """As an administrator: a domain with RStudio settings, the stand-in attached to it (latest), a user profile
    with version 1 attached to it, all through the forms; (domain id, profile name)."""
    page.goto(endpoint + "/console/domains")
    check_accessible(page, "domains list")
    page.get_by_role("link", name="Create a domain").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Create a domain")
    check_accessible(page, "new domain form")
    name = s.unique("team")
    page.get_by_label("Domain name").fill(name)
    page.get_by_label("Execution role ARN").fill(s.ROLE)
    expect(page.get_by_label("RStudio on")).to_be_checked()
    page.get_by_label("Posit Connect URL").fill(s.CONNECT_URL)
    page.get_by_label("Posit Package Manager URL").fill(s.PACKAGE_MANAGER_URL)
    page.get_by_label("Default instance type").select_option("ml.t3.small")
    screenshot(page, "domain-new")
    page.get_by_role("button", name="Create domain").click()
    expect(page.locator("#notice")).to_have_text("The domain was created.")
    domain_id = page.locator("#domain-id").inner_text()
    assert page.url.split("?")[0] == f"{endpoint}/console/domains/{domain_id}"
    expect(page.locator("#rstudio-status")).to_have_text("on")
    expect(page.locator("#no-attached")).to_be_visible()
    # Attach the stand-in to the domain, no version: the newest CREATED one at each launch.
    attach(page, image)
    expect(page.locator("#notice")).to_have_text("The image was attached.")
    row = page.locator(f"#attached tr[data-image='{image}']")
    expect(row.locator(".version")).to_have_text("latest")
    expect(row.locator(".now")).to_have_text("Launchable: version 1")
    # A user profile: its page says the domain's image is what the user can launch.
    page.get_by_label("User profile name").fill("ana")
    page.get_by_role("button", name="Create user profile").click()
    expect(page.locator("#notice")).to_have_text("The user profile was created.")
    assert page.url.split("?")[0] == f"{endpoint}/console/domains/{domain_id}/profiles/ana"
    expect(page.locator("#source")).to_contain_text("The domain's images")
    launchable = page.locator(f"#effective tr[data-image='{image}']")
    expect(launchable.locator(".version")).to_have_text("latest")
    expect(launchable.locator(".now")).to_have_text("Launchable: version 1")
    # Version 1 attached to the profile: now its own list is what the user sees.
    attach(page, image, "1")
    expect(page.locator("#source")).to_contain_text("This profile's own images")
    expect(page.locator(f"#effective tr[data-image='{image}'] .version")).to_have_text("1")
    expect(page.locator(f"#attached tr[data-image='{image}'][data-version='1']")).to_have_count(1)
    return domain_id, "ana"


def test_an_administrator_builds_a_domain_through_the_forms(admin_page, console_server, console_ext, rstudio_image):
    page, endpoint, sm = admin_page, console_server.endpoint, console_server.client()
    domain_id, profile = build_through_forms(page, endpoint, rstudio_image)
    check_accessible(page, "profile page")
    screenshot(page, "profile")
    # What the API holds is what the forms said.
    described = sm.describe_domain(DomainId=domain_id)
    rstudio = described["DomainSettings"]["RStudioServerProDomainSettings"]
    assert (rstudio["DomainExecutionRoleArn"], rstudio["RStudioConnectUrl"]) == (s.ROLE, s.CONNECT_URL)
    assert rstudio["RStudioPackageManagerUrl"] == s.PACKAGE_MANAGER_URL
    users = described["DefaultUserSettings"]
    assert users["ExecutionRole"] == s.ROLE
    assert users["RSessionAppSettings"]["DefaultResourceSpec"] == {"InstanceType": "ml.t3.small"}
    assert users["RSessionAppSettings"]["CustomImages"] == [
        {"ImageName": rstudio_image, "AppImageConfigName": s.CONFIG}
    ]
    own = console_ext.describe_attached_images(DomainId=domain_id, UserProfileName=profile)["CustomImages"]
    assert own == [{"ImageName": rstudio_image, "AppImageConfigName": s.CONFIG, "ImageVersionNumber": 1}]
    # The profile's settings: RStudio access off, its own instance type; its images are kept.
    page.get_by_label("Disabled: may not").check()
    page.get_by_label("Default instance type").select_option("ml.t3.large")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#notice")).to_have_text("The settings were saved.")
    settings = sm.describe_user_profile(DomainId=domain_id, UserProfileName=profile)["UserSettings"]
    assert settings["RStudioServerProAppSettings"]["AccessStatus"] == "DISABLED"
    assert settings["RSessionAppSettings"]["DefaultResourceSpec"] == {"InstanceType": "ml.t3.large"}
    assert len(settings["RSessionAppSettings"]["CustomImages"]) == 1
    expect(page.get_by_label("Disabled: may not")).to_be_checked()
    # Detach at profile level: the domain's images apply again.
    page.get_by_role("button", name=f"Detach {rstudio_image} 1").click()
    expect(page.locator("#notice")).to_have_text("The image was detached.")
    expect(page.locator("#source")).to_contain_text("The domain's images")
    expect(page.locator("#no-attached")).to_be_visible()
    # The domain's settings: a new Connect URL and instance type, with its images and other URL kept.
    page.get_by_role("link", name=described["DomainName"]).first.click()
    expect(page.locator("#rstudio-on")).to_be_visible()
    page.get_by_label("Posit Connect URL").fill("https://connect.example.test/other")
    page.get_by_label("Default instance type").select_option("")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#notice")).to_have_text("The settings were saved.")
    described = sm.describe_domain(DomainId=domain_id)
    rstudio = described["DomainSettings"]["RStudioServerProDomainSettings"]
    assert rstudio["RStudioConnectUrl"] == "https://connect.example.test/other"
    assert rstudio["RStudioPackageManagerUrl"] == s.PACKAGE_MANAGER_URL
    assert "DefaultResourceSpec" not in described["DefaultUserSettings"]["RSessionAppSettings"]
    assert len(described["DefaultUserSettings"]["RSessionAppSettings"]["CustomImages"]) == 1
    expect(page.locator(f"#profiles tr[data-profile='{profile}']")).to_have_count(1)
    check_accessible(page, "domain page")
    screenshot(page, "domain")
    # Delete the profile, after a confirmation page.
    page.goto(f"{endpoint}/console/domains/{domain_id}/profiles/{profile}")
    page.get_by_role("link", name="Delete this user profile…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Delete user profile {profile}?")
    check_accessible(page, "delete confirmation")
    page.get_by_role("button", name="Delete user profile").click()
    expect(page.locator("#notice")).to_have_text("The user profile is being deleted.")
    deadline = time.monotonic() + 20
    while sm.list_user_profiles(DomainIdEquals=domain_id)["UserProfiles"]:
        assert time.monotonic() < deadline, "the profile was not deleted"
        time.sleep(0.2)


@pytest.mark.slow
def test_from_the_forms_to_rstudio_and_stopped_from_the_sessions_page(
    admin_page, chromium, console_server, console_ext, rstudio_image
):
    endpoint, sm = console_server.endpoint, console_server.client()
    domain_id, profile = build_through_forms(admin_page, endpoint, rstudio_image)
    principal = s.unique("ana")
    console_ext.create_principal(
        Name=principal, Role="user", DomainId=domain_id, UserProfileName=profile, Password=PASSWORD
    )
    page = user_page(chromium, endpoint, principal)
    try:
        # The user's console home lists what they can launch; its nav leads to the launcher, where the session
        # starts on the version attached to the profile.
        expect(page.locator("#effective-images")).to_contain_text(
            re.compile(rf"{rstudio_image}\s*, version 1 \(attached\)")
        )
        page.get_by_role("navigation", name="Console").get_by_role("link", name="RStudio").click()
        assert page.url == endpoint + "/rstudio/default/"
        page.get_by_label("Session name").fill("from-the-console")
        page.get_by_label("Image").select_option(label=f"{rstudio_image}, version 1 (attached)")
        assert page.get_by_label("Instance type").input_value() == "ml.t3.small"  # the domain's default
        page.get_by_role("button", name="Start session").click()
        page.wait_for_url(re.compile(re.escape(endpoint) + r"/sessions/[0-9a-f]{16}/$"))
        session_url = page.url
        # RStudio (the stand-in) through byoi's proxy: the progress page moves on by itself.
        page.wait_for_selector('body[data-standin="rserver"][data-ws="open"]', timeout=90_000)
        assert page.url == session_url
        # The administrator sees it on the sessions page, and stops it there.
        admin = admin_page
        admin.get_by_role("navigation", name="Console").get_by_role("link", name="Sessions").click()
        row = admin.locator(f"#sessions tr[data-owner='{domain_id}/{profile}'][data-app='from-the-console']")
        expect(row.locator(".state .status")).to_have_text("InService")
        assert (row.locator(".image").inner_text(), row.locator(".version").inner_text()) == (rstudio_image, "1")
        assert row.locator(".instance-type").inner_text() == "ml.t3.small"
        assert row.locator(".owner").inner_text().endswith(f"/ {profile}")
        check_accessible(admin, "sessions page")
        screenshot(admin, "sessions")
        row.get_by_role("button", name=f"Stop from-the-console of {profile}").click()
        expect(admin.locator("#notice")).to_have_text("The session is stopping.")
        # htmx reloads the table while it stops: Deleted, and no Stop button any more.
        expect(row.locator(".state .status")).to_have_text("Deleted", timeout=30_000)
        expect(row.get_by_role("button")).to_have_count(0)
        assert s.app_status(sm, domain_id, profile, "from-the-console")["Status"] == "Deleted"
    finally:
        page.context.close()


def test_errors_show_next_to_their_form(admin_page, console_server, rstudio_image):
    page, endpoint, sm = admin_page, console_server.endpoint, console_server.client()
    domain_id = s.rstudio_domain(sm)
    taken = sm.describe_domain(DomainId=domain_id)["DomainName"]
    # A name already used: 409, next to the form, the field marked and what was typed kept.
    page.goto(endpoint + "/console/domains/new")
    page.get_by_label("Domain name").fill(taken)
    page.get_by_label("Execution role ARN").fill(s.ROLE)
    page.get_by_label("Posit Connect URL").fill(s.CONNECT_URL)
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Create domain").click()
    assert posted.value.status == 409
    expect(page.locator("#form-error")).to_contain_text("already used")
    expect(page.get_by_label("Domain name")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Posit Connect URL")).to_have_value(s.CONNECT_URL)
    check_accessible(page, "new domain form with an error")
    # A role that is not an ARN: the model's message in the form's words.
    page.get_by_label("Domain name").fill(s.unique("bad"))
    page.get_by_label("Execution role ARN").fill("not-a-role")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Create domain").click()
    assert posted.value.status == 400
    expect(page.locator("#form-error")).to_contain_text("execution role ARN")
    expect(page.get_by_label("Execution role ARN")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Execution role ARN")).to_have_value("not-a-role")
    # The domain's page: a bad role in its settings, a version that does not exist, a bad profile name.
    page.goto(f"{endpoint}/console/domains/{domain_id}")
    page.get_by_label("Execution role ARN").fill("still-not-a-role")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Save settings").click()
    assert posted.value.status == 400
    expect(page.locator("#settings-error")).to_contain_text("execution role ARN")
    expect(page.locator("#settings-form").get_by_label("Execution role ARN")).to_have_value("still-not-a-role")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        attach(page, rstudio_image, "99")
    assert posted.value.status == 404
    expect(page.locator("#attach-error")).to_contain_text(f"{rstudio_image}:99")
    expect(page.locator("#attach-form").get_by_label("Version")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#attach-form").get_by_label("Version")).to_have_value("99")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        attach(page, rstudio_image, "newest")
    assert posted.value.status == 400
    expect(page.locator("#attach-error")).to_contain_text("is not a number")
    page.get_by_label("User profile name").fill("no spaces allowed")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Create user profile").click()
    assert posted.value.status == 400
    expect(page.locator("#profile-error")).to_contain_text("user profile name")
    expect(page.get_by_label("User profile name")).to_have_attribute("aria-invalid", "true")
    check_accessible(page, "domain page with an error")
    assert sm.list_user_profiles(DomainIdEquals=domain_id)["UserProfiles"] == []
    # A crafted detach of what is not attached, and a page that does not exist: error pages, never a 500.
    answer = post_form(
        page, f"{endpoint}/console/domains/{domain_id}/images/detach", {"csrf_token": csrf_token(page), "image": "x"}
    )
    assert answer.status == 400 and "not attached" in answer.text()
    answer = page.goto(f"{endpoint}/console/domains/{domain_id}/profiles/nobody")
    assert answer is not None and answer.status == 404
    check_accessible(page, "profile not found")


def test_another_domains_user_gets_403_and_a_domains_user_their_launcher(chromium, console_server, console_ext):
    endpoint, sm = console_server.endpoint, console_server.client()
    mine, other = s.rstudio_domain(sm), s.rstudio_domain(sm)
    name = make_user(sm, console_ext, mine)
    make_user(sm, console_ext, other, "theirs")
    page = user_page(chromium, endpoint, name)
    try:
        # The domain's Url: a user of the domain lands on the launcher; another domain's page is refused by the API.
        answer = page.request.get(f"{endpoint}/console/domains/{mine}", max_redirects=0)
        assert (answer.status, answer.headers["location"]) == (303, "/rstudio/default/")
        answer = page.goto(f"{endpoint}/console/domains/{other}")
        assert answer is not None and answer.status == 403
        expect(page.locator("#error-message")).to_contain_text("You are not allowed")
        check_accessible(page, "403 page")
        for path in ("/console/domains", "/console/domains/new", f"/console/domains/{other}/profiles/theirs"):
            assert page.request.get(endpoint + path, max_redirects=0).status == 403, path
        # A crafted POST with a valid token: refused, and nothing changed.
        token = csrf_token(page)
        for path, form in (
            (f"/console/domains/{other}/profiles", {"profile_name": "intruder"}),
            (f"/console/domains/{other}/settings", {"role": s.ROLE}),
            ("/console/sessions/stop", {"domain_id": other, "user_profile_name": "theirs", "app_name": "x"}),
        ):
            assert post_form(page, endpoint + path, {**form, "csrf_token": token}).status == 403, path
        assert [p["UserProfileName"] for p in sm.list_user_profiles(DomainIdEquals=other)["UserProfiles"]] == ["theirs"]
        # The sessions page: a user's sessions are on their launcher.
        answer = page.request.get(f"{endpoint}/console/sessions", max_redirects=0)
        assert (answer.status, answer.headers["location"]) == (303, "/rstudio/default/")
    finally:
        page.context.close()


def test_a_form_without_its_csrf_token_is_refused(admin_page, console_server, console_ext, rstudio_image):
    page, endpoint, sm = admin_page, console_server.endpoint, console_server.client()
    domain_id = s.rstudio_domain(sm)
    page.goto(f"{endpoint}/console/domains/{domain_id}")
    since = time.time()
    name = s.unique("csrf")
    for path, form in (
        ("/console/domains/new", {"name": name, "role": s.ROLE, "rstudio": "on"}),
        (f"/console/domains/{domain_id}/profiles", {"profile_name": "csrf-less"}),
        (f"/console/domains/{domain_id}/images/attach", {"image": rstudio_image, "config": s.CONFIG}),
        ("/console/sessions/stop", {"domain_id": domain_id, "user_profile_name": "x", "app_name": "y"}),
    ):
        for token in ({}, {"csrf_token": "A" * 43}):
            answer = post_form(page, endpoint + path, {**form, **token})
            assert answer.status == 403 and "security token" in answer.text(), path
    assert name not in {d["DomainName"] for d in sm.list_domains(MaxResults=100)["Domains"]}
    assert sm.list_user_profiles(DomainIdEquals=domain_id)["UserProfiles"] == []
    assert console_ext.describe_attached_images(DomainId=domain_id)["CustomImages"] == []
    events = console_ext.list_audit_events(StartTime=since, MaxResults=100)["AuditEvents"]
    refused = [e["Operation"] for e in events if e["Outcome"] == "CsrfTokenMismatch"]
    for operation in ("CreateDomain", "CreateUserProfile", "UpdateAttachedImages", "DeleteApp"):
        assert refused.count(operation) == 2, (operation, refused)


def test_a_domain_is_created_with_javascript_off(chromium, console_server, console_admin, rstudio_image):
    context = chromium.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        sign_in(page, console_server.endpoint, console_admin, next_path="/console/domains/new")
        name = s.unique("nojs")
        page.get_by_label("Domain name").fill(name)
        page.get_by_label("Execution role ARN").fill(s.ROLE)
        page.get_by_label("RStudio on").uncheck()
        page.get_by_role("button", name="Create domain").click()
        expect(page.locator("#notice")).to_have_text("The domain was created.")
        expect(page.locator("#rstudio-status")).to_have_text("off")
        domain_id = page.locator("#domain-id").inner_text()
        attach(page, rstudio_image)
        expect(page.locator(f"#attached tr[data-image='{rstudio_image}'] .now")).to_have_text("Launchable: version 1")
        # RStudio turned on afterwards, through the settings form.
        page.get_by_label("RStudio on").check()
        page.get_by_role("button", name="Save settings").click()
        expect(page.locator("#rstudio-status")).to_have_text("on")
        page.get_by_label("User profile name").fill("bea")
        page.get_by_role("button", name="Create user profile").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("User profile bea")
        page.goto(f"{console_server.endpoint}/console/sessions?domain={domain_id}")
        expect(page.locator("#no-sessions")).to_be_visible()  # (axe needs JavaScript: checked elsewhere)
    finally:
        context.close()
    domain = domain_of(console_server.client(), name)
    assert domain["DomainSettings"]["RStudioServerProDomainSettings"]["DomainExecutionRoleArn"] == s.ROLE


def test_the_pages_fit_a_narrow_window(chromium, console_server, console_admin, rstudio_image):
    sm = console_server.client()
    domain_id = s.rstudio_domain(sm, [{"ImageName": rstudio_image, "AppImageConfigName": s.CONFIG}])
    sm.create_user_profile(DomainId=domain_id, UserProfileName="narrow")
    context = chromium.new_context(viewport={"width": 380, "height": 800})
    page = context.new_page()
    try:
        sign_in(page, console_server.endpoint, console_admin)
        for path in (
            "/console/domains",
            f"/console/domains/{domain_id}",
            f"/console/domains/{domain_id}/profiles/narrow",
            "/console/sessions",
        ):
            page.goto(console_server.endpoint + path)
            fits = page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
            assert fits, f"{path} is wider than the window"
        screenshot(page, "sessions-narrow")
    finally:
        context.close()


def test_stopping_what_is_not_running_says_so(admin_page, console_server):
    page, endpoint = admin_page, console_server.endpoint
    domain_id = s.rstudio_domain(console_server.client())
    page.goto(f"{endpoint}/console/sessions?domain={domain_id}")
    expect(page.locator("#no-sessions")).to_have_text("No session matches.")
    expect(page.get_by_label("Domain ID")).to_have_value(domain_id)
    check_accessible(page, "sessions page, none")
    form = {"csrf_token": csrf_token(page), "domain_id": "d-000000000000", "user_profile_name": "x", "app_name": "y"}
    answer = post_form(page, endpoint + "/console/sessions/stop", form)
    assert answer.status == 404 and 'id="stop-error"' in answer.text()
    answer = page.goto(endpoint + "/console/sessions?domain=not-a-domain-id")
    assert answer is not None and answer.status == 400
    check_accessible(page, "sessions filter error")
