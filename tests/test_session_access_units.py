"""The proxy's ownership rule (`AccessService.may_open_session`) and the forward-auth/proxy pages, as pure
functions: who may open a session, and what a browser that may not is shown."""

from __future__ import annotations

import pytest
from starlette.responses import RedirectResponse

from byoi.auth.principal import SYSTEM, Principal
from byoi.services.access import AccessService
from byoi.services.session_access import Decision
from byoi.web.session_gate import page, sign_in_url

ALICE = Principal(name="alice", role="user", domain_id="d-1", user_profile_name="alice", door="browser")
ADMIN = Principal(name="root", role="admin", door="browser")


@pytest.mark.parametrize(
    ("principal", "domain", "profile", "admins", "allowed"),
    [
        (ALICE, "d-1", "alice", False, True),
        (ALICE, "d-1", "Alice", False, True),  # profile names are unique regardless of case
        (ALICE, "d-1", "bob", False, False),
        (ALICE, "d-2", "alice", False, False),  # the same profile name in another domain is someone else
        (ADMIN, "d-1", "alice", False, False),  # administrators only when the server allows it
        (ADMIN, "d-1", "alice", True, True),
        (SYSTEM, "d-1", "alice", True, False),  # background work never opens a session
    ],
)
def test_only_the_owner_opens_a_session(principal, domain, profile, admins, allowed) -> None:
    assert AccessService.may_open_session(principal, domain, profile, admins) is allowed


def test_sign_in_goes_to_the_oidc_provider_for_sso_domains() -> None:
    iam = Decision("sign-in", "0123456789abcdef")
    sso = Decision("sign-in", "0123456789abcdef", domain_id="d-1", sso=True)
    assert sign_in_url(iam, "/sessions/0123456789abcdef/x") == "/auth/sign-in?next=/sessions/0123456789abcdef/x"
    assert sign_in_url(sso, "/sessions/0123456789abcdef/") == (
        "/auth/oidc/login?domain=d-1&next=/sessions/0123456789abcdef/"
    )


def test_pages_for_each_refusal() -> None:
    scope = {"type": "http", "method": "GET", "path": "/sessions/0123456789abcdef/"}
    sid = "0123456789abcdef"
    redirect = page(Decision("sign-in", sid), scope, f"/sessions/{sid}/")
    assert isinstance(redirect, RedirectResponse) and redirect.status_code == 303
    xhr = page(Decision("sign-in", sid), {**scope, "method": "POST"}, f"/sessions/{sid}/rpc/x")
    assert xhr.status_code == 401 and xhr.headers["x-byoi-location"] == f"/auth/sign-in?next=/sessions/{sid}/"
    assert page(Decision("forbidden", sid), scope, "/").status_code == 403
    assert page(Decision("not-found", sid), scope, "/").status_code == 404
    failed = page(Decision("failed", sid, app_name="a", failure_reason="RStudio Server exited with code 3"), scope, "/")
    assert failed.status_code == 502 and b"exited with code 3" in failed.body
    starting = page(
        Decision("starting", sid, app_name="a", progress={"Phase": "pulling", "BytesDone": 50, "BytesTotal": 200}),
        scope,
        "/",
    )
    assert starting.status_code == 200 and starting.headers["refresh"] == "2" and b"25%" in starting.body
    assert page(Decision("stopped", sid, app_name="a", status="Deleted"), scope, "/").status_code == 410
