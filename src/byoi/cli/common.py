"""What every client command shares: finding the server, calling it, printing results, errors and exit codes.

Start-up matters for a command a person types: this module imports only typer and rich's console. botocore
(for its exceptions), rich's tables and PyYAML are imported when a command first needs them. The consoles, exit
codes and documents live in byoi.cli.output (re-exported here), which `byoi build`'s quick path uses without typer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from byoi.cli.client import ClientSetupError, extension_client, sagemaker_client
from byoi.cli.output import (  # noqa: F401 - re-exported: the commands' one place for output and exit statuses
    API_EXIT_CODES,
    ExitCode,
    console,
    document,
    err,
    for_people,
    literal,
    print_document,
)
from byoi.cli.output import error_line as _line

if TYPE_CHECKING:
    from botocore.exceptions import BotoCoreError, ClientError


class Failed(Exception):
    """A command's failure in words, printed as one line on stderr; `code` is the exit status."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


# --output: "table" for people (a table, or the one line a command answers with); "json", the API's own answer
# without ResponseMetadata; "yaml", the same document as YAML.

EndpointUrl = Annotated[
    str | None, typer.Option("--endpoint-url", help="byoi API URL (else AWS_ENDPOINT_URL_SAGEMAKER).")
]
Profile = Annotated[str | None, typer.Option("--profile", help="AWS profile (else AWS_PROFILE).")]
Format = Literal["table", "json", "yaml"]
Output = Annotated[
    Format, typer.Option("--output", "-o", case_sensitive=False, help="table (for people), json or yaml.")
]


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
    failures into one readable line and the exit status for them."""
    try:
        client = (extension_client if extension else sagemaker_client)(endpoint_url, profile)
        return action(client)
    except Failed as exc:
        _line(str(exc))
        raise typer.Exit(exc.code) from None
    except Exception as exc:
        if is_client_failure(exc):
            raise fail(exc) from None
        raise


def is_client_failure(exc: BaseException) -> bool:
    """A failure `fail` words: the client's setup, or botocore's (the server's answer, the connection)."""
    if isinstance(exc, ClientSetupError):
        return True
    if "botocore" not in sys.modules:  # nothing made a client yet: it cannot be botocore's
        return False
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, (BotoCoreError, ClientError))


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def fail(exc: ClientError | ClientSetupError | BotoCoreError) -> typer.Exit:
    """Print what went wrong on one line of stderr and return the Exit to raise, with the status for it."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ParamValidationError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        _line(f"{error.get('Code')}: {error.get('Message')}")
        return typer.Exit(API_EXIT_CODES.get(error_code(exc), ExitCode.ERROR))
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError)):
        _line(f"cannot reach byoi at {exc.kwargs.get('endpoint_url')}: is `byoi up` running?")
        return typer.Exit(ExitCode.UNAVAILABLE)
    if isinstance(exc, NoCredentialsError):
        _line("no credentials: set AWS_PROFILE / AWS_SHARED_CREDENTIALS_FILE or use --profile")
        return typer.Exit(ExitCode.ACCESS_DENIED)
    if isinstance(exc, ParamValidationError):
        # botocore checks the request against the model before sending; its report is a header and one line
        # per problem ("Invalid length for parameter ImageName, value: 0, valid min length: 1").
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        _line("invalid input: " + "; ".join(problems or [str(exc)]))
        return typer.Exit(ExitCode.INVALID_INPUT)
    if isinstance(exc, ClientSetupError):
        _line(str(exc))
        return typer.Exit(ExitCode.USAGE)
    _line(str(exc) or type(exc).__name__)  # any other botocore failure (timeouts, closed connections...)
    return typer.Exit(ExitCode.ERROR)


def stop(message: str, code: ExitCode) -> typer.Exit:
    """Print `message` as the command's one error line and return the Exit to raise."""
    _line(message)
    return typer.Exit(code)


def print_result(data: Any, output: str, columns: list[str], rows: list[dict[str, Any]] | None = None) -> None:
    """JSON or YAML (the API's own answer, without ResponseMetadata), or a table of `columns`."""
    if output != "table":
        print_document(data, output)
        return
    from rich.table import Table

    table = Table(*columns)
    for row in rows if rows is not None else [data]:
        table.add_row(*[literal(row.get(c, "")) for c in columns])
    console.print(table)


def print_line(data: Any, output: str, line: str) -> None:
    """A command's answer: `line` for people, or the API's answer as JSON or YAML."""
    if output != "table":
        print_document(data, output)
    else:
        console.print(line, markup=False)


def ask_to_stop(question: str, stop: Callable[[], object], stopping: str, left_running: str) -> None:
    """After Ctrl-C during long work (a build, a launch, a version being resolved): ask `question`; on yes call
    `stop` and say `stopping`, and return (a build's log is then followed to its end); otherwise say
    `left_running` (how to follow or stop the work later) and exit with status 130."""
    if stop_on_server(question):
        stop()
        err.print(stopping, markup=False)
        return
    err.print(left_running, markup=False)
    raise typer.Exit(ExitCode.INTERRUPTED)


def stop_on_server(question: str) -> bool:
    """After Ctrl-C during long work: whether to stop that work on the server too. Asked on a terminal, where
    the default is no; without a terminal to ask on, the work is left running (the caller says how to stop it)."""
    if not sys.stdin.isatty():
        return False
    try:
        return typer.confirm(f"\n{question}", default=False, err=True)
    except (typer.Abort, KeyboardInterrupt, EOFError):  # a second Ctrl-C, or stdin closed: no
        return False
