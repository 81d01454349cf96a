"""`byoi build`'s work, shared by both doors: typer's `byoi build` command (byoi.cli.builds) and the quick
argparse path of the console script (byoi.cli.entry).

Why a module without typer: a warm build (unchanged context, answered from the server's build-result cache)
takes a few tens of milliseconds on the server, so the CLI's own start-up is most of what a person waits for.
This module imports no typer, botocore or httpx: requests go through byoi.cli.wire (the standard library's
http.client, signed as botocore signs), output through byoi.cli.output. A command's failure is printed here as
its one line and raised as `Exit` with the exit status; each door turns that into its own way of exiting.
typer is imported only after a Ctrl-C, to ask whether to stop the build on the server too.

The build: pack the directory (honouring `.dockerignore`), reuse the server's copy of the same context or
upload it, start it with `Byoi.StartImageBuild`, follow its event stream (steps, output, one progress bar per
layer while pushing), then report the pushed reference and, with `--register`, the new image version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from byoi.cli import wire
from byoi.cli.output import API_EXIT_CODES, ExitCode, Stream, error_line, people, print_document, stderr, stdout

TYPE_CHECKING = False  # typing, dataclasses and pathlib cost a plain build's start 15 ms: not imported to run
if TYPE_CHECKING:
    from pathlib import Path
    from typing import IO, Any

    from rich.progress import Progress

# Compiled when first used (a plain build uses none of them): compiling costs milliseconds of each start.
_ARG = r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)(?:=(?P<value>.*))?"
_LABEL = r"(?P<key>[^=]+)=(?P<value>.*)"
_IMAGE_NAME = r"[a-zA-Z0-9]([-.]?[a-zA-Z0-9]){0,62}"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_LAYER_DONE = ("Pushed", "Layer already exists")
_CHUNK = 1 << 20


class Exit(Exception):
    """The command ends with exit status `code`; what went wrong (if anything) is already printed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = int(code)


def fail(message: str, code: ExitCode = ExitCode.USAGE) -> Exit:
    """Print `message` as the command's one error line and return the Exit to raise."""
    stderr.error(message)
    return Exit(code)


@contextmanager
def api_failures() -> Iterator[None]:
    """A failed call as `common.fail` words a botocore one: `Code: Message` with the exit status of the code, the
    unreachable server's line, a setup or credentials problem, anything else as its message."""
    try:
        yield
    except wire.ApiError as exc:
        error_line(f"{exc.code}: {exc.message}")
        raise Exit(API_EXIT_CODES.get(exc.code, ExitCode.ERROR)) from None
    except wire.Unreachable as exc:
        error_line(str(exc))
        raise Exit(ExitCode.UNAVAILABLE) from None
    except wire.WireError as exc:
        error_line(str(exc))
        raise Exit(ExitCode.ERROR) from None
    except wire.ClientSetupError as exc:
        error_line(str(exc))
        raise Exit(ExitCode.USAGE) from None
    except wire.NoCredentials as exc:
        raise fail(str(exc), ExitCode.ACCESS_DENIED) from None


def connect(endpoint_url: str | None, profile: str | None) -> wire.Client:
    """The signed client, with the same credentials (and the same errors) as botocore's."""
    with api_failures():
        return wire.Client.connect(endpoint_url, profile)


def parse_pairs(values: list[str] | None, what: str, from_env: bool) -> dict[str, str]:
    """`K=V` pairs (and, for build args, a bare `K` taking its value from the environment, as Docker does)."""
    result: dict[str, str] = {}
    for item in values or []:
        m = re.fullmatch(_ARG, item, re.DOTALL) if what == "--build-arg" else re.fullmatch(_LABEL, item)
        if not m:
            raise fail(f"{what} {item!r} is not in the form KEY=VALUE (KEY: letters, digits and _)")
        value = m["value"]
        if value is None:
            if not from_env or m["key"] not in os.environ:
                raise fail(f"{what} {item!r} has no value and {m['key']} is not set in the environment")
            value = os.environ[m["key"]]
        result[m["key"]] = value
    return result


# -- the build routes' errors ------------------------------------------------------------------------------


def _error_code(response: wire.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return str(body["__type"]) if isinstance(body, dict) and body.get("__type") else None


def _error_text(response: wire.Response) -> str:
    """byoi's JSON error as `Code: message`; anything else (a proxy's page, a 404 from elsewhere) as its status."""
    code = _error_code(response)
    if code:
        body = response.json()
        return f"{code}: {body.get('Message') or body.get('message') or ''}".rstrip(": ")
    return f"HTTP {response.status} from {response.url}: {response.text[:200]}".rstrip(": ")


def refused(message: str, response: wire.Response) -> Exit:
    """The server refused a request to a build route: the error line, with the exit status of its code."""
    by_status = {403: ExitCode.ACCESS_DENIED, 404: ExitCode.NOT_FOUND}
    code = API_EXIT_CODES.get(_error_code(response) or "", by_status.get(response.status, ExitCode.ERROR))
    return fail(f"{message}{_error_text(response)}", code)


def unreachable(endpoint: str, exc: Exception) -> Exit:
    return fail(f"cannot reach byoi at {endpoint}: {exc}", ExitCode.UNAVAILABLE)


# -- the context ---------------------------------------------------------------------------------------------


class _Hashed:
    """Writes to `out` and hashes what it writes: the context's SHA-256 without reading the packed tar back.

    Only `write` is offered: the tar is written as a stream (`pack_directory` opens it with mode "w|"), so the
    bytes hashed are the bytes sent. Anything that tried to seek back and rewrite would fail here, loudly."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.digest = out, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.out.write(data)


def upload_context(client: wire.Client, path: Path, dockerfile: str | None, say: Stream = stdout) -> tuple[str, str]:
    """Pack `path` and give it to the server: by its SHA-256 when the server still holds the same context from
    this caller (nothing is sent), else uploaded; return (ContextId, the Dockerfile's path inside the context)."""
    import tempfile

    from byoi.build.context import ContextError, pack_directory

    # Buffered: the tar arrives in 10 KiB writes, and 1,600 system calls for 16 MB cost more than the hashing.
    with tempfile.TemporaryFile(buffering=_CHUNK) as fh:
        hashed = _Hashed(fh)
        try:
            packed = pack_directory(path, hashed, dockerfile)  # type: ignore[arg-type]  # it only writes
        except (ContextError, OSError) as exc:
            raise fail(str(exc), ExitCode.INVALID_INPUT) from None
        size, digest = fh.tell(), hashed.digest.hexdigest()
        note = f", {packed.excluded} excluded by .dockerignore" if packed.excluded else ""
        what = f"{packed.files} files, {packed.size / 1e6:.1f} MB{note}"
        try:
            response = client.request("POST", f"/byoi/build-contexts/by-digest/{digest}")
            if response.status == 200:
                say.line(f"Build context unchanged since its last upload: {what}, not sent again")
                return str(response.json()["ContextId"]), packed.dockerfile
            # ResourceNotFound: not held; a plain 404: a server without reuse. Either way it is uploaded.
            if response.status != 404 and _error_code(response) != "ResourceNotFound":
                raise refused("context reuse refused: ", response)
            say.line(f"Sending build context: {what}")
            fh.seek(0)
            extra = {"Content-Type": "application/x-tar", "X-Amz-Content-SHA256": digest}
            response = client.request("POST", "/byoi/build-contexts", extra=extra, body=fh, length=size)
        except wire.TransportError as exc:
            raise unreachable(client.endpoint, exc) from None
    if response.status != 200:
        raise refused("context upload refused: ", response)
    return str(response.json()["ContextId"]), packed.dockerfile


# -- following a build ---------------------------------------------------------------------------------------


class LogView:
    """Renders build events: steps and output as lines, push progress as one bar per layer on a terminal (a line
    per layer when it is done, elsewhere)."""

    def __init__(self, quiet: bool = False, out: Stream = stdout) -> None:
        self.quiet = quiet
        self.out = out  # stdout; stderr when stdout is for the JSON or YAML answer
        self.progress: Progress | None = None
        self.layers: dict[str, Any] = {}
        self.ended: dict[str, Any] | None = None  # the stream's `end` event: the build's status, and the build

    def _print(self, text: str, style: str | None = None) -> None:
        self.out.line(text, style)  # while the bars show, through their console (out.rich): rich prints above them

    def show(self, event: str, record: dict[str, Any]) -> None:
        if event == "step":
            self._print(record.get("m", ""), "bold cyan")
        elif event == "log" and not self.quiet:
            self._print(record.get("m", ""))
        elif event == "note":
            self._print(record.get("m", ""), "green")
        elif event == "truncated":
            self._print(record.get("m", ""), "yellow")
        elif event == "status":
            self._status(record)
        elif event == "push":
            self._push(record)

    def _status(self, record: dict[str, Any]) -> None:
        status = record.get("s")
        if status == "PUSHING" and self.progress is None and self.out.terminal:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self.progress = Progress(
                TextColumn("{task.fields[layer]}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[state]}"),
                console=self.out.rich,
            )
            self.progress.start()
        if status in TERMINAL:
            self.close()
        self._print(f"--> {status}" + (f": {record['m']}" if record.get("m") else ""), "bold")

    def _push(self, record: dict[str, Any]) -> None:
        if self.progress is None:  # not a terminal: a line per layer once it is in the registry
            layer, state = record.get("id", ""), record.get("s")
            if state in _LAYER_DONE and layer not in self.layers and not self.quiet:
                self.layers[layer] = state
                self.out.line(f"{layer}: {state}")
            return
        layer = record.get("id", "")
        task = self.layers.get(layer)
        if task is None:
            task = self.layers[layer] = self.progress.add_task("", layer=layer, state="", total=None)
        update: dict[str, Any] = {"state": record.get("s", "")}
        if "n" in record:
            update.update(total=record["n"], completed=record.get("c", 0))
        if record.get("s") in _LAYER_DONE:
            current = self.progress.tasks[task].total or 1
            update.update(total=current, completed=current)
        self.progress.update(task, **update)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class StreamPosition:
    """Where a follower is in a build's event stream, kept across reconnects and a Ctrl-C prompt."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset


@contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and raise it as KeyboardInterrupt once the block is done.

    Raised in the middle of rich's print (after its write, before it empties its buffer), KeyboardInterrupt
    leaves the line in the console's buffer and the next print writes it again; raised between showing an event
    and recording its offset, the log goes on with that event again after the prompt.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if caught:
        raise KeyboardInterrupt


def _read_events(lines: Iterator[str], view: LogView, position: StreamPosition) -> bool:
    """Show the events of one connection to the stream; True once its `end` event came."""
    event, data, event_id = "message", "", None
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line == "" and data:
            if event == "end":
                view.close()
                view.ended = json.loads(data)
                return True
            with _interrupt_after():  # the event is shown and counted as shown, or neither
                view.show(event, json.loads(data))
                if event_id is not None:
                    position.offset = event_id
            event, data, event_id = "message", "", None
    return False


def follow(client: wire.Client, build_id: str, view: LogView, position: StreamPosition | None = None) -> None:
    """Read the build's event stream until its `end` event, reconnecting from the last event id."""
    position = position or StreamPosition()
    failures = 0
    path = f"/byoi/builds/{build_id}/events"
    while True:
        try:
            with client.open("GET", path, query=f"offset={position.offset}") as response:
                if response.status != 200:
                    answer = wire.read(response, f"{client.url(path)}?offset={position.offset}")
                    raise refused(f"cannot follow build {build_id}: ", answer)
                if _read_events(wire.lines(response), view, position):
                    return
        except wire.TransportError:
            failures += 1
            if failures > 5:
                hint = f"follow it with `byoi builds logs {build_id} -f`"
                raise fail(f"lost the log stream of build {build_id}; {hint}", ExitCode.UNAVAILABLE) from None
            time.sleep(1)


def _ask_to_stop(question: str, stop: Callable[[], object], stopping: str, left_running: str) -> None:
    """`common.ask_to_stop` (typer's prompt, imported only now), its exit as ours."""
    import typer

    from byoi.cli.common import ask_to_stop

    try:
        ask_to_stop(question, stop, stopping, left_running)
    except typer.Exit as exc:
        raise Exit(exc.exit_code) from None


def follow_with_stop(client: wire.Client, stop: Callable[[], object], build_id: str, view: LogView) -> bool:
    """Follow; on Ctrl-C ask whether to stop the build on the server too (calling `stop`; no, or no terminal to
    ask on: leave it running, say how to stop it, and exit). Returns whether the build was stopped that way."""
    position = StreamPosition()  # after the prompt, go on from where the log stopped rather than print it again
    stopped = False
    while True:
        try:
            follow(client, build_id, view, position)
            return stopped
        except KeyboardInterrupt:
            view.close()
            left_running = (
                f"build {build_id} keeps running on the server; follow it with `byoi builds logs {build_id} -f`, "
                f"stop it with `byoi builds stop {build_id}`"
            )
            if stopped:  # a second Ctrl-C while the stopped build's log ends
                stderr.line(left_running)
                raise Exit(ExitCode.INTERRUPTED) from None
            _ask_to_stop(f"Stop build {build_id} on the server too?", stop, f"stopping {build_id} ...", left_running)
            stopped = True


# -- the command ---------------------------------------------------------------------------------------------


def _has_host(image: str) -> bool:
    first = image.split("/", 1)[0]
    return "/" in image and ("." in first or ":" in first or first == "localhost")


def _checked_request(
    path: Path, image: str, tag: str, registry: str | None, register_version: bool
) -> tuple[str | None, dict[str, Any]]:
    """(the image name to register, the request so far): everything that can be checked before anything is
    packed or sent is checked here."""
    from byoi.registry import reference

    if not path.is_dir():
        raise fail(f"build context {path} is not a directory")
    repository = image.split("/", 1)[1] if registry is None and _has_host(image) else image
    if not reference.REPOSITORY.fullmatch(repository):
        raise fail(
            f"--image {image!r} is not a valid repository name: lower-case letters and digits, "
            "with . _ __ - between them and / between path components",
            ExitCode.INVALID_INPUT,
        )
    if not reference.TAG.fullmatch(tag):
        raise fail(f"--tag {tag!r} is not a valid tag", ExitCode.INVALID_INPUT)
    image_name = repository.rsplit("/", 1)[-1] if register_version else None
    if image_name is not None and not re.fullmatch(_IMAGE_NAME, image_name):
        raise fail(
            f"{image_name!r} cannot be a byoi image name (letters, digits, single - or . between them)",
            ExitCode.INVALID_INPUT,
        )
    return image_name, {"Repository": image, "Tag": tag}


def _client_token() -> str:
    """A random (version 4) UUID, as uuid.uuid4() makes it, without importing uuid."""
    raw = bytearray(os.urandom(16))
    raw[6], raw[8] = (raw[6] & 0x0F) | 0x40, (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def build(
    path: Path,
    image: str,
    tag: str = "latest",
    file: str | None = None,
    build_arg: list[str] | None = None,
    label: list[str] | None = None,
    target: str | None = None,
    platform: str | None = None,
    no_cache: bool = False,
    registry: str | None = None,
    register_version: bool = False,
    detach: bool = False,
    quiet: bool = False,
    output: str = "table",
    endpoint_url: str | None = None,
    profile: str | None = None,
) -> None:
    """Build an image from a Dockerfile on the byoi server's builder and push it to the registry (the options
    are `byoi build`'s). Raises Exit with the exit status when it is not 0."""
    image_name, request = _checked_request(path, image, tag, registry, register_version)
    args = parse_pairs(build_arg, "--build-arg", from_env=True)
    labels = parse_pairs(label, "--label", from_env=False)

    say = people(output)
    client = connect(endpoint_url, profile)
    context_id, dockerfile = upload_context(client, path, file, say)
    request = {"ContextId": context_id, **request, "Dockerfile": dockerfile, "ClientToken": _client_token()}
    optional = {"BuildArgs": args, "Labels": labels, "Target": target, "Platform": platform, "Registry": registry}
    request.update({k: v for k, v in optional.items() if v})
    if no_cache:
        request["NoCache"] = True
    if image_name:
        request["ImageName"] = image_name

    with api_failures():
        build_id = client.extension("StartImageBuild", request)["BuildId"]
        say.line(f"Build {build_id} started")
        if detach:
            if output == "table":
                stdout.line(build_id)
            else:
                print_document({"BuildId": build_id}, output)
            return
        stop = lambda: client.extension("StopImageBuild", {"BuildId": build_id})  # noqa: E731
        view = LogView(quiet, say)
        stopped = follow_with_stop(client, stop, build_id, view)
        ended = (view.ended or {}).get("Build")  # an earlier server sent only the status: ask
        result = (
            wire.answer("Byoi", "DescribeImageBuild", ended)
            if ended
            else client.extension("DescribeImageBuild", {"BuildId": build_id})
        )
    report(client, result, output, stopped)


def _wait_for_version(client: wire.Client, arn: str, say: Stream) -> dict[str, Any]:
    image, number = arn.split(":image-version/", 1)[1].rsplit("/", 1)
    with say.status(f"registering {arn} ..."):
        while True:
            found = client.sagemaker("DescribeImageVersion", {"ImageName": image, "Version": int(number)})
            if found["ImageVersionStatus"] != "CREATING":
                return found
            time.sleep(0.5)


def report(client: wire.Client, result: dict[str, Any], output: str = "table", stopped: bool = False) -> None:
    """How the build ended; with --register, the version once registered. Exit status: 0 when all went well,
    INTERRUPTED when Ctrl-C stopped it, FAILED when it (or the version) failed."""
    say = people(output)
    status = result["BuildStatus"]
    pushed = f"pushed {result['ImageUri']}@{result['ImageDigest']}" if result.get("ImageDigest") else None
    arn = result.get("ImageVersionArn") if status == "SUCCEEDED" else None
    version: dict[str, Any] = {}
    if arn:
        with api_failures():
            version = _wait_for_version(client, arn, say)
    if output != "table":
        described = {k: v for k, v in version.items() if k != "ResponseMetadata"}  # the API's answer alone
        print_document({**result, **({"ImageVersion": described} if version else {})}, output)
    if status != "SUCCEEDED":
        stderr.error(result.get("FailureReason") or "", label=status)
        if pushed:
            say.line(pushed)
        raise Exit(ExitCode.INTERRUPTED if stopped else ExitCode.FAILED)
    if pushed:
        say.line(pushed)
    if version:
        say.line(f"{arn} {version['ImageVersionStatus']}")
        if version["ImageVersionStatus"] != "CREATED":
            stderr.error(str(version.get("FailureReason")))
            raise Exit(ExitCode.FAILED)
