"""What every client command shares: finding the server, calling it, printing results, errors and exit codes.

Start-up matters for a command a person types: this module imports only typer and rich's console. botocore
(for its exceptions), rich's tables and PyYAML are imported when a command first needs them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

from byoi.cli.client import ClientSetupError, extension_client, sagemaker_client

if TYPE_CHECKING:
    from botocore.exceptions import BotoCoreError, ClientError

console = Console(soft_wrap=True, highlight=False)  # never wrap or recolour names and ARNs: people copy them
err = Console(stderr=True, soft_wrap=True, highlight=False)  # an error is one line, however long


class ExitCode(IntEnum):
    """The exit status of every `byoi` command (docs/cli.md lists them; a test keeps the two the same)."""

    OK = 0
    ERROR = 1  # anything not below: the server's own failure, a conflict, an unexpected answer
    USAGE = 2  # the command line is wrong (click's own checks, options that do not go together, a bad setting)
    INVALID_INPUT = 4  # a value breaks the API's rules (ValidationException, or the same check made before sending)
    NOT_FOUND = 5  # the image, version, domain, user, session, build or key named does not exist
    ACCESS_DENIED = 6  # no credentials, credentials the server does not accept, or a role that may not do this
    FAILED = 7  # the work ran and ended badly: a build FAILED, a version CREATE_FAILED, a session Failed
    UNAVAILABLE = 69  # the byoi server (or for `byoi up`/`byoi doctor`, Docker Engine, a registry) does not answer
    INTERRUPTED = 130  # Ctrl-C; the message says whether the work on the server was stopped or left running


# The one table from the API's error codes (errors.py, and AWS's own for signatures) to exit statuses;
# every other code is ExitCode.ERROR.
API_EXIT_CODES: dict[str, ExitCode] = {
    "ValidationException": ExitCode.INVALID_INPUT,
    "SerializationException": ExitCode.INVALID_INPUT,
    "RequestEntityTooLargeException": ExitCode.INVALID_INPUT,
    "ResourceNotFound": ExitCode.NOT_FOUND,
    "AccessDeniedException": ExitCode.ACCESS_DENIED,
    "MissingAuthenticationTokenException": ExitCode.ACCESS_DENIED,
    "IncompleteSignatureException": ExitCode.ACCESS_DENIED,
    "InvalidSignatureException": ExitCode.ACCESS_DENIED,
    "UnrecognizedClientException": ExitCode.ACCESS_DENIED,
}


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


def literal(value: Any) -> str:
    """`value` as text for a rich markup string, shown as is: server- and user-provided text (a FailureReason
    names each failed rule in [brackets], "[r-present]") would otherwise be taken for markup tags and dropped."""
    return escape(str(value))


def _line(message: str) -> None:
    # markup off for the message itself: botocore's texts may hold [brackets] that rich would swallow.
    err.print("[red]error[/red]: ", end="")
    err.print(message, markup=False, highlight=False)


def stop(message: str, code: ExitCode) -> typer.Exit:
    """Print `message` as the command's one error line and return the Exit to raise."""
    _line(message)
    return typer.Exit(code)


def for_people(output: str) -> Console:
    """Where progress and notes go: stdout for a table, stderr when stdout carries a JSON or YAML document."""
    return console if output == "table" else err


def document(data: Any) -> Any:
    """The API's answer as plain JSON data: without ResponseMetadata, times as ISO 8601 text."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "ResponseMetadata"}
    return json.loads(json.dumps(data, default=_plain))


def _plain(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def print_document(data: Any, output: str) -> None:
    """`data` as JSON or YAML on stdout."""
    if output == "yaml":
        import yaml

        console.print(yaml.safe_dump(document(data), sort_keys=False, allow_unicode=True), end="", markup=False)
        return
    console.print_json(json.dumps(document(data)))


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
