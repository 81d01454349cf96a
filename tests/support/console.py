"""The console's browser tests: a shared server, signed-in pages, the accessibility check and screenshots.

- `console_server`: the session's `rstudio_server` (tests/conftest.py): a real `byoi server` with the real
  registry and Docker Engine; the stand-in image is registered on it once (`rstudio_image`). Each test makes
  its own images, domains and principals with unique names, so they share it safely.
- `console_admin`: an administrator principal with a password, made once; `admin_page`: a fresh browser
  profile (its own cookies) signed in as it, one per test; `user_page(...)` signs in any principal.
- `check_accessible(page)`: runs axe-core (from npm, pinned in scripts/install.sh, in tests/.node) inside the
  page and fails on any serious or critical violation of WCAG 2.1 A/AA, naming each with its elements. It is
  evaluated through the DevTools protocol, so the console's CSP (scripts from /console/static/ only) stays on.
- `screenshot(page, name)`: saves `<BYOI_SCREENSHOT_DIR or build/screenshots>/console-<name>.png`; the docs use
  copies of these (docs/images/).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ci_guard
from tests.support import sessions as s
from tests.support.processes import ByoiServer

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "tests" / ".node" / "node_modules" / "axe-core" / "axe.min.js"
PASSWORD = "correct horse battery"  # noqa: S105 - the test accounts'
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


@pytest.fixture(scope="session")
def console_server(rstudio_server: ByoiServer) -> ByoiServer:
    return rstudio_server


@pytest.fixture(scope="session")
def console_ext(console_server: ByoiServer) -> Any:
    return s.extension(console_server)


@pytest.fixture(scope="session")
def console_admin(console_ext: Any) -> str:
    """An administrator principal who signs in with a password; its name."""
    name = s.unique("admin")
    console_ext.create_principal(Name=name, Role="admin", Password=PASSWORD)
    return name


def sign_in(page: Any, endpoint: str, username: str, password: str = PASSWORD, next_path: str = "/console/") -> None:
    """Sign in through the real form and land on `next_path`."""
    page.goto(f"{endpoint}/auth/sign-in?next={next_path}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    assert "/auth/sign-in" not in page.url, f"sign-in as {username} failed: {page.url}"


@pytest.fixture
def admin_page(chromium: Any, console_server: ByoiServer, console_admin: str) -> Iterator[Any]:
    """A page in a fresh browser profile, signed in as the console's administrator, on /console/."""
    context = chromium.new_context()
    page = context.new_page()
    try:
        sign_in(page, console_server.endpoint, console_admin)
        yield page
    finally:
        context.close()


def user_page(chromium: Any, endpoint: str, username: str, password: str = PASSWORD) -> Any:
    """A page in a fresh browser profile signed in as `username` (close with `page.context.close()`)."""
    context = chromium.new_context()
    page = context.new_page()
    sign_in(page, endpoint, username, password)
    return page


def make_user(sm: Any, ext: Any, domain_id: str, name: str | None = None) -> str:
    """A user profile in `domain_id` and the user principal bound to it (same name, a password); its name."""
    name = name or s.unique("u")
    sm.create_user_profile(DomainId=domain_id, UserProfileName=name)
    ext.create_principal(Name=name, Role="user", DomainId=domain_id, UserProfileName=name, Password=PASSWORD)
    return name


def check_accessible(page: Any, context: str = "") -> None:
    """No serious or critical axe-core violation (WCAG 2.1 A and AA) on the page as it is now."""
    if not AXE.exists():
        message = f"{AXE} is missing: run scripts/install.sh (npm install axe-core)"
        if ci_guard.on_ci():
            pytest.fail(message)
        pytest.skip(message)
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    options = json.dumps({"runOnly": {"type": "tag", "values": WCAG}, "resultTypes": ["violations"]})
    violations = page.evaluate(f"async () => (await axe.run(document, {options})).violations")
    bad = [v for v in violations if v.get("impact") in ("serious", "critical")]
    assert not bad, f"accessibility violations on {context or page.url}:\n" + "\n".join(
        f"- {v['id']} ({v['impact']}): {v['help']}; "
        + ", ".join(" ".join(n["target"]) if isinstance(n["target"], list) else str(n["target"]) for n in v["nodes"])
        for v in bad
    )


def screenshot(page: Any, name: str) -> Path:
    folder = Path(os.environ.get("BYOI_SCREENSHOT_DIR") or ROOT / "build" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def post_form(page: Any, url: str, form: dict[str, str]) -> Any:
    """POST `form` (urlencoded) with the page's cookies and no redirects followed: the raw answer."""
    return page.request.post(url, form=form, max_redirects=0)


def csrf_token(page: Any) -> str:
    """The CSRF token of the page's forms (every console page's sign-out form carries it)."""
    return str(page.locator("input[name=csrf_token]").first.get_attribute("value"))
