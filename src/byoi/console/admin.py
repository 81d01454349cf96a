"""Console area: administration. Who may sign in (principals), the keys that sign API requests (access keys), and
the audit log. Every page is `admin_route` (a user gets a 403 page before anything is read); every read and every
change is one `Byoi.*` operation through `page.ext`, and a refusal is shown in the API's words.

- `GET /console/admin/principals`: ListPrincipals (by name, paged with `?next=`), with ListDomains for the
  domains' names: name, role, the domain and user profile of a user, whether a password is set, created.
- `GET|POST /console/admin/principals/new`: the form (domains from ListDomains; `…/new/profiles?domain_id=` is the
  htmx fragment that suggests the domain's profiles, ListUserProfiles), then CreatePrincipal and 303 to its page.
- `GET /console/admin/principals/<name>`: DescribePrincipal (and DescribeDomain for the domain's name): its facts,
  its access keys, and forms to create a key, set or remove its password (SetPrincipalPassword), sign it out
  everywhere (RevokePrincipalSessions) and, after a confirmation page (`…/delete`), delete it (DeletePrincipal).
- `GET /console/admin/access-keys`: ListAccessKeys, of all principals or of `?principal=`: key id, principal,
  status, created; activate or deactivate (UpdateAccessKey), delete after a confirmation page (DeleteAccessKey).
- `POST /console/admin/access-keys`: CreateAccessKey, answered with the page that shows the secret this once (no
  redirect: the secret is never in a URL, and byoi cannot show it again). The form carries the time it was shown:
  sent again (a reload re-posts it), it finds the key it already made and makes no other, so no secret is shown.
- `GET /console/admin/audit`: ListAuditEvents, newest first, paged, filtered by the API's own members (principal,
  operation, from, to) from a GET form; with htmx the form swaps only the results.
"""

from __future__ import annotations

import copy
import time
from typing import Any
from urllib.parse import quote, urlencode

from starlette.responses import Response

from byoi.console.pages import PREFIX, Page, Route, admin_route, explain, status_of
from byoi.errors import ByoiError, ResourceInUse, ResourceNotFound
from byoi.services.access import resource_arn

ADMIN = PREFIX + "/admin"
PRINCIPALS = ADMIN + "/principals"
KEYS = ADMIN + "/access-keys"
AUDIT = ADMIN + "/audit"
PAGE_SIZE = 50
MAX_LIST_PAGES = 20  # domains and profiles offered in a form: at most this many pages of 100
# Member names in the API's messages, in the forms' words: these anywhere (no name a person types looks like them)…
MEMBERS = {
    "PrincipalName": "principal",
    "DomainId": "domain",
    "StartTime": "from",
    "EndTime": "to",
    "NextToken": "page token",
    "AccessKeyId": "access key",
}
# …and these only where the message quotes them as a member ('Name'), so a principal named "Operator" stays so.
QUOTED = {"Name": "name", "Role": "role", "Password": "password", "Operation": "operation"}
NOTICES = {
    "created": "Principal created.",
    "deleted": "Principal deleted, with its access keys; its browser sessions stopped working.",
    "password-set": "Password set. Its other browser sessions were signed out.",
    "password-removed": "Password removed: it can no longer sign in with a browser.",
    "revoked": "Signed out everywhere: every browser session of this principal stopped working.",
    "key-activated": "Access key activated.",
    "key-deactivated": "Access key deactivated: it is refused from the next request on.",
    "key-deleted": "Access key deleted: it is refused from the next request on.",
}
AUDIT_FILTERS = (("principal", "PrincipalName"), ("operation", "Operation"), ("from", "StartTime"), ("to", "EndTime"))
CREATE_FIELDS = {"name": "Name", "role": "Role", "domain_id": "DomainId", "profile": "UserProfileName"}
# The members the API leaves out when they are empty, as the templates read them.
PRINCIPAL_DEFAULTS = {"DomainId": None, "UserProfileName": None, "HasPassword": False, "CreationTime": None}
EVENT_DEFAULTS = {"PrincipalName": "", "AccessKeyId": None, "Door": "", "SourceAddress": None, "ResourceArn": None}


def _principal(found: dict[str, Any]) -> dict[str, Any]:
    return {**PRINCIPAL_DEFAULTS, **found}


def _drop(params: dict[str, Any]) -> dict[str, Any]:
    """The request without its empty members (an empty form field is a member left out)."""
    return {k: v for k, v in params.items() if v not in ("", None)}


def _say(err: ByoiError) -> str:
    """The API's refusal in the form's words (`explain`, with this area's member names)."""
    worded = copy.copy(err)
    for member, label in QUOTED.items():
        worded.message = worded.message.replace(f"'{member}'", label)
    return explain(worded, MEMBERS)


def _named(err: ByoiError, fields: dict[str, str]) -> set[str]:
    """The form fields whose API member the error's message names."""
    return {field for field, member in fields.items() if f"'{member}'" in err.message}


def _arn(page: Page, params: dict[str, Any]) -> str | None:
    """The resource a form acts on, for the audit record of a refused CSRF token."""
    return resource_arn(page.state["ctx"], params)


def _notice(page: Page) -> str | None:
    return NOTICES.get(page.params.get("notice", ""))


def _principal_path(name: str) -> str:
    return f"{PRINCIPALS}/{quote(name, safe='')}"


def _stamp(epoch: float | None, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    return time.strftime(fmt, time.gmtime(epoch)) if epoch else ""


async def _all(page: Page, operation: str, member: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every item of a NextToken-paged SageMaker list (at most MAX_LIST_PAGES pages)."""
    items: list[dict[str, Any]] = []
    token = None
    for _ in range(MAX_LIST_PAGES):
        answer = await page.call(operation, _drop({**params, "MaxResults": 100, "NextToken": token}))
        items += answer.get(member, [])
        token = answer.get("NextToken")
        if not token:
            break
    return items


async def _domain_names(page: Page) -> dict[str, str]:
    return {d["DomainId"]: d.get("DomainName", "") for d in await _all(page, "ListDomains", "Domains", {})}


# Principals


async def principals(page: Page) -> Response:
    """`GET /console/admin/principals`: one page of ListPrincipals, with the domains' names (ListDomains)."""
    token = page.params.get("next", "")
    listed = await page.ext("ListPrincipals", _drop({"MaxResults": PAGE_SIZE, "NextToken": token}))
    next_token = listed.get("NextToken")
    return page.render(
        "admin_principals.html",
        principals=[_principal(p) for p in listed.get("Principals", [])],
        domains=await _domain_names(page),
        first_href=PRINCIPALS if token else None,
        next_token=next_token,
        next_href=f"{PRINCIPALS}?{urlencode({'next': next_token})}" if next_token else "",
        notice=_notice(page),
    )


async def _new_form(
    page: Page, values: dict[str, str], error: str | None = None, invalid: set[str] | None = None, status: int = 200
) -> Response:
    domain_id = values.get("domain_id", "")
    return page.render(
        "admin_principal_new.html",
        status,
        values=values,
        domains=await _domain_names(page),
        profiles=await _profiles(page, domain_id) if domain_id.startswith("d-") else [],
        error=error,
        invalid=invalid or set(),
    )


async def _profiles(page: Page, domain_id: str) -> list[str]:
    found = await _all(page, "ListUserProfiles", "UserProfiles", {"DomainIdEquals": domain_id})
    return sorted(p["UserProfileName"] for p in found)


async def new_principal(page: Page) -> Response:
    """`GET /console/admin/principals/new`: the form (name, role, domain from ListDomains, profile, password)."""
    return await _new_form(page, {field: "" for field in CREATE_FIELDS} | {"role": "user"})


async def profile_options(page: Page) -> Response:
    """`GET /console/admin/principals/new/profiles?domain_id=`: the `<datalist>` of the domain's user profiles
    (ListUserProfiles), swapped into the form by htmx when a domain is chosen."""
    domain_id = page.params.get("domain_id", "")
    return page.render("admin_profile_options.html", profiles=await _profiles(page, domain_id) if domain_id else [])


async def create_principal(page: Page) -> Response:
    """`POST /console/admin/principals/new`: CreatePrincipal with what the form names (an empty field is left
    out, so the API says what is missing), then 303 to the principal's page; a refusal shows next to the form."""
    fields = await page.form("CreatePrincipal")
    values = {field: fields.get(field, "").strip() for field in CREATE_FIELDS}
    params = _drop({member: values[field] for field, member in CREATE_FIELDS.items()})
    if fields.get("password"):
        params["Password"] = fields["password"]
    try:
        await page.ext("CreatePrincipal", params)
    except ByoiError as err:
        invalid = _named(err, {**CREATE_FIELDS, "password": "Password"})
        if isinstance(err, ResourceInUse):  # the name is taken, or the profile already has a principal
            invalid.add("profile" if "already has a principal" in err.message else "name")
        elif isinstance(err, ResourceNotFound):
            invalid.add("profile" if "User profile" in err.message else "domain_id")
        elif "needs DomainId" in err.message:
            invalid |= {f for f in ("domain_id", "profile") if not values[f]}
        elif "bound to no user profile" in err.message:
            invalid |= {f for f in ("domain_id", "profile") if values[f]}
        return await _new_form(page, values, _say(err), invalid, status_of(err))
    return page.redirect(_principal_path(values["name"]), notice="created")


async def _principal_page(page: Page, name: str, status: int = 200, **errors: str) -> Response:
    described = await page.ext("DescribePrincipal", {"Name": name})
    me = _principal(described["Principal"])
    domain_name = None
    if me.get("DomainId"):
        try:
            domain_name = (await page.call("DescribeDomain", {"DomainId": me["DomainId"]})).get("DomainName")
        except ResourceNotFound:  # the domain was deleted under it
            domain_name = None
    return page.render(
        "admin_principal.html",
        status,
        p=me,
        keys=described.get("AccessKeys", []),
        domain_name=domain_name,
        is_me=me["Name"] == page.principal.name,
        form_time=f"{time.time():.6f}",
        notice=_notice(page),
        errors=errors,
    )


async def principal(page: Page) -> Response:
    """`GET /console/admin/principals/<name>`: DescribePrincipal (its facts and keys), DescribeDomain."""
    return await _principal_page(page, page.request.path_params["name"])


async def set_password(page: Page) -> Response:
    """`POST /console/admin/principals/<name>/password`: SetPrincipalPassword with the typed password, or
    without one (the Remove button), then 303 back; a refusal (too short) shows next to the form."""
    name = page.request.path_params["name"]
    fields = await page.form("SetPrincipalPassword", _arn(page, {"Name": name}))
    remove = fields.get("action") == "remove"
    params: dict[str, Any] = {"Name": name} if remove else {"Name": name, "Password": fields.get("password", "")}
    try:
        await page.ext("SetPrincipalPassword", params)
    except ByoiError as err:
        return await _principal_page(page, name, status_of(err), password=_say(err))
    return page.redirect(_principal_path(name), notice="password-removed" if remove else "password-set")


async def revoke_sessions(page: Page) -> Response:
    """`POST /console/admin/principals/<name>/sessions`: RevokePrincipalSessions, then 303 back."""
    name = page.request.path_params["name"]
    await page.form("RevokePrincipalSessions", _arn(page, {"Name": name}))
    try:
        await page.ext("RevokePrincipalSessions", {"Name": name})
    except ByoiError as err:
        return await _principal_page(page, name, status_of(err), sessions=_say(err))
    return page.redirect(_principal_path(name), notice="revoked")


async def confirm_delete_principal(page: Page) -> Response:
    """`GET /console/admin/principals/<name>/delete`: what deleting it removes (DescribePrincipal), and the button."""
    return await _delete_principal_page(page, page.request.path_params["name"])


async def _delete_principal_page(page: Page, name: str, error: str | None = None, status: int = 200) -> Response:
    described = await page.ext("DescribePrincipal", {"Name": name})
    return page.render(
        "admin_principal_delete.html",
        status,
        p=_principal(described["Principal"]),
        keys=described.get("AccessKeys", []),
        is_me=name == page.principal.name,
        error=error,
    )


async def delete_principal(page: Page) -> Response:
    """`POST /console/admin/principals/<name>/delete`: DeletePrincipal, then 303 to the list; a refusal (the
    last administrator key, oneself) shows on the confirmation page."""
    name = page.request.path_params["name"]
    await page.form("DeletePrincipal", _arn(page, {"Name": name}))
    try:
        await page.ext("DeletePrincipal", {"Name": name})
    except ByoiError as err:
        return await _delete_principal_page(page, name, _say(err), status_of(err))
    return page.redirect(PRINCIPALS, notice="deleted")


# Access keys


async def _keys_page(page: Page, owner: str, status: int = 200, **errors: str) -> Response:
    """The list of ListAccessKeys (of `owner`, or of all); a principal that does not exist is said next to the
    filter, with the page's status."""
    keys: list[dict[str, Any]] = []
    try:
        keys = (await page.ext("ListAccessKeys", _drop({"PrincipalName": owner})))["AccessKeys"]
    except ByoiError as err:
        errors.setdefault("filter", _say(err))
        status = max(status, status_of(err))
    return page.render(
        "admin_keys.html",
        status,
        keys=keys,
        owner=owner,
        form_time=f"{time.time():.6f}",
        notice=_notice(page),
        errors=errors,
    )


async def access_keys(page: Page) -> Response:
    """`GET /console/admin/access-keys[?principal=]`: the keys (ListAccessKeys) and the form to create one."""
    return await _keys_page(page, page.params.get("principal", "").strip())


def _back(fields: dict[str, str], owner: str) -> tuple[str, dict[str, str]]:
    """Where a key's form came from: its principal's page, or the list (filtered as it was)."""
    if fields.get("back") == "principal" and owner:
        return _principal_path(owner), {}
    shown = fields.get("filter", "")
    return KEYS, {"principal": shown} if shown else {}


def _href(path: str, query: dict[str, str]) -> str:
    return path + ("?" + urlencode(query) if query else "")


async def _key_refused(page: Page, fields: dict[str, str], owner: str, err: ByoiError) -> Response:
    """The page the form came from, with the refusal next to its keys."""
    if fields.get("back") == "principal" and owner:
        return await _principal_page(page, owner, status_of(err), keys=_say(err))
    return await _keys_page(page, fields.get("filter", ""), status_of(err), keys=_say(err))


async def create_key(page: Page) -> Response:
    """`POST /console/admin/access-keys`: CreateAccessKey for the form's principal, answered with the secret's
    page (this answer only: no redirect, no URL, no log holds it). A form whose principal already has a key newer
    than the form (ListAccessKeys) was sent before, usually by a reload: no new key is made."""
    fields = await page.form("CreateAccessKey")
    owner = fields.get("principal", "").strip()
    try:
        shown_at = float(fields.get("form_time", ""))
    except ValueError:
        shown_at = None
    try:
        if shown_at is not None:
            mine = (await page.ext("ListAccessKeys", {"PrincipalName": owner}))["AccessKeys"]
            if any((key.get("CreateDate") or 0) >= shown_at for key in mine):
                raise ResourceInUse(
                    f"An access key was created for {owner} after this form was shown (a reload sends the form "
                    "again): no other key was made, and a secret is never shown twice. To make another key, use "
                    "the button on this page."
                )
        created = (await page.ext("CreateAccessKey", {"PrincipalName": owner}))["AccessKey"]
    except ByoiError as err:
        return await _key_refused(page, fields, owner, err)
    settings = page.state["ctx"].settings
    return page.render(
        "admin_key_created.html",
        key=created,
        endpoint=page.state["services"].browser_settings.base_url(settings),
        region=settings.region,
        back=_href(*_back(fields, owner)),
    )


async def update_key(page: Page) -> Response:
    """`POST /console/admin/access-keys/<id>/status`: UpdateAccessKey to the form's status, then 303 back to where
    the form was; a refusal (the last active administrator key) shows there."""
    key_id = page.request.path_params["key_id"]
    fields = await page.form("UpdateAccessKey", _arn(page, {"AccessKeyId": key_id}))
    owner, status = fields.get("principal", ""), fields.get("status", "")
    try:
        await page.ext("UpdateAccessKey", {"AccessKeyId": key_id, "Status": status})
    except ByoiError as err:
        return await _key_refused(page, fields, owner, err)
    path, query = _back(fields, owner)
    return page.redirect(path, **query, notice="key-activated" if status == "Active" else "key-deactivated")


async def _find_key(page: Page, key_id: str) -> dict[str, Any]:
    for key in (await page.ext("ListAccessKeys", {}))["AccessKeys"]:
        if key["AccessKeyId"] == key_id:
            return dict(key)
    raise ResourceNotFound(f"No access key {key_id} exists")


async def _delete_key_page(page: Page, key_id: str, back: dict[str, str], error: str | None, status: int) -> Response:
    key = await _find_key(page, key_id)
    cancel = _href(*_back(back, key["PrincipalName"]))
    return page.render("admin_key_delete.html", status, key=key, back=back, cancel=cancel, error=error)


async def confirm_delete_key(page: Page) -> Response:
    """`GET /console/admin/access-keys/<id>/delete`: the key (ListAccessKeys) and the button that deletes it."""
    back = {k: page.params.get(k, "") for k in ("back", "filter")}
    return await _delete_key_page(page, page.request.path_params["key_id"], back, None, 200)


async def delete_key(page: Page) -> Response:
    """`POST /console/admin/access-keys/<id>/delete`: DeleteAccessKey, then 303 back; a refusal (the API keeps
    the last active administrator key) shows on the confirmation page in the API's words."""
    key_id = page.request.path_params["key_id"]
    fields = await page.form("DeleteAccessKey", _arn(page, {"AccessKeyId": key_id}))
    back = {k: fields.get(k, "") for k in ("back", "filter")}
    try:
        await page.ext("DeleteAccessKey", {"AccessKeyId": key_id})
    except ByoiError as err:
        return await _delete_key_page(page, key_id, back, _say(err), status_of(err))
    path, query = _back(back, fields.get("principal", ""))
    return page.redirect(path, **query, notice="key-deleted")


# The audit log


def _event(event: dict[str, Any]) -> dict[str, Any]:
    at = event.get("Time")
    return {**EVENT_DEFAULTS, **event, "shown_time": _stamp(at), "iso_time": _stamp(at, "%Y-%m-%dT%H:%M:%SZ")}


async def audit(page: Page) -> Response:
    """`GET /console/admin/audit`: one page of ListAuditEvents (newest first) with the form's filters as its
    request members; an htmx request (the filter form, JavaScript on) gets only the results, which carry a bad
    filter's error with them (htmx swaps only a 2xx answer), while a whole page answers with the error's status."""
    values = {field: page.params.get(field, "").strip() for field, _ in AUDIT_FILTERS}
    token = page.params.get("next", "")
    params = _drop({member: values[field] for field, member in AUDIT_FILTERS})
    events: list[dict[str, Any]] = []
    next_token, error, invalid, status = None, None, set(), 200
    try:
        listed = await page.ext("ListAuditEvents", _drop({**params, "MaxResults": PAGE_SIZE, "NextToken": token}))
        events, next_token = [_event(e) for e in listed.get("AuditEvents", [])], listed.get("NextToken")
    except ByoiError as err:
        error, status = _say(err), status_of(err)
        invalid = _named(err, dict(AUDIT_FILTERS))
    query = _drop(values)
    fragment = page.is_htmx and page.request.headers.get("HX-History-Restore-Request") != "true"
    return page.render(
        "admin_audit_results.html" if fragment else "admin_audit.html",
        200 if fragment else status,
        values=values,
        events=events,
        error=error,
        invalid=invalid,
        filtered=bool(query),
        first_href=f"{AUDIT}?{urlencode(query)}" if token else None,
        next_token=next_token,
        next_href=f"{AUDIT}?{urlencode({**query, 'next': next_token})}" if next_token else "",
    )


ROUTES: list[Route] = [
    (PRINCIPALS, "GET", admin_route(principals)),
    (PRINCIPALS + "/new", "GET", admin_route(new_principal)),
    (PRINCIPALS + "/new", "POST", admin_route(create_principal)),
    (PRINCIPALS + "/new/profiles", "GET", admin_route(profile_options)),
    (PRINCIPALS + "/{name}", "GET", admin_route(principal)),
    (PRINCIPALS + "/{name}/password", "POST", admin_route(set_password)),
    (PRINCIPALS + "/{name}/sessions", "POST", admin_route(revoke_sessions)),
    (PRINCIPALS + "/{name}/delete", "GET", admin_route(confirm_delete_principal)),
    (PRINCIPALS + "/{name}/delete", "POST", admin_route(delete_principal)),
    (KEYS, "GET", admin_route(access_keys)),
    (KEYS, "POST", admin_route(create_key)),
    (KEYS + "/{key_id}/status", "POST", admin_route(update_key)),
    (KEYS + "/{key_id}/delete", "GET", admin_route(confirm_delete_key)),
    (KEYS + "/{key_id}/delete", "POST", admin_route(delete_key)),
    (AUDIT, "GET", admin_route(audit)),
]
