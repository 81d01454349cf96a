"""The RStudio launcher, where SageMaker serves a domain's RStudio: `/rstudio/default/` (server-rendered, no
JavaScript; forms POST and redirect with 303).

- `GET /rstudio/default/`: the signed-in user's sessions (status, image and version, instance type, age, last
  activity, Open and Stop) and a New Session form (a name, an image version from the user's effective list,
  an instance type). What the page shows comes from operations called as the browser's principal:
  `DescribeDomain`, `DescribeUserProfile`, `DescribeApp` (also of the domain's RStudioServerPro app),
  `ListApps`, `Byoi.DescribeAppProgress`, `Byoi.ListEffectiveImages`, `ListImageVersions` and
  `Byoi.ListInstanceTypes`. An administrator gets a page saying they have no sessions of their own.
- `POST /rstudio/default/sessions`: `CreateApp`, then 303 to the session's root path `/sessions/<id>/` (the
  session proxy shows a progress page there while it starts); an error shows next to the form, in the API's
  words, with what was typed kept.
- `POST /rstudio/default/stop`: `DeleteApp` of one of the user's sessions, then 303 back here.

Every POST carries the browser session's CSRF token (checked here, refusals audited). The page holds no rule:
each action is one `Dispatcher.dispatch` as the browser's principal, whose own profile is the only one it acts
on; what a user may see and do is decided there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from byoi.api.model import EXTENSION_PREFIX, SAGEMAKER_PREFIX
from byoi.auth.browser import LAUNCHER_PAGE, same
from byoi.auth.policy import SHARED_APP_NAME, SHARED_APP_PROFILE, SHARED_APP_TYPE
from byoi.auth.principal import Principal
from byoi.errors import ByoiError, ResourceNotFound
from byoi.services.browser_sessions import BrowserSession
from byoi.web.auth import HEADERS, _guarded, browser_session, error_page, read_form, render

SESSIONS = "RSessionGateway"
CREATE_PATH = LAUNCHER_PAGE + "sessions"
STOP_PATH = LAUNCHER_PAGE + "stop"
SHOWN_APPS = 50  # the most recent sessions the page lists
SHOWN_VERSIONS = 20  # per image, newest first
REFRESH_SECONDS = 3  # while a session is Pending or Deleting
LIVE = ("Pending", "InService")
# The status a refusal's page answers with (the API answers 400 for all of these).
PAGE_STATUS = {"AccessDeniedException": 403, "ResourceNotFound": 404, "ResourceInUse": 409}
SHARED = {"UserProfileName": SHARED_APP_PROFILE, "AppType": SHARED_APP_TYPE, "AppName": SHARED_APP_NAME}


def _dispatcher(request: Request) -> Any:
    return request.app.state.byoi_state["dispatcher"]


async def _call(request: Request, me: Principal, name: str, params: dict[str, Any], prefix: str = "") -> Any:
    return await _dispatcher(request).dispatch(me, prefix or SAGEMAKER_PREFIX, name, params)


def _sign_in(path: str) -> Response:
    return RedirectResponse(f"/auth/sign-in?next={quote(path, safe='/')}", status_code=303, headers=HEADERS)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def _iso(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else ""


def _image_of(spec: dict[str, Any]) -> tuple[str, str]:
    """(image name, version) as the app's ResourceSpec names them (version ARNs end `/<name>/<number>`)."""
    version_arn = spec.get("SageMakerImageVersionArn") or ""
    if ":image-version/" in version_arn:
        name, _, number = version_arn.split(":image-version/", 1)[1].partition("/")
        return name, number
    return (spec.get("SageMakerImageArn") or "").rsplit("/", 1)[-1], ""


@dataclass
class Row:
    name: str
    status: str
    image: str
    version: str
    instance_type: str
    age: str
    created: str
    activity: str
    activity_at: str
    url: str | None
    detail: str | None
    can_stop: bool


@dataclass
class View:
    """Everything the launcher page shows a user, read through the API as them."""

    domain_name: str
    rstudio_on: bool
    shared_status: str | None  # None: the domain has no RStudioServerPro app at all
    access_disabled: bool
    rows: list[Row] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    instance_types: list[dict[str, Any]] = field(default_factory=list)
    default_type: str = ""

    @property
    def can_launch(self) -> bool:
        return self.rstudio_on and self.shared_status == "InService" and not self.access_disabled

    @property
    def refresh(self) -> int | None:
        return REFRESH_SECONDS if any(r.status in ("Pending", "Deleting") for r in self.rows) else None

    def suggested_name(self) -> str:
        taken = {r.name for r in self.rows if r.status in LIVE + ("Deleting",)}
        n = len(self.rows) + 1
        while f"session-{n}" in taken:
            n += 1
        return f"session-{n}"


async def _shared_status(request: Request, me: Principal) -> str | None:
    try:
        return str((await _call(request, me, "DescribeApp", {"DomainId": me.domain_id, **SHARED}))["Status"])
    except ResourceNotFound:
        return None


async def _rows(request: Request, me: Principal, mine: dict[str, Any]) -> list[Row]:
    listed = await _call(
        request, me, "ListApps", {**_filters(mine), "SortOrder": "Descending", "MaxResults": SHOWN_APPS}
    )
    now, rows = time.time(), []
    for app in listed.get("Apps", []):
        if app.get("AppType") != SESSIONS:
            continue
        key = {**mine, "AppType": SESSIONS, "AppName": app["AppName"]}
        described = await _call(request, me, "DescribeApp", key)
        progress = await _call(request, me, "DescribeAppProgress", key, EXTENSION_PREFIX)
        status = described["Status"]
        image, version = _image_of(described.get("ResourceSpec") or {})
        activity = described.get("LastUserActivityTimestamp")
        detail = described.get("FailureReason") if status == "Failed" else None
        if status in ("Pending", "Deleting"):
            detail = progress.get("Message")
        rows.append(
            Row(
                name=app["AppName"],
                status=status,
                image=image,
                version=version,
                instance_type=(described.get("ResourceSpec") or {}).get("InstanceType", ""),
                age=_ago(now - described["CreationTime"]),
                created=_iso(described["CreationTime"]),
                activity=f"{_ago(now - activity)} ago" if activity else "none yet",
                activity_at=_iso(activity),
                url=progress.get("Url") if status in LIVE else None,
                detail=detail,
                can_stop=status in LIVE,
            )
        )
    return rows


def _filters(mine: dict[str, Any]) -> dict[str, Any]:
    return {"DomainIdEquals": mine["DomainId"], "UserProfileNameEquals": mine["UserProfileName"]}


async def _images(request: Request, me: Principal, mine: dict[str, Any]) -> list[dict[str, Any]]:
    """The choices of image version: per effective image, its newest CREATED version ("latest", the image ARN)
    and each CREATED version (its version ARN); an entry that pins a version offers that version only."""
    effective = await _call(request, me, "ListEffectiveImages", mine, EXTENSION_PREFIX)
    out = []
    for entry in effective.get("EffectiveImages", []):
        name = entry["ImageName"]
        if entry.get("Problem"):
            out.append({"name": name, "options": [], "problem": entry["Problem"]})
            continue
        if entry.get("ImageVersionNumber") is not None:
            label = f"version {entry['ImageVersionNumber']} (attached)"
            out.append(
                {"name": name, "options": [{"value": entry["ImageVersionArn"], "label": label}], "problem": None}
            )
            continue
        versions = await _call(
            request,
            me,
            "ListImageVersions",
            {"ImageName": name, "SortBy": "VERSION", "SortOrder": "DESCENDING", "MaxResults": SHOWN_VERSIONS},
        )
        created = [v for v in versions.get("ImageVersions", []) if v.get("ImageVersionStatus") == "CREATED"]
        newest = f" (version {entry['ResolvedVersionNumber']})" if entry.get("ResolvedVersionNumber") else ""
        options = [{"value": entry["ImageArn"], "label": f"latest{newest}"}]
        options += [{"value": v["ImageVersionArn"], "label": f"version {v['Version']}"} for v in created]
        out.append({"name": name, "options": options, "problem": None})
    return out


async def _view(request: Request, me: Principal) -> View:
    mine = {"DomainId": me.domain_id, "UserProfileName": me.user_profile_name}
    domain = await _call(request, me, "DescribeDomain", {"DomainId": me.domain_id})
    profile = await _call(request, me, "DescribeUserProfile", mine)
    rstudio = (profile.get("UserSettings") or {}).get("RStudioServerProAppSettings") or {}
    view = View(
        domain_name=domain.get("DomainName", ""),
        rstudio_on=bool((domain.get("DomainSettings") or {}).get("RStudioServerProDomainSettings")),
        shared_status=await _shared_status(request, me),
        access_disabled=rstudio.get("AccessStatus") == "DISABLED",
    )
    view.rows = await _rows(request, me, mine)
    if view.can_launch:
        view.images = await _images(request, me, mine)
        types = await _call(request, me, "ListInstanceTypes", mine, EXTENSION_PREFIX)
        view.instance_types = [t for t in types.get("InstanceTypes", []) if t.get("Offered")]
        view.default_type = types.get("DefaultInstanceType", "")
    return view


async def _launcher(
    request: Request,
    session: BrowserSession,
    status: int = 200,
    error: str | None = None,
    typed: dict[str, str] | None = None,
    stop_error: str | None = None,
) -> Response:
    me = session.principal
    if me.is_admin or me.domain_id is None or me.user_profile_name is None:
        return render("launcher_admin.html", 403 if status >= 400 else 200, principal=me, csrf_token=session.csrf_token)
    view = await _view(request, me)
    typed = typed or {"app_name": view.suggested_name(), "image": "", "instance_type": view.default_type}
    return render(
        "launcher.html",
        status,
        principal=me,
        view=view,
        error=error,
        stop_error=stop_error,
        typed=typed,
        csrf_token=session.csrf_token,
        create_path=CREATE_PATH,
        stop_path=STOP_PATH,
        shared=SHARED,
    )


async def launcher_page(request: Request) -> Response:
    session = await browser_session(request)
    if session is None:
        return _sign_in(LAUNCHER_PAGE)
    return await _launcher(request, session)


async def to_launcher(_request: Request) -> Response:
    return RedirectResponse(LAUNCHER_PAGE, status_code=303, headers=HEADERS)


async def _form(request: Request, operation: str) -> tuple[BrowserSession, dict[str, str]] | Response:
    """The signed-in session and the POSTed form, or the page refusing them (no session, no form, bad CSRF)."""
    session = await browser_session(request)
    if session is None:
        return _sign_in(LAUNCHER_PAGE)
    form = await read_form(request)
    if form is None:
        return error_page(400, "Request refused", "The form was not sent as a form: reload the launcher.")
    if not same(form.get("csrf_token", ""), session.csrf_token):
        me = session.principal
        arn = None
        if me.domain_id and me.user_profile_name:
            arn = request.app.state.byoi_state["ctx"].arns.user_profile(me.domain_id, me.user_profile_name)
        await _dispatcher(request).audit.record(me, operation, arn, "CsrfTokenMismatch")
        return error_page(403, "Request refused", "The form's security token is missing or wrong: reload the launcher.")
    return session, form


async def create_session(request: Request) -> Response:
    got = await _form(request, "CreateApp")
    if isinstance(got, Response):
        return got
    session, form = got
    me = session.principal
    typed = {k: form.get(k, "").strip() for k in ("app_name", "image", "instance_type")}
    if me.is_admin:
        return await _launcher(request, session, 403)
    spec: dict[str, str] = {}
    if ":image-version/" in typed["image"]:
        spec["SageMakerImageVersionArn"] = typed["image"]
    elif typed["image"]:
        spec["SageMakerImageArn"] = typed["image"]
    if typed["instance_type"]:
        spec["InstanceType"] = typed["instance_type"]
    key = {"DomainId": me.domain_id, "UserProfileName": me.user_profile_name, "AppType": SESSIONS}
    try:
        key["AppName"] = typed["app_name"]
        await _call(request, me, "CreateApp", {**key, "ResourceSpec": spec})
        progress = await _call(request, me, "DescribeAppProgress", key, EXTENSION_PREFIX)
    except ByoiError as err:
        return await _launcher(request, session, PAGE_STATUS.get(err.code, err.status), err.message, typed)
    return RedirectResponse(progress["RootPath"], status_code=303, headers=HEADERS)


async def stop_session(request: Request) -> Response:
    got = await _form(request, "DeleteApp")
    if isinstance(got, Response):
        return got
    session, form = got
    me = session.principal
    if me.is_admin:
        return await _launcher(request, session, 403)
    params = {
        "DomainId": me.domain_id,
        "UserProfileName": me.user_profile_name,
        "AppType": SESSIONS,
        "AppName": form.get("app_name", ""),
    }
    try:
        await _call(request, me, "DeleteApp", params)
    except ByoiError as err:
        return await _launcher(request, session, PAGE_STATUS.get(err.code, err.status), stop_error=err.message)
    return RedirectResponse(LAUNCHER_PAGE, status_code=303, headers=HEADERS)


def install(app: FastAPI, state: dict[str, Any]) -> None:
    """Add the launcher's routes to `app`; `state` is filled by the app's lifespan (services, dispatcher)."""
    app.state.byoi_state = state
    for path, method, handler in (
        (LAUNCHER_PAGE, "GET", launcher_page),
        (LAUNCHER_PAGE.rstrip("/"), "GET", to_launcher),
        (CREATE_PATH, "POST", create_session),
        (STOP_PATH, "POST", stop_session),
    ):
        app.router.add_route(path, _guarded(handler), methods=[method], include_in_schema=False)
