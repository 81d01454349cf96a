"""`byoi build PATH --image NAME …` and `byoi builds list|describe|logs|stop`.

`byoi build` packs the directory (honouring `.dockerignore`), uploads it to the signed context endpoint,
starts the build with `Byoi.StartImageBuild`, and follows its event stream: build steps as they run, a
progress bar per layer while pushing, then the pushed reference with its digest, and with `--register`
the new image version once it is CREATED. Ctrl-C asks whether to stop the build.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any

import httpx2 as httpx
import regex
import typer
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from byoi.build.base import BUILD_ID, BUILD_ID_FORMAT
from byoi.build.context import ContextError, pack_directory
from byoi.cli.client import _session_and_endpoint, sagemaker_client
from byoi.cli.common import EndpointUrl, Output, Profile, call, console, err, literal, print_result
from byoi.registry import reference

builds_app = typer.Typer(help="Image builds: from a Dockerfile to a pushed image.", no_args_is_help=True)
_ARG = regex.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)(?:=(?P<value>.*))?", regex.DOTALL)
_IMAGE_NAME = regex.compile(r"[a-zA-Z0-9]([-.]?[a-zA-Z0-9]){0,62}")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_CHUNK = 1 << 20


def register(app: typer.Typer) -> None:
    """Add `byoi build` and `byoi builds …` to the top-level app (called once from cli/main.py)."""
    app.command("build")(build)
    app.add_typer(builds_app, name="builds")


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error[/red]: {literal(message)}", soft_wrap=True)
    return typer.Exit(code)


def parse_pairs(values: list[str] | None, what: str, from_env: bool) -> dict[str, str]:
    """`K=V` pairs (and, for build args, a bare `K` taking its value from the environment, as Docker does)."""
    result: dict[str, str] = {}
    for item in values or []:
        m = _ARG.fullmatch(item) if what == "--build-arg" else regex.fullmatch(r"(?P<key>[^=]+)=(?P<value>.*)", item)
        if not m:
            raise _fail(f"{what} {item!r} is not in the form KEY=VALUE (KEY: letters, digits and _)")
        value = m["value"]
        if value is None:
            if not from_env or m["key"] not in os.environ:
                raise _fail(f"{what} {item!r} has no value and {m['key']} is not set in the environment")
            value = os.environ[m["key"]]
        result[m["key"]] = value
    return result


# -- signed HTTP for the routes outside POST / ------------------------------------------------------


class Signed:
    """Signs requests to byoi's build routes with the same credentials boto3 would use."""

    def __init__(self, endpoint_url: str | None, profile: str | None) -> None:
        session, self.endpoint = _session_and_endpoint(endpoint_url, profile)
        creds = session.get_credentials()
        if creds is None:
            raise _fail("no credentials: set AWS_PROFILE / AWS_SHARED_CREDENTIALS_FILE or use --profile", 1)
        self.signer = SigV4Auth(creds.get_frozen_credentials(), "sagemaker", session.region_name or "us-east-1")
        self.endpoint = self.endpoint.rstrip("/")

    def headers(self, method: str, path: str, extra: dict[str, str] | None = None, query: str = "") -> dict[str, str]:
        url = f"{self.endpoint}{path}" + (f"?{query}" if query else "")
        request = AWSRequest(method=method, url=url, data=b"", headers=extra or {})
        self.signer.add_auth(request)
        return dict(request.headers.items())

    def url(self, path: str) -> str:
        return self.endpoint + path


def _error_text(response: httpx.Response) -> str:
    """byoi's JSON error as `Code: message`; anything else (a proxy's page, a 404 from elsewhere) as its status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("__type"):
        return f"{body['__type']}: {body.get('Message') or body.get('message') or ''}".rstrip(": ")
    return f"HTTP {response.status_code} from {response.request.url}: {response.text[:200]}".rstrip(": ")


def check_build_id(build_id: str) -> str:
    """A build id is checked before it is put into a URL path (`../../x` would leave /byoi/builds/)."""
    if not BUILD_ID.fullmatch(build_id):
        raise _fail(f"{build_id!r} is not a build id ({BUILD_ID_FORMAT}; see `byoi builds list`)")
    return build_id


def _file_chunks(fh: IO[bytes]) -> Iterator[bytes]:
    fh.seek(0)
    while chunk := fh.read(_CHUNK):
        yield chunk


def upload_context(signed: Signed, path: Path, dockerfile: str | None) -> tuple[str, str]:
    """Pack and upload `path`; return (ContextId, the Dockerfile's path inside the context)."""
    with tempfile.TemporaryFile() as fh:
        try:
            packed = pack_directory(path, fh, dockerfile)
        except (ContextError, OSError) as exc:
            raise _fail(str(exc)) from None
        size = fh.tell()
        digest = hashlib.sha256()
        for chunk in _file_chunks(fh):
            digest.update(chunk)
        note = f", {packed.excluded} excluded by .dockerignore" if packed.excluded else ""
        console.print(f"Sending build context: {packed.files} files, {packed.size / 1e6:.1f} MB{note}")
        headers = signed.headers(
            "POST",
            "/byoi/build-contexts",
            {"Content-Type": "application/x-tar", "X-Amz-Content-SHA256": digest.hexdigest()},
        )
        headers["Content-Length"] = str(size)
        try:
            response = httpx.post(
                signed.url("/byoi/build-contexts"), content=_file_chunks(fh), headers=headers, timeout=None
            )
        except httpx.TransportError as exc:
            raise _fail(f"cannot reach byoi at {signed.endpoint}: {exc}", 1) from None
    if response.status_code != 200:
        raise _fail(f"context upload refused: {_error_text(response)}", 1)
    return str(response.json()["ContextId"]), packed.dockerfile


# -- following a build ---------------------------------------------------------------------------


class LogView:
    """Renders build events: steps and output as lines, push progress as one bar per layer."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress: Progress | None = None
        self.layers: dict[str, Any] = {}

    def _print(self, text: str, style: str | None = None) -> None:
        target = self.progress.console if self.progress else console
        target.print(text, style=style, markup=False, highlight=False)

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
        if status == "PUSHING" and self.progress is None:
            self.progress = Progress(
                TextColumn("{task.fields[layer]}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[state]}"),
                console=console,
            )
            self.progress.start()
        if status in TERMINAL:
            self.close()
        self._print(f"--> {status}" + (f": {record['m']}" if record.get("m") else ""), "bold")

    def _push(self, record: dict[str, Any]) -> None:
        if self.progress is None:
            return
        layer = record.get("id", "")
        task = self.layers.get(layer)
        if task is None:
            task = self.layers[layer] = self.progress.add_task("", layer=layer, state="", total=None)
        update: dict[str, Any] = {"state": record.get("s", "")}
        if "n" in record:
            update.update(total=record["n"], completed=record.get("c", 0))
        if record.get("s") in ("Pushed", "Layer already exists"):
            current = self.progress.tasks[task].total or 1
            update.update(total=current, completed=current)
        self.progress.update(task, **update)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@dataclass
class StreamPosition:
    """Where a follower is in a build's event stream, kept across reconnects and a Ctrl-C prompt."""

    offset: int = 0


@contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and raise it as KeyboardInterrupt once the block is done.

    Raised in the middle of rich's print (after its write, before it empties its buffer), KeyboardInterrupt
    leaves the line in the console's buffer and the next print writes it again; raised between showing an event
    and recording its offset, the log goes on with that event again after the prompt.
    """
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


def follow(signed: Signed, build_id: str, view: LogView, position: StreamPosition | None = None) -> None:
    """Read the build's event stream until its `end` event, reconnecting from the last event id."""
    position = position or StreamPosition()
    failures = 0
    path = f"/byoi/builds/{build_id}/events"
    while True:
        query = f"offset={position.offset}"
        try:
            with httpx.stream(
                "GET", signed.url(path) + "?" + query, headers=signed.headers("GET", path, query=query), timeout=None
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise _fail(f"cannot follow build {build_id}: {_error_text(response)}", 1)
                event, data, event_id = "message", "", None
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data = line[5:].strip()
                    elif line.startswith("id:"):
                        event_id = int(line[3:].strip())
                    elif line == "" and data:
                        if event == "end":
                            view.close()
                            return
                        with _interrupt_after():  # the event is shown and counted as shown, or neither
                            view.show(event, json.loads(data))
                            if event_id is not None:
                                position.offset = event_id
                        event, data, event_id = "message", "", None
        except httpx.TransportError:
            failures += 1
            if failures > 5:
                hint = f"follow it with `byoi builds logs {build_id} -f`"
                raise _fail(f"lost the log stream of build {build_id}; {hint}", 1) from None
            time.sleep(1)


def _follow_with_stop(signed: Signed, ext: Any, build_id: str, view: LogView) -> None:
    """Follow; on Ctrl-C ask whether to stop the build (no: leave it running and exit)."""
    position = StreamPosition()  # after the prompt, go on from where the log stopped rather than print it again
    while True:
        try:
            follow(signed, build_id, view, position)
            return
        except KeyboardInterrupt:
            view.close()
            if typer.confirm(f"\nStop build {build_id}?", default=True):
                ext.stop_image_build(BuildId=build_id)
                console.print(f"stopping {build_id} ...")
                continue
            console.print(f"build {build_id} keeps running; follow it with `byoi builds logs {build_id} -f`")
            raise typer.Exit(130) from None


def _wait_for_version(endpoint_url: str | None, profile: str | None, arn: str) -> dict[str, Any]:
    sm = sagemaker_client(endpoint_url, profile)
    image, number = arn.split(":image-version/", 1)[1].rsplit("/", 1)
    with console.status(f"registering {arn} ..."):
        while True:
            found: dict[str, Any] = sm.describe_image_version(ImageName=image, Version=int(number))
            if found["ImageVersionStatus"] != "CREATING":
                return found
            time.sleep(0.5)


def build(
    path: Annotated[Path, typer.Argument(help="Build context directory.")],
    image: Annotated[str, typer.Option("--image", "-i", help="Repository to push to (and image to register).")],
    tag: Annotated[str, typer.Option("--tag", "-t")] = "latest",
    file: Annotated[str | None, typer.Option("--file", "-f", help="Dockerfile (default PATH/Dockerfile).")] = None,
    build_arg: Annotated[list[str] | None, typer.Option("--build-arg", help="KEY=VALUE (repeatable).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE (repeatable).")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Build stage to stop at.")] = None,
    platform: Annotated[str | None, typer.Option("--platform", help="os/arch or os/arch/variant")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
    registry: Annotated[str | None, typer.Option("--registry", help="host:port of a configured registry.")] = None,
    register_version: Annotated[
        bool, typer.Option("--register", help="Create a new version of image NAME pinned to the pushed digest.")
    ] = False,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Start the build and print its id.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Show steps but not their output.")] = False,
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Build an image from a Dockerfile on the byoi server's builder and push it to the registry."""
    # Everything that can be checked here is checked before anything is packed or sent.
    if not path.is_dir():
        raise _fail(f"build context {path} is not a directory")
    repository = image.split("/", 1)[1] if registry is None and _has_host(image) else image
    if not reference.REPOSITORY.fullmatch(repository):
        raise _fail(
            f"--image {image!r} is not a valid repository name: lower-case letters and digits, "
            "with . _ __ - between them and / between path components"
        )
    if not reference.TAG.fullmatch(tag):
        raise _fail(f"--tag {tag!r} is not a valid tag")
    image_name = repository.rsplit("/", 1)[-1] if register_version else None
    if image_name is not None and not _IMAGE_NAME.fullmatch(image_name):
        raise _fail(f"{image_name!r} cannot be a byoi image name (letters, digits, single - or . between them)")
    args = parse_pairs(build_arg, "--build-arg", from_env=True)
    labels = parse_pairs(label, "--label", from_env=False)

    signed = Signed(endpoint_url, profile)
    context_id, dockerfile = upload_context(signed, path, file)
    request: dict[str, Any] = {
        "ContextId": context_id,
        "Repository": image,
        "Tag": tag,
        "Dockerfile": dockerfile,
        "ClientToken": str(uuid.uuid4()),
    }
    optional = {"BuildArgs": args, "Labels": labels, "Target": target, "Platform": platform, "Registry": registry}
    request.update({k: v for k, v in optional.items() if v})
    if no_cache:
        request["NoCache"] = True
    if image_name:
        request["ImageName"] = image_name

    def run(ext: Any) -> dict[str, Any]:
        build_id = ext.start_image_build(**request)["BuildId"]
        console.print(f"Build {build_id} started")
        if detach:
            return {"BuildId": build_id}
        _follow_with_stop(signed, ext, build_id, LogView(quiet))
        return ext.describe_image_build(BuildId=build_id)  # type: ignore[no-any-return]

    result = call(endpoint_url, profile, run, extension=True)
    if detach:
        console.print(result["BuildId"])
        return
    _report(result, endpoint_url, profile)


def _has_host(image: str) -> bool:
    first = image.split("/", 1)[0]
    return "/" in image and ("." in first or ":" in first or first == "localhost")


def _report(result: dict[str, Any], endpoint_url: str | None, profile: str | None) -> None:
    status = result["BuildStatus"]
    if status != "SUCCEEDED":
        # the reason may quote the failed step's output, [brackets] and all: shown as is, not as markup.
        err.print(f"[red]{status}[/red]: {literal(result.get('FailureReason') or '')}")
        if result.get("ImageDigest"):
            console.print(f"pushed {result['ImageUri']}@{result['ImageDigest']}")
        raise typer.Exit(1)
    console.print(f"pushed {result['ImageUri']}@{result['ImageDigest']}")
    arn = result.get("ImageVersionArn")
    if arn:
        version = call(endpoint_url, profile, lambda _c: _wait_for_version(endpoint_url, profile, arn))
        console.print(f"{arn} {version['ImageVersionStatus']}")
        if version["ImageVersionStatus"] != "CREATED":
            # the reason names each failed rule in [brackets]: shown as is, not as markup.
            err.print(f"[red]error[/red]: {literal(version.get('FailureReason'))}")
            raise typer.Exit(1)


# -- byoi builds … -------------------------------------------------------------------------------


@builds_app.command("list")
def builds_list(
    status: Annotated[str | None, typer.Option("--status")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Only builds that register this image.")] = None,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """List builds, newest first."""
    args: dict[str, Any] = {}
    if status:
        args["StatusEquals"] = status.upper()
    if image:
        args["ImageNameEquals"] = image

    def fetch(c: Any) -> list[dict[str, Any]]:
        found, token = [], None
        while True:
            page = c.list_image_builds(**args, **({"NextToken": token} if token else {}))
            found += page["ImageBuilds"]
            token = page.get("NextToken")
            if not token:
                return found

    rows = call(endpoint_url, profile, fetch, extension=True)
    print_result({"ImageBuilds": rows}, output, ["BuildId", "BuildStatus", "ImageUri", "CreationTime"], rows)


@builds_app.command("describe")
def builds_describe(
    build_id: str, output: Output = "json", endpoint_url: EndpointUrl = None, profile: Profile = None
) -> None:
    """Describe a build: status, times, digest, registered version, failure reason."""
    check_build_id(build_id)
    result = call(endpoint_url, profile, lambda c: c.describe_image_build(BuildId=build_id), extension=True)
    print_result(result, output, ["BuildId", "BuildStatus", "ImageUri", "ImageDigest", "FailureReason"])


@builds_app.command("logs")
def builds_logs(
    build_id: str,
    follow_log: Annotated[bool, typer.Option("--follow", "-f", help="Follow until the build ends.")] = False,
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Print a build's log (all of it, or followed live with -f)."""
    check_build_id(build_id)
    signed = Signed(endpoint_url, profile)
    if follow_log:
        ext_call = lambda c: _follow_with_stop(signed, c, build_id, LogView())  # noqa: E731
        call(endpoint_url, profile, ext_call, extension=True)
        return
    path = f"/byoi/builds/{build_id}/log"
    try:
        response = httpx.get(signed.url(path), headers=signed.headers("GET", path), timeout=60)
    except httpx.TransportError as exc:
        raise _fail(f"cannot reach byoi at {signed.endpoint}: {exc}", 1) from None
    if response.status_code != 200:
        raise _fail(_error_text(response), 1)
    console.print(response.text, end="", markup=False, highlight=False)


@builds_app.command("stop")
def builds_stop(build_id: str, endpoint_url: EndpointUrl = None, profile: Profile = None) -> None:
    """Stop a queued or running build."""
    check_build_id(build_id)
    result = call(endpoint_url, profile, lambda c: c.stop_image_build(BuildId=build_id), extension=True)
    console.print(f"{result['BuildId']} {result['BuildStatus']}" + (" (stopping)" if result["BuildStatus"] not in
                                                                    TERMINAL else ""))  # fmt: skip
