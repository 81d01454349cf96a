"""`byoi admin users|keys|password|sessions|audit …` and `byoi whoami`: principals, their access keys and
passwords, and the audit log (the `Byoi.*` identity operations; administrators only, except `whoami`).

A secret is shown once, when its key is created (or written straight to a shared-credentials profile, mode
0600); a password is read from a prompt with confirmation or from stdin, never from an argument, so it stays
out of the shell history and the process list.
"""

from __future__ import annotations

import configparser
import io
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from byoi.cli.client import sagemaker_client
from byoi.cli.common import EndpointUrl, ExitCode, Output, Profile, call, console, err, print_document, print_result
from byoi.cli.domains import resolve_domain

admin_app = typer.Typer(help="Administration: principals, access keys, passwords, audit log.", no_args_is_help=True)
users_app = typer.Typer(help="Principals: administrators, and users bound to a user profile.", no_args_is_help=True)
keys_app = typer.Typer(help="Access keys: what signs API requests (several per principal).", no_args_is_help=True)
password_app = typer.Typer(help="Passwords for browser sign-in (stored as argon2 hashes).", no_args_is_help=True)
sessions_app = typer.Typer(help="Browser sessions of a principal.", no_args_is_help=True)

PAGE = 100  # the largest MaxResults the identity operations accept
MIN_PASSWORD = 8
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
PRINCIPAL_COLUMNS = ["Name", "Role", "DomainId", "UserProfileName", "HasPassword", "CreationTime"]
KEY_COLUMNS = ["AccessKeyId", "PrincipalName", "Status", "CreateDate"]
AUDIT_COLUMNS = ["Time", "PrincipalName", "AccessKeyId", "Operation", "ResourceArn", "Outcome", "SourceAddress"]

Name = Annotated[str, typer.Argument(help="Principal name.")]
KeyId = Annotated[str, typer.Argument(help="Access key id.")]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from stdin (one line) instead of a prompt.")
]


def register(app: typer.Typer) -> None:
    """Add `byoi admin …` and `byoi whoami` to the top-level app (called once from cli/main.py)."""
    admin_app.add_typer(users_app, name="users")
    admin_app.add_typer(keys_app, name="keys")
    admin_app.add_typer(password_app, name="password")
    admin_app.add_typer(sessions_app, name="sessions")
    admin_app.command("audit")(audit)
    app.add_typer(admin_app, name="admin")
    app.command("whoami")(whoami)


def _run(endpoint_url: str | None, profile: str | None, action: Any) -> Any:
    """`action(extension client)`, its failures one line on stderr with their exit status."""
    return call(endpoint_url, profile, action, extension=True)


def _usage(message: str, code: ExitCode = ExitCode.USAGE) -> typer.Exit:
    """A mistake in the command line (or, with INVALID_INPUT, a value the server would refuse): one line,
    nothing sent."""
    err.print(f"[red]error[/red]: {escape(message)}")
    return typer.Exit(code)


def _pages(client_call: Any, key: str, limit: int | None = None, **args: Any) -> tuple[list[dict[str, Any]], bool]:
    """Items of a NextToken-paged operation, up to `limit` (None: every page); and whether more were left."""
    items: list[dict[str, Any]] = []
    token = None
    while True:
        page = client_call(
            **args,
            MaxResults=PAGE if limit is None else min(PAGE, limit - len(items)),
            **({"NextToken": token} if token else {}),
        )
        items.extend(page.get(key, []))
        token = page.get("NextToken")
        if not token:
            return items, False
        if limit is not None and len(items) >= limit:
            return items, True


def read_password(password_stdin: bool) -> str:
    """From stdin (`--password-stdin`: the first line, without its line ending) or a hidden prompt asked twice.
    Without a terminal to prompt on, refuse rather than read stdin unannounced."""
    if password_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        if not password:
            raise _usage("--password-stdin: stdin held no password", ExitCode.INVALID_INPUT)
    elif not sys.stdin.isatty():
        raise _usage("no terminal to prompt for the password on: pipe it in with --password-stdin")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        raise _usage(f"the password must have at least {MIN_PASSWORD} characters", ExitCode.INVALID_INPUT)
    return password


# -- principals ----------------------------------------------------------------------------------


@users_app.command("create")
def users_create(
    name: Name,
    admin: Annotated[bool, typer.Option("--admin", help="An administrator (bound to no user profile).")] = False,
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="The user's domain: id (d-…) or name.")] = None,
    user_profile: Annotated[
        str | None, typer.Option("--user-profile", "--user", "-u", help="The user profile the user acts as.")
    ] = None,
    with_password: Annotated[
        bool, typer.Option("--with-password", help="Prompt for a browser sign-in password.")
    ] = False,
    password_stdin: PasswordStdin = False,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Create an administrator (--admin) or a user bound to a user profile (--domain and --user-profile)."""
    if admin and (domain or user_profile):
        raise _usage("an administrator is bound to no user profile: give --admin, or --domain and --user-profile")
    if not admin and not (domain and user_profile):
        raise _usage("a user needs --domain and --user-profile (the profile it acts as); or give --admin")
    args: dict[str, Any] = {"Name": name, "Role": "admin" if admin else "user"}
    if with_password or password_stdin:
        args["Password"] = read_password(password_stdin)

    def create(ext: Any) -> dict[str, Any]:
        if domain:
            args["DomainId"] = resolve_domain(sagemaker_client(endpoint_url, profile), domain)
            args["UserProfileName"] = user_profile
        return ext.create_principal(**args)  # type: ignore[no-any-return]

    result = _run(endpoint_url, profile, create)
    if output != "table":
        print_document(result, output)
        return
    console.print(result["Principal"]["PrincipalArn"], markup=False)


@users_app.command("list")
def users_list(output: Output = "table", endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """List principals, by name."""
    found, _ = _run(endpoint_url, profile, lambda ext: _pages(ext.list_principals, "Principals"))
    print_result({"Principals": found}, output, PRINCIPAL_COLUMNS, found)


@users_app.command("describe")
def users_describe(
    name: Name, output: Output = "table", endpoint_url: EndpointUrl = None, profile: Profile = None
) -> None:
    """A principal: its role, the user profile it is bound to, and its access keys (never their secrets)."""
    result = _run(endpoint_url, profile, lambda ext: ext.describe_principal(Name=name))
    if output != "table":
        print_document(result, output)
        return
    print_result(result, output, PRINCIPAL_COLUMNS + ["PrincipalArn"], [result["Principal"]])
    if result.get("AccessKeys"):
        print_result(result, output, KEY_COLUMNS, result["AccessKeys"])
    else:
        console.print(f"{escape(name)} has no access keys")


@users_app.command("delete")
def users_delete(name: Name, endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """Delete a principal with its access keys; its keys and browser sessions stop working at once."""
    _run(endpoint_url, profile, lambda ext: ext.delete_principal(Name=name))
    console.print(f"deleted {escape(name)}")


# -- access keys ---------------------------------------------------------------------------------


def default_credentials_file() -> Path:
    return Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials").expanduser()


def write_profile(path: Path, profile: str, key_id: str, secret: str, region: str) -> bool:
    """Put `profile` into the AWS shared-credentials file at `path`, keeping its other profiles; the file is
    replaced atomically and is mode 0600 from its first byte. Returns whether the profile was there before."""
    config = configparser.RawConfigParser()
    if path.exists():
        config.read(path)
    existed = config.has_section(profile)
    if existed:
        config.remove_section(profile)
    config.add_section(profile)
    config.set(profile, "aws_access_key_id", key_id)
    config.set(profile, "aws_secret_access_key", secret)
    config.set(profile, "region", region)
    text = io.StringIO()
    config.write(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text.getvalue())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return existed


@keys_app.command("create")
def keys_create(
    principal: Name,
    write_profile_name: Annotated[
        str | None,
        typer.Option(
            "--write-profile",
            help="Write the key to this profile of --credentials-file instead of printing the secret.",
        ),
    ] = None,
    credentials_file: Annotated[
        Path | None,
        typer.Option(help="File for --write-profile (default AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials)."),
    ] = None,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Create an access key for a principal. The secret is shown this once (or written to --write-profile)."""
    if credentials_file is not None and write_profile_name is None:
        raise _usage("--credentials-file goes with --write-profile NAME")

    def create(ext: Any) -> tuple[dict[str, Any], str]:
        return ext.create_access_key(PrincipalName=principal)["AccessKey"], ext.meta.region_name

    key, region = _run(endpoint_url, profile, create)
    if write_profile_name is not None:
        path = credentials_file or default_credentials_file()
        secret = key.pop("SecretAccessKey")
        try:
            replaced = write_profile(path, write_profile_name, key["AccessKeyId"], secret, region)
        except (OSError, configparser.Error) as exc:
            # The key exists but its secret could not be kept: say so, and how to get rid of it.
            err.print(
                f"[red]error[/red]: could not write {escape(str(path))}: {escape(str(exc))}; the key "
                f"{key['AccessKeyId']} was created, its secret is lost: delete it with "
                f"`byoi admin keys delete {key['AccessKeyId']}`"
            )
            raise typer.Exit(1) from None
        if output != "table":
            print_document({"AccessKey": key, "Profile": write_profile_name, "CredentialsFile": str(path)}, output)
            return
        verb = "replaced" if replaced else "wrote"
        console.print(
            f"{key['AccessKeyId']} for {escape(principal)}: {verb} profile {escape(write_profile_name)} in "
            f"{escape(str(path))} (mode 0600); the secret was not printed"
        )
        return
    if output != "table":
        print_document({"AccessKey": key}, output)
        return
    from rich.table import Table

    table = Table("AccessKeyId", "SecretAccessKey", "PrincipalName")
    table.add_row(key["AccessKeyId"], key["SecretAccessKey"], escape(key["PrincipalName"]))
    console.print(table)
    console.print("[bold]This is the only time the secret access key is shown: store it now.[/bold]")


@keys_app.command("list")
def keys_list(
    principal: Annotated[str | None, typer.Argument(help="Only this principal's keys.")] = None,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """List access keys (never their secrets), of one principal or of all."""
    args = {"PrincipalName": principal} if principal else {}
    result = _run(endpoint_url, profile, lambda ext: ext.list_access_keys(**args))
    print_result(result, output, KEY_COLUMNS, result["AccessKeys"])


def _set_status(key_id: str, status: str, endpoint_url: str | None, profile: str | None) -> None:
    _run(endpoint_url, profile, lambda ext: ext.update_access_key(AccessKeyId=key_id, Status=status))


@keys_app.command("deactivate")
def keys_deactivate(key_id: KeyId, endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """Deactivate an access key: refused from the next request on, until activated again."""
    _set_status(key_id, "Inactive", endpoint_url, profile)
    console.print(f"deactivated {escape(key_id)}")


@keys_app.command("activate")
def keys_activate(key_id: KeyId, endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """Activate a deactivated access key again."""
    _set_status(key_id, "Active", endpoint_url, profile)
    console.print(f"activated {escape(key_id)}")


@keys_app.command("delete")
def keys_delete(key_id: KeyId, endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """Delete an access key for good."""
    _run(endpoint_url, profile, lambda ext: ext.delete_access_key(AccessKeyId=key_id))
    console.print(f"deleted {escape(key_id)}")


# -- passwords and browser sessions --------------------------------------------------------------


@password_app.command("set")
def password_set(
    name: Name, password_stdin: PasswordStdin = False, endpoint_url: EndpointUrl = None, profile: Profile = None
) -> None:
    """Set a principal's browser sign-in password (prompted twice, or --password-stdin); signs it out elsewhere."""
    password = read_password(password_stdin)
    _run(endpoint_url, profile, lambda ext: ext.set_principal_password(Name=name, Password=password))
    console.print(f"password set for {escape(name)}; its browser sessions were signed out")


@password_app.command("remove")
def password_remove(name: Name, endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """Remove a principal's password: no more browser sign-in with one."""
    _run(endpoint_url, profile, lambda ext: ext.set_principal_password(Name=name))
    console.print(f"password removed for {escape(name)}; its browser sessions were signed out")


@sessions_app.command("revoke")
def sessions_revoke(name: Name, endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """Sign a principal out of every browser session, at once."""
    _run(endpoint_url, profile, lambda ext: ext.revoke_principal_sessions(Name=name))
    console.print(f"signed {escape(name)} out of every browser session")


# -- audit log and identity ----------------------------------------------------------------------


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`30m`, `2h`, `7d`, `1h30m` (that long ago) or an ISO 8601 time (UTC when it names no zone)."""
    now = now or datetime.now(UTC)
    m = _DURATION.fullmatch(value)
    if value and m and any(m.groups()):
        d, h, mi, s = (int(g or 0) for g in m.groups())
        return now - timedelta(days=d, hours=h, minutes=mi, seconds=s)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _usage(f"--since {value!r} is neither a duration (30m, 2h, 7d) nor an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def audit(
    since: Annotated[
        str | None, typer.Option(help="Only events since: a duration ago (30m, 2h, 7d) or an ISO 8601 time.")
    ] = None,
    principal: Annotated[str | None, typer.Option("--principal", help="Only this principal's events.")] = None,
    operation: Annotated[str | None, typer.Option("--operation", help="Only this operation (e.g. DeleteApp).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many events (newest first).")] = 50,
    all_pages: Annotated[bool, typer.Option("--all", help="Every matching event, however many (no --limit).")] = False,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """The audit log, newest first: every change and every refusal, with who, from where and the outcome."""
    args: dict[str, Any] = {}
    if since:
        args["StartTime"] = parse_since(since)
    if principal:
        args["PrincipalName"] = principal
    if operation:
        args["Operation"] = operation
    events, more = _run(
        endpoint_url,
        profile,
        lambda ext: _pages(ext.list_audit_events, "AuditEvents", None if all_pages else limit, **args),
    )
    print_result({"AuditEvents": events}, output, AUDIT_COLUMNS + ["RequestId"], events)
    if more:
        err.print(f"(the {len(events)} newest shown; more with --limit N or --all)")


def whoami(output: Output = "table", endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """Who the credentials in use sign in as: principal, role, bound user profile, access key."""
    result = _run(endpoint_url, profile, lambda ext: ext.get_caller_identity())
    print_result(result, output, ["PrincipalName", "Role", "DomainId", "UserProfileName", "AccessKeyId"])
