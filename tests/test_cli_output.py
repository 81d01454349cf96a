"""byoi.cli.output's two ways of writing for people: rich's Console on a terminal, the lines as they are
elsewhere, and `byoi build`'s log view in each; then a build against a server of the kind before the event
stream's end carried the build (the CLI asks DescribeImageBuild itself)."""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from byoi.cli import build_run, output, wire
from byoi.cli.build_run import LogView


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [
        ({}, False, False),
        ({}, True, True),
        ({"FORCE_COLOR": "1"}, False, True),
        ({"FORCE_COLOR": ""}, True, False),  # set but empty: no (force-color.org)
        ({"TTY_COMPATIBLE": "1", "FORCE_COLOR": ""}, False, True),  # TTY_COMPATIBLE decides first
        ({"TTY_COMPATIBLE": "0", "FORCE_COLOR": "1"}, True, False),
    ],
)
def test_a_terminal_is_what_rich_takes_for_one(monkeypatch, plain_env, env, tty, expected):
    from rich.console import Console

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stream = FakeTerminal() if tty else io.StringIO()
    assert output.is_terminal(stream) is expected
    assert Console(file=stream).is_terminal is expected  # rich's own answer, the same


def test_off_a_terminal_lines_are_written_as_rich_wrote_them_without_markup_or_emoji(capsys, plain_env):
    from rich.console import Console

    text = "step [bold]1[/bold] :smile:\ttab\rcr\x07bell"
    output.Stream(stderr=False).line(text, style="bold cyan")
    output.stderr.error("no [red]such[/red] build", label="FAILED")
    written = capsys.readouterr()
    assert written.out == "step [bold]1[/bold] :smile:     tabcrbell\n"  # control codes gone, the tab expanded
    assert written.err == "FAILED: no [red]such[/red] build\n"
    richs = io.StringIO()
    Console(file=richs, soft_wrap=True, highlight=False).print(text, markup=False, emoji=False, style="bold cyan")
    assert richs.getvalue() == written.out  # what rich writes off a terminal, byte for byte


def test_on_a_terminal_lines_go_through_rich_with_their_style(monkeypatch, capsys):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    from rich.console import Console

    terminal = Console(force_terminal=True, soft_wrap=True, highlight=False)  # the module's may predate the env
    monkeypatch.setattr(output, "_rich", lambda stderr: terminal)
    output.Stream(stderr=False).line("Step 1/2 :smile:", style="bold cyan")
    written = capsys.readouterr().out
    assert "\x1b[" in written and "Step 1/2 :smile:" in written  # coloured, and still no emoji


def test_off_a_terminal_the_push_is_one_line_per_layer_once_it_is_in_the_registry(capsys, plain_env):
    view = LogView(out=output.stdout)
    view.show("status", {"s": "PUSHING", "m": "reg/x:1"})
    for record in (
        {"id": "aaa", "s": "Preparing"},
        {"id": "aaa", "s": "Pushing", "c": 10, "n": 100},
        {"id": "bbb", "s": "Layer already exists"},
        {"id": "aaa", "s": "Pushed"},
        {"id": "aaa", "s": "Pushed"},  # said twice by the Engine: one line
    ):
        view.show("push", record)
    view.show("status", {"s": "SUCCEEDED"})
    assert capsys.readouterr().out.splitlines() == [
        "--> PUSHING: reg/x:1",
        "bbb: Layer already exists",
        "aaa: Pushed",
        "--> SUCCEEDED",
    ]
    quiet = LogView(quiet=True, out=output.stdout)
    quiet.show("push", {"id": "ccc", "s": "Pushed"})
    assert capsys.readouterr().out == ""


# -- a build against an earlier server: its stream's end carries only the status ----------------------------

DESCRIBED = {
    "BuildId": "b-0123456789abcdef",
    "BuildStatus": "SUCCEEDED",
    "ImageUri": "127.0.0.1:5000/team/r:latest",
    "ImageDigest": "sha256:" + "ab" * 32,
    "CreationTime": 1773480413.5,
}


class _Earlier(http.server.BaseHTTPRequestHandler):
    """The build routes and calls as a byoi server answered them before the stream's end carried the build."""

    calls: list[str] = []

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target", "")
        self.calls.append(target or self.path)
        if self.path.startswith("/byoi/build-contexts/by-digest/"):
            self._send(400, json.dumps({"__type": "ResourceNotFound", "Message": "no"}).encode())
        elif self.path == "/byoi/build-contexts":
            self._send(200, json.dumps({"ContextId": "ctx-1", "ContextSize": 1, "Files": 1}).encode())
        elif target == "Byoi.StartImageBuild":
            self._send(200, json.dumps({"BuildId": DESCRIBED["BuildId"], "BuildStatus": "QUEUED"}).encode())
        elif target == "Byoi.DescribeImageBuild":
            self._send(200, json.dumps(DESCRIBED).encode())
        else:
            self._send(404, b"{}")

    def do_GET(self) -> None:  # noqa: N802
        self.calls.append("events")
        body = b'id: 10\nevent: status\ndata: {"s": "SUCCEEDED"}\n\nevent: end\ndata: {"BuildStatus": "SUCCEEDED"}\n\n'
        self._send(200, body, "text/event-stream")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def earlier_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Earlier)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Earlier.calls = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_end_without_the_build_is_followed_by_describe_image_build(earlier_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text("FROM scratch\n")
    build_run.build(Path(root), "team/r", output="json", endpoint_url=earlier_server)
    printed = json.loads(capsys.readouterr().out)
    assert _Earlier.calls[-2:] == ["events", "Byoi.DescribeImageBuild"]  # asked, once the stream had ended
    assert printed == output.document(wire.answer("Byoi", "DescribeImageBuild", DESCRIBED))
