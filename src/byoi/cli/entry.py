"""The `byoi` console script: `byoi build …` straight to its command, everything else through typer.

Why: a `byoi build` of an unchanged context is mostly fixed cost, and a third of it was typer itself. Typer
0.29 checks every parameter of the command it runs through a pydantic TypeAdapter, and importing pydantic for
that took 90 ms of each start (`python -X importtime`); parsing the whole command tree took more. Builds are
the command people run in a loop, so `build`'s options are parsed here with argparse, exactly as typer
declares them (tests/test_cli_shape.py compares the two parsers, option by option), and the same function
runs: `byoi.cli.build_run.build`, which typer's `byoi build` calls too, with the same checks, output and exit
statuses. That function and what it imports use neither typer, botocore nor httpx (byoi/cli/build_run.py says
why), so a plain build starts with the standard library, rich and regex alone.

Anything this parser does not take as a plain build (`--help`, a misspelt or missing option, a bad choice)
goes to typer, which answers it as it always has (the same usage messages and exit status 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn


class _NotPlain(Exception):
    """The arguments are not a plain `byoi build`: typer answers them."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _NotPlain(message)


def build_parser() -> argparse.ArgumentParser:
    """`byoi build`'s options as `byoi.cli.builds.build` declares them to typer (dest = its parameter name)."""
    p = _Parser(prog="byoi build", add_help=False, allow_abbrev=False)
    p.add_argument("path")
    p.add_argument("--image", "-i", required=True)
    p.add_argument("--tag", "-t", default="latest")
    p.add_argument("--file", "-f", default=None)
    p.add_argument("--build-arg", dest="build_arg", action="append", default=None)
    p.add_argument("--label", action="append", default=None)
    p.add_argument("--target", default=None)
    p.add_argument("--platform", default=None)
    p.add_argument("--no-cache", dest="no_cache", action="store_true", default=False)
    p.add_argument("--registry", default=None)
    p.add_argument("--register", dest="register_version", action="store_true", default=False)
    p.add_argument("--detach", "-d", action="store_true", default=False)
    p.add_argument("--quiet", "-q", action="store_true", default=False)
    p.add_argument("--output", "-o", type=str.lower, choices=("table", "json", "yaml"), default="table")
    p.add_argument("--endpoint-url", dest="endpoint_url", default=None)
    p.add_argument("--profile", default=None)
    return p


def plain_build(argv: list[str]) -> dict[str, Any] | None:
    """`build`'s keyword arguments when `argv` (after `byoi`) is a plain build, else None."""
    if argv[:1] != ["build"] or any(a in ("--help", "-h") for a in argv[1:]) or "_BYOI_COMPLETE" in os.environ:
        return None  # help and shell completion are typer's
    try:
        return vars(build_parser().parse_args(argv[1:]))
    except _NotPlain:
        return None


def main() -> None:
    args = plain_build(sys.argv[1:])
    if args is None:
        from byoi.cli.main import app

        app()
        return
    sys.exit(run_build(args))


def run_build(args: dict[str, Any]) -> int:
    """Run `byoi.cli.build_run.build` as typer runs it: its exit status, one line for a client failure (as
    `main._OneLineErrors` does), and click's "Aborted!" for a Ctrl-C the command does not handle itself."""
    from pathlib import Path

    from byoi.cli import build_run

    try:
        build_run.build(**{**args, "path": Path(args["path"])})
    except build_run.Exit as exc:
        return exc.code
    except KeyboardInterrupt:
        print("\nAborted!", file=sys.stderr)
        return 1
    except Exception as exc:
        if "botocore" in sys.modules:  # credentials only botocore finds (byoi.cli.wire) failed in its own words
            from byoi.cli.common import fail, is_client_failure

            if is_client_failure(exc):
                return int(fail(exc).exit_code)  # type: ignore[arg-type]
        raise
    return 0
