"""Logs for people and for machines, carrying the request id that is also returned in `x-amzn-RequestId`.

Two formats of the same records on stderr: JSON lines (`JsonFormatter`, for a log collector) and one
readable line each (`TextFormatter`: time, level, logger, message, then the request's fields), coloured on a
terminal. `auto`, the default, is text when stderr is a terminal and JSON otherwise.

Libraries' INFO lines (alembic's migrations, uvicorn's start-up and access lines, httpx2's requests,
aiodocker) are chatter to a person running byoi: they are shown as DEBUG, so they appear only with
`--log-level debug`. Their warnings and errors are kept as they are, and their own DEBUG lines are never
shown (a line per SQL statement or socket event is for debugging the library, not byoi).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from typing import Literal, get_args

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

Level = Literal["debug", "info", "warning", "error", "critical"]
Format = Literal["auto", "text", "json"]
LEVELS: tuple[str, ...] = get_args(Level)
FORMATS: tuple[str, ...] = get_args(Format)

# The fields byoi adds to a record (`extra=`), in the order both formats show them.
FIELDS = ("request_id", "operation", "status", "duration_ms", "error_code", "principal")
_SAID = ("operation", "error_code")  # left out of a text line whose message names them already

# Loggers whose INFO lines are chatter (a logger named so, or a child of one).
CHATTER = ("alembic", "uvicorn", "httpx2", "httpcore2", "httpx", "httpcore", "aiodocker")
# uvicorn's line naming the address it listens on stays at INFO: it says where byoi is, and tests and
# scripts wait for it.
_KEPT = "Uvicorn running on "


def _record_fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {}
    rid = getattr(record, "request_id", None) or request_id.get()
    if rid:
        fields["request_id"] = rid
    for key in FIELDS[1:]:
        if hasattr(record, key):
            fields[key] = getattr(record, key)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_record_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_LEVEL_STYLE = {
    "DEBUG": "\x1b[2m",  # dim
    "INFO": "\x1b[32m",  # green
    "WARNING": "\x1b[33;1m",  # bold yellow
    "ERROR": "\x1b[31;1m",  # bold red
    "CRITICAL": "\x1b[41;97;1m",  # white on red
}


class TextFormatter(logging.Formatter):
    """`14:42:35.430 INFO     byoi.api  ListImages ok  request_id=… status=200 duration_ms=3.1`, local time;
    with `color`, the level is coloured and the time, logger and fields are dimmed. A traceback follows on
    its own lines, as Python prints it."""

    def __init__(self, color: bool = False) -> None:
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        level = f"{record.levelname:<8}"
        message = record.getMessage()
        fields = " ".join(
            f"{key}={value}"
            for key, value in _record_fields(record).items()
            if value is not None and not (key in _SAID and str(value) in message)  # "ListImages ok": said
        )
        if self.color:
            style = _LEVEL_STYLE.get(record.levelname, "")
            stamp, level = f"{_DIM}{stamp}{_RESET}", f"{style}{level}{_RESET}"
            name, fields = f"{_DIM}{record.name}{_RESET}", fields and f"{_DIM}{fields}{_RESET}"
        else:
            name = record.name
        line = f"{stamp} {level} {name}  {message}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class ChatterAsDebug(logging.Filter):
    """Show the libraries' INFO lines as DEBUG, and drop them below `level` (a handler filter: it sees the
    records of every logger, after each logger's own level has let them through)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and is_chatter(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self.level


def is_chatter(record: logging.LogRecord) -> bool:
    if not any(record.name == name or record.name.startswith(name + ".") for name in CHATTER):
        return False
    return not (record.name == "uvicorn.error" and str(record.msg).startswith(_KEPT))


def use_text(log_format: str, stream: object) -> bool:
    """Whether `log_format` means readable lines on `stream`: `auto` is text on a terminal only."""
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())
    return log_format == "text"


def use_color(stream: object) -> bool:
    """Colours on a terminal, unless NO_COLOR is set (https://no-color.org)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


def configure(level: str = "INFO", log_format: str = "auto") -> None:
    """Send every record to stderr in `log_format` (one of FORMATS), from `level` up (one of LEVELS, any case)."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    threshold = logging.getLevelNamesMapping()[level.upper()]
    handler = logging.StreamHandler(sys.stderr)
    text = use_text(log_format, sys.stderr)
    handler.setFormatter(TextFormatter(color=use_color(sys.stderr)) if text else JsonFormatter())
    handler.addFilter(ChatterAsDebug(threshold))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # byoi's own loggers at the level asked for; the libraries' never below INFO (their DEBUG lines, a line per
    # SQL statement or socket event, are for debugging them, not byoi), so debug shows their INFO lines.
    root.setLevel(max(threshold, logging.INFO))
    logging.getLogger("byoi").setLevel(threshold)
