"""Browser sign-in, all under `/auth/` (server-rendered, no JavaScript):

- `GET /auth/presigned?token=…`: follow a URL from CreatePresignedDomainUrl: the token is consumed, a session
  starts for its user and the browser is sent (303) to its landing. A used, expired or unknown token gets a
  403 page, a malformed one 400; every attempt is audited.
- `GET /auth/sign-in[?next=/path]`, `POST /auth/sign-in`: the local account form (argon2 passwords); failed
  attempts are slowed down and limited per account and per source address (429 with Retry-After).
- `POST /auth/sign-out`: ends the session (CSRF protected).
- `GET /auth/whoami`: who this browser is signed in as (JSON), through `Byoi.GetCallerIdentity`.
- `GET /auth/landing`: the page a presigned URL lands on, naming the user and domain.

The session cookie holds an opaque random id (only its SHA-256 is stored); `browser_principal(request)` turns
it into a `Principal`, and every API action a browser takes goes through `Dispatcher.dispatch`. Forms that
change something carry the session's CSRF token (synchronizer); the sign-in form, before any session exists,
a double-submit token that must equal its cookie. The rules live in `byoi.services.browser_sessions`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from byoi.api.protocol import read_body
from byoi.auth.browser import (
    LANDING_PAGE,
    SESSION_COOKIE,
    SIGN_IN_CSRF_COOKIE,
    BrowserSettings,
    SignInLimiter,
    landing_path,
    new_secret,
    safe_relative_path,
    same,
    well_formed,
)
from byoi.auth.principal import Principal
from byoi.errors import ByoiError, RequestEntityTooLargeException, SerializationException
from byoi.logs import request_id
from byoi.services.access import principal_arn
from byoi.services.browser_sessions import (
    PASSWORD_SESSION_SECONDS,
    BrowserSession,
    BrowserSessions,
    NewSession,
    TokenRefused,
)

if TYPE_CHECKING:
    import jinja2

log = logging.getLogger("byoi.web.auth")
State = dict[str, Any]
MAX_FORM_BYTES = 16 * 1024
SIGN_IN_CSRF_SECONDS = 2 * 3600
SIGN_IN, PRESIGNED_SIGN_IN, SIGN_OUT = "SignIn", "SignInWithPresignedUrl", "SignOut"  # audit operations
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # a presigned token in the URL must not travel in a Referer
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
_UNRESOLVED = object()


@functools.cache
def _templates() -> jinja2.Environment:
    """The sign-in pages' templates, made at the first one (jinja2 is loaded only when a page is served)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("byoi.web", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )


def _state(request: Request) -> State:
    state: State = request.app.state.byoi_state
    return state


def _sessions(request: Request) -> BrowserSessions:
    sessions: BrowserSessions = _state(request)["services"].browser_sessions
    return sessions


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None


def _anonymous(request: Request) -> Principal:
    return Principal(name="anonymous", role="user", door="browser", source=_source(request))


async def browser_session(request: Request) -> BrowserSession | None:
    """The live session this request's cookie names (looked up once per request), or None."""
    cached = getattr(request.state, "byoi_session", _UNRESOLVED)
    if cached is not _UNRESOLVED:
        return cached  # type: ignore[return-value]
    found = await _sessions(request).resolve(request.cookies.get(SESSION_COOKIE))
    if found is not None:
        found = dataclasses.replace(found, principal=dataclasses.replace(found.principal, source=_source(request)))
    request.state.byoi_session = found
    return found


async def browser_principal(request: Request) -> Principal | None:
    """Who this browser is signed in as: a `Principal(door="browser", source=<client address>)`, or None. The one
    place a cookie becomes a principal, for the sign-in pages, the console and the session proxy."""
    session = await browser_session(request)
    return session.principal if session else None


def render(name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    return HTMLResponse(
        _templates().get_template(name).render(**context), status_code=status, headers=HEADERS | (headers or {})
    )


def error_page(status: int, title: str, message: str, headers: dict[str, str] | None = None) -> HTMLResponse:
    return render("error.html", status, headers, title=title, message=message)


def _secure(request: Request) -> bool:
    state = _state(request)
    browser: BrowserSettings = state["services"].browser_settings
    return browser.secure_cookies(state["ctx"].settings)


def _set_session_cookie(request: Request, response: Response, new: NewSession) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        new.session_id,
        max_age=max(0, int(new.session.expires_at - time.time())),
        path="/",
        secure=_secure(request),
        httponly=True,
        samesite="lax",
    )


async def _audit(request: Request, principal: Principal, operation: str, arn: str | None, outcome: str) -> None:
    await _state(request)["dispatcher"].audit.record(principal, operation, arn, outcome)


def _arn(request: Request, principal_name: str) -> str:
    return principal_arn(_state(request)["ctx"].settings.account_id, principal_name)


async def signed_in(request: Request, new: NewSession, operation: str, arn: str | None, next_path: str) -> Response:
    """The answer to any successful sign-in: audit it, end the session the browser had, set the new cookie and
    send the browser (303) to `next_path`."""
    principal = dataclasses.replace(new.session.principal, source=_source(request))
    await _audit(request, principal, operation, arn, "ok")
    old = request.cookies.get(SESSION_COOKIE)
    if old and well_formed(old):
        await _sessions(request).sign_out(old)
    response = RedirectResponse(safe_relative_path(next_path) or LANDING_PAGE, status_code=303, headers=HEADERS)
    _set_session_cookie(request, response, new)
    return response


async def sign_browser_in(
    request: Request, principal_name: str, via: str, next_path: str, seconds: float = PASSWORD_SESSION_SECONDS
) -> Response:
    """Sign this browser in as an existing principal: one call for every way of proving who one is (a password
    here, the OIDC callback later)."""
    new = await _sessions(request).sign_in(principal_name, via, seconds)
    return await signed_in(request, new, SIGN_IN, _arn(request, principal_name), next_path)


async def read_form(request: Request) -> dict[str, str] | None:
    """A urlencoded form's fields (first value of each), or None when the body is not one or is too large."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    try:
        body = await read_body(request, MAX_FORM_BYTES)  # capped while reading, as the API door's bodies are
    except (RequestEntityTooLargeException, SerializationException):
        return None
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in fields.items()}


def _guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """One request id per request; an API error becomes a page with its status, anything else a 500 page."""

    async def run(request: Request) -> Response:
        rid = str(uuid.uuid4())
        token = request_id.set(rid)
        try:
            response = await handler(request)
        except ByoiError as err:
            response = error_page(err.status, "Request refused", err.message)
        except Exception:
            log.exception("unexpected failure in %s", request.url.path)
            response = error_page(500, "Something went wrong", "byoi could not answer this request; see its log.")
        finally:
            request_id.reset(token)
        # The path only: a presigned token in the query string never reaches the log.
        log.info("%s %s %s", request.method, request.url.path, response.status_code, extra={"request_id": rid})
        return response

    return run


def _sign_in_form(
    request: Request, status: int = 200, error: str | None = None, username: str = "", next_path: str | None = None
) -> Response:
    csrf = request.cookies.get(SIGN_IN_CSRF_COOKIE, "")
    if not well_formed(csrf):
        csrf = new_secret()
    notice = "You are signed out." if request.query_params.get("signed-out") == "1" else None
    sso = _state(request).get("oidc") is not None
    response = render(
        "sign_in.html",
        status,
        error=error,
        notice=notice,
        username=username,
        next=next_path,
        csrf_token=csrf,
        sso_url=("/auth/oidc/login" + (f"?next={quote(next_path, safe='/')}" if next_path else "")) if sso else None,
    )
    response.set_cookie(
        SIGN_IN_CSRF_COOKIE,
        csrf,
        max_age=SIGN_IN_CSRF_SECONDS,
        path="/auth/",
        secure=_secure(request),
        httponly=True,
        samesite="lax",
    )
    return response


async def presigned(request: Request) -> Response:
    token = request.query_params.get("token", "")
    sessions = _sessions(request)
    try:
        redeemed = await sessions.redeem(token)
    except TokenRefused as refused:
        tok = refused.token
        who = _anonymous(request)
        arn = None
        if tok is not None:
            who = dataclasses.replace(who, name=tok.principal)
            arn = _state(request)["ctx"].arns.user_profile(tok.domain_id, tok.user_profile_name)
        await _audit(request, who, PRESIGNED_SIGN_IN, arn, refused.reason)
        return error_page(refused.status, "Sign-in link refused", refused.message)
    arn = _state(request)["ctx"].arns.user_profile(redeemed.domain_id, redeemed.user_profile_name)
    return await signed_in(request, redeemed.new, PRESIGNED_SIGN_IN, arn, landing_path(redeemed.landing_uri))


async def sign_in_page(request: Request) -> Response:
    return _sign_in_form(request, next_path=safe_relative_path(request.query_params.get("next")))


async def sign_in(request: Request) -> Response:
    form = await read_form(request)
    if form is None:
        return error_page(400, "Sign-in refused", "The sign-in form was not sent as a form: reload the page.")
    next_path = safe_relative_path(form.get("next"))
    cookie = request.cookies.get(SIGN_IN_CSRF_COOKIE, "")
    if not (well_formed(cookie) and same(form.get("csrf_token", ""), cookie)):
        await _audit(request, _anonymous(request), SIGN_IN, None, "CsrfTokenMismatch")
        return error_page(403, "Sign-in refused", "The form's security token is missing or stale: reload the page.")
    username, password = form.get("username", "").strip()[:64], form.get("password", "")[:1024]
    limiter: SignInLimiter = _state(request)["sign_in_limiter"]
    sessions = _sessions(request)
    wait = limiter.retry_after(username, _source(request))
    if wait is not None:
        # Refused without checking the password: a correct one is refused too while the limit holds.
        who = _anonymous(request)
        if await sessions.exists(username):
            who = dataclasses.replace(who, name=username)
        await _audit(request, who, SIGN_IN, None, "TooManyAttempts")
        return error_page(
            429,
            "Too many failed sign-ins",
            "Too many failed sign-ins for this account or from this address: "
            f"try again in about {max(1, round(wait / 60))} minutes.",
            headers={"Retry-After": str(wait)},
        )
    exists, ok = await sessions.check_password(username, password)
    if not ok:
        await asyncio.sleep(limiter.failed(username, _source(request)))
        who = dataclasses.replace(_anonymous(request), name=username) if exists else _anonymous(request)
        await _audit(request, who, SIGN_IN, _arn(request, username) if exists else None, "InvalidCredentials")
        return _sign_in_form(request, 401, "Wrong username or password.", username, next_path)
    limiter.succeeded(username)
    return await sign_browser_in(request, username, "password", next_path or LANDING_PAGE)


async def sign_out(request: Request) -> Response:
    form = await read_form(request) or {}
    session = await browser_session(request)
    if session is None:
        return RedirectResponse("/auth/sign-in?signed-out=1", status_code=303, headers=HEADERS)
    if not same(form.get("csrf_token", ""), session.csrf_token):
        await _audit(request, session.principal, SIGN_OUT, None, "CsrfTokenMismatch")
        return error_page(403, "Sign-out refused", "The form's security token is missing or wrong: reload the page.")
    await _sessions(request).sign_out(request.cookies[SESSION_COOKIE])
    await _audit(request, session.principal, SIGN_OUT, _arn(request, session.principal.name), "ok")
    response = RedirectResponse("/auth/sign-in?signed-out=1", status_code=303, headers=HEADERS)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=_secure(request), httponly=True, samesite="lax")
    return response


async def whoami(request: Request) -> Response:
    session = await browser_session(request)
    if session is None:
        return JSONResponse({"SignedIn": False}, status_code=401, headers=HEADERS)
    identity = await _state(request)["dispatcher"].dispatch(session.principal, "Byoi", "GetCallerIdentity", {})
    body = {"SignedIn": True, **identity, "Via": session.via, "ExpiresAt": session.expires_at}
    return JSONResponse(body, headers=HEADERS)


async def landing(request: Request) -> Response:
    session = await browser_session(request)
    if session is None:
        return RedirectResponse(f"/auth/sign-in?next={quote(LANDING_PAGE)}", status_code=303, headers=HEADERS)
    me = session.principal
    domain_name = None
    if me.domain_id is not None:
        domain = await _state(request)["dispatcher"].dispatch(
            me, "SageMaker", "DescribeDomain", {"DomainId": me.domain_id}
        )
        domain_name = domain.get("DomainName")
    return render("landing.html", principal=me, domain_name=domain_name, csrf_token=session.csrf_token)


def install(app: FastAPI, state: State) -> None:
    """Add the `/auth/` routes to `app`; `state` is filled by the app's lifespan (ctx, services, dispatcher)."""
    app.state.byoi_state = state
    state.setdefault("sign_in_limiter", SignInLimiter())
    for path, method, handler in (
        ("/auth/presigned", "GET", presigned),
        ("/auth/sign-in", "GET", sign_in_page),
        ("/auth/sign-in", "POST", sign_in),
        ("/auth/sign-out", "POST", sign_out),
        ("/auth/whoami", "GET", whoami),
        ("/auth/landing", "GET", landing),
    ):
        app.router.add_route(path, _guarded(handler), methods=[method], include_in_schema=False)
