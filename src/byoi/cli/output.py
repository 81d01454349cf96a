"""What the CLI prints and the statuses it exits with, without typer: the two consoles, the exit codes, one-line
errors and JSON/YAML documents.

Why a module of its own: `byoi build` runs without typer (byoi/cli/entry.py), and byoi.cli.common, which
re-exports all of this for the other commands, imports typer for its option types. The consoles are made
once, here, so both doors print through the same two objects.

Why rich is imported only when a terminal is written to: `byoi build` is the command run in loops and scripts,
and importing rich cost a quarter of its start-up (25 ms of about 100). On a terminal rich gives colour,
progress bars and spinners; anywhere else (a pipe, a file, CI) its output is the text as is, so `Stream`
writes that text itself. `console` and `err`, rich's two Consoles for the typer commands' tables and markup,
are made on first use.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from enum import IntEnum

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from rich.console import Console

console: Console  # stdout; never wraps or recolours names and ARNs: people copy them
err: Console  # stderr; an error is one line, however long


def __getattr__(name: str) -> Console:
    """`console` and `err`, made when first asked for (by `from byoi.cli.output import console`, say)."""
    if name not in ("console", "err"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _rich(stderr=name == "err")


def _rich(stderr: bool) -> Console:
    made = globals()
    if "console" not in made:
        from rich.console import Console

        made["console"] = Console(soft_wrap=True, highlight=False)
        made["err"] = Console(stderr=True, soft_wrap=True, highlight=False)
    return made["err" if stderr else "console"]  # type: ignore[no-any-return]


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
    from rich.markup import escape

    return escape(str(value))


def is_terminal(stream: Any) -> bool:
    """Whether rich would treat `stream` as a terminal: TTY_COMPATIBLE=1/0 decides, then FORCE_COLOR (set and not
    empty: yes), then the stream's isatty()."""
    forced = os.environ.get("TTY_COMPATIBLE", "")
    if forced in ("0", "1"):
        return forced == "1"
    if "FORCE_COLOR" in os.environ:
        return os.environ["FORCE_COLOR"] != ""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed (at the end of a test run, say)
        return False


_STRIPPED = dict.fromkeys((7, 8, 11, 12, 13))  # BEL, BS, VT, FF, CR: rich's strip_control_codes


class Stream:
    """stdout or stderr, for lines meant for people: through rich's Console on a terminal (colour, progress bars,
    spinners), written as they are everywhere else, as rich would write them there but without importing it.

    The text is never read as markup or emoji codes: what a build prints ("[ok] :done:") is shown as it is."""

    def __init__(self, stderr: bool) -> None:
        self.stderr = stderr

    @property
    def file(self) -> Any:
        return sys.stderr if self.stderr else sys.stdout  # looked up each time: tests and tools swap them

    @property
    def terminal(self) -> bool:
        return is_terminal(self.file)

    @property
    def rich(self) -> Console:
        return _rich(self.stderr)

    def line(self, text: str, style: str | None = None) -> None:
        """One line of `text`, in `style` (a rich style, such as "bold cyan") on a terminal."""
        if self.terminal:
            self.rich.print(text, style=style, markup=False, highlight=False, emoji=False)
        else:  # as rich writes it off a terminal: without the control codes it strips, tabs expanded
            self.file.write(text.translate(_STRIPPED).expandtabs(8) + "\n")
            self.file.flush()

    def error(self, message: str, label: str = "error") -> None:
        """`label: message` as a command's error line (the label in red on a terminal)."""
        if self.terminal:
            self.rich.print(f"[red]{label}[/red]: ", end="")
            self.rich.print(message, markup=False, highlight=False, emoji=False)
        else:
            self.line(f"{label}: {message}")

    def status(self, text: str) -> AbstractContextManager[object]:
        """A spinner with `text` while the block runs, on a terminal; nothing elsewhere (as rich shows nothing)."""
        return self.rich.status(text) if self.terminal else nullcontext()


stdout, stderr = Stream(stderr=False), Stream(stderr=True)


def error_line(message: str) -> None:
    """A command's one error line on stderr."""
    stderr.error(message)


def people(output: str) -> Stream:
    """Where progress and notes go: stdout for a table, stderr when stdout carries a JSON or YAML document."""
    return stdout if output == "table" else stderr


def for_people(output: str) -> Console:
    """`people`'s stream as rich's Console, for the commands that print tables and markup through it."""
    return people(output).rich


def document(data: Any) -> Any:
    """The API's answer as plain JSON data: without ResponseMetadata, times as ISO 8601 text."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "ResponseMetadata"}
    return json.loads(json.dumps(data, default=_plain))


def _plain(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def print_document(data: Any, output: str) -> None:
    """`data` as JSON or YAML on stdout (JSON coloured on a terminal, indented as rich indents it)."""
    if output == "yaml":
        import yaml

        text = yaml.safe_dump(document(data), sort_keys=False, allow_unicode=True)
    elif stdout.terminal:
        stdout.rich.print_json(json.dumps(document(data)))
        return
    else:
        text = json.dumps(document(data), indent=2, ensure_ascii=False) + "\n"
    stdout.file.write(text)
    stdout.file.flush()
