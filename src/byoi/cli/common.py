"""What every client command shares: finding the server, calling it, printing results and errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
)
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from byoi.cli.client import ClientSetupError, extension_client, sagemaker_client

console = Console(soft_wrap=True, highlight=False)  # never wrap or recolour names and ARNs: people copy them
err = Console(stderr=True, soft_wrap=True, highlight=False)  # an error is one line, however long

EndpointUrl = Annotated[
    str | None, typer.Option("--endpoint-url", help="byoi API URL (else AWS_ENDPOINT_URL_SAGEMAKER).")
]
Profile = Annotated[str | None, typer.Option("--profile", help="AWS profile (else AWS_PROFILE).")]
Output = Annotated[str, typer.Option("--output", "-o", help="table or json")]


def version_args(image: str, version: int | None, alias: str | None) -> dict[str, Any]:
    """Request members naming an image version by number or alias (neither: the newest)."""
    args: dict[str, Any] = {"ImageName": image}
    if version is not None:
        args["Version"] = version
    if alias:
        args["Alias"] = alias
    return args


def call(endpoint_url: str | None, profile: str | None, action: Callable[[Any], Any], extension: bool = False) -> Any:
    """Run `action(client)` with the SageMaker client (or, with `extension`, the Byoi.* client); turn
    failures into one readable line and a non-zero exit status."""
    try:
        client = (extension_client if extension else sagemaker_client)(endpoint_url, profile)
        return action(client)
    except (ClientError, ClientSetupError, BotoCoreError) as exc:
        raise fail(exc) from None


def fail(exc: ClientError | ClientSetupError | BotoCoreError) -> typer.Exit:
    """Print what went wrong on one line of stderr and return the Exit to raise: 2 when the user's input or
    setup is wrong (nothing was sent), 1 when the server refused or could not be reached."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        _line(f"{error.get('Code')}: {error.get('Message')}")
        return typer.Exit(1)
    if isinstance(exc, EndpointConnectionError):
        _line(f"cannot reach byoi at {exc.kwargs.get('endpoint_url')}: is `byoi up` running?")
        return typer.Exit(1)
    if isinstance(exc, NoCredentialsError):
        _line("no credentials: set AWS_PROFILE / AWS_SHARED_CREDENTIALS_FILE or use --profile")
        return typer.Exit(1)
    if isinstance(exc, ParamValidationError):
        # botocore checks the request against the model before sending; its report is a header and one line
        # per problem ("Invalid length for parameter ImageName, value: 0, valid min length: 1").
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        _line("invalid input: " + "; ".join(problems or [str(exc)]))
        return typer.Exit(2)
    if isinstance(exc, ClientSetupError):
        _line(str(exc))
        return typer.Exit(2)
    _line(str(exc) or type(exc).__name__)  # any other botocore failure (timeouts, closed connections...)
    return typer.Exit(1)


def literal(value: Any) -> str:
    """`value` as text for a rich markup string, shown as is: server- and user-provided text (a FailureReason
    names each failed rule in [brackets], "[r-present]") would otherwise be taken for markup tags and dropped."""
    return escape(str(value))


def _line(message: str) -> None:
    # markup off for the message itself: botocore's texts may hold [brackets] that rich would swallow.
    err.print("[red]error[/red]: ", end="")
    err.print(message, markup=False, highlight=False)


def print_result(data: Any, output: str, columns: list[str], rows: list[dict[str, Any]] | None = None) -> None:
    """JSON (the API's own answer, without ResponseMetadata) or a table of `columns`."""
    if output == "json":
        data = dict(data)
        data.pop("ResponseMetadata", None)
        console.print_json(json.dumps(data, default=str))
        return
    table = Table(*columns)
    for row in rows if rows is not None else [data]:
        table.add_row(*[literal(row.get(c, "")) for c in columns])
    console.print(table)
