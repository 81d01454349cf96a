"""`byoi launch` and `byoi sessions list|describe|logs|stop`: RStudio sessions on custom images.

`launch` is CreateApp (AppType RSessionGateway) followed by Byoi.DescribeAppProgress until the session is
InService or Failed, with a progress bar while the image is pulled. The URL it prints is the session's place
behind byoi's proxy (`/sessions/<id>/`): only the session's owner gets in, after signing in. `sessions url`
prints a fresh presigned sign-in link that lands there (CreatePresignedDomainUrl); `sessions open` opens the
session in a browser where one is available, and prints the link otherwise. Ctrl-C during a launch asks
whether to stop the session on the server too (without a terminal to ask on, it keeps starting).
"""

from __future__ import annotations

import secrets
import time
import webbrowser
from typing import Annotated, Any, NoReturn

import regex
import typer
from rich.console import Console

from byoi.cli.client import extension_client
from byoi.cli.common import (
    EndpointUrl,
    ExitCode,
    Failed,
    Output,
    Profile,
    ask_to_stop,
    call,
    console,
    err,
    error_code,
    for_people,
    literal,
    print_document,
    print_line,
    print_result,
)
from byoi.cli.domains import Domain, resolve_domain

sessions_app = typer.Typer(help="RStudio sessions (apps of type RSessionGateway).", no_args_is_help=True)

_IMAGE = regex.compile(r"(?P<name>[a-zA-Z0-9]([-.]?[a-zA-Z0-9]){0,62})(:(?P<version>[0-9]+))?")
APP_TYPE = "RSessionGateway"
User = Annotated[str, typer.Option("--user", "-u", help="User profile name.")]
AppName = Annotated[str, typer.Argument(help="The session's app name.")]
SIGN_IN_NOTE = (
    "Only the session's owner gets in, after signing in; `byoi sessions url NAME -d DOMAIN -u USER` prints a "
    "presigned sign-in link for them."
)


def register(app: typer.Typer) -> None:
    """Add `byoi launch` and `byoi sessions …` to the top-level app (called once from cli/main.py)."""
    app.command("launch")(launch)
    app.add_typer(sessions_app, name="sessions")


def _default_name(image: str) -> str:
    base = regex.sub(r"[^a-zA-Z0-9]+", "-", image).strip("-")[:50] or "session"
    return f"{base}-{secrets.token_hex(3)}"


def _resource_spec(sm: Any, image_ref: str, instance_type: str | None) -> dict[str, Any]:
    m = _IMAGE.fullmatch(image_ref)
    if not m:
        raise Failed(f"--image {image_ref!r} must look like NAME or NAME:VERSION", ExitCode.USAGE)
    spec: dict[str, Any] = {"SageMakerImageArn": sm.describe_image(ImageName=m["name"])["ImageArn"]}
    if m["version"]:
        version = sm.describe_image_version(ImageName=m["name"], Version=int(m["version"]))
        spec["SageMakerImageVersionArn"] = version["ImageVersionArn"]
    if instance_type:
        spec["InstanceType"] = instance_type
    return spec


def _follow(ext: Any, domain: str, user: str, name: str, timeout: float, say: Console = console) -> dict[str, Any]:
    """Show launch progress until InService or Failed; return the last progress."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=say,
        transient=True,
    ) as bar:
        pull = None
        status = bar.add_task("queued", total=None)
        while True:
            p = ext.describe_app_progress(DomainId=domain, UserProfileName=user, AppName=name)
            phase = p.get("Phase") or "queued"
            if phase == "pulling" and p.get("BytesTotal"):
                if pull is None:
                    pull = bar.add_task("pulling image", total=p["BytesTotal"])
                bar.update(pull, total=p["BytesTotal"], completed=p.get("BytesDone") or 0)
            bar.update(status, description=literal(f"{phase}: {p.get('Message') or ''}"))  # a markup column
            if p["Status"] in ("InService", "Failed", "Deleted", "Deleting"):
                return dict(p)
            if time.monotonic() > deadline:
                raise Failed(f"session {name} is still {p['Status']} ({phase}) after {timeout:g}s")
            time.sleep(0.3)


def launch(
    domain: Domain,
    user: User,
    image: Annotated[str, typer.Option("--image", "-i", help="Custom image NAME or NAME:VERSION.")],
    instance_type: Annotated[str | None, typer.Option("--instance-type", help="e.g. ml.t3.medium")] = None,
    name: Annotated[str | None, typer.Option("--name", help="App name (default: from the image).")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the launch until RStudio answers.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the session.")] = 600.0,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Launch an RStudio session on a custom image attached for the user."""
    app_name = name or _default_name(image)
    say = for_people(output)

    def create(sm: Any) -> tuple[str, str]:
        domain_id = resolve_domain(sm, domain)
        spec = _resource_spec(sm, image, instance_type)
        arn = sm.create_app(
            DomainId=domain_id, UserProfileName=user, AppType=APP_TYPE, AppName=app_name, ResourceSpec=spec
        )["AppArn"]
        return domain_id, arn

    domain_id, arn = call(endpoint_url, profile, create)
    say.print(f"launching {literal(arn)}")
    if not wait:
        if output != "table":
            print_document({"AppArn": arn, "DomainId": domain_id, "UserProfileName": user, "AppName": app_name}, output)
        return
    try:
        p = call(
            endpoint_url, profile, lambda ext: _follow(ext, domain_id, user, app_name, timeout, say), extension=True
        )
    except KeyboardInterrupt:
        _interrupted(endpoint_url, profile, domain_id, domain, user, app_name)
    if output != "table":
        print_document({"AppArn": arn, **p}, output)
    if p["Status"] != "InService":
        # the reason quotes the container's or the Engine's words, [brackets] and all: shown as is.
        reason = p.get("FailureReason") or p.get("Message")
        err.print(f"[red]session {literal(app_name)} {literal(p['Status'])}[/red]: {literal(reason)}")
        raise typer.Exit(ExitCode.FAILED)
    say.print(f"RStudio is ready at {literal(p['Url'])}")
    say.print(SIGN_IN_NOTE)


def _interrupted(
    endpoint_url: str | None, profile: str | None, domain_id: str, domain: str, user: str, name: str
) -> NoReturn:
    """Ctrl-C while a session starts: stop it on the server too if the person says so; else it keeps starting."""
    ask_to_stop(
        f"Stop session {name} on the server too?",
        lambda: call(
            endpoint_url,
            profile,
            lambda sm: sm.delete_app(DomainId=domain_id, UserProfileName=user, AppType=APP_TYPE, AppName=name),
        ),
        f"stopping session {name}",
        f"session {name} keeps starting on the server; stop it with `byoi sessions stop {name} -d {domain} -u {user}`",
    )
    raise typer.Exit(ExitCode.INTERRUPTED)


@sessions_app.command("list")
def sessions_list(
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="Domain id or name.")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u")] = None,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """List sessions (all app types), oldest first."""

    def fetch(sm: Any) -> list[dict[str, Any]]:
        args: dict[str, Any] = {}
        if domain:
            args["DomainIdEquals"] = resolve_domain(sm, domain)
        if user:
            args["UserProfileNameEquals"] = user
        return [a for page in sm.get_paginator("list_apps").paginate(**args) for a in page["Apps"]]

    found = call(endpoint_url, profile, fetch)

    def urls(ext: Any) -> list[str]:
        out = []
        for a in found:
            if a["AppType"] != APP_TYPE or a["Status"] not in ("Pending", "InService"):
                out.append("")
                continue
            p = ext.describe_app_progress(
                DomainId=a["DomainId"], UserProfileName=a["UserProfileName"], AppName=a["AppName"]
            )
            out.append(p.get("Url") or "")
        return out

    links = call(endpoint_url, profile, urls, extension=True) if found else []
    for a, link in zip(found, links, strict=True):
        if link:
            a["Url"] = link
    rows = [{**a, "Image": (a.get("ResourceSpec") or {}).get("SageMakerImageVersionArn", "")} for a in found]
    print_result(
        {"Apps": found}, output, ["DomainId", "UserProfileName", "AppName", "AppType", "Status", "Image", "Url"], rows
    )


@sessions_app.command("describe")
def sessions_describe(
    name: AppName,
    domain: Domain,
    user: User,
    output: Output = "json",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """DescribeApp plus the launch progress (phase, endpoint, container)."""

    def fetch(sm: Any) -> tuple[str, dict[str, Any]]:
        domain_id = resolve_domain(sm, domain)
        return domain_id, sm.describe_app(DomainId=domain_id, UserProfileName=user, AppType=APP_TYPE, AppName=name)

    domain_id, described = call(endpoint_url, profile, fetch)
    p = call(
        endpoint_url,
        profile,
        lambda ext: ext.describe_app_progress(DomainId=domain_id, UserProfileName=user, AppName=name),
        extension=True,
    )
    p.pop("ResponseMetadata", None)
    described.pop("ResponseMetadata", None)
    data = {**described, "Progress": p}
    print_result(data, output, ["AppName", "Status", "FailureReason"], [{**described, **p}])


@sessions_app.command("logs")
def sessions_logs(
    name: AppName,
    domain: Domain,
    user: User,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many of the last lines.")] = 100,
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """The last lines RStudio Server wrote in the session's container."""
    domain_id = call(endpoint_url, profile, lambda sm: resolve_domain(sm, domain))
    result = call(
        endpoint_url,
        profile,
        lambda ext: ext.get_app_logs(DomainId=domain_id, UserProfileName=user, AppName=name, Lines=lines),
        extension=True,
    )
    for line in result.get("Lines") or []:
        console.print(line, markup=False, highlight=False)
    if result.get("Source") == "saved":
        err.print(f"(lines kept when the session ended; it is {literal(result.get('Status'))})")


@sessions_app.command("stop")
def sessions_stop(
    name: AppName,
    domain: Domain,
    user: User,
    wait: Annotated[bool, typer.Option(help="Wait until the session is Deleted.")] = True,
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Stop a session (DeleteApp); the user's home is kept."""

    def stop(sm: Any) -> str:
        from botocore.exceptions import ClientError

        domain_id = resolve_domain(sm, domain)
        sm.delete_app(DomainId=domain_id, UserProfileName=user, AppType=APP_TYPE, AppName=name)
        if not wait:
            return "Deleting"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status = sm.describe_app(DomainId=domain_id, UserProfileName=user, AppType=APP_TYPE, AppName=name)
            except ClientError as exc:
                if error_code(exc) != "ResourceNotFound":
                    raise
                return "Deleted"
            if status["Status"] in ("Deleted", "Failed"):
                return str(status["Status"])
            time.sleep(0.3)
        raise Failed(f"session {name} is still stopping")

    console.print(f"{literal(name)}: {literal(call(endpoint_url, profile, stop))}")


def _session_url(endpoint_url: str | None, profile: str | None, domain: str, user: str, name: str) -> tuple[str, str]:
    def find(sm: Any) -> tuple[str, str]:
        domain_id = resolve_domain(sm, domain)
        ext = extension_client(endpoint_url, profile)
        p = ext.describe_app_progress(DomainId=domain_id, UserProfileName=user, AppName=name)
        if p["Status"] not in ("Pending", "InService"):
            code = ExitCode.FAILED if p["Status"] == "Failed" else ExitCode.NOT_FOUND
            raise Failed(f"session {name} is {p['Status']}: there is nothing to open", code)
        return domain_id, str(p["Url"])

    return call(endpoint_url, profile, find)  # type: ignore[no-any-return]


@sessions_app.command("url")
def sessions_url(
    name: AppName,
    domain: Domain,
    user: User,
    expires: Annotated[int, typer.Option(help="Seconds the link may be used within (5-300).")] = 300,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Print a fresh presigned sign-in link for the user that lands on their session (used once)."""
    domain_id, url = _session_url(endpoint_url, profile, domain, user, name)
    path = "/" + url.split("://", 1)[-1].split("/", 1)[-1]
    link = call(
        endpoint_url,
        profile,
        lambda sm: sm.create_presigned_domain_url(
            DomainId=domain_id, UserProfileName=user, ExpiresInSeconds=expires, LandingUri=path
        )["AuthorizedUrl"],
    )
    print_line({"AuthorizedUrl": link}, output, link)


@sessions_app.command("open")
def sessions_open(
    name: AppName,
    domain: Domain,
    user: User,
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Open the session in a browser (its owner signs in there); print the link when no browser is available."""
    _, url = _session_url(endpoint_url, profile, domain, user, name)
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        browser = None
    if browser is not None and browser.open(url):
        console.print(f"opened {literal(url)}")
        return
    console.print(f"No browser is available here; open {literal(url)}")
