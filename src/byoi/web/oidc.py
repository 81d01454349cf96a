"""OIDC sign-in for `AuthMode=SSO` domains, under `/auth/oidc/` (byoi is the relying party; see byoi.auth.oidc):

- `GET /auth/oidc/login[?domain=<domain id>][&next=/path]`: start the authorization code flow with PKCE: the
  flow's state is sealed into a cookie and the browser is sent (303) to the provider.
- `GET /auth/oidc/callback?code=…&state=…`: the provider sends the browser back here: the state must match the
  cookie's, the code is exchanged and the ID token verified, the configured claim is matched against the
  `SingleSignOnUserValue` of the SSO domains' user profiles (byoi.services.sso), and the browser is signed in
  as that profile's principal through the same call as every other sign-in (`sign_browser_in`). A person no
  profile names lands on a page that says so; nothing is created for them. Every outcome is audited.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from byoi.auth.browser import LANDING_PAGE, safe_relative_path
from byoi.auth.oidc import FLOW_SECONDS, Flow, OidcClient, OidcError
from byoi.auth.principal import Principal
from byoi.services.domains import load_domain
from byoi.services.sso import NoMatchingProfile, match_profile
from byoi.web.auth import HEADERS, _guarded, _secure, _source, _state, error_page, sign_browser_in

FLOW_COOKIE = "byoi_oidc_flow"
SIGN_IN_OIDC = "SignInWithOidc"  # the audit operation


def _client(request: Request) -> OidcClient | None:
    client: OidcClient | None = _state(request).get("oidc")
    return client


def _redirect_uri(request: Request) -> str:
    state = _state(request)
    return f"{state['services'].browser_settings.base_url(state['ctx'].settings)}/auth/oidc/callback"


async def _refuse(request: Request, who: str, status: int, title: str, message: str, outcome: str) -> Response:
    """An error page for a sign-in that failed, audited under the name the person gave (or the provider's)."""
    anonymous = Principal(name=who[:64] or "anonymous", role="user", door="browser", source=_source(request))
    await _state(request)["dispatcher"].audit.record(anonymous, SIGN_IN_OIDC, None, outcome)
    response = error_page(status, title, message)
    response.delete_cookie(FLOW_COOKIE, path="/auth/oidc")
    return response


async def login(request: Request) -> Response:
    client = _client(request)
    if client is None:
        return error_page(404, "Single sign-on is not configured", "This byoi has no OpenID Connect provider.")
    domain_id = request.query_params.get("domain") or ""
    if domain_id:
        ctx = _state(request)["ctx"]
        async with ctx.db.read() as conn:
            try:
                domain = await load_domain(conn, domain_id)
            except Exception:  # ResourceNotFound, or a malformed id: the same page
                return error_page(404, "No such domain", f"There is no domain {domain_id!r} to sign in to.")
        if domain.spec.get("AuthMode") != "SSO":
            return error_page(
                400, "This domain does not use single sign-on", f"Domain {domain_id} uses IAM: ask for a sign-in URL."
            )
    next_path = safe_relative_path(request.query_params.get("next")) or LANDING_PAGE
    try:
        url, flow = await client.begin(_redirect_uri(request), domain_id, next_path)
    except OidcError as exc:
        return error_page(502, "The identity provider is not available", str(exc))
    response = RedirectResponse(url, status_code=303, headers=HEADERS)
    response.set_cookie(
        FLOW_COOKIE,
        _state(request)["ctx"].secrets.seal(flow.dumps()),
        max_age=FLOW_SECONDS,
        path="/auth/oidc",
        httponly=True,
        samesite="lax",  # sent on the provider's top-level redirect back, never on a cross-site POST
        secure=_secure(request),
    )
    return response


def _flow(request: Request) -> Flow | None:
    sealed = request.cookies.get(FLOW_COOKIE)
    if not sealed:
        return None
    try:
        flow = Flow.loads(_state(request)["ctx"].secrets.open(sealed))
    except Exception:  # tampered, sealed with another master key, or not ours: the same as none
        return None
    return flow if flow.expires_at > time.time() else None


async def callback(request: Request) -> Response:
    client = _client(request)
    if client is None:
        return error_page(404, "Single sign-on is not configured", "This byoi has no OpenID Connect provider.")
    params = request.query_params
    if params.get("error"):
        detail = f"{params['error']}: {params.get('error_description', '')}".strip(": ")
        return await _refuse(request, "", 403, "The identity provider did not sign you in", detail, "OidcError")
    flow = _flow(request)
    if flow is None:
        return await _refuse(
            request,
            "",
            400,
            "This sign-in cannot be finished",
            "It was not started in this browser, or took longer than ten minutes: start again.",
            "OidcFlowMissing",
        )
    if not params.get("code") or params.get("state") != flow.state:
        return await _refuse(
            request, "", 400, "This sign-in cannot be finished", "The answer does not match this sign-in.", "OidcState"
        )
    try:
        claims: dict[str, Any] = await client.finish(_redirect_uri(request), params["code"], flow)
    except OidcError as exc:
        return await _refuse(request, "", 502, "The identity provider's answer was refused", str(exc), "OidcError")
    claim = client.settings.claim
    value = claims.get(claim)
    if not isinstance(value, str) or not value:
        return await _refuse(
            request,
            str(claims.get("sub", "")),
            403,
            "You cannot sign in to byoi",
            f"The identity provider did not send the claim {claim!r}, which byoi matches to a user profile.",
            "OidcNoClaim",
        )
    try:
        match = await match_profile(_state(request)["ctx"], value, flow.domain_id or None)
    except NoMatchingProfile as exc:
        return await _refuse(request, value, 403, "You have no user profile here", str(exc), "NoMatchingProfile")
    response = await sign_browser_in(request, match.principal, "oidc", flow.next_path)
    response.delete_cookie(FLOW_COOKIE, path="/auth/oidc")
    return response


def install(app: FastAPI, state: dict[str, Any]) -> None:
    """Add the `/auth/oidc/` routes; `state["oidc"]` (an OidcClient, or None) is set by the app's lifespan."""
    for path, handler in (("/auth/oidc/login", login), ("/auth/oidc/callback", callback)):
        app.router.add_route(path, _guarded(handler), methods=["GET"], include_in_schema=False)
