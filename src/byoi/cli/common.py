"""What every client command shares: finding the server, calling it, printing results and errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from rich.console import Console
from rich.table import Table

from byoi.cli.client import extension_client, sagemaker_client

console = Console(soft_wrap=True)  # never wrap references and ARNs: people copy them
err = Console(stderr=True)

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
    failures into one readable line and exit status 1."""
    try:
        client = (extension_client if extension else sagemaker_client)(endpoint_url, profile)
        return action(client)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        err.print(f"[red]error[/red]: {error.get('Code')}: {error.get('Message')}")
        raise typer.Exit(1) from None
    except EndpointConnectionError as exc:
        err.print(f"[red]error[/red]: cannot reach byoi at {exc.kwargs.get('endpoint_url')}: is `byoi up` running?")
        raise typer.Exit(1) from None
    except NoCredentialsError:
        err.print("[red]error[/red]: no credentials: set AWS_PROFILE / AWS_SHARED_CREDENTIALS_FILE or use --profile")
        raise typer.Exit(1) from None


def print_result(data: Any, output: str, columns: list[str], rows: list[dict[str, Any]] | None = None) -> None:
    """JSON (the API's own answer, without ResponseMetadata) or a table of `columns`."""
    if output == "json":
        data = dict(data)
        data.pop("ResponseMetadata", None)
        console.print_json(json.dumps(data, default=str))
        return
    table = Table(*columns)
    for row in rows if rows is not None else [data]:
        table.add_row(*[str(row.get(c, "")) for c in columns])
    console.print(table)
