"""The console's administration pages through a real browser (principals, access keys, the audit log), as an
administrator and as a user, against the shared real `byoi server` (tests/support/console.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
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

PRINCIPALS = "/console/admin/principals"
KEYS = "/console/admin/access-keys"
AUDIT = "/console/admin/audit"


@pytest.fixture(scope="module")
def admin_context(chromium: Any, console_server: Any, console_admin: str) -> Iterator[Any]:
    """One browser profile signed in as the console's administrator for the whole module (a sign-in costs a
    password hash): each test gets its own page in it (`admin_page`), and none signs it out."""
    context = chromium.new_context()
    page = context.new_page()
    sign_in(page, console_server.endpoint, console_admin)
    page.close()
    yield context
    context.close()


@pytest.fixture
def admin_page(admin_context: Any) -> Iterator[Any]:
    page = admin_context.new_page()
    yield page
    page.close()


@pytest.fixture(scope="module")
def domain(console_server: Any) -> str:
    return s.rstudio_domain(console_server.client())


def _key_client(server: Any, key_id: str, secret: str) -> Any:
    return boto3.client(
        "sagemaker",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def _find_principal_row(page: Any, endpoint: str, name: str) -> Any:
    """The principal's row in the list, following its pages (the shared server has many principals)."""
    page.goto(endpoint + PRINCIPALS)
    for _ in range(20):
        row = page.locator(f'tr[data-principal="{name}"]')
        if row.count():
            return row
        page.get_by_role("link", name="Next page").click()
        page.wait_for_load_state()
    raise AssertionError(f"{name} is not in the principals list")


def _submit(page: Any, button: str) -> Any:
    """Click the button and return the answer the browser navigated to (its status, headers)."""
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name=button, exact=True).click()
    return navigation.value


def test_create_user_set_password_sign_in_and_revoke(admin_page, chromium, console_server, domain):
    endpoint, page = console_server.endpoint, admin_page
    profile, name = s.unique("p"), s.unique("user")
    console_server.client().create_user_profile(DomainId=domain, UserProfileName=profile)

    page.goto(endpoint + PRINCIPALS + "/new")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("User", exact=True).check()
    page.get_by_label("Domain").select_option(domain)
    # htmx suggests the domain's profiles once it is chosen
    expect(page.locator(f'#profile-options option[value="{profile}"]')).to_have_count(1)
    page.get_by_label("User profile").fill(profile)
    check_accessible(page, "new principal form")
    screenshot(page, "admin-principal-new")
    assert _submit(page, "Create principal").status == 200
    assert page.url.endswith(f"{PRINCIPALS}/{name}?notice=created")
    expect(page.locator("#notice")).to_have_text("Principal created.")
    expect(page.locator("#role")).to_have_text("user")
    expect(page.locator("#domain-id")).to_have_text(domain)
    expect(page.locator("#profile")).to_have_text(profile)
    expect(page.locator("#has-password")).to_have_text("not set")

    page.get_by_role("textbox", name="Password", exact=True).fill(PASSWORD)
    _submit(page, "Set password")
    expect(page.locator("#notice")).to_contain_text("Password set")
    expect(page.locator("#has-password")).to_have_text("set")
    check_accessible(page, "principal page")
    screenshot(page, "admin-principal")

    user = user_page(chromium, endpoint, name)  # the password works: a fresh browser profile signs in
    try:
        expect(user.locator("#signed-in-as")).to_have_text(name)
        expect(user.locator("#domain-id")).to_have_text(domain)

        row = _find_principal_row(page, endpoint, name)
        expect(row.locator(".role")).to_have_text("user")
        expect(row.locator(".profile")).to_have_text(profile)
        expect(row.locator(".password")).to_have_text("set")
        check_accessible(page, "principals list")
        screenshot(page, "admin-principals")

        page.goto(f"{endpoint}{PRINCIPALS}/{name}")
        _submit(page, "Sign out everywhere")
        expect(page.locator("#notice")).to_contain_text("Signed out everywhere")
        user.goto(endpoint + "/console/")
        assert "/auth/sign-in" in user.url, "the revoked session still works"
    finally:
        user.context.close()


def test_new_principal_refusals_show_next_to_the_form(admin_page, console_server, console_admin, domain):
    endpoint, page = console_server.endpoint, admin_page
    page.goto(endpoint + PRINCIPALS + "/new")
    page.get_by_label("Name", exact=True).fill(console_admin)
    page.get_by_label("Administrator").check()
    assert _submit(page, "Create principal").status == 409
    expect(page.locator("#form-error")).to_contain_text(f"A principal named {console_admin} already exists")
    expect(page.get_by_label("Name", exact=True)).to_have_value(console_admin)
    expect(page.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Administrator")).to_be_checked()
    check_accessible(page, "new principal: name taken")

    name = s.unique("nobody")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("User", exact=True).check()
    page.get_by_label("Domain").select_option(domain)
    assert _submit(page, "Create principal").status == 400
    expect(page.locator("#form-error")).to_contain_text("A user principal needs domain and user profile name")
    expect(page.get_by_label("User profile")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Name", exact=True)).to_have_value(name)
    expect(page.get_by_label("Domain")).to_have_value(domain)
    expect(page.get_by_label("User", exact=True)).to_be_checked()

    page.get_by_label("User profile").fill("no-such-profile")
    page.get_by_label("Password").fill("short")
    assert _submit(page, "Create principal").status == 400
    expect(page.locator("#form-error")).to_contain_text("password")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Password")).to_have_value("")  # a password is never sent back
    assert "short" not in page.content()
    expect(page.get_by_label("User profile")).to_have_value("no-such-profile")
    check_accessible(page, "new principal: user without a profile")


def test_access_key_secret_shown_once_works_and_deactivates(admin_page, console_server, console_ext, domain):
    endpoint, page = console_server.endpoint, admin_page
    name = make_user(console_server.client(), console_ext, domain)
    page.goto(f"{endpoint}{PRINCIPALS}/{name}")
    expect(page.locator("#no-keys")).to_be_visible()
    answer = _submit(page, "Create access key")
    assert answer.request.method == "POST" and answer.status == 200
    assert answer.headers["cache-control"] == "no-store"
    key_id = page.locator("#access-key-id").inner_text()
    secret = page.locator("#secret-access-key").inner_text()
    assert secret and secret not in page.url
    expect(page.locator("#shown-once")).to_contain_text("this is the only time it is shown")
    expect(page.locator("#credentials")).to_contain_text(f"aws_access_key_id = {key_id}")
    expect(page.locator("#credentials")).to_contain_text(f"aws_secret_access_key = {secret}")
    expect(page.locator("#config")).to_contain_text(f"endpoint_url = {endpoint}")
    check_accessible(page, "access key created")
    screenshot(page, "admin-key-created")

    client = _key_client(console_server, key_id, secret)
    assert "Images" in client.list_images()

    page.reload()  # posts the form again: it made its key already, so it makes none and shows no secret
    page.wait_for_load_state()
    assert secret not in page.content()
    assert [k["AccessKeyId"] for k in console_ext.list_access_keys(PrincipalName=name)["AccessKeys"]] == [key_id]
    log = (console_server.data_dir / "server.log").read_text(errors="replace")
    assert secret not in log

    page.goto(f"{endpoint}{KEYS}?principal={name}")
    row = page.locator(f'tr[data-key="{key_id}"]')
    expect(row.locator(".principal")).to_have_text(name)
    expect(row.locator(".status")).to_have_text("Active")
    check_accessible(page, "access keys of one principal")
    screenshot(page, "admin-keys")
    row.get_by_role("button", name=f"Deactivate {key_id}").click()
    expect(page.locator("#notice")).to_contain_text("Access key deactivated")
    expect(page.locator(f'tr[data-key="{key_id}"] .status')).to_have_text("Inactive")
    assert f"principal={name}" in page.url
    with pytest.raises(ClientError) as refused:
        client.list_images()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403)

    page.locator(f'tr[data-key="{key_id}"]').get_by_role("link", name=f"Delete {key_id}").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(key_id)
    check_accessible(page, "delete access key")
    _submit(page, "Delete key")
    expect(page.locator("#notice")).to_contain_text("Access key deleted")
    expect(page.locator(f'tr[data-key="{key_id}"]')).to_have_count(0)
    assert console_ext.list_access_keys(PrincipalName=name)["AccessKeys"] == []


def test_key_refusals_show_next_to_the_form(admin_page, console_server, console_ext):
    endpoint, page = console_server.endpoint, admin_page
    name = s.unique("full")
    console_ext.create_principal(Name=name, Role="admin")
    for _ in range(5):
        console_ext.create_access_key(PrincipalName=name)
    page.goto(endpoint + KEYS)
    page.get_by_label("For principal").fill(name)
    answer = _submit(page, "Create access key")
    assert answer.status == 409
    expect(page.locator("#key-error")).to_contain_text(f"{name} has 5 access keys")
    assert page.locator("#secret-access-key").count() == 0
    check_accessible(page, "access keys: limit reached")

    search = page.get_by_role("search")
    search.get_by_label("Principal").fill("no-such-principal")
    assert _submit(page, "Show keys").status == 404
    expect(page.locator("#filter-error")).to_contain_text("No principal named no-such-principal exists")
    expect(page.get_by_role("search").get_by_label("Principal")).to_have_value("no-such-principal")
    check_accessible(page, "access keys: unknown principal")


def test_delete_principal_after_confirmation_and_not_oneself(admin_page, console_server, console_ext, console_admin):
    endpoint, page = console_server.endpoint, admin_page
    name = s.unique("gone")
    console_ext.create_principal(Name=name, Role="admin")
    key_id = console_ext.create_access_key(PrincipalName=name)["AccessKey"]["AccessKeyId"]
    page.goto(f"{endpoint}{PRINCIPALS}/{name}")
    page.get_by_role("link", name=f"Delete {name}…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Delete principal {name}?")
    expect(page.get_by_role("main")).to_contain_text(key_id)
    check_accessible(page, "delete principal")
    _submit(page, f"Delete {name}")
    assert page.url.endswith(PRINCIPALS + "?notice=deleted")
    expect(page.locator("#notice")).to_contain_text("Principal deleted")
    with pytest.raises(ClientError, match="ResourceNotFound"):
        console_ext.describe_principal(Name=name)

    page.goto(f"{endpoint}{PRINCIPALS}/{console_admin}/delete")
    expect(page.locator("#is-me")).to_be_visible()
    assert _submit(page, f"Delete {console_admin}").status == 409
    expect(page.locator("#delete-error")).to_contain_text("A principal cannot delete itself")
    check_accessible(page, "delete principal: oneself")


def test_audit_log_shows_events_and_filters(admin_page, console_server, console_ext, console_admin):
    endpoint, page = console_server.endpoint, admin_page
    name = s.unique("audited")
    console_ext.create_principal(Name=name, Role="admin")  # by the server's first administrator, over the API
    page.goto(endpoint + KEYS)
    page.get_by_label("For principal").fill(name)
    _submit(page, "Create access key")
    expect(page.locator("#key-principal")).to_have_text(name)

    page.goto(endpoint + AUDIT)
    page.get_by_label("Operation").fill("CreateAccessKey")
    page.get_by_label("Principal").fill(console_admin)
    with page.expect_response(lambda r: "/console/admin/audit?" in r.url) as swapped:
        page.get_by_role("button", name="Filter").click()
    assert swapped.value.request.headers.get("hx-request") == "true"  # htmx swapped the results in
    expect(page.locator("#audit-count")).to_contain_text("matching the filters")
    assert "operation=CreateAccessKey" in page.url  # and the address says what is shown
    rows = page.locator("#audit tbody tr")
    expect(rows.first.locator(".arn")).to_contain_text(name)
    expect(rows.first.locator(".outcome")).to_have_text("ok")
    expect(rows.first.locator(".door")).to_have_text("browser")
    assert set(rows.locator(".operation").all_inner_texts()) == {"CreateAccessKey"}
    assert set(rows.locator(".principal").all_inner_texts()) == {console_admin}
    check_accessible(page, "audit log filtered")
    screenshot(page, "admin-audit")

    page.goto(f"{endpoint}{AUDIT}?principal=admin&operation=CreatePrincipal")
    rows = page.locator("#audit tbody tr")
    expect(rows.first.locator(".arn")).to_contain_text(name)
    expect(rows.first.locator(".door")).to_have_text("api")
    expect(rows.first.locator(".principal")).to_contain_text("key ")  # the access key that signed it

    page.goto(f"{endpoint}{AUDIT}?operation=CreateAccessKey&from=2999-01-01T00:00")
    expect(page.locator("#no-events")).to_have_text("No events match these filters.")

    answer = page.goto(f"{endpoint}{AUDIT}?operation=Create+Key")
    assert answer is not None and answer.status == 400
    expect(page.locator("#audit-error")).to_contain_text("operation")
    expect(page.get_by_label("Operation")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Operation")).to_have_value("Create Key")
    check_accessible(page, "audit log: bad filter")
    page.get_by_label("Operation").fill("Create Key!")  # through htmx: the error comes with the results
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#audit-error")).to_contain_text("Create Key!")


def test_post_without_csrf_token_is_refused_and_audited(admin_page, console_server, console_ext, console_admin):
    endpoint, page = console_server.endpoint, admin_page
    name = s.unique("forged")
    answer = post_form(page, endpoint + PRINCIPALS + "/new", {"name": name, "role": "admin"})
    assert answer.status == 403
    assert "security token is missing or wrong" in answer.text()
    with pytest.raises(ClientError, match="ResourceNotFound"):
        console_ext.describe_principal(Name=name)
    wrong = post_form(page, f"{endpoint}{PRINCIPALS}/{console_admin}/sessions", {"csrf_token": "x" * 40})
    assert wrong.status == 403
    page.goto(f"{endpoint}{AUDIT}?principal={console_admin}&operation=CreatePrincipal")
    first = page.locator("#audit tbody tr").first
    expect(first.locator(".outcome")).to_have_text("CsrfTokenMismatch")
    expect(first.locator(".door")).to_have_text("browser")
    events = console_ext.list_audit_events(PrincipalName=console_admin, Operation="RevokePrincipalSessions")
    assert events["AuditEvents"][0]["Outcome"] == "CsrfTokenMismatch"
    assert events["AuditEvents"][0]["ResourceArn"].endswith(f"/{console_admin}")
    # the same form with its token works
    form = {"name": name, "role": "admin", "csrf_token": csrf_token(page)}
    ok = post_form(page, endpoint + PRINCIPALS + "/new", form)
    assert ok.status == 303 and ok.headers["location"] == f"{PRINCIPALS}/{name}?notice=created"


def test_a_user_gets_403_on_every_admin_page(chromium, console_server, console_ext, console_admin, domain):
    endpoint = console_server.endpoint
    name = make_user(console_server.client(), console_ext, domain)
    key_id = console_ext.create_access_key(PrincipalName=console_admin)["AccessKey"]["AccessKeyId"]
    page = user_page(chromium, endpoint, name)
    try:
        for path in (
            PRINCIPALS,
            PRINCIPALS + "/new",
            PRINCIPALS + "/new/profiles?domain_id=" + domain,
            f"{PRINCIPALS}/{name}",
            f"{PRINCIPALS}/{console_admin}/delete",
            KEYS,
            f"{KEYS}/{key_id}/delete",
            AUDIT,
        ):
            answer = page.goto(endpoint + path)
            assert answer is not None and answer.status == 403, path
            expect(page.get_by_role("heading", level=1)).to_have_text("For administrators")
        check_accessible(page, "admin page as a user")
        token = csrf_token(page)
        for path, form in (
            (PRINCIPALS + "/new", {"name": s.unique("x"), "role": "admin"}),
            (f"{PRINCIPALS}/{name}/password", {"password": "a much longer one"}),
            (f"{PRINCIPALS}/{console_admin}/delete", {}),
            (KEYS, {"principal": name}),
            (f"{KEYS}/{key_id}/status", {"status": "Inactive"}),
            (f"{KEYS}/{key_id}/delete", {}),
        ):
            assert post_form(page, endpoint + path, {**form, "csrf_token": token}).status == 403, path
        assert console_ext.list_access_keys(PrincipalName=name)["AccessKeys"] == []
        assert console_ext.describe_principal(Name=console_admin)["AccessKeys"][0]["Status"] == "Active"
    finally:
        page.context.close()
        console_ext.delete_access_key(AccessKeyId=key_id)


def test_create_principal_with_javascript_off(chromium, console_server, console_admin):
    endpoint = console_server.endpoint
    context = chromium.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        sign_in(page, endpoint, console_admin)
        page.goto(endpoint + PRINCIPALS + "/new")
        name = s.unique("nojs")
        page.get_by_label("Name", exact=True).fill(name)
        page.get_by_label("Administrator").check()
        page.get_by_label("Password").fill(PASSWORD)
        assert _submit(page, "Create principal").status == 200
        assert page.url.endswith(f"{PRINCIPALS}/{name}?notice=created")
        expect(page.locator("#role")).to_have_text("administrator")
        expect(page.locator("#has-password")).to_have_text("set")
        _submit(page, "Remove password")
        expect(page.locator("#notice")).to_contain_text("Password removed")
        expect(page.locator("#has-password")).to_have_text("not set")
        # the audit filters are a plain GET form without JavaScript
        page.goto(endpoint + AUDIT)
        page.get_by_label("Operation").fill("CreatePrincipal")
        page.get_by_label("Principal").fill(console_admin)
        _submit(page, "Filter")
        assert "operation=CreatePrincipal" in page.url
        expect(page.locator("#audit tbody tr").first.locator(".arn")).to_contain_text(name)
    finally:
        context.close()


def test_admin_pages_fit_a_narrow_window(chromium, console_server, console_admin):
    endpoint = console_server.endpoint
    context = chromium.new_context(viewport={"width": 380, "height": 800})
    page = context.new_page()
    try:
        sign_in(page, endpoint, console_admin)
        for path in (PRINCIPALS, f"{PRINCIPALS}/{quote(console_admin)}", KEYS, f"{AUDIT}?principal={console_admin}"):
            page.goto(endpoint + path)
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), path
            if path == KEYS:
                screenshot(page, "admin-keys-narrow")
    finally:
        context.close()
