"""The session proxy's gate, and the forward-auth endpoint that gives the same answer to a gateway in front.

`SessionGate.decide(scope, path)` turns the browser's cookie into a principal (`web.auth.browser_principal`,
the one place a cookie becomes a principal), asks `services.session_access` (the one place the ownership
rule is applied) and renders the answer: the upstream to proxy to, or a page. No cookie → the sign-in page
(the OIDC provider for an SSO domain) and back; someone else's session → 403; unknown → 404; still
starting → a page with the launch progress that reloads itself; failed → its FailureReason.

An allowed answer is remembered for `CACHE_SECONDS` per (cookie, session), so RStudio's many small requests
cost no store read each; signing out, a revoked principal or a stopped session therefore takes effect on
new requests within that time (open WebSockets stay open until they close, or until the session stops).

`GET /auth/session-check` is the forward-auth contract (nginx `auth_request`, Traefik ForwardAuth, Envoy
ext_authz): the original URI comes in `X-Original-URI`; the answer, from the same decision, is 200 with
`X-Byoi-Upstream` (the endpoint: `unix:/path/to/rserver.sock` or `127.0.0.1:port`), `X-Byoi-Root-Path` and
`X-Byoi-Upstream-Path` (the path to send, prefix stripped); 403 for someone else's session; or 401 with
`X-Byoi-Location`, where to send the browser: the sign-in page, or `/auth/session-status/<id>` (byoi's page
for a session that is starting, failed, stopped or unknown, which moves on to the session once it answers).
Only 2xx, 401 and 403 are answers to nginx's `auth_request`; anything else would be its error 500.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import Scope

from byoi.auth.browser import SESSION_COOKIE
from byoi.proxy.core import Upstream
from byoi.proxy.paths import BadPath, SessionPath, parse_session_path
from byoi.services.session_access import Decision, SessionAccess
from byoi.web.auth import HEADERS, browser_principal, error_page, render

CACHE_SECONDS = 2.0
CACHE_SIZE = 10_000


class SessionGate:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self._allowed: OrderedDict[tuple[str, str], tuple[float, Decision]] = OrderedDict()

    @property
    def access(self) -> SessionAccess:
        access: SessionAccess = self.state["services"].session_access
        return access

    async def decision(self, conn: HTTPConnection, session_id: str) -> Decision:
        """The decision for this browser and session; an allowed one is remembered for CACHE_SECONDS."""
        cookie = conn.cookies.get(SESSION_COOKIE)
        key = (hashlib.sha256(cookie.encode()).hexdigest(), session_id) if cookie else None
        now = time.monotonic()
        if key is not None:
            hit = self._allowed.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        principal = await browser_principal(conn)  # type: ignore[arg-type]
        decision = await self.access.decide(principal, session_id)
        if key is not None and decision.allowed:
            self._allowed[key] = (now + CACHE_SECONDS, decision)
            self._allowed.move_to_end(key)
            while len(self._allowed) > CACHE_SIZE:
                self._allowed.popitem(last=False)
        return decision

    async def decide(self, scope: Scope, path: SessionPath) -> Upstream | Response:
        conn = HTTPConnection(scope)
        decision = await self.decision(conn, path.session_id)
        if decision.allowed and decision.endpoint is not None:
            return Upstream(endpoint=decision.endpoint, session_id=path.session_id, root_path=path.prefix)
        return page(decision, scope, path.prefix + path.rest)


def sign_in_url(decision: Decision, next_path: str) -> str:
    nxt = quote(next_path, safe="/")
    if decision.sso and decision.domain_id:
        return f"/auth/oidc/login?domain={quote(decision.domain_id)}&next={nxt}"
    return f"/auth/sign-in?next={nxt}"


def page(decision: Decision, scope: Scope, path: str) -> Response:
    """The page for a session the browser may not (or not yet) use; `path` is where to come back to."""
    method = scope.get("method", "GET")
    if decision.kind == "sign-in":
        target = sign_in_url(decision, path if method == "GET" else f"/sessions/{decision.session_id}/")
        if method in ("GET", "HEAD") and scope["type"] == "http":
            return RedirectResponse(target, status_code=303, headers=HEADERS)
        return PlainTextResponse("Sign in first.\n", status_code=401, headers={"X-Byoi-Location": target})
    if decision.kind == "forbidden":
        return error_page(403, "Not your session", "This RStudio session belongs to another user.")
    if decision.kind == "not-found":
        return error_page(404, "No such session", f"There is no RStudio session {decision.session_id}.")
    if decision.kind == "starting":
        progress = decision.progress
        done, total = int(progress.get("BytesDone") or 0), int(progress.get("BytesTotal") or 0)
        return render(
            "session_starting.html",
            200,
            {"Refresh": "2"},
            app_name=decision.app_name,
            phase=progress.get("Phase") or "queued",
            message=progress.get("Message") or "Waiting for a launch slot",
            done=done,
            total=total,
            percent=int(100 * done / total) if total else 0,
            total_mb=round(total / 1e6, 1),
        )
    if decision.kind == "failed":
        return error_page(502, f"Session {decision.app_name} failed", decision.failure_reason or "The session failed.")
    return error_page(
        410, f"{decision.app_name} is not running", f"This RStudio session is {decision.status}: start a new one."
    )


async def session_check(request: Request) -> Response:
    """Forward-auth: may this browser use the session that `X-Original-URI` names, and where is it?"""
    gate: SessionGate = request.app.state.byoi_state["gate"]
    original = request.headers.get("x-original-uri", "")
    raw = original.split("?", 1)[0].encode("latin-1", "replace")
    try:
        path = parse_session_path(raw)
    except BadPath as exc:  # 403, not 400: nginx's auth_request takes only 2xx, 401 and 403 as answers
        return PlainTextResponse(f"{exc}\n", status_code=403, headers={"X-Byoi-Refused": "path"})
    decision = await gate.decision(request, path.session_id)
    if decision.allowed and decision.endpoint is not None:
        endpoint = decision.endpoint
        upstream = f"unix:{endpoint.socket}" if endpoint.socket else f"{endpoint.host}:{endpoint.port}"
        return Response(
            status_code=200,
            headers={
                "X-Byoi-Upstream": upstream,
                "X-Byoi-Root-Path": path.prefix,
                "X-Byoi-Upstream-Path": path.rest,
                "Cache-Control": "no-store",
            },
        )
    if decision.kind == "forbidden":
        return Response(status_code=403, headers={"Cache-Control": "no-store"})
    if decision.kind == "sign-in":
        location = sign_in_url(decision, f"/auth/session-status/{decision.session_id}")
    else:
        location = f"/auth/session-status/{decision.session_id}"
    return Response(status_code=401, headers={"Cache-Control": "no-store", "X-Byoi-Location": location})


async def session_status(request: Request) -> Response:
    """The page for a session behind a gateway: the same pages the proxy shows, and on to the session once the
    browser may use it."""
    gate: SessionGate = request.app.state.byoi_state["gate"]
    session_id = str(request.path_params["session_id"])
    decision = await gate.decision(request, session_id)
    if decision.allowed:
        return RedirectResponse(f"/sessions/{session_id}/", status_code=303, headers=HEADERS)
    if decision.kind == "sign-in":
        return RedirectResponse(
            sign_in_url(decision, f"/auth/session-status/{session_id}"), status_code=303, headers=HEADERS
        )
    return page(decision, request.scope, f"/auth/session-status/{session_id}")


def install(app: FastAPI, state: dict[str, Any]) -> None:
    app.router.add_route("/auth/session-check", session_check, methods=["GET"], include_in_schema=False)
    app.router.add_route("/auth/session-status/{session_id}", session_status, methods=["GET"], include_in_schema=False)
