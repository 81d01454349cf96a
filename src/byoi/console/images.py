"""Console area: images, what SageMaker's control panel shows under "Images". Every page reads and changes
through the API as the signed-in principal, so a user sees only the images attached to them and no control
they cannot use; an administrator manages them.

- `GET /console/images`: the list (ListImages, SCOPED: a user's lists only what is attached to them), newest
  first, 25 a page (NextToken in `?token=`), searched by `?q=` (NameContains); each row's latest version from
  one ListImageVersions (MaxResults 1, SortBy VERSION, Descending), called concurrently. With htmx the search
  box swaps the results as you type (only `images_table.html` is sent back).
- `GET /console/images/new` (administrators): the create form, the role ARN prefilled from the server's
  account (Byoi.GetServerInfo); `POST /console/images`: CreateImage, then 303 to the image's page.
- `GET /console/images/<name>`: DescribeImage; its versions newest first (ListImageVersions, 20 a page in
  `?versions=`), each with DescribeImageVersion (base image, pinned digest) and ListAliases; its tags
  (ListTags, administrators only, as the API allows). Administrators get the alias and tag forms, which POST to
  `.../aliases`, `.../aliases/delete` (UpdateImageVersion) and `.../tags`, `.../tags/delete` (AddTags,
  DeleteTags); an error re-renders this page with the message next to the form and what was typed kept.
- `GET|POST /console/images/<name>/edit` (administrators): display name and description (UpdateImage; an
  emptied field is removed with DeleteProperties).
- `GET /console/images/<name>/delete` (administrators): what still refers to the image (domains and user
  profiles, read with ListDomains + DescribeDomain and ListUserProfiles + DescribeUserProfile) and its
  versions; `POST`: DeleteImage, then 303 to the list; a refusal (ResourceInUse) is shown on this page.

The version pages (`/console/images/<name>/versions/...`) live in byoi.console.versions.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from starlette.responses import Response

from byoi.console.pages import PREFIX, Page, Refused, Route, admin_route, explain, page_route, status_of
from byoi.errors import ByoiError

T = TypeVar("T")
R = TypeVar("R")
LIST = PREFIX + "/images"
PAGE_SIZE = 25
VERSIONS_PAGE = 20
MAX_WALKED_PAGES = 1000  # ListDomains / ListUserProfiles pages read for the delete page (100 each)
CONCURRENT_CALLS = 8
RESULTS_ID = "image-results"  # the element the search box swaps (HX-Target)
NAME = re.compile(r"[a-zA-Z0-9]([-.]?[a-zA-Z0-9]){0,62}")
MEMBER_AT = re.compile(r"at '([A-Za-z]+)")
# The create and edit forms: form field -> API member.
CREATE_FIELDS = {
    "name": "ImageName",
    "display_name": "DisplayName",
    "description": "Description",
    "role_arn": "RoleArn",
}
EDIT_FIELDS = {"display_name": "DisplayName", "description": "Description"}
LABELS = {"NameContains": "search", "Key": "tag key", "Value": "tag value", "TagKeys": "tag key", "Alias": "alias"}
NOTICES = {
    "created": "The image was created. Add a version to it to make it launchable.",
    "updated": "The image was updated.",
    "alias-added": "The alias was added.",
    "alias-removed": "The alias was removed.",
    "tag-added": "The tag was saved.",
    "tag-removed": "The tag was removed.",
}
# Where domain and user-profile settings name images (as byoi's own referrer check reads them).
DOMAIN_ROOTS = ("DefaultUserSettings", "DomainSettings", "DefaultSpaceSettings")
PROFILE_ROOTS = ("UserSettings",)


def image_path(name: str) -> str:
    return f"{LIST}/{name}"


def notice(page: Page) -> str | None:
    """The words for `?notice=<code>` (only known codes: nothing from the URL is shown as it came)."""
    return NOTICES.get(page.params.get("notice", ""))


def invalid_members(err: ByoiError) -> set[str]:
    """The request members an API error names (`... at 'ImageName' failed ...`), to mark those fields."""
    if err.code == "ResourceInUse":
        return {"ImageName"}
    return set(MEMBER_AT.findall(err.message)) if err.code == "ValidationException" else set()


def refused_to_user(err: ByoiError) -> bool:
    """An AccessDenied is shown as the 403 page (by `page_route`), not as a form error."""
    return err.code == "AccessDeniedException"


async def each(items: Sequence[T], call: Callable[[T], Awaitable[R]]) -> list[R]:
    """`call` on every item concurrently, at most CONCURRENT_CALLS at a time; the answers in order."""
    gate = asyncio.Semaphore(CONCURRENT_CALLS)

    async def run(item: T) -> R:
        async with gate:
            return await call(item)

    return list(await asyncio.gather(*(run(item) for item in items)))


# -- the list ---------------------------------------------------------------------------------------------


async def latest_version(page: Page, name: str) -> dict[str, Any] | None:
    """The image's highest-numbered version (ListImageVersions, one row), or None when it has none."""
    params = {"ImageName": name, "MaxResults": 1, "SortBy": "VERSION", "SortOrder": "DESCENDING"}
    try:
        found = await page.call("ListImageVersions", params)
    except ByoiError:  # deleted since the list was read
        return None
    versions = found.get("ImageVersions") or []
    return versions[0] if versions else None


async def list_images(page: Page) -> Response:
    """The images this principal may see, searched and paged; the results only when htmx asks for them."""
    query = page.params.get("q", "").strip()
    token = page.params.get("token", "")
    params: dict[str, Any] = {"MaxResults": PAGE_SIZE, "SortBy": "CREATION_TIME", "SortOrder": "DESCENDING"}
    if query:
        params["NameContains"] = query
    if token:
        params["NextToken"] = token
    rows: list[dict[str, Any]] = []
    next_token, error, status = None, None, 200
    try:
        listed = await page.call("ListImages", params)
    except ByoiError as err:
        if refused_to_user(err):
            raise
        error, status = explain(err, LABELS), status_of(err)
    else:
        images = listed.get("Images") or []
        latest = await each([i["ImageName"] for i in images], lambda name: latest_version(page, name))
        rows = [{**image, "Latest": version} for image, version in zip(images, latest, strict=True)]
        next_token = listed.get("NextToken")
    headers = page.request.headers
    fragment = headers.get("HX-Target") == RESULTS_ID and headers.get("HX-History-Restore-Request") != "true"
    return page.render(
        "images_table.html" if fragment else "images_list.html",
        200 if fragment else status,  # htmx swaps only a 2xx answer in: the fragment carries the error itself
        rows=rows,
        query=query,
        token=token,
        next_token=next_token,
        error=error,
        notice=NOTICES.get(page.params.get("notice", "")) or deleted_notice(page),
        results_id=RESULTS_ID,
    )


def deleted_notice(page: Page) -> str | None:
    name = page.params.get("deleted", "")
    if page.params.get("notice") != "deleted" or not NAME.fullmatch(name):
        return None
    return f"Image {name} is being deleted: it leaves this list once byoi has removed its versions."


# -- create -----------------------------------------------------------------------------------------------


async def new_image(page: Page) -> Response:
    """The create form; the role ARN is prefilled as the CLI's default, in this server's account."""
    info = await page.ext("GetServerInfo")
    form = {field: "" for field in CREATE_FIELDS} | {"role_arn": f"arn:aws:iam::{info['AccountId']}:role/byoi"}
    return page.render("images_new.html", form=form, error=None, invalid=set())


async def create_image(page: Page) -> Response:
    """CreateImage from the form; its error next to the form with what was typed, or 303 to the new image."""
    fields = await page.form("CreateImage")
    form = {field: fields.get(field, "").strip() for field in CREATE_FIELDS}
    params = {member: form[field] for field, member in CREATE_FIELDS.items() if form[field]}
    try:
        await page.call("CreateImage", params)
    except ByoiError as err:
        if refused_to_user(err):
            raise
        invalid = {f for f, m in CREATE_FIELDS.items() if m in invalid_members(err)}
        return page.render("images_new.html", status_of(err), form=form, error=explain(err), invalid=invalid)
    return page.redirect(image_path(form["name"]), notice="created")


# -- one image --------------------------------------------------------------------------------------------


def name_of(page: Page) -> str:
    """The image name in the path (the API validates it)."""
    return str(page.request.path_params["name"])


async def version_row(page: Page, name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """A version as the image page shows it: DescribeImageVersion (base image, pinned image) and its aliases."""
    key = {"ImageName": name, "Version": summary["Version"]}
    try:
        described, aliases = await asyncio.gather(page.call("DescribeImageVersion", key), all_aliases(page, key))
    except ByoiError:  # deleted meanwhile: what the list said
        return {**summary, "Aliases": [], "Digest": ""}
    container = described.get("ContainerImage") or ""
    return {**summary, **described, "Aliases": aliases, "Digest": container.partition("@")[2]}


async def all_aliases(page: Page, key: dict[str, Any]) -> list[str]:
    return [alias async for alias in pages_of(page, "ListAliases", key, "SageMakerImageVersionAliases")]


async def all_tags(page: Page, arn: str) -> list[dict[str, str]]:
    return [tag async for tag in pages_of(page, "ListTags", {"ResourceArn": arn}, "Tags", 50)]


async def pages_of(
    page: Page, operation: str, params: dict[str, Any], member: str, size: int = 100
) -> AsyncIterator[Any]:
    """The items of every page of a NextToken-paged List (at most MAX_WALKED_PAGES pages)."""
    token = None
    for _ in range(MAX_WALKED_PAGES):
        answer = await page.call(operation, {**params, "MaxResults": size, **({"NextToken": token} if token else {})})
        for item in answer.get(member) or []:
            yield item
        token = answer.get("NextToken")
        if not token:
            return


async def image_page(page: Page, name: str, status: int = 200, **forms: Any) -> Response:
    """The image page; `forms` carries a failed alias or tag form (its error and what was typed)."""
    image = await page.call("DescribeImage", {"ImageName": name})
    params: dict[str, Any] = {"ImageName": name, "SortBy": "VERSION", "SortOrder": "DESCENDING"}
    token = page.params.get("versions", "") if page.request.method == "GET" else ""
    if token:
        params["NextToken"] = token
    listed = await page.call("ListImageVersions", {**params, "MaxResults": VERSIONS_PAGE})
    summaries = listed.get("ImageVersions") or []
    versions = await each(summaries, lambda summary: version_row(page, name, summary))
    tags = await all_tags(page, image["ImageArn"]) if page.is_admin else []
    return page.render(
        "image_detail.html",
        status,
        image=image,
        versions=versions,
        versions_token=token,
        next_versions=listed.get("NextToken"),
        tags=tags,
        notice=notice(page),
        alias_form=forms.get("alias_form"),
        tag_form=forms.get("tag_form") or {"key": "", "value": "", "error": None, "invalid": set()},
    )


async def show_image(page: Page) -> Response:
    """GET /console/images/<name>: the image page as this principal may see it."""
    return await image_page(page, name_of(page))


def version_of(fields: dict[str, str]) -> int:
    version = fields.get("version", "")
    if not version.isdigit() or len(version) > 9:
        raise Refused(400, "Request refused", "The form names no version: reload the image's page.")
    return int(version)


async def add_alias(page: Page) -> Response:
    """UpdateImageVersion AliasesToAdd [alias]; an error next to that version's alias form."""
    name = name_of(page)
    fields = await page.form("UpdateImageVersion")
    version, alias = version_of(fields), fields.get("alias", "").strip()
    try:
        await page.call("UpdateImageVersion", {"ImageName": name, "Version": version, "AliasesToAdd": [alias]})
    except ByoiError as err:
        if refused_to_user(err):
            raise
        form = {"version": version, "value": alias, "error": explain(err, {"AliasesToAdd": "alias"})}
        return await image_page(page, name, status_of(err), alias_form=form)
    return page.redirect(image_path(name), notice="alias-added")


async def remove_alias(page: Page) -> Response:
    """UpdateImageVersion AliasesToDelete [alias]."""
    name = name_of(page)
    fields = await page.form("UpdateImageVersion")
    version, alias = version_of(fields), fields.get("alias", "")
    try:
        await page.call("UpdateImageVersion", {"ImageName": name, "Version": version, "AliasesToDelete": [alias]})
    except ByoiError as err:
        if refused_to_user(err):
            raise
        form = {"version": version, "value": "", "error": explain(err, {"AliasesToDelete": "alias"})}
        return await image_page(page, name, status_of(err), alias_form=form)
    return page.redirect(image_path(name), notice="alias-removed")


async def add_tag(page: Page) -> Response:
    """AddTags [{Key, Value}] on the image's ARN (an existing key gets the new value)."""
    name = name_of(page)
    fields = await page.form("AddTags")
    key, value = fields.get("key", "").strip(), fields.get("value", "").strip()
    arn = (await page.call("DescribeImage", {"ImageName": name}))["ImageArn"]
    try:
        await page.call("AddTags", {"ResourceArn": arn, "Tags": [{"Key": key, "Value": value}]})
    except ByoiError as err:
        if refused_to_user(err):
            raise
        message = err.message
        invalid = {"key"} if "Key" in message or not key else ({"value"} if "Value" in message else set())
        form = {"key": key, "value": value, "error": explain(err, LABELS), "invalid": invalid}
        return await image_page(page, name, status_of(err), tag_form=form)
    return page.redirect(image_path(name), notice="tag-added")


async def remove_tag(page: Page) -> Response:
    """DeleteTags [key] on the image's ARN."""
    name = name_of(page)
    fields = await page.form("DeleteTags")
    arn = (await page.call("DescribeImage", {"ImageName": name}))["ImageArn"]
    await page.call("DeleteTags", {"ResourceArn": arn, "TagKeys": [fields.get("key", "")]})
    return page.redirect(image_path(name), notice="tag-removed")


# -- edit -------------------------------------------------------------------------------------------------


async def edit_image(page: Page) -> Response:
    """The edit form, filled from DescribeImage."""
    image = await page.call("DescribeImage", {"ImageName": name_of(page)})
    form = {field: image.get(member, "") for field, member in EDIT_FIELDS.items()}
    return page.render("image_edit.html", image=image, form=form, error=None, invalid=set())


async def update_image(page: Page) -> Response:
    """UpdateImage: filled fields are set, emptied ones removed (DeleteProperties)."""
    name = name_of(page)
    fields = await page.form("UpdateImage")
    form = {field: fields.get(field, "").strip() for field in EDIT_FIELDS}
    params: dict[str, Any] = {"ImageName": name}
    params |= {member: form[field] for field, member in EDIT_FIELDS.items() if form[field]}
    emptied = [member for field, member in EDIT_FIELDS.items() if not form[field]]
    if emptied:
        params["DeleteProperties"] = emptied
    try:
        await page.call("UpdateImage", params)
    except ByoiError as err:
        if refused_to_user(err) or err.code == "ResourceNotFound":
            raise
        invalid = {f for f, m in EDIT_FIELDS.items() if m in invalid_members(err) - {"ImageName"}}
        context = {"image": {"ImageName": name}, "form": form, "error": explain(err), "invalid": invalid}
        return page.render("image_edit.html", status_of(err), **context)
    return page.redirect(image_path(name), notice="updated")


# -- delete -----------------------------------------------------------------------------------------------


def mentions(settings: Any, path: str, image_arn: str) -> Iterator[str]:
    """Where a settings document names the image: each `CustomImages` entry and `DefaultResourceSpec` ARN,
    as `<dotted path>` (with the version when an entry pins one)."""
    if not isinstance(settings, dict):
        return
    name = image_arn.rsplit("/", 1)[1].lower()
    version_arn = image_arn.replace(":image/", ":image-version/", 1).lower() + "/"
    for key, value in settings.items():
        sub = f"{path}.{key}"
        if key == "CustomImages" and isinstance(value, list):
            for entry in value:
                if isinstance(entry, dict) and str(entry.get("ImageName", "")).lower() == name:
                    number = entry.get("ImageVersionNumber")
                    yield sub + (f" (version {number})" if number is not None else "")
        elif key == "DefaultResourceSpec" and isinstance(value, dict):
            if str(value.get("SageMakerImageArn", "")).lower() == image_arn.lower():
                yield sub + ".SageMakerImageArn"
            if str(value.get("SageMakerImageVersionArn", "")).lower().startswith(version_arn):
                yield sub + ".SageMakerImageVersionArn"
        elif isinstance(value, dict):
            yield from mentions(value, sub, image_arn)


async def referrers(page: Page, image_arn: str) -> list[dict[str, Any]]:
    """The domains and user profiles whose settings name the image, read through the API: every domain
    (ListDomains + DescribeDomain) and every user profile (ListUserProfiles + DescribeUserProfile)."""
    domains = [d async for d in pages_of(page, "ListDomains", {}, "Domains")]
    profiles = [p async for p in pages_of(page, "ListUserProfiles", {}, "UserProfiles")]
    names = {d["DomainId"]: d.get("DomainName", "") for d in domains}

    async def of_domain(domain: dict[str, Any]) -> dict[str, Any]:
        described = await described_or_none(page, "DescribeDomain", {"DomainId": domain["DomainId"]})
        where = [m for root in DOMAIN_ROOTS for m in mentions((described or {}).get(root), root, image_arn)]
        return {"DomainId": domain["DomainId"], "DomainName": names[domain["DomainId"]], "Profile": None, "At": where}

    async def of_profile(profile: dict[str, Any]) -> dict[str, Any]:
        key = {"DomainId": profile["DomainId"], "UserProfileName": profile["UserProfileName"]}
        described = await described_or_none(page, "DescribeUserProfile", key)
        where = [m for root in PROFILE_ROOTS for m in mentions((described or {}).get(root), root, image_arn)]
        domain_name = names.get(profile["DomainId"], "")
        return {**key, "DomainName": domain_name, "Profile": key["UserProfileName"], "At": where}

    found = await each(domains, of_domain) + await each(profiles, of_profile)
    return [one for one in found if one["At"]]


async def described_or_none(page: Page, operation: str, params: dict[str, Any]) -> dict[str, Any] | None:
    try:
        described: dict[str, Any] = await page.call(operation, params)
    except ByoiError as err:
        if err.code == "ResourceNotFound":  # deleted since it was listed
            return None
        raise
    return described


async def delete_page(page: Page, name: str, status: int = 200, error: str | None = None) -> Response:
    image = await page.call("DescribeImage", {"ImageName": name})
    listed = await page.call(
        "ListImageVersions", {"ImageName": name, "MaxResults": 100, "SortBy": "VERSION", "SortOrder": "DESCENDING"}
    )
    return page.render(
        "image_delete.html",
        status,
        image=image,
        versions=listed.get("ImageVersions") or [],
        more_versions=bool(listed.get("NextToken")),
        referrers=await referrers(page, image["ImageArn"]),
        error=error,
    )


async def confirm_delete(page: Page) -> Response:
    """What deleting the image would touch, and the button that does it."""
    return await delete_page(page, name_of(page))


async def delete_image(page: Page) -> Response:
    """DeleteImage; a refusal (still attached, already deleting) is shown on the confirmation page."""
    name = name_of(page)
    await page.form("DeleteImage")
    try:
        await page.call("DeleteImage", {"ImageName": name})
    except ByoiError as err:
        if refused_to_user(err) or err.code == "ResourceNotFound":
            raise
        return await delete_page(page, name, status_of(err), explain(err))
    return page.redirect(LIST, notice="deleted", deleted=name)


ROUTES: list[Route] = [
    (LIST, "GET", page_route(list_images)),
    (LIST, "POST", page_route(create_image)),
    (LIST + "/new", "GET", admin_route(new_image)),  # before /{name}: an image called "new" has no page here
    (LIST + "/{name}", "GET", page_route(show_image)),
    (LIST + "/{name}/edit", "GET", admin_route(edit_image)),
    (LIST + "/{name}/edit", "POST", page_route(update_image)),
    (LIST + "/{name}/delete", "GET", admin_route(confirm_delete)),
    (LIST + "/{name}/delete", "POST", page_route(delete_image)),
    (LIST + "/{name}/aliases", "POST", page_route(add_alias)),
    (LIST + "/{name}/aliases/delete", "POST", page_route(remove_alias)),
    (LIST + "/{name}/tags", "POST", page_route(add_tag)),
    (LIST + "/{name}/tags/delete", "POST", page_route(remove_tag)),
]
