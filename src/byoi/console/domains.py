"""Console area: domains, their user profiles and the custom images attached to them (administrators' pages).

- `GET /console/domains`: the domains, a page at a time (ListDomains).
- `GET/POST /console/domains/new`: create a domain (CreateDomain, AuthMode IAM): its name, the execution role,
  RStudio on or off with the Connect and Package Manager URLs, the users' default instance type (the choices
  from Byoi.ListInstanceTypes of an existing domain: the table is the host's).
- `GET /console/domains/<id>`: the domain's `Url` (DescribeDomain). An administrator gets the domain's page: its
  facts and settings (a form for UpdateDomain), the images attached to it (Byoi.ListEffectiveImages: what each
  resolves to now), its user profiles (ListUserProfiles, paged) and a form to create one (CreateUserProfile).
  A user of the domain is sent to the RStudio launcher (SageMaker's domain URL opens the IDE); another
  domain's user gets the API's refusal, a 403 page.
- `POST /console/domains/<id>/settings`: UpdateDomain with only the members that changed.
- `GET /console/domains/<id>/profiles/<name>`: the user profile (DescribeUserProfile), its settings (RStudio
  access, instance type: a form for UpdateUserProfile), its own attached images and what the user can launch
  (Byoi.ListEffectiveImages, with each entry's problem); `.../delete` asks, then DeleteUserProfile.
- `POST .../images/attach` and `.../images/detach`, on a domain or a profile: Byoi.DescribeAttachedImages, then
  Byoi.UpdateAttachedImages with the revision read (the compare-and-swap `byoi attach` uses, docs/domains.md),
  read again and retried when another change came first. The attach form lists ListImages and
  ListAppImageConfigs.

Every page but the domain's `Url` is for administrators (`admin_route`); access is the API's to decide. Errors
show next to the form they belong to, with what was typed kept and the error's status.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from byoi.auth.browser import LAUNCHER_PAGE
from byoi.console.pages import PREFIX, Page, Route, admin_route, explain, page_route, status_of
from byoi.errors import ByoiError, ConcurrentModification, ValidationException

DOMAINS = PREFIX + "/domains"
PAGE_SIZE = 20
LIST_CAP = 100  # images and app image configs offered by the attach form
CAS_TRIES = 5  # UpdateAttachedImages attempts when another change came first
DEFAULT_CONFIG = "byoi-rstudio"  # the app image config `byoi attach` uses
NOTICES = {
    "created": "The domain was created.",
    "updated": "The settings were saved.",
    "unchanged": "Nothing changed.",
    "attached": "The image was attached.",
    "detached": "The image was detached.",
    "profile-created": "The user profile was created.",
    "profile-deleted": "The user profile is being deleted.",
}
# Member paths in the API's messages, in the form's words (longest first when replaced, see `_words`).
LABELS = {
    "DefaultUserSettings.ExecutionRole": "execution role ARN",
    "DomainSettings.RStudioServerProDomainSettings.DomainExecutionRoleArn": "execution role ARN",
    "DomainSettingsForUpdate.RStudioServerProDomainSettingsForUpdate.DomainExecutionRoleArn": "execution role ARN",
    "RSessionAppSettings.DefaultResourceSpec.InstanceType": "instance type",
    "RStudioServerProAppSettings.AccessStatus": "RStudio access",
    "RStudioConnectUrl": "Connect URL",
    "RStudioPackageManagerUrl": "Package Manager URL",
}
# Which form field a member named in an error message belongs to (aria-invalid on it).
FIELDS = {
    "DomainName": "name",
    "ExecutionRole": "role",
    "DomainExecutionRoleArn": "role",
    "RStudioConnectUrl": "connect_url",
    "RStudioPackageManagerUrl": "package_manager_url",
    "InstanceType": "instance_type",
    "UserProfileName": "profile_name",
    "SingleSignOnUserValue": "sso_value",
    "AccessStatus": "access",
    "ImageVersion": "version",
    "ImageName": "image",
    "AppImageConfig": "config",
}
SETTINGS_FIELDS = ("role", "connect_url", "package_manager_url", "instance_type")


@dataclass
class Form:
    """A form as the page shows it: what is in its fields, and the API's error next to it."""

    typed: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    invalid: frozenset[str] = frozenset()


def _failed(err: ByoiError, typed: dict[str, str], also: tuple[str, ...] = ()) -> Form:
    """The form after a refused call: the message in the form's words, the fields it names marked invalid."""
    named = {name for member, name in FIELDS.items() if member in err.message}
    return Form(typed, _words(err), frozenset(named | set(also)))


def _words(err: ByoiError) -> str:
    err = copy.copy(err)
    for member in sorted(LABELS, key=len, reverse=True):
        err.message = err.message.replace(f"'{member}'", LABELS[member]).replace(member, LABELS[member])
    return explain(err)


def _typed(form: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: form.get(name, "").strip() for name in names}


def _notice(page: Page) -> str | None:
    return NOTICES.get(page.params.get("notice", ""))


def _domain_path(domain_id: str) -> str:
    return f"{DOMAINS}/{domain_id}"


def _profile_path(domain_id: str, name: str) -> str:
    return f"{DOMAINS}/{domain_id}/profiles/{name}"


def _arn(page: Page, domain_id: str, profile: str | None = None) -> str:
    arns = page.state["ctx"].arns
    return str(arns.user_profile(domain_id, profile) if profile else arns.domain(domain_id))


def _rsession(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict((settings or {}).get("RSessionAppSettings") or {})


def _instance_type_of(settings: Mapping[str, Any] | None) -> str:
    return str((_rsession(settings).get("DefaultResourceSpec") or {}).get("InstanceType") or "")


def _with_instance_type(settings: Mapping[str, Any] | None, instance_type: str) -> dict[str, Any]:
    """RSessionAppSettings as stored (its CustomImages kept) with DefaultResourceSpec.InstanceType set or
    removed: UpdateDomain / UpdateUserProfile replace RSessionAppSettings as a whole."""
    rsession = _rsession(settings)
    spec = {k: v for k, v in (rsession.get("DefaultResourceSpec") or {}).items() if k != "InstanceType"}
    if instance_type:
        spec["InstanceType"] = instance_type
    rsession.pop("DefaultResourceSpec", None)
    return {**rsession, **({"DefaultResourceSpec": spec} if spec else {})}


async def _instance_types(page: Page, domain_id: str | None, profile: str | None = None) -> list[dict[str, Any]]:
    """Byoi's instance type table (each with whether this host offers it); [] when there is no domain to ask."""
    if domain_id is None:
        return []
    params = {"DomainId": domain_id, **({"UserProfileName": profile} if profile else {})}
    return list((await page.ext("ListInstanceTypes", params)).get("InstanceTypes", []))


async def _choices(page: Page) -> dict[str, list[str]]:
    """What the attach form offers: image names (ListImages) and app image configs (ListAppImageConfigs)."""
    by_name = {"MaxResults": LIST_CAP, "SortBy": "IMAGE_NAME", "SortOrder": "ASCENDING"}
    listed = await page.call("ListImages", by_name)
    configs = await page.call("ListAppImageConfigs", {**by_name, "SortBy": "Name", "SortOrder": "Ascending"})
    return {
        "images": [i["ImageName"] for i in listed.get("Images", [])],
        "configs": [c["AppImageConfigName"] for c in configs.get("AppImageConfigs", [])],
    }


def _attach_form(choices: dict[str, list[str]]) -> Form:
    config = DEFAULT_CONFIG if DEFAULT_CONFIG in choices["configs"] else next(iter(choices["configs"]), "")
    return Form({"image": "", "version": "", "config": config})


# -- the list, and a new domain ------------------------------------------------------------------------------


async def domain_list(page: Page) -> Response:
    """The domains, PAGE_SIZE at a time, oldest first (ListDomains; `?next=` is its NextToken)."""
    params: dict[str, Any] = {"MaxResults": PAGE_SIZE}
    if page.params.get("next"):
        params["NextToken"] = page.params["next"]
    listed = await page.call("ListDomains", params)
    return page.render(
        "domains.html",
        domains=listed.get("Domains", []),
        next_token=listed.get("NextToken"),
        paged="next" in page.params,
        notice=_notice(page),
    )


async def _render_new(page: Page, form: Form, status: int = 200) -> Response:
    first = (await page.call("ListDomains", {"MaxResults": 1})).get("Domains", [])
    types = await _instance_types(page, first[0]["DomainId"] if first else None)
    return page.render("domain_new.html", status, form=form, instance_types=types)


async def new_domain_page(page: Page) -> Response:
    """The form to create a domain (RStudio on by default)."""
    typed = {"name": "", "rstudio": "on", "role": "", "connect_url": "", "package_manager_url": "", "instance_type": ""}
    return await _render_new(page, Form(typed))


async def create_domain(page: Page) -> Response:
    """CreateDomain from the form, then the new domain's page; the API's error next to the form."""
    form = await page.form("CreateDomain")
    typed = _typed(form, ("name", *SETTINGS_FIELDS))
    typed["rstudio"] = "on" if form.get("rstudio") else ""
    settings: dict[str, Any] = {}
    if typed["role"]:
        settings["ExecutionRole"] = typed["role"]
    if typed["instance_type"]:
        settings["RSessionAppSettings"] = {"DefaultResourceSpec": {"InstanceType": typed["instance_type"]}}
    params: dict[str, Any] = {"DomainName": typed["name"], "AuthMode": "IAM", "DefaultUserSettings": settings}
    if typed["rstudio"]:
        rstudio = {"DomainExecutionRoleArn": typed["role"]}
        rstudio |= {"RStudioConnectUrl": typed["connect_url"]} if typed["connect_url"] else {}
        rstudio |= {"RStudioPackageManagerUrl": typed["package_manager_url"]} if typed["package_manager_url"] else {}
        params["DomainSettings"] = {"RStudioServerProDomainSettings": rstudio}
    try:
        created = await page.call("CreateDomain", params)
    except ByoiError as err:
        also = ("name",) if err.code == "ResourceInUse" else ()
        return await _render_new(page, _failed(err, typed, also), status_of(err))
    return page.redirect(_domain_path(created["DomainId"]), notice="created")


# -- a domain's page -------------------------------------------------------------------------------------------


def _settings_typed(domain: Mapping[str, Any]) -> dict[str, str]:
    users = domain.get("DefaultUserSettings") or {}
    rstudio = (domain.get("DomainSettings") or {}).get("RStudioServerProDomainSettings")
    return {
        "rstudio": "on" if rstudio else "",
        "role": str(users.get("ExecutionRole") or (rstudio or {}).get("DomainExecutionRoleArn") or ""),
        "connect_url": str((rstudio or {}).get("RStudioConnectUrl") or ""),
        "package_manager_url": str((rstudio or {}).get("RStudioPackageManagerUrl") or ""),
        "instance_type": _instance_type_of(users),
    }


async def _render_domain(page: Page, domain_id: str, status: int = 200, **forms: Form) -> Response:
    """The domain's page; `forms` replaces the forms that were posted (settings, attach, detach, profile)."""
    domain = await page.call("DescribeDomain", {"DomainId": domain_id})
    params: dict[str, Any] = {"DomainIdEquals": domain_id, "MaxResults": PAGE_SIZE}
    if page.params.get("next"):
        params["NextToken"] = page.params["next"]
    profiles = await page.call("ListUserProfiles", params)
    effective = await page.ext("ListEffectiveImages", {"DomainId": domain_id})
    choices = await _choices(page)
    defaults = {
        "settings": Form(_settings_typed(domain)),
        "attach": _attach_form(choices),
        "detach": Form(),
        "profile": Form({"profile_name": "", "sso_value": ""}),
    }
    return page.render(
        "domain.html",
        status,
        domain=domain,
        rstudio=(domain.get("DomainSettings") or {}).get("RStudioServerProDomainSettings"),
        profiles=profiles.get("UserProfiles", []),
        next_token=profiles.get("NextToken"),
        paged="next" in page.params,
        effective=effective.get("EffectiveImages", []),
        instance_types=await _instance_types(page, domain_id),
        choices=choices,
        forms={**defaults, **forms},
        base=_domain_path(domain_id),
        notice=_notice(page),
    )


async def domain_page(page: Page) -> Response:
    """The domain's `Url`: the launcher for its users, the domain's page for an administrator (DescribeDomain
    first: another domain's user gets its refusal, a 403 page)."""
    domain_id = page.request.path_params["domain_id"]
    if page.is_admin:
        return await _render_domain(page, domain_id)
    await page.call("DescribeDomain", {"DomainId": domain_id})
    return page.redirect(LAUNCHER_PAGE)


async def update_domain(page: Page) -> Response:
    """UpdateDomain with the members that changed: ExecutionRole, RStudio's settings (merged by the API; a
    domain without RStudio gets it when the box is ticked), RSessionAppSettings with the instance type."""
    domain_id = page.request.path_params["domain_id"]
    form = await page.form("UpdateDomain", _arn(page, domain_id))
    domain = await page.call("DescribeDomain", {"DomainId": domain_id})
    stored = _settings_typed(domain)
    typed = _typed(form, SETTINGS_FIELDS)
    typed["rstudio"] = "on" if stored["rstudio"] or form.get("rstudio") else ""
    users: dict[str, Any] = {}
    if typed["role"] != stored["role"]:
        users["ExecutionRole"] = typed["role"]
    if typed["instance_type"] != stored["instance_type"]:
        users["RSessionAppSettings"] = _with_instance_type(domain.get("DefaultUserSettings"), typed["instance_type"])
    params: dict[str, Any] = {"DomainId": domain_id, **({"DefaultUserSettings": users} if users else {})}
    rstudio_fields = ("rstudio", "role", "connect_url", "package_manager_url")
    if typed["rstudio"] and any(typed[k] != stored[k] for k in rstudio_fields):
        rstudio = {"DomainExecutionRoleArn": typed["role"]}
        for name, member in (("connect_url", "RStudioConnectUrl"), ("package_manager_url", "RStudioPackageManagerUrl")):
            if typed[name] or stored[name]:
                rstudio[member] = typed[name]
        params["DomainSettingsForUpdate"] = {"RStudioServerProDomainSettingsForUpdate": rstudio}
    if len(params) == 1:
        return page.redirect(_domain_path(domain_id), notice="unchanged")
    try:
        await page.call("UpdateDomain", params)
    except ByoiError as err:
        return await _render_domain(page, domain_id, status_of(err), settings=_failed(err, typed))
    return page.redirect(_domain_path(domain_id), notice="updated")


async def create_profile(page: Page) -> Response:
    """CreateUserProfile (in an SSO domain with the person's SingleSignOnUserValue), then its page."""
    domain_id = page.request.path_params["domain_id"]
    form = await page.form("CreateUserProfile", _arn(page, domain_id))
    typed = _typed(form, ("profile_name", "sso_value"))
    params = {"DomainId": domain_id, "UserProfileName": typed["profile_name"]}
    if typed["sso_value"]:
        params |= {"SingleSignOnUserIdentifier": "UserName", "SingleSignOnUserValue": typed["sso_value"]}
    try:
        await page.call("CreateUserProfile", params)
    except ByoiError as err:
        also = ("profile_name",) if err.code == "ResourceInUse" else ()
        return await _render_domain(page, domain_id, status_of(err), profile=_failed(err, typed, also))
    return page.redirect(_profile_path(domain_id, typed["profile_name"]), notice="profile-created")


# -- a user profile's page -------------------------------------------------------------------------------------


def _profile_typed(profile: Mapping[str, Any]) -> dict[str, str]:
    settings = profile.get("UserSettings") or {}
    access = (settings.get("RStudioServerProAppSettings") or {}).get("AccessStatus") or "ENABLED"
    return {"access": str(access), "instance_type": _instance_type_of(settings)}


async def _render_profile(page: Page, domain_id: str, name: str, status: int = 200, **forms: Form) -> Response:
    """The profile's page; `forms` replaces the forms that were posted (settings, attach, detach)."""
    key = {"DomainId": domain_id, "UserProfileName": name}
    domain = await page.call("DescribeDomain", {"DomainId": domain_id})
    profile = await page.call("DescribeUserProfile", key)
    effective = await page.ext("ListEffectiveImages", key)
    choices = await _choices(page)
    defaults = {"settings": Form(_profile_typed(profile)), "attach": _attach_form(choices), "detach": Form()}
    return page.render(
        "profile.html",
        status,
        domain=domain,
        profile=profile,
        effective=effective.get("EffectiveImages", []),
        source=effective.get("Source", "Domain"),
        domain_type=_instance_type_of(domain.get("DefaultUserSettings")),
        instance_types=await _instance_types(page, domain_id, name),
        choices=choices,
        forms={**defaults, **forms},
        base=_profile_path(domain_id, name),
        domain_path=_domain_path(domain_id),
        notice=_notice(page),
    )


def _where(page: Page) -> tuple[str, str | None]:
    return page.request.path_params["domain_id"], page.request.path_params.get("profile")


async def profile_page(page: Page) -> Response:
    domain_id, name = _where(page)
    return await _render_profile(page, domain_id, str(name))


async def update_profile(page: Page) -> Response:
    """UpdateUserProfile with what changed: RStudioServerProAppSettings.AccessStatus (UserGroup kept), and
    RSessionAppSettings with the instance type (its CustomImages kept; empty: the domain's default)."""
    domain_id, name = _where(page)
    form = await page.form("UpdateUserProfile", _arn(page, domain_id, name))
    key = {"DomainId": domain_id, "UserProfileName": str(name)}
    profile = await page.call("DescribeUserProfile", key)
    stored, typed = _profile_typed(profile), _typed(form, ("access", "instance_type"))
    settings = profile.get("UserSettings") or {}
    update: dict[str, Any] = {}
    if typed["access"] != stored["access"]:
        update["RStudioServerProAppSettings"] = {
            **(settings.get("RStudioServerProAppSettings") or {}),
            "AccessStatus": typed["access"],
        }
    if typed["instance_type"] != stored["instance_type"]:
        update["RSessionAppSettings"] = _with_instance_type(settings, typed["instance_type"])
    if not update:
        return page.redirect(_profile_path(domain_id, str(name)), notice="unchanged")
    try:
        await page.call("UpdateUserProfile", {**key, "UserSettings": update})
    except ByoiError as err:
        return await _render_profile(page, domain_id, str(name), status_of(err), settings=_failed(err, typed))
    return page.redirect(_profile_path(domain_id, str(name)), notice="updated")


async def delete_profile_page(page: Page, form: Form | None = None, status: int = 200) -> Response:
    """Asks before DeleteUserProfile (DescribeUserProfile: what is deleted)."""
    domain_id, name = _where(page)
    profile = await page.call("DescribeUserProfile", {"DomainId": domain_id, "UserProfileName": name})
    return page.render(
        "profile_delete.html",
        status,
        profile=profile,
        form=form or Form(),
        base=_profile_path(domain_id, str(name)),
        domain_path=_domain_path(domain_id),
    )


async def delete_profile(page: Page) -> Response:
    """DeleteUserProfile, then the domain's page; a refusal (live sessions) on the confirmation page."""
    domain_id, name = _where(page)
    await page.form("DeleteUserProfile", _arn(page, domain_id, name))
    try:
        await page.call("DeleteUserProfile", {"DomainId": domain_id, "UserProfileName": name})
    except ByoiError as err:
        return await delete_profile_page(page, Form(error=_words(err)), status_of(err))
    return page.redirect(_domain_path(domain_id), notice="profile-deleted")


# -- attaching and detaching images (a domain's list, or a profile's own) --------------------------------------


def _entry(typed: dict[str, str], config: bool = True) -> dict[str, Any]:
    """The CustomImages entry a form names (no version, or "latest": the newest CREATED one at launch); a
    version that is not a number is refused here, in the API's manner."""
    entry: dict[str, Any] = {"ImageName": typed["image"]}
    if config:
        entry["AppImageConfigName"] = typed["config"]
    version = typed["version"]
    if version and version.lower() != "latest":
        if not version.isdigit():
            raise ValidationException(f"The ImageVersion '{version}' is not a number: give one, or leave it empty")
        entry["ImageVersionNumber"] = int(version)
    return entry


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return bool(a["ImageName"] == b["ImageName"] and a.get("ImageVersionNumber") == b.get("ImageVersionNumber"))


async def _change_attached(page: Page, key: dict[str, Any], change: Any) -> None:
    """Read the list and its revision, change it, write it back if nobody wrote in between (else again)."""
    for attempt in range(CAS_TRIES):
        current = await page.ext("DescribeAttachedImages", key)
        images = change(list(current.get("CustomImages") or []))
        try:
            await page.ext(
                "UpdateAttachedImages", {**key, "CustomImages": images, "ExpectedRevision": current["Revision"]}
            )
            return
        except ConcurrentModification:
            if attempt == CAS_TRIES - 1:
                raise


async def _attachments(page: Page, attach: bool) -> Response:
    domain_id, name = _where(page)
    key = {"DomainId": domain_id, **({"UserProfileName": name} if name else {})}
    form = await page.form("UpdateAttachedImages", _arn(page, domain_id, name))
    typed = _typed(form, ("image", "version", "config"))

    def attached(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*images, _entry(typed)]

    def detached(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
        gone = _entry(typed, config=False)
        kept = [e for e in images if not _same(e, gone)]
        if len(kept) == len(images):
            version = f" version {typed['version']}" if typed["version"] else " (latest)"
            raise ValidationException(f"{typed['image']}{version} is not attached here (any more)")
        return kept

    try:
        await _change_attached(page, key, attached if attach else detached)
    except ByoiError as err:
        failed = {"attach" if attach else "detach": _failed(err, typed)}
        if name:
            return await _render_profile(page, domain_id, name, status_of(err), **failed)
        return await _render_domain(page, domain_id, status_of(err), **failed)
    path = _profile_path(domain_id, name) if name else _domain_path(domain_id)
    return page.redirect(path, notice="attached" if attach else "detached")


async def attach_image(page: Page) -> Response:
    return await _attachments(page, attach=True)


async def detach_image(page: Page) -> Response:
    return await _attachments(page, attach=False)


DOMAIN = DOMAINS + "/{domain_id}"
PROFILE = DOMAIN + "/profiles/{profile}"
ROUTES: list[Route] = [
    (DOMAINS, "GET", admin_route(domain_list)),
    (DOMAINS + "/new", "GET", admin_route(new_domain_page)),
    (DOMAINS + "/new", "POST", admin_route(create_domain)),
    (DOMAIN, "GET", page_route(domain_page)),
    (DOMAIN + "/settings", "POST", admin_route(update_domain)),
    (DOMAIN + "/profiles", "POST", admin_route(create_profile)),
    (DOMAIN + "/images/attach", "POST", admin_route(attach_image)),
    (DOMAIN + "/images/detach", "POST", admin_route(detach_image)),
    (PROFILE, "GET", admin_route(profile_page)),
    (PROFILE + "/settings", "POST", admin_route(update_profile)),
    (PROFILE + "/images/attach", "POST", admin_route(attach_image)),
    (PROFILE + "/images/detach", "POST", admin_route(detach_image)),
    (PROFILE + "/delete", "GET", admin_route(delete_profile_page)),
    (PROFILE + "/delete", "POST", admin_route(delete_profile)),
]
