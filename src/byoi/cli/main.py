"""The `byoi` command."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from typer.core import TyperGroup

from byoi import logs
from byoi.cli import admin as admin_cli
from byoi.cli import builds as builds_cli
from byoi.cli import doctor as doctor_cli
from byoi.cli import domains as domains_cli
from byoi.cli import inspect as inspect_cli
from byoi.cli import master_key as master_key_cli
from byoi.cli import sessions as sessions_cli
from byoi.cli.common import (
    EndpointUrl,
    ExitCode,
    Output,
    Profile,
    ask_to_stop,
    call,
    console,
    err,
    fail,
    for_people,
    is_client_failure,
    print_document,
    print_line,
    print_result,
    version_args,
)
from byoi.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    RegistryConfig,
    Settings,
    default_data_dir,
    load_registries_file,
    parse_registry_url,
    tuning_from_env,
)

# Client commands import only what they use (`python -X importtime -m byoi --help`): the server's settings,
# botocore and rich's tables are imported where they are needed, never at start-up.


class _OneLineErrors(TyperGroup):
    """The safety net behind `common.call`: a client setup or botocore error that escapes a command (one that
    signs its own HTTP, say) is printed as one line with its exit status, never as a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if is_client_failure(exc):
                raise fail(exc) from None  # type: ignore[arg-type]
            raise


app = typer.Typer(
    cls=_OneLineErrors,
    help="byoi: bring your own image to RStudio, self-hosted and SageMaker-compatible.",
    no_args_is_help=True,
)
images_app = typer.Typer(help="Images: named holders of image versions.", no_args_is_help=True)
versions_app = typer.Typer(help="Image versions: immutable, digest-pinned container images.", no_args_is_help=True)
app.add_typer(images_app, name="images")
app.add_typer(versions_app, name="versions")
domains_cli.register(app)  # byoi domains|users|attach|detach
images_app.command("available")(domains_cli.domains_available)  # the name for `byoi domains available`
builds_cli.register(app)  # byoi build, byoi builds list|describe|logs|stop
inspect_cli.register(versions_app)  # byoi versions report|diff
sessions_cli.register(app)  # byoi launch, byoi sessions list|describe|logs|stop
admin_cli.register(app)  # byoi admin users|keys|password|sessions|audit, byoi whoami
master_key_cli.register(app)  # byoi rotate-master-key (offline)
doctor_cli.register(app)  # byoi doctor

# -- server options, shared by `server` and `up` -------------------------------------------------

DataDir = Annotated[Path, typer.Option("--data-dir", envvar="BYOI_DATA_DIR", help="Where byoi keeps its state.")]
Host = Annotated[str, typer.Option(help="Address to listen on.")]
Port = Annotated[int, typer.Option(help="Port to listen on.")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", envvar="BYOI_DATABASE_URL", help="PostgreSQL URL; default SQLite in the data dir."),
]
Registry = Annotated[
    list[str] | None,
    typer.Option("--registry", envvar="BYOI_REGISTRY", help="Registry URL (repeatable; the first is the default)."),
]
UpRegistry = Annotated[
    list[str] | None,
    typer.Option(
        "--registry",
        envvar="BYOI_REGISTRY",
        help="Another registry URL (repeatable); the local one stays the default.",
    ),
]
RegistriesFile = Annotated[
    Path | None,
    typer.Option(
        "--registries-file",
        envvar="BYOI_REGISTRIES_FILE",
        # Help texts are rich markup: unescaped, "[[registry]]" would show as "[]".
        help=escape("TOML file of [[registry]] url/username/password."),
    ),
]
DockerConfig = Annotated[
    Path | None,
    typer.Option(
        "--docker-config", envvar="BYOI_DOCKER_CONFIG", help="Docker config.json to read registry credentials from."
    ),
]
Region = Annotated[str, typer.Option(envvar="BYOI_REGION")]
Account = Annotated[str, typer.Option("--account-id", envvar="BYOI_ACCOUNT_ID")]
Platform = Annotated[str, typer.Option(envvar="BYOI_PLATFORM", help="Platform image indexes resolve to.")]
LogLevel = Annotated[
    logs.Level,
    typer.Option(
        envvar="BYOI_LOG_LEVEL",
        case_sensitive=False,
        help="Lowest level logged; debug also shows the libraries' lines (migrations, uvicorn, HTTP clients).",
    ),
]
LogFormat = Annotated[
    logs.Format,
    typer.Option(
        envvar="BYOI_LOG_FORMAT",
        help="Log lines on stderr: text (readable, coloured on a terminal), json (one object a line), "
        "or auto: text on a terminal, else json.",
    ),
]
TlsCert = Annotated[
    Path | None,
    typer.Option(envvar="BYOI_TLS_CERT", help="Serve HTTPS with this PEM certificate (chain); needs --tls-key."),
]
RuntimeOpt = Annotated[
    str,
    typer.Option(
        "--runtime",
        envvar="BYOI_RUNTIME",
        help="Where sessions run: docker (Docker Engine here) or kubernetes (a cluster; docs/kubernetes.md).",
    ),
]
BuilderOpt = Annotated[
    str,
    typer.Option(
        "--builder",
        envvar="BYOI_BUILDER",
        help="How images are built: docker (Docker Engine) or kubernetes (BuildKit Jobs; docs/kubernetes.md).",
    ),
]
TlsKey = Annotated[Path | None, typer.Option(envvar="BYOI_TLS_KEY", help="The PEM private key of --tls-cert.")]


def _settings(
    data_dir: Path,
    host: str,
    port: int,
    database_url: str | None,
    registry: list[str] | None,
    registries_file: Path | None,
    docker_config: Path | None,
    region: str,
    account_id: str,
    platform: str,
    runtime: str | None = None,
    builder: str | None = None,
) -> Settings:
    try:
        urls = [parse_registry_url(u) for u in (registry or [])]
        extra = load_registries_file(registries_file) if registries_file else []
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from None
    by_url = {r.url: r for r in extra}
    # dict.fromkeys: a URL given twice (e.g. `byoi up --registry` naming the local one) is one registry.
    registries = [by_url.pop(u, RegistryConfig(u)) for u in dict.fromkeys(urls)] + list(by_url.values())
    if not registries:
        registries = [RegistryConfig("http://127.0.0.1:5000")]
    if not account_id.isdigit() or len(account_id) != 12:
        raise typer.BadParameter(f"--account-id must be 12 digits, not {account_id!r}")
    if docker_config is None and os.environ.get("DOCKER_CONFIG"):
        docker_config = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    from byoi.build.settings import BuildSettings
    from byoi.runtime.instance_types import InstanceTypes
    from byoi.runtime.settings import RuntimeSettings

    try:
        tuning = tuning_from_env(os.environ)
        # Read here too (the server reads them again on start) so a bad value stops `byoi server` with a
        # usage error naming it, rather than failing the app's startup with a traceback.
        BuildSettings.from_env(dict(os.environ) if builder is None else {**os.environ, "BYOI_BUILDER": builder})
        from byoi.auth.oidc import OidcSettings  # here: client commands need not load authlib

        OidcSettings.from_env(os.environ)
        session_env = dict(os.environ) if runtime is None else {**os.environ, "BYOI_RUNTIME": runtime}
        sessions = RuntimeSettings.from_env(session_env)
        InstanceTypes.load(sessions.instance_types)
        from byoi.runtime.docker import default_socket_root, socket_path_problem

        homes = sessions.homes(data_dir.expanduser().resolve())
        problem = socket_path_problem(sessions.socket_dir or default_socket_root(homes.parent))
        if problem and sessions.runtime == "docker":  # sessions on Kubernetes listen on a port in their pod
            raise ValueError(problem)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return Settings(
        data_dir=data_dir.expanduser().resolve(),
        host=host,
        port=port,
        database_url=database_url,
        registries=tuple(registries),
        docker_config=docker_config,
        region=region,
        account_id=account_id,
        platform=platform,
        master_key=os.environ.get("BYOI_MASTER_KEY"),
        runtime=runtime,
        builder=builder,
        **tuning,  # type: ignore[arg-type]
    )


@app.command()
def server(
    data_dir: DataDir = default_data_dir(),
    host: Host = DEFAULT_HOST,
    port: Port = DEFAULT_PORT,
    database_url: DatabaseUrl = None,
    registry: Registry = None,
    registries_file: RegistriesFile = None,
    docker_config: DockerConfig = None,
    region: Region = "us-east-1",
    account_id: Account = "000000000000",
    platform: Platform = "linux/amd64",
    log_level: LogLevel = "info",
    log_format: LogFormat = "auto",
    inspection_config: inspect_cli.InspectionConfigOpt = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    runtime: RuntimeOpt = "docker",
    builder: BuilderOpt = "docker",
) -> None:
    """Serve the SageMaker-compatible API."""
    from byoi.cli.server import run_server, with_tls

    settings = _settings(
        data_dir,
        host,
        port,
        database_url,
        registry,
        registries_file,
        docker_config,
        region,
        account_id,
        platform,
        runtime,
        builder,
    )
    run_server(
        with_tls(inspect_cli.with_inspection(settings, inspection_config), tls_cert, tls_key),
        log_level,
        log_format,
    )


@app.command()
def up(
    data_dir: DataDir = default_data_dir(),
    host: Host = DEFAULT_HOST,
    port: Port = DEFAULT_PORT,
    registry_port: Annotated[int, typer.Option(help="Port of the local registry on 127.0.0.1.")] = 5000,
    database_url: DatabaseUrl = None,
    registry: UpRegistry = None,
    registries_file: RegistriesFile = None,
    docker_config: DockerConfig = None,
    region: Region = "us-east-1",
    account_id: Account = "000000000000",
    platform: Platform = "linux/amd64",
    log_level: LogLevel = "info",
    log_format: LogFormat = "auto",
    inspection_config: inspect_cli.InspectionConfigOpt = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Check Docker Engine, start a local registry and the server using it (one machine). Ctrl-C stops both."""
    from byoi.cli.server import run_up, with_tls

    settings = _settings(
        data_dir,
        host,
        port,
        database_url,
        [f"http://127.0.0.1:{registry_port}", *(registry or [])],  # the local registry stays the default
        registries_file,
        docker_config,
        region,
        account_id,
        platform,
    )
    run_up(
        with_tls(inspect_cli.with_inspection(settings, inspection_config), tls_cert, tls_key),
        registry_port,
        log_level,
        log_format,
    )


# -- client commands (catalog); other areas live in their own cli/<area>.py modules ------------


@images_app.command("create")
def images_create(
    name: str,
    role_arn: Annotated[
        str, typer.Option(help="Kept and echoed, as on SageMaker.")
    ] = "arn:aws:iam::000000000000:role/byoi",
    description: Annotated[str | None, typer.Option()] = None,
    display_name: Annotated[str | None, typer.Option()] = None,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Create an image."""
    args: dict[str, Any] = {"ImageName": name, "RoleArn": role_arn}
    if description:
        args["Description"] = description
    if display_name:
        args["DisplayName"] = display_name
    result = call(endpoint_url, profile, lambda c: c.create_image(**args))
    print_line(result, output, result["ImageArn"])


@images_app.command("list")
def images_list(output: Output = "table", endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """List images, newest first."""

    def fetch(c: Any) -> list[dict[str, Any]]:
        return [i for page in c.get_paginator("list_images").paginate() for i in page["Images"]]

    found = call(endpoint_url, profile, fetch)
    print_result({"Images": found}, output, ["ImageName", "ImageStatus", "CreationTime", "DisplayName"], found)


@images_app.command("describe")
def images_describe(
    name: str, output: Output = "json", endpoint_url: EndpointUrl = None, profile: Profile = None
) -> None:
    """Describe an image."""
    result = call(endpoint_url, profile, lambda c: c.describe_image(ImageName=name))
    print_result(result, output, ["ImageName", "ImageStatus", "ImageArn", "FailureReason"])


@images_app.command("delete")
def images_delete(name: str, endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """Delete an image and all its versions (the container images in the registry are kept)."""
    call(endpoint_url, profile, lambda c: c.delete_image(ImageName=name))
    console.print(f"deleting {name}")


@versions_app.command("create")
def versions_create(
    image: str,
    base_image: str,
    alias: Annotated[list[str] | None, typer.Option("--alias")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the version is CREATED or CREATE_FAILED.")] = True,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Create an image version from a container image reference (resolved and pinned to its digest)."""
    args: dict[str, Any] = {"ImageName": image, "BaseImage": base_image, "ClientToken": str(uuid.uuid4())}
    if alias:
        args["Aliases"] = alias
    say = for_people(output)
    created = call(endpoint_url, profile, lambda c: c.create_image_version(**args))
    arn, number = created["ImageVersionArn"], int(created["ImageVersionArn"].rsplit("/", 1)[1])
    if not wait:
        print_line(created, output, arn)
        return
    say.print(arn, markup=False)
    try:
        result = call(endpoint_url, profile, lambda c: _wait_for_version(c, image, number, base_image, say))
    except KeyboardInterrupt:
        _version_interrupted(endpoint_url, profile, image, number)
    status = result["ImageVersionStatus"]
    if output != "table":
        print_document(result, output)
    else:
        # markup off: a FailureReason names each failed rule in [brackets], which rich would swallow.
        console.print(f"{status}: {result.get('ContainerImage') or result.get('FailureReason', '')}", markup=False)
    if status != "CREATED":
        if output != "table":
            err.print(f"{status}: {result.get('FailureReason', '')}", markup=False)
        raise typer.Exit(ExitCode.FAILED)


def _wait_for_version(c: Any, image: str, number: int, base_image: str, say: Any) -> dict[str, Any]:
    import time

    with say.status(f"resolving {base_image} ..."):
        while True:
            d: dict[str, Any] = c.describe_image_version(ImageName=image, Version=number)
            if d["ImageVersionStatus"] != "CREATING":
                return d
            time.sleep(0.5)


def _version_interrupted(endpoint_url: str | None, profile: str | None, image: str, number: int) -> NoReturn:
    """Ctrl-C while a version resolves: delete it on the server too if the person says so; else it goes on."""
    ask_to_stop(
        f"Delete version {number} of {image} on the server too?",
        lambda: call(endpoint_url, profile, lambda c: c.delete_image_version(ImageName=image, Version=number)),
        f"deleting version {number} of {image}",
        f"version {number} of {image} is still being created on the server; see it with "
        f"`byoi versions describe {image} -v {number}`, delete it with `byoi versions delete {image} -v {number}`",
    )
    raise typer.Exit(ExitCode.INTERRUPTED)


@versions_app.command("delete")
def versions_delete(
    image: str,
    version: Annotated[int | None, typer.Option("--version", "-v")] = None,
    alias: Annotated[str | None, typer.Option("--alias")] = None,
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Delete a version (by --version or --alias; the container image in the registry is kept)."""
    if version is None and not alias:
        err.print("[red]error[/red]: name the version to delete with --version N or --alias NAME")
        raise typer.Exit(ExitCode.USAGE)
    call(endpoint_url, profile, lambda c: c.delete_image_version(**version_args(image, version, alias)))
    console.print(f"deleting version {version if version is not None else alias} of {image}", markup=False)


@versions_app.command("list")
def versions_list(
    image: str, output: Output = "table", endpoint_url: EndpointUrl = None, profile: Profile = None
) -> None:
    """List an image's versions, newest first."""

    def fetch(c: Any) -> list[dict[str, Any]]:
        pages = c.get_paginator("list_image_versions").paginate(ImageName=image)
        return [v for page in pages for v in page["ImageVersions"]]

    found = call(endpoint_url, profile, fetch)
    print_result(
        {"ImageVersions": found}, output, ["Version", "ImageVersionStatus", "CreationTime", "FailureReason"], found
    )


@versions_app.command("describe")
def versions_describe(
    image: str,
    version: Annotated[int | None, typer.Option("--version", "-v")] = None,
    alias: Annotated[str | None, typer.Option("--alias")] = None,
    output: Output = "json",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Describe a version (the newest when neither --version nor --alias is given)."""
    args = version_args(image, version, alias)
    result = call(endpoint_url, profile, lambda c: c.describe_image_version(**args))
    print_result(result, output, ["Version", "ImageVersionStatus", "ContainerImage", "FailureReason"])


def main() -> None:  # pragma: no cover - entry point for `python -m byoi`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
