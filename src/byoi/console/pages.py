"""What every console page shares: the signed-in `Page`, its calls through `dispatch`, forms checked against
the session's CSRF token, rendering with the console's headers, and API errors turned into words.

A handler is `async def handler(page: Page) -> Response`, wrapped by `page_route` (or `admin_route` for the
pages only administrators have: a user gets a 403 page there before anything is read). The wrapper sends a
browser without a session to the sign-in page and back, renders a refused call (`ByoiError`) as a page with
the matching status (403 for AccessDenied, 404 for not found, otherwise the error's own), and any other
failure as a 500 page, logged with its request id. A handler that wants the error next to its form instead
catches `ByoiError` itself and re-renders with `status_of(err)` and `explain(err, labels)`.

Headers: no caching, no referrer, no framing, and a Content-Security-Policy that allows scripts and styles
from the console's own static files only (`/console/static/`), so an injected attribute or inline script
cannot run. Nothing is fetched from anywhere else at run time.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import regex
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from byoi.api.model import EXTENSION_PREFIX, SAGEMAKER_PREFIX
from byoi.auth.browser import same
from byoi.auth.principal import Principal
from byoi.errors import ByoiError
from byoi.logs import request_id
from byoi.services.browser_sessions import BrowserSession

if TYPE_CHECKING:
    import jinja2
from byoi.web.auth import MAX_FORM_BYTES, browser_session, read_form

log = logging.getLogger("byoi.console")

PREFIX = "/console"
STATIC = PREFIX + "/static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CSP,
}
# The status a refused call's page answers with (the API answers 400 for all of these).
PAGE_STATUS = {
    "AccessDeniedException": 403,
    "ResourceNotFound": 404,
    "ResourceInUse": 409,
    "ResourceLimitExceeded": 409,
    "ConflictException": 409,
    "ValidationException": 400,
}
# Words for what the API calls by its member names, used when a message names a member.
COMMON_LABELS = {
    "ImageName": "image name",
    "DisplayName": "display name",
    "Description": "description",
    "RoleArn": "role ARN",
    "BaseImage": "image reference",
    "DomainName": "domain name",
    "UserProfileName": "user profile name",
    "AppImageConfigName": "app image config",
}
MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # a build context uploaded from the browser
BUILD_VERSION = str(int(time.time()))  # cache-busting for static files: a new server serves new files


def when(epoch: float | None) -> str:
    """An epoch as `2026-12-01 14:05 UTC` ('' for none)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch)) if epoch else ""


def ago(epoch: float | None) -> str:
    """How long ago, coarsely: `12 s`, `5 min`, `3 h`, `2 d` ('' for none)."""
    if not epoch:
        return ""
    seconds = max(0.0, time.time() - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


@functools.cache
def templates() -> jinja2.Environment:
    """The console's templates, made at the first page (jinja2 is not loaded by a server no one browses)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("byoi.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static"] = lambda name: f"{STATIC}/{name}?v={BUILD_VERSION}"
    env.filters["when"] = when
    env.filters["ago"] = ago
    return env


def status_of(err: ByoiError) -> int:
    return PAGE_STATUS.get(err.code, err.status if err.status >= 400 else 400)


# What the model's patterns mean, in words (the API's message quotes the pattern itself).
PATTERN_WORDS = {
    "[a-zA-Z0-9]([-.]?[a-zA-Z0-9]){0,62}": "use letters and digits, with single hyphens or dots between them",
    "[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}": "use letters, digits and hyphens, starting and ending with a letter or digit",
    "\\S(.*\\S)?": "not start or end with a space",
    "(?!^[.-])^([a-zA-Z0-9-_.]+)": "use letters, digits, '-', '_' and '.', not starting with '-' or '.'",
    "([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)": "use letters, digits, spaces and _ . : / = + - @ only",
}
_VALIDATION = regex.compile(
    r"Value '(?P<value>.*?)' at '(?P<path>[^']+)' failed to satisfy constraint: Member must (?P<rule>.*?)"
    r"(?=; Value '|$)",
    regex.DOTALL,
)
_RULES = (
    (regex.compile(r"have length greater than or equal to 1"), lambda m: "must not be empty"),
    (regex.compile(r"have length greater than or equal to (\d+)"), lambda m: f"must be at least {m[1]} characters"),
    (regex.compile(r"have length less than or equal to (\d+)"), lambda m: f"must be at most {m[1]} characters"),
    (regex.compile(r"satisfy enum value set: \[(.*)\]"), lambda m: f"must be one of: {m[1]}"),
    (
        regex.compile(r"satisfy regular expression pattern: (.*)", regex.DOTALL),
        lambda m: "must " + PATTERN_WORDS.get(m[1].strip("^$"), f"match the pattern {m[1]}"),
    ),
)


def _label(path: str, labels: Mapping[str, str]) -> str:
    member = path.split(".")[-1] if not path.split(".")[-1].isdigit() else path
    return labels.get(path) or labels.get(member) or regex.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", member).lower()


def _validation_words(message: str, labels: Mapping[str, str]) -> str | None:
    problems = []
    for found in _VALIDATION.finditer(message):
        rule = found["rule"]
        for pattern, words in _RULES:
            matched = pattern.fullmatch(rule)
            if matched:
                rule = words(matched)
                break
        else:
            rule = "must " + rule
        label = _label(found["path"], labels)
        value = found["value"]
        problems.append(f"The {label} '{value}' {rule}." if value else f"The {label} {rule}.")
    return " ".join(problems) or None


def explain(err: ByoiError, labels: Mapping[str, str] | None = None) -> str:
    """The API's message for a person: a validation failure becomes one sentence per field in the form's words
    (`labels` maps member names to them), other messages keep the API's words with member names replaced."""
    words = {**COMMON_LABELS, **(labels or {})}
    if err.code == "ValidationException":
        said = _validation_words(err.message, words)
        if said:
            return said
    message = err.message
    for member, label in words.items():
        message = regex.sub(rf"'?\b{member}\b'?", label, message)
    if err.code == "AccessDeniedException":
        return f"You are not allowed to do this: {message}"
    return message


class Refused(Exception):  # noqa: N818 - a refused request with the page that says so, not a server error
    """Raised inside a handler to answer with an error page (a bad form, a missing CSRF token)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


@dataclass
class Page:
    """One signed-in request: who, its CSRF token, and the door to everything (`call`)."""

    request: Request
    session: BrowserSession
    calls: list[tuple[str, float]] = field(default_factory=list)  # (operation, seconds), for Server-Timing

    @property
    def principal(self) -> Principal:
        return self.session.principal

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    @property
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.request.app.state.byoi_state
        return state

    @property
    def params(self) -> Mapping[str, str]:
        return self.request.query_params

    @property
    def is_htmx(self) -> bool:
        """An htmx request (it swaps a fragment in) rather than a whole page load."""
        return self.request.headers.get("HX-Request") == "true"

    async def call(self, name: str, params: dict[str, Any] | None = None, prefix: str = SAGEMAKER_PREFIX) -> Any:
        """`<prefix>.<name>` as this page's principal, exactly as the API would answer it."""
        started = time.perf_counter()
        try:
            return await self.state["dispatcher"].dispatch(self.principal, prefix, name, params or {})
        finally:
            self.calls.append((name, time.perf_counter() - started))

    async def ext(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """A byoi extension operation (`Byoi.<name>`)."""
        return await self.call(name, params, EXTENSION_PREFIX)

    async def form(self, operation: str, arn: str | None = None) -> dict[str, str]:
        """The POSTed form (urlencoded), after its CSRF token is checked; a missing or wrong token is audited
        as a refusal of `operation` and answered with a 403 page."""
        fields = await read_form(self.request)
        if fields is None:
            raise Refused(400, "Request refused", "The form was not sent as a form: reload the page and try again.")
        await self._check_csrf(fields.get("csrf_token", ""), operation, arn)
        return fields

    async def multipart(self, operation: str) -> tuple[dict[str, str], dict[str, UploadFile]]:
        """A multipart form (file uploads): its text fields and files, after the CSRF check. Files are spooled
        to disk by Starlette; the whole body is capped at MAX_UPLOAD_BYTES."""
        if not self.request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise Refused(400, "Request refused", "The form was not sent as a file upload: reload the page.")
        length = self.request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_UPLOAD_BYTES:
            raise Refused(413, "Upload too large", f"Uploads are limited to {MAX_UPLOAD_BYTES // 2**20} MiB.")
        try:
            form = await self.request.form(max_files=1000, max_fields=50, max_part_size=MAX_FORM_BYTES)
        except Exception as exc:  # a malformed multipart body is the client's, never a 500
            raise Refused(400, "Request refused", f"The upload could not be read: {exc}") from exc
        texts = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        files = {k: v for k, v in form.multi_items() if not isinstance(v, str)}
        await self._check_csrf(texts.get("csrf_token", ""), operation, None)
        return texts, files

    async def _check_csrf(self, token: str, operation: str, arn: str | None) -> None:
        if not same(token, self.session.csrf_token):
            await self.state["dispatcher"].audit.record(self.principal, operation, arn, "CsrfTokenMismatch")
            raise Refused(403, "Request refused", "The form's security token is missing or wrong: reload the page.")

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        """`template` with the page's principal, CSRF token, path and the notice named in `?notice=`."""
        body = (
            templates()
            .get_template(template)
            .render(
                principal=self.principal,
                csrf_token=self.session.csrf_token,
                path=self.request.url.path,
                prefix=PREFIX,
                **context,
            )
        )
        return HTMLResponse(body, status_code=status, headers=HEADERS)

    def redirect(self, path: str, **query: str) -> Response:
        """303 to `path` (a console path), with `query` (for instance `notice=created`)."""
        target = path + ("?" + urlencode(query) if query else "")
        if self.is_htmx:  # htmx follows a 303 inside the fragment; tell it to load the page instead
            return Response(status_code=204, headers={**HEADERS, "HX-Redirect": target})
        return RedirectResponse(target, status_code=303, headers=HEADERS)


def error_page(status: int, title: str, message: str, principal: Principal | None = None) -> HTMLResponse:
    body = (
        templates()
        .get_template("error.html")
        .render(title=title, message=message, principal=principal, csrf_token="", path="", prefix=PREFIX)
    )
    return HTMLResponse(body, status_code=status, headers=HEADERS)


Handler = Callable[[Page], Awaitable[Response]]


def page_route(handler: Handler, admin_only: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint for `handler`: sign-in required, errors as pages, one request id, one log line."""

    async def run(request: Request) -> Response:
        rid = str(uuid.uuid4())
        token = request_id.set(rid)
        principal = None
        try:
            session = await browser_session(request)
            if session is None:
                response: Response = _to_sign_in(request)
            else:
                principal = session.principal
                if admin_only and not principal.is_admin:
                    response = error_page(
                        403, "For administrators", "This page is for administrators of byoi.", principal
                    )
                else:
                    page = Page(request, session)
                    started = time.perf_counter()
                    response = await handler(page)
                    response.headers["Server-Timing"] = server_timing(page, time.perf_counter() - started)
        except Refused as refused:
            response = error_page(refused.status, refused.title, refused.message, principal)
        except ByoiError as err:
            status = status_of(err)
            title = {403: "Not allowed", 404: "Not found"}.get(status, "Request refused")
            response = error_page(status, title, explain(err), principal)
        except Exception:
            log.exception("unexpected failure in %s", request.url.path)
            response = error_page(500, "Something went wrong", "byoi could not answer this page; see its log.")
        finally:
            request_id.reset(token)
        log.info("%s %s %s", request.method, request.url.path, response.status_code, extra={"request_id": rid})
        return response

    return run


def server_timing(page: Page, total: float) -> str:
    """`Server-Timing` (W3C) for a page: the time in API calls (and how many), and the whole handler. The
    benchmark (bench/console.py) checks its call count against the calls it replays through the API."""
    api = sum(seconds for _, seconds in page.calls)
    return f'api;dur={api * 1000:.1f};desc="{len(page.calls)} calls", page;dur={total * 1000:.1f}'


def admin_route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    return page_route(handler, admin_only=True)


def _to_sign_in(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = request.url.path
    location = f"/auth/sign-in?next={quote(target, safe='/')}"
    if request.headers.get("HX-Request") == "true":
        return Response(status_code=401, headers={**HEADERS, "HX-Redirect": location})
    return RedirectResponse(location, status_code=303, headers=HEADERS)


Route = tuple[str, str, Callable[[Request], Awaitable[Response]]]  # (path, method, endpoint)
