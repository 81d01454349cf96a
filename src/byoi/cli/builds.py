"""`byoi build PATH --image NAME …` and `byoi builds list|describe|logs|stop`.

`byoi build` packs the directory (honouring `.dockerignore`), uploads it to the signed context endpoint,
starts the build with `Byoi.StartImageBuild`, and follows its event stream: build steps as they run, a
progress bar per layer while pushing, then the pushed reference with its digest, and with `--register`
the new image version once it is CREATED. Ctrl-C asks whether to stop the build on the server too (without a
terminal to ask on, it keeps running and the CLI says how to stop it). With `--output json|yaml`, the log goes to
stderr and stdout gets the build's description when it ends.

The build itself runs in byoi.cli.build_run, without typer or botocore, so that the console script's quick path
(byoi.cli.entry) runs the very same code; the `build` command here only declares the options and turns its
exit status into typer's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from byoi.build.base import BUILD_ID, BUILD_ID_FORMAT
from byoi.cli import build_run, wire
from byoi.cli.build_run import (  # noqa: F401 - re-exported for the tests and scripts that drive builds directly
    TERMINAL,
    LogView,
    StreamPosition,
    follow,
    parse_pairs,
    upload_context,
)
from byoi.cli.common import (
    EndpointUrl,
    ExitCode,
    Output,
    Profile,
    call,
    console,
    print_document,
    print_result,
)

builds_app = typer.Typer(help="Image builds: from a Dockerfile to a pushed image.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `byoi build` and `byoi builds …` to the top-level app (called once from cli/main.py)."""
    app.command("build")(build)
    app.add_typer(builds_app, name="builds")


def _fail(message: str, code: ExitCode = ExitCode.USAGE) -> typer.Exit:
    """build_run's one error line, as typer's exit."""
    return typer.Exit(build_run.fail(message, code).code)


@contextmanager
def _typer_exits() -> Iterator[None]:
    """build_run's Exit (its line already printed) as typer's."""
    try:
        yield
    except build_run.Exit as exc:
        raise typer.Exit(exc.code) from None


class Signed(wire.Client):
    """Signs requests to byoi's build routes with the same credentials boto3 would use."""

    def __init__(self, endpoint_url: str | None, profile: str | None) -> None:
        try:
            super().__init__(wire.setup(endpoint_url, profile))
        except wire.NoCredentials as exc:
            raise _fail(str(exc), ExitCode.ACCESS_DENIED) from None


def check_build_id(build_id: str) -> str:
    """A build id is checked before it is put into a URL path (`../../x` would leave /byoi/builds/)."""
    if not BUILD_ID.fullmatch(build_id):
        message = f"{build_id!r} is not a build id ({BUILD_ID_FORMAT}; see `byoi builds list`)"
        raise _fail(message, ExitCode.INVALID_INPUT)
    return build_id


def build(
    path: Annotated[Path, typer.Argument(help="Build context directory.")],
    image: Annotated[str, typer.Option("--image", "-i", help="Repository to push to (and image to register).")],
    tag: Annotated[str, typer.Option("--tag", "-t")] = "latest",
    file: Annotated[str | None, typer.Option("--file", "-f", help="Dockerfile (default PATH/Dockerfile).")] = None,
    build_arg: Annotated[list[str] | None, typer.Option("--build-arg", help="KEY=VALUE (repeatable).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE (repeatable).")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Build stage to stop at.")] = None,
    platform: Annotated[str | None, typer.Option("--platform", help="os/arch or os/arch/variant")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
    registry: Annotated[str | None, typer.Option("--registry", help="host:port of a configured registry.")] = None,
    register_version: Annotated[
        bool, typer.Option("--register", help="Create a new version of image NAME pinned to the pushed digest.")
    ] = False,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Start the build and print its id.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Show steps but not their output.")] = False,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Build an image from a Dockerfile on the byoi server's builder and push it to the registry."""
    with _typer_exits():
        build_run.build(
            path=path,
            image=image,
            tag=tag,
            file=file,
            build_arg=build_arg,
            label=label,
            target=target,
            platform=platform,
            no_cache=no_cache,
            registry=registry,
            register_version=register_version,
            detach=detach,
            quiet=quiet,
            output=output,
            endpoint_url=endpoint_url,
            profile=profile,
        )


# -- byoi builds … -------------------------------------------------------------------------------


@builds_app.command("list")
def builds_list(
    status: Annotated[str | None, typer.Option("--status")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Only builds that register this image.")] = None,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """List builds, newest first."""
    args: dict[str, Any] = {}
    if status:
        args["StatusEquals"] = status.upper()
    if image:
        args["ImageNameEquals"] = image

    def fetch(c: Any) -> list[dict[str, Any]]:
        found, token = [], None
        while True:
            page = c.list_image_builds(**args, **({"NextToken": token} if token else {}))
            found += page["ImageBuilds"]
            token = page.get("NextToken")
            if not token:
                return found

    rows = call(endpoint_url, profile, fetch, extension=True)
    print_result({"ImageBuilds": rows}, output, ["BuildId", "BuildStatus", "ImageUri", "CreationTime"], rows)


@builds_app.command("describe")
def builds_describe(
    build_id: str, output: Output = "json", endpoint_url: EndpointUrl = None, profile: Profile = None
) -> None:
    """Describe a build: status, times, digest, registered version, failure reason."""
    check_build_id(build_id)
    result = call(endpoint_url, profile, lambda c: c.describe_image_build(BuildId=build_id), extension=True)
    print_result(result, output, ["BuildId", "BuildStatus", "ImageUri", "ImageDigest", "FailureReason"])


@builds_app.command("logs")
def builds_logs(
    build_id: str,
    follow_log: Annotated[bool, typer.Option("--follow", "-f", help="Follow until the build ends.")] = False,
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Print a build's log (all of it, or followed live with -f)."""
    check_build_id(build_id)
    signed = Signed(endpoint_url, profile)
    if follow_log:

        def follow_it(c: Any) -> bool:
            stop = lambda: c.stop_image_build(BuildId=build_id)  # noqa: E731
            return build_run.follow_with_stop(signed, stop, build_id, LogView())

        with _typer_exits():
            if call(endpoint_url, profile, follow_it, extension=True):
                raise typer.Exit(ExitCode.INTERRUPTED)  # Ctrl-C, and the build was stopped
        return
    with _typer_exits():
        try:
            response = signed.request("GET", f"/byoi/builds/{build_id}/log", timeout=60)
        except wire.TransportError as exc:
            raise build_run.unreachable(signed.endpoint, exc) from None
        if response.status != 200:
            raise build_run.refused("", response)
    console.print(response.text, end="", markup=False, highlight=False)


@builds_app.command("stop")
def builds_stop(
    build_id: str, output: Output = "table", endpoint_url: EndpointUrl = None, profile: Profile = None
) -> None:
    """Stop a queued or running build."""
    check_build_id(build_id)
    result = call(endpoint_url, profile, lambda c: c.stop_image_build(BuildId=build_id), extension=True)
    if output != "table":
        print_document(result, output)
        return
    note = "" if result["BuildStatus"] in TERMINAL else " (stopping)"
    console.print(f"{result['BuildId']} {result['BuildStatus']}{note}", markup=False)
