"""Console area: every RStudio session, for administrators (a user is sent to their launcher).

- `GET /console/sessions`: the RSessionGateway apps of every domain, newest first, SHOWN at a time (ListApps,
  `?next=` its NextToken; `?domain=` and `?profile=` narrow it with DomainIdEquals / UserProfileNameEquals),
  each with DescribeApp: owner (domain and profile), image and version, instance type, age, last activity,
  status (with the failure reason), and Stop. DescribeDomain names each domain once. While a session is
  starting or stopping, htmx reloads the table every REFRESH seconds (the page works without it).
- `POST /console/sessions/stop`: DeleteApp of the session the form names, then back to the list. The API
  decides who may: a user may stop only their own sessions, and sees its refusal as a 403 page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response

from byoi.auth.browser import LAUNCHER_PAGE
from byoi.console.pages import PREFIX, Page, Route, explain, page_route, status_of
from byoi.errors import ByoiError

SESSIONS = PREFIX + "/sessions"
APP_TYPE = "RSessionGateway"
SHOWN = 50
REFRESH = 3  # seconds between htmx reloads of the table while a session is Pending or Deleting
STOPPABLE = ("Pending", "InService")
FILTERS = {"domain": "DomainIdEquals", "profile": "UserProfileNameEquals"}
NOTICES = {"stopping": "The session is stopping."}


@dataclass
class Row:
    """One session as the table shows it."""

    domain_id: str
    domain_name: str
    profile: str
    name: str
    status: str
    detail: str | None
    image: str
    version: str
    instance_type: str
    created: float
    activity: float | None

    @property
    def can_stop(self) -> bool:
        return self.status in STOPPABLE

    @property
    def created_iso(self) -> str:
        return _iso(self.created)

    @property
    def activity_iso(self) -> str:
        return _iso(self.activity)


def _iso(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else ""


def image_of(spec: dict[str, Any]) -> tuple[str, str]:
    """(image name, version) as an app's ResourceSpec names them (a version ARN ends `/<name>/<number>`)."""
    version_arn = spec.get("SageMakerImageVersionArn") or ""
    if ":image-version/" in version_arn:
        name, _, number = version_arn.split(":image-version/", 1)[1].partition("/")
        return name, number
    return (spec.get("SageMakerImageArn") or "").rsplit("/", 1)[-1], ""


async def _rows(page: Page, apps: list[dict[str, Any]]) -> list[Row]:
    names: dict[str, str] = {}
    rows = []
    for app in apps:
        if app.get("AppType") != APP_TYPE:
            continue  # the domains' RStudioServerPro apps: no container, nothing to stop here
        domain_id = app["DomainId"]
        key = {"DomainId": domain_id, "UserProfileName": app["UserProfileName"], "AppType": APP_TYPE}
        described = await page.call("DescribeApp", {**key, "AppName": app["AppName"]})
        if domain_id not in names:
            names[domain_id] = (await page.call("DescribeDomain", {"DomainId": domain_id})).get("DomainName", "")
        spec = described.get("ResourceSpec") or {}
        image, version = image_of(spec)
        rows.append(
            Row(
                domain_id=domain_id,
                domain_name=names[domain_id],
                profile=described["UserProfileName"],
                name=described["AppName"],
                status=described["Status"],
                detail=described.get("FailureReason") if described["Status"] == "Failed" else None,
                image=image,
                version=version,
                instance_type=spec.get("InstanceType", ""),
                created=described["CreationTime"],
                activity=described.get("LastUserActivityTimestamp"),
            )
        )
    return rows


def _href(query: dict[str, str]) -> str:
    return SESSIONS + ("?" + urlencode(query) if query else "")


async def _render(page: Page, status: int = 200, error: str | None = None) -> Response:
    filters = {k: page.params[k] for k in FILTERS if page.params.get(k)}
    params: dict[str, Any] = {"SortOrder": "Descending", "MaxResults": SHOWN}
    params |= {FILTERS[k]: v for k, v in filters.items()}
    if page.params.get("next"):
        params["NextToken"] = page.params["next"]
    listed = await page.call("ListApps", params)
    rows = await _rows(page, listed.get("Apps", []))
    paged = {"next": page.params["next"]} if page.params.get("next") else {}
    context = {
        "rows": rows,
        "filters": filters,
        "next_token": listed.get("NextToken"),
        "first_href": _href(filters) if paged else None,
        "next_href": _href({**filters, "next": listed.get("NextToken") or ""}),
        "here": _href({**filters, **paged}),
        "refresh": REFRESH if any(r.status in ("Pending", "Deleting") for r in rows) else None,
        "error": error,
        "notice": NOTICES.get(page.params.get("notice", "")),
    }
    if page.is_htmx:
        return page.render("sessions_table.html", status, **context)
    return page.render("sessions.html", status, **context)


async def sessions_page(page: Page) -> Response:
    """Every session for an administrator; a user's sessions are on their launcher."""
    if not page.is_admin:
        return page.redirect(LAUNCHER_PAGE)
    return await _render(page)


async def stop_session(page: Page) -> Response:
    """DeleteApp of one session (domain, profile and name from the form), then the list again."""
    form = await page.form("DeleteApp")
    key = {
        "DomainId": form.get("domain_id", ""),
        "UserProfileName": form.get("user_profile_name", ""),
        "AppType": APP_TYPE,
        "AppName": form.get("app_name", ""),
    }
    try:
        await page.call("DeleteApp", key)
    except ByoiError as err:
        if not page.is_admin:
            raise
        return await _render(page, status_of(err), explain(err))
    back = {k: form[k] for k in FILTERS if form.get(k)}
    return page.redirect(SESSIONS, **back, notice="stopping")


ROUTES: list[Route] = [
    (SESSIONS, "GET", page_route(sessions_page)),
    (SESSIONS + "/stop", "POST", page_route(stop_session)),
]
