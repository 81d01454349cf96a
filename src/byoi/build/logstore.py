"""The build log on disk: one JSON object per line, appended as the build runs, size-capped.

Records: {"t": time, "k": kind, ...} with kind `log` (a line of builder output, "m"), `note` (a line
from byoi itself, "m"), `step` (a Dockerfile
step starting: "n", "of", "m"), `push` (per-layer push progress: "id", "s", "c", "n"), `status` (the build's
new status, "s") and `truncated` (the cap was reached; later `log` and `push` records are dropped, status
records are still kept so readers always see the end). Readers follow the file by byte offset, which is
also the SSE event id, so a client can resume where it left off.

A reader in the process that writes the log need not wait for its next poll: `appended(path)` is a future that
completes at the next record written to `path` by this process. A reader on another server process (another
replica) has no such signal and reads on its poll, which bounds the wait either way.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

CAPPED_KINDS = ("log", "push")

# path -> futures of readers waiting for the next record (on the event loop that created them)
_waiting: dict[Path, list[asyncio.Future[None]]] = {}


async def wait_appended(path: Path, timeout: float) -> bool:
    """Wait until this process next appends a record to `path`, at most `timeout` seconds (see the module's
    docstring); whether one was appended."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = _waiting.setdefault(path, [])
    waiting.append(future)
    try:
        await asyncio.wait_for(future, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        if future in waiting:
            waiting.remove(future)
        if not waiting and _waiting.get(path) is waiting:
            del _waiting[path]


def _notify(path: Path) -> None:
    for future in _waiting.pop(path, ()):
        if not future.done():
            # Written from the loop's thread or from a worker thread (asyncio.to_thread): either way the future
            # completes on its own loop.
            future.get_loop().call_soon_threadsafe(_complete, future)


def _complete(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class BuildLog:
    """Appends records to `path`; keeps the last lines in memory for failure reasons."""

    def __init__(self, path: Path, limit: int, keep_lines: int = 20) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.limit = limit
        self._fh = path.open("ab")
        self.size = self._fh.tell()
        self.truncated = False
        self.last_lines: deque[str] = deque(maxlen=keep_lines)
        self._partial = ""

    def write(self, kind: str, **fields: Any) -> None:
        if kind == "log":
            self.last_lines.append(str(fields.get("m", "")))
        if kind in CAPPED_KINDS and self.size >= self.limit:
            if not self.truncated:
                self.truncated = True
                self._append({"k": "truncated", "m": f"log truncated at {self.limit} bytes"})
            return
        self._append({"k": kind, **fields})

    def emit(self, event: dict[str, Any]) -> None:
        """Write an event from a builder (`{"k": kind, ...}`)."""
        fields = {k: v for k, v in event.items() if k != "k"}
        self.write(str(event.get("k", "log")), **fields)

    def text(self, chunk: str) -> None:
        """Builder output arrives in arbitrary pieces: write it line by line."""
        self._partial += chunk
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self.write("log", m=line.rstrip("\r"))

    def flush_partial(self) -> None:
        if self._partial:
            self.write("log", m=self._partial)
            self._partial = ""

    def _append(self, record: dict[str, Any]) -> None:
        data = json.dumps({"t": round(time.time(), 3), **record}, separators=(",", ":")).encode() + b"\n"
        self._fh.write(data)
        self._fh.flush()  # readers tail the file while the build runs
        self.size += len(data)
        if self.path in _waiting:
            _notify(self.path)

    def close(self) -> None:
        self.flush_partial()
        self._fh.close()


def read_records(path: Path, offset: int = 0, max_bytes: int = 1 << 20) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """Whole records from byte `offset`: [(offset after the record, record)], and the new offset.

    A partly written last line is left for the next call. An offset past the end reads from the end (a client's
    stale or made-up event id must not skip what is written next), and one inside a record from the next one."""
    try:
        with path.open("rb") as fh:
            offset = min(offset, os.fstat(fh.fileno()).st_size)
            if offset > 0:
                fh.seek(offset - 1)
                if fh.read(1) != b"\n":
                    rest = fh.readline()
                    if not rest.endswith(b"\n"):
                        return [], offset  # that record is still being written
                    offset += len(rest)
            data = fh.read(max_bytes)
    except FileNotFoundError:
        return [], 0
    out: list[tuple[int, dict[str, Any]]] = []
    pos = offset
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        pos += len(line)
        try:
            out.append((pos, json.loads(line)))
        except ValueError:
            continue  # a damaged line (e.g. the disk filled up) is skipped, not fatal to readers
    return out, pos


def render(record: dict[str, Any]) -> str | None:
    """A record as the line `byoi builds logs` prints, or None for records that are not shown as text."""
    kind = record.get("k")
    if kind in ("log", "step", "truncated", "note"):
        return str(record.get("m", ""))
    if kind == "push" and record.get("s") and "c" not in record:
        return f"{record['id']}: {record['s']}" if record.get("id") else str(record["s"])
    if kind == "status":
        return f"--> {record.get('s')}" + (f": {record['m']}" if record.get("m") else "")
    return None


def render_text(path: Path) -> str:
    lines: list[str] = []
    offset = 0
    while True:
        records, new = read_records(path, offset)
        if new == offset:
            break
        offset = new
        lines.extend(t for _, r in records if (t := render(r)) is not None)
    return "\n".join(lines) + ("\n" if lines else "")
