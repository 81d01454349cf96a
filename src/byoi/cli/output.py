"""What the CLI prints and the statuses it exits with, without typer: the two consoles, the exit codes, one-line
errors and JSON/YAML documents.

Why a module of its own: `byoi build` runs without typer (byoi/cli/entry.py), and byoi.cli.common, which
re-exports all of this for the other commands, imports typer for its option types. The consoles are made
once, here, so both doors print through the same two objects.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any

from rich.console import Console
from rich.markup import escape

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


def literal(value: Any) -> str:
    """`value` as text for a rich markup string, shown as is: server- and user-provided text (a FailureReason
    names each failed rule in [brackets], "[r-present]") would otherwise be taken for markup tags and dropped."""
    return escape(str(value))


def error_line(message: str) -> None:
    """A command's one error line on stderr."""
    # markup off for the message itself: botocore's texts may hold [brackets] that rich would swallow.
    err.print("[red]error[/red]: ", end="")
    err.print(message, markup=False, highlight=False)


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
