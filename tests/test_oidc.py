"""OIDC sign-in for SSO domains, in a real browser (Playwright driving Debian's Chromium) against a real byoi
server and an OpenID Connect provider on loopback. The provider is a TEST DOUBLE (tests/support/oidc_provider.py:
authlib's own authorization server, code grant, PKCE and OpenID Connect components, with a login form of ours),
because no real provider can be installed here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from byoi.cli.client import extension_client
from tests.support.attach import unique
from tests.support.oidc_provider import OidcProvider
from tests.support.processes import ByoiServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sso(registry, tmp_path_factory) -> Iterator[tuple[ByoiServer, OidcProvider]]:
    srv = ByoiServer(data_dir=tmp_path_factory.mktemp("byoi-oidc"), registries=[f"http://{registry}"])
    provider = OidcProvider(
        {
            "alice": {"preferred_username": "alice", "email": "alice@example.test"},
            "mallory": {"preferred_username": "mallory"},
            "nameless": {},  # sends no preferred_username
        },
        [f"{srv.endpoint}/auth/oidc/callback"],
    ).start()
    srv.env.update(
        BYOI_OIDC_ISSUER=provider.issuer,
        BYOI_OIDC_CLIENT_ID=provider.client_id,
        BYOI_OIDC_CLIENT_SECRET=provider.client_secret,
    )
    srv.start()
    yield srv, provider
    srv.stop()
    provider.stop()


@pytest.fixture
def context(chromium):  # the run's one Chromium (tests/conftest.py)
    ctx = chromium.new_context()
    yield ctx
    ctx.close()


def sso_domain(sm, people: dict[str, str]) -> str:
    """An SSO domain with a user profile per (profile name -> SingleSignOnUserValue)."""
    domain = sm.create_domain(DomainName=unique("sso"), AuthMode="SSO", DefaultUserSettings={})["DomainId"]
    for profile, value in people.items():
        sm.create_user_profile(
            DomainId=domain, UserProfileName=profile, SingleSignOnUserIdentifier="UserName", SingleSignOnUserValue=value
        )
    return str(domain)


def sign_in_at_provider(context, endpoint: str, login: str, domain: str | None = None):
    page = context.new_page()
    page.goto(endpoint + "/auth/oidc/login" + (f"?domain={domain}" if domain else ""))
    assert page.title() == "Test OIDC provider", page.content()  # the browser is at the provider now
    page.fill("#username", login)
    with page.expect_navigation():
        page.click("button[type=submit]")
    return page


def whoami(context, endpoint: str) -> dict:
    page = context.new_page()
    response = page.goto(endpoint + "/auth/whoami")
    body = response.json()
    page.close()
    return body


def test_oidc_sign_in_maps_the_person_to_their_profile(sso, context):
    srv, _ = sso
    sm = srv.client()
    domain = sso_domain(sm, {"alice-profile": "alice", "bob-profile": "bob"})
    page = sign_in_at_provider(context, srv.endpoint, "alice", domain)
    assert page.url.startswith(srv.endpoint + "/auth/landing"), page.url
    assert "alice-profile" in page.content()
    me = whoami(context, srv.endpoint)
    assert (me["SignedIn"], me["Via"], me["Role"]) == (True, "oidc", "user")
    assert (me["DomainId"], me["UserProfileName"]) == (domain, "alice-profile")
    # The session cookie is the same kind as any other sign-in's; the flow cookie is gone.
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["byoi_session"]["httpOnly"] and cookies["byoi_session"]["sameSite"] == "Lax"
    assert "byoi_oidc_flow" not in cookies
    # The principal byoi made is bound to that profile, and a second sign-in reuses it.
    ext = extension_client(srv.endpoint, "byoi")
    bound = [p for p in ext.list_principals()["Principals"] if p.get("UserProfileName") == "alice-profile"]
    assert [(p["Role"], p["DomainId"]) for p in bound] == [("user", domain)]
    sign_in_at_provider(context, srv.endpoint, "alice", domain)
    again = [p for p in ext.list_principals()["Principals"] if p.get("UserProfileName") == "alice-profile"]
    assert again == bound
    events = ext.list_audit_events(Operation="SignIn", PrincipalName=bound[0]["Name"])["AuditEvents"]
    assert [e["Outcome"] for e in events] == ["ok", "ok"] and {e["Door"] for e in events} == {"browser"}


def test_a_person_no_profile_names_is_told_and_nothing_is_created(sso, context):
    srv, _ = sso
    sm = srv.client()
    domain = sso_domain(sm, {"carol-profile": "carol"})
    ext = extension_client(srv.endpoint, "byoi")
    before = ext.list_principals(MaxResults=100)["Principals"]
    page = sign_in_at_provider(context, srv.endpoint, "mallory", domain)
    assert "You have no user profile here" in page.content()
    assert "No user profile in domain" in page.content() and "mallory" in page.content()
    assert whoami(context, srv.endpoint) == {"SignedIn": False}
    assert ext.list_principals(MaxResults=100)["Principals"] == before
    refused = ext.list_audit_events(Operation="SignInWithOidc", PrincipalName="mallory")["AuditEvents"]
    assert [e["Outcome"] for e in refused] == ["NoMatchingProfile"]
    # A provider that sends no preferred_username claim at all: the page names the claim.
    page = sign_in_at_provider(context, srv.endpoint, "nameless", domain)
    assert "did not send the claim &#39;preferred_username&#39;" in page.content() or (
        "did not send the claim 'preferred_username'" in page.content()
    )


def test_a_callback_that_this_browser_did_not_start_is_refused(sso, context):
    srv, _ = sso
    page = context.new_page()
    response = page.goto(srv.endpoint + "/auth/oidc/callback?code=stolen&state=guessed")
    assert response.status == 400 and "This sign-in cannot be finished" in page.content()
    # A flow started here, answered with another state (a forged or crossed answer): refused too.
    page.goto(srv.endpoint + "/auth/oidc/login")
    assert page.title() == "Test OIDC provider"
    response = page.goto(srv.endpoint + "/auth/oidc/callback?code=stolen&state=not-the-one")
    assert response.status == 400 and "does not match this sign-in" in page.content()
    assert whoami(context, srv.endpoint) == {"SignedIn": False}


def test_sso_login_refuses_an_iam_domain(sso, context):
    srv, _ = sso
    domain = srv.client().create_domain(DomainName=unique("iam"), AuthMode="IAM", DefaultUserSettings={})["DomainId"]
    page = context.new_page()
    response = page.goto(f"{srv.endpoint}/auth/oidc/login?domain={domain}")
    assert response.status == 400 and "does not use single sign-on" in page.content()
