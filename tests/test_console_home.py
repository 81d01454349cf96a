"""The console's frame through a real browser: sign-in required, the home page for each role, the navigation,
the headers (CSP) and the accessibility check, against a real `byoi server` (tests/support/console.py)."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.support import sessions as s
from tests.support.console import check_accessible, make_user, screenshot, user_page


def test_console_requires_sign_in_and_comes_back(chromium, console_server, console_admin):
    context = chromium.new_context()
    page = context.new_page()
    try:
        page.goto(console_server.endpoint + "/console/images")
        assert "/auth/sign-in" in page.url
        check_accessible(page, "sign-in page")
        page.get_by_label("Username").fill(console_admin)
        page.get_by_label("Password").fill("correct horse battery")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        assert page.url.endswith("/console/images")
    finally:
        context.close()


def test_admin_home_lists_every_area(admin_page, console_server, console_admin):
    page = admin_page
    response = page.goto(console_server.endpoint + "/console")
    assert response is not None and page.url.endswith("/console/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    expect(page.locator("#signed-in-as")).to_have_text(console_admin)
    nav = page.get_by_role("navigation", name="Console")
    for label in ("Images", "Domains", "Sessions", "Principals", "Access keys", "Audit log"):
        expect(nav.get_by_role("link", name=label)).to_be_visible()
    expect(page.get_by_role("main")).to_be_visible()
    check_accessible(page, "admin home")
    screenshot(page, "home-admin")


def test_user_home_shows_their_domain_and_the_way_to_rstudio(chromium, console_server, console_ext):
    sm = console_server.client()
    domain = s.rstudio_domain(sm)
    name = make_user(sm, console_ext, domain)
    page = user_page(chromium, console_server.endpoint, name)
    try:
        expect(page.locator("#domain-id")).to_have_text(domain)
        # Server-Timing names the API calls the page made (DescribeDomain, ListEffectiveImages): the benchmark
        # replays the same calls and checks their count against it.
        answer = page.request.get(console_server.endpoint + "/console/")
        assert 'desc="2 calls"' in answer.headers["server-timing"], answer.headers["server-timing"]
        nav = page.get_by_role("navigation", name="Console")
        expect(nav.get_by_role("link", name="Principals")).to_have_count(0)
        expect(page.get_by_role("link", name="Open RStudio")).to_have_attribute("href", "/rstudio/default/")
        expect(page.locator("#no-images")).to_be_visible()
        check_accessible(page, "user home")
        # A page only administrators have: a 403 page, not the page.
        answer = page.goto(console_server.endpoint + "/console/admin/principals")
        assert answer is not None and answer.status in (403, 404)
    finally:
        page.context.close()
