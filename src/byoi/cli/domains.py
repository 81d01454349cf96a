"""`byoi domains …`, `byoi users …`, `byoi attach`, `byoi detach`: teams, their people and their images.

Attach and detach are a read-modify-write of the RStudio `CustomImages` list done as a compare-and-swap
(`Byoi.DescribeAttachedImages` gives the list and its revision, `Byoi.UpdateAttachedImages` writes it only
if the revision is unchanged), retried on conflict, so two people attaching at once both get their image.
"""

from __future__ import annotations

import random
import time
from typing import Annotated, Any

import regex
import typer

from byoi.cli.client import extension_client
from byoi.cli.common import (
    EndpointUrl,
    ExitCode,
    Failed,
    Output,
    Profile,
    call,
    console,
    error_code,
    print_line,
    print_result,
)

domains_app = typer.Typer(help="Domains: a team's workspace and the images attached to it.", no_args_is_help=True)
users_app = typer.Typer(help="User profiles: people in a domain.", no_args_is_help=True)

DEFAULT_ROLE = "arn:aws:iam::000000000000:role/byoi"
DEFAULT_APP_IMAGE_CONFIG = "byoi-rstudio"
CAS_ATTEMPTS = 30
_DOMAIN_ID = regex.compile(r"d-(-*[a-z0-9]){1,61}")
_IMAGE_REF = regex.compile(r"(?P<name>[a-zA-Z0-9]([-.]?[a-zA-Z0-9]){0,62})(:(?P<version>[0-9]+))?")

Domain = Annotated[str, typer.Option("--domain", "-d", help="Domain id (d-…) or name.")]
User = Annotated[str | None, typer.Option("--user", "-u", help="User profile (default: the domain's own list).")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level `byoi` app (called once from cli/main.py)."""
    app.add_typer(domains_app, name="domains")
    app.add_typer(users_app, name="users")
    app.command("attach")(attach)
    app.command("detach")(detach)


__all__ = ["Failed", "resolve_domain"]  # Failed: common's, here too for the modules that import it from here


def resolve_domain(client: Any, ref: str) -> str:
    """A domain id from an id or a name (byoi keeps domain names unique)."""
    from botocore.exceptions import ClientError

    if _DOMAIN_ID.fullmatch(ref):
        try:
            return str(client.describe_domain(DomainId=ref)["DomainId"])
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFound":
                raise
    for page in client.get_paginator("list_domains").paginate():
        for domain in page["Domains"]:
            if domain["DomainName"] == ref:
                return str(domain["DomainId"])
    raise Failed(f"no domain with the id or name {ref}", ExitCode.NOT_FOUND)


# -- domains -------------------------------------------------------------------------------------


@domains_app.command("create")
def domains_create(
    name: str,
    execution_role: Annotated[str, typer.Option(help="Kept and echoed, as on SageMaker.")] = DEFAULT_ROLE,
    rstudio: Annotated[bool, typer.Option(help="Turn RStudio on (RStudioServerProDomainSettings).")] = True,
    auth_mode: Annotated[str, typer.Option(help="IAM or SSO.")] = "IAM",
    connect_url: Annotated[str | None, typer.Option(help="RStudio Connect URL.")] = None,
    package_manager_url: Annotated[str | None, typer.Option(help="RStudio Package Manager URL.")] = None,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Create a domain; prints its id and URL."""
    args: dict[str, Any] = {
        "DomainName": name,
        "AuthMode": auth_mode,
        "DefaultUserSettings": {"ExecutionRole": execution_role},
    }
    if rstudio:
        rs: dict[str, Any] = {"DomainExecutionRoleArn": execution_role}
        if connect_url:
            rs["RStudioConnectUrl"] = connect_url
        if package_manager_url:
            rs["RStudioPackageManagerUrl"] = package_manager_url
        args["DomainSettings"] = {"RStudioServerProDomainSettings": rs}
    result = call(endpoint_url, profile, lambda c: c.create_domain(**args))
    print_line(result, output, f"{result['DomainId']}  {result['Url']}")


@domains_app.command("list")
def domains_list(output: Output = "table", endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """List domains."""

    def fetch(c: Any) -> list[dict[str, Any]]:
        return [d for page in c.get_paginator("list_domains").paginate() for d in page["Domains"]]

    found = call(endpoint_url, profile, fetch)
    print_result({"Domains": found}, output, ["DomainId", "DomainName", "Status", "CreationTime", "Url"], found)


@domains_app.command("describe")
def domains_describe(
    domain: Annotated[str, typer.Argument(help="Domain id or name.")],
    output: Output = "json",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Describe a domain."""
    result = call(endpoint_url, profile, lambda c: c.describe_domain(DomainId=resolve_domain(c, domain)))
    print_result(result, output, ["DomainId", "DomainName", "Status", "Url"])


@domains_app.command("delete")
def domains_delete(
    domain: Annotated[str, typer.Argument(help="Domain id or name.")],
    wait: Annotated[bool, typer.Option(help="Wait until the domain is gone.")] = True,
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Delete a domain (refused while it has user profiles)."""

    def delete(c: Any) -> str:
        domain_id = resolve_domain(c, domain)
        c.delete_domain(DomainId=domain_id)
        if wait:
            _wait_gone(lambda: c.describe_domain(DomainId=domain_id))
        return domain_id

    domain_id = call(endpoint_url, profile, delete)
    console.print(f"deleted {domain_id}" if wait else f"deleting {domain_id}")


def _wait_gone(describe: Any, timeout: float = 60.0) -> None:
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            describe()
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFound":
                return
            raise
        time.sleep(0.2)
    raise Failed(f"still not deleted after {timeout:.0f}s")


@domains_app.command("available")
def domains_available(
    domain: Domain,
    user: User = None,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """The custom images a user may launch in RStudio, with the version each resolves to now."""

    def fetch(c: Any) -> dict[str, Any]:
        args: dict[str, Any] = {"DomainId": resolve_domain(c, domain)}
        if user:
            args["UserProfileName"] = user
        return extension_client(endpoint_url, profile).list_effective_images(**args)  # type: ignore[no-any-return]

    result = call(endpoint_url, profile, fetch)
    rows = [
        {**e, "ImageVersionNumber": e.get("ImageVersionNumber", "latest"), "Problem": e.get("Problem", "")}
        for e in result["EffectiveImages"]
    ]
    if output == "table":
        console.print(f"from the {'user profile' if result['Source'] == 'UserProfile' else 'domain'}'s list")
    columns = ["ImageName", "ImageVersionNumber", "ResolvedVersionNumber", "AppImageConfigName", "ContainerImage"]
    print_result(result, output, columns + ["Problem"], rows)


# -- users ---------------------------------------------------------------------------------------


@users_app.command("create")
def users_create(
    name: str,
    domain: Domain,
    user_group: Annotated[str, typer.Option(help="R_STUDIO_USER or R_STUDIO_ADMIN.")] = "R_STUDIO_USER",
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Create a user profile in a domain."""

    def create(c: Any) -> dict[str, Any]:
        return c.create_user_profile(  # type: ignore[no-any-return]
            DomainId=resolve_domain(c, domain),
            UserProfileName=name,
            UserSettings={"RStudioServerProAppSettings": {"AccessStatus": "ENABLED", "UserGroup": user_group}},
        )

    result = call(endpoint_url, profile, create)
    print_line(result, output, result["UserProfileArn"])


@users_app.command("list")
def users_list(
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="Only this domain (id or name).")] = None,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """List user profiles."""

    def fetch(c: Any) -> list[dict[str, Any]]:
        args = {"DomainIdEquals": resolve_domain(c, domain)} if domain else {}
        pages = c.get_paginator("list_user_profiles").paginate(**args)
        return [u for page in pages for u in page["UserProfiles"]]

    found = call(endpoint_url, profile, fetch)
    print_result({"UserProfiles": found}, output, ["UserProfileName", "DomainId", "Status", "CreationTime"], found)


@users_app.command("describe")
def users_describe(
    name: str, domain: Domain, output: Output = "json", endpoint_url: EndpointUrl = None, profile: Profile = None
) -> None:
    """Describe a user profile."""
    result = call(
        endpoint_url,
        profile,
        lambda c: c.describe_user_profile(DomainId=resolve_domain(c, domain), UserProfileName=name),
    )
    print_result(result, output, ["UserProfileName", "DomainId", "Status", "HomeEfsFileSystemUid"])


@users_app.command("delete")
def users_delete(
    name: str,
    domain: Domain,
    wait: Annotated[bool, typer.Option(help="Wait until the profile is gone.")] = True,
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Delete a user profile."""

    def delete(c: Any) -> None:
        domain_id = resolve_domain(c, domain)
        c.delete_user_profile(DomainId=domain_id, UserProfileName=name)
        if wait:
            _wait_gone(lambda: c.describe_user_profile(DomainId=domain_id, UserProfileName=name))

    call(endpoint_url, profile, delete)
    console.print(f"deleted {name}" if wait else f"deleting {name}")


# -- attach / detach -----------------------------------------------------------------------------


def parse_image_ref(ref: str) -> tuple[str, int | None]:
    m = _IMAGE_REF.fullmatch(ref)
    if not m:
        raise typer.BadParameter(f"{ref!r} is not IMAGE or IMAGE:VERSION (VERSION a number)")
    return m["name"], int(m["version"]) if m["version"] else None


def compare_and_swap(ext: Any, owner: dict[str, Any], change: Any) -> tuple[list[dict[str, Any]], bool]:
    """Apply `change(list) -> new list | None` to the attached list, retrying when someone else wrote
    between our read and our write. Returns the final list and whether it was written."""
    from botocore.exceptions import ClientError

    for attempt in range(CAS_ATTEMPTS):
        current = ext.describe_attached_images(**owner)
        new = change(list(current["CustomImages"]))
        if new is None:
            return current["CustomImages"], False
        try:
            ext.update_attached_images(**owner, CustomImages=new, ExpectedRevision=current["Revision"])
            return new, True
        except ClientError as exc:
            if error_code(exc) != "ConcurrentModification":
                raise
        time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))  # noqa: S311 - jitter, not security
    raise Failed(f"the attached images kept changing; gave up after {CAS_ATTEMPTS} attempts")


def _ensure_app_image_config(client: Any, name: str) -> None:
    from botocore.exceptions import ClientError

    try:
        client.describe_app_image_config(AppImageConfigName=name)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFound":
            raise
        try:
            client.create_app_image_config(AppImageConfigName=name)
            console.print(f"created app image config {name}")
        except ClientError as exc2:  # someone else created it meanwhile: fine
            if error_code(exc2) != "ResourceInUse":
                raise


def _owner(client: Any, domain: str, user: str | None) -> tuple[dict[str, Any], str]:
    owner: dict[str, Any] = {"DomainId": resolve_domain(client, domain)}
    if user:
        owner["UserProfileName"] = user
    label = f"user profile {user} in {owner['DomainId']}" if user else f"domain {owner['DomainId']}"
    return owner, label


def attach(
    image: Annotated[str, typer.Argument(help="IMAGE or IMAGE:VERSION (no version: the newest CREATED at launch).")],
    domain: Domain,
    user: User = None,
    app_image_config: Annotated[
        str | None, typer.Option(help=f"App image config (default {DEFAULT_APP_IMAGE_CONFIG}, created if missing).")
    ] = None,
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Attach an image (version) to a domain, or to one user profile, for RStudio."""
    name, version = parse_image_ref(image)
    entry: dict[str, Any] = {"ImageName": name, "AppImageConfigName": app_image_config or DEFAULT_APP_IMAGE_CONFIG}
    if version is not None:
        entry["ImageVersionNumber"] = version

    def change(entries: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        same = [e for e in entries if e["ImageName"] == name and e.get("ImageVersionNumber") == version]
        if same:
            return None
        return entries + [entry]

    def run(c: Any) -> tuple[str, bool]:
        if app_image_config is None:
            _ensure_app_image_config(c, DEFAULT_APP_IMAGE_CONFIG)
        owner, label = _owner(c, domain, user)
        _, written = compare_and_swap(extension_client(endpoint_url, profile), owner, change)
        return label, written

    label, written = call(endpoint_url, profile, run)
    console.print(f"attached {image} to {label}" if written else f"{image} was already attached to {label}")


def detach(
    image: Annotated[str, typer.Argument(help="IMAGE (every version of it) or IMAGE:VERSION.")],
    domain: Domain,
    user: User = None,
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Detach an image (all its entries, or one version's) from a domain or a user profile."""
    name, version = parse_image_ref(image)

    def matches(e: dict[str, Any]) -> bool:
        return bool(e["ImageName"] == name and (version is None or e.get("ImageVersionNumber") == version))

    def change(entries: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        kept = [e for e in entries if not matches(e)]
        return kept if len(kept) != len(entries) else None

    def run(c: Any) -> str:
        owner, label = _owner(c, domain, user)
        _, written = compare_and_swap(extension_client(endpoint_url, profile), owner, change)
        if not written:
            raise Failed(f"{image} is not attached to {label}", ExitCode.NOT_FOUND)
        return label

    console.print(f"detached {image} from {call(endpoint_url, profile, run)}")
