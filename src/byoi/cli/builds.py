"""`byoi build PATH --image NAME …` and `byoi builds list|describe|logs|stop`.

`byoi build` packs the directory (honouring `.dockerignore`), uploads it to the signed context endpoint,
starts the build with `Byoi.StartImageBuild`, and follows its event stream: build steps as they run, a
progress bar per layer while pushing, then the pushed reference with its digest, and with `--register`
the new image version once it is CREATED. Ctrl-C asks whether to stop the build on the server too (without a
terminal to ask on, it keeps running and the CLI says how to stop it). With `--output json|yaml`, the log goes to
stderr and stdout gets the build's description when it ends.
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
from typing import IO, TYPE_CHECKING, Annotated, Any

import regex
import typer
from rich.console import Console

from byoi.build.base import BUILD_ID, BUILD_ID_FORMAT
from byoi.cli.client import _session_and_endpoint, region_of, sagemaker_client
from byoi.cli.common import (
    API_EXIT_CODES,
    EndpointUrl,
    ExitCode,
    Output,
    Profile,
    ask_to_stop,
    call,
    console,
    err,
    for_people,
    literal,
    print_document,
    print_result,
)

if TYPE_CHECKING:
    import httpx2 as httpx
    from rich.progress import Progress

builds_app = typer.Typer(help="Image builds: from a Dockerfile to a pushed image.", no_args_is_help=True)
_ARG = regex.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)(?:=(?P<value>.*))?", regex.DOTALL)
_IMAGE_NAME = regex.compile(r"[a-zA-Z0-9]([-.]?[a-zA-Z0-9]){0,62}")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_CHUNK = 1 << 20


def register(app: typer.Typer) -> None:
    """Add `byoi build` and `byoi builds …` to the top-level app (called once from cli/main.py)."""
    app.command("build")(build)
    app.add_typer(builds_app, name="builds")


def _fail(message: str, code: ExitCode = ExitCode.USAGE) -> typer.Exit:
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
        from botocore.auth import SigV4Auth

        session, self.endpoint = _session_and_endpoint(endpoint_url, profile)
        creds = session.get_credentials()
        if creds is None:
            raise _fail(
                "no credentials: set AWS_PROFILE / AWS_SHARED_CREDENTIALS_FILE or use --profile", ExitCode.ACCESS_DENIED
            )
        self.signer = SigV4Auth(creds.get_frozen_credentials(), "sagemaker", region_of(session))
        self.endpoint = self.endpoint.rstrip("/")
        # Plain HTTP needs no TLS context, and building one (loading the CA bundle) took 130 ms a request here;
        # HTTPS is verified as botocore verifies it: AWS_CA_BUNDLE when set, else the system's CAs.
        self.verify: Any = False
        if not self.endpoint.startswith("http://"):
            import ssl

            bundle = os.environ.get("AWS_CA_BUNDLE")
            self.verify = ssl.create_default_context(cafile=bundle) if bundle else True

    def headers(self, method: str, path: str, extra: dict[str, str] | None = None, query: str = "") -> dict[str, str]:
        from botocore.awsrequest import AWSRequest

        url = f"{self.endpoint}{path}" + (f"?{query}" if query else "")
        request = AWSRequest(method=method, url=url, data=b"", headers=extra or {})
        self.signer.add_auth(request)
        return dict(request.headers.items())

    def url(self, path: str) -> str:
        return self.endpoint + path


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return str(body["__type"]) if isinstance(body, dict) and body.get("__type") else None


def _error_text(response: httpx.Response) -> str:
    """byoi's JSON error as `Code: message`; anything else (a proxy's page, a 404 from elsewhere) as its status."""
    code = _error_code(response)
    if code:
        body = response.json()
        return f"{code}: {body.get('Message') or body.get('message') or ''}".rstrip(": ")
    return f"HTTP {response.status_code} from {response.request.url}: {response.text[:200]}".rstrip(": ")


def _refused(message: str, response: httpx.Response) -> typer.Exit:
    """The server refused a request to a build route: the error line, with the exit status of its code."""
    by_status = {403: ExitCode.ACCESS_DENIED, 404: ExitCode.NOT_FOUND}
    code = API_EXIT_CODES.get(_error_code(response) or "", by_status.get(response.status_code, ExitCode.ERROR))
    return _fail(f"{message}{_error_text(response)}", code)


def _unreachable(endpoint: str, exc: Exception) -> typer.Exit:
    return _fail(f"cannot reach byoi at {endpoint}: {exc}", ExitCode.UNAVAILABLE)


def check_build_id(build_id: str) -> str:
    """A build id is checked before it is put into a URL path (`../../x` would leave /byoi/builds/)."""
    if not BUILD_ID.fullmatch(build_id):
        message = f"{build_id!r} is not a build id ({BUILD_ID_FORMAT}; see `byoi builds list`)"
        raise _fail(message, ExitCode.INVALID_INPUT)
    return build_id


def _file_chunks(fh: IO[bytes]) -> Iterator[bytes]:
    fh.seek(0)
    while chunk := fh.read(_CHUNK):
        yield chunk


def upload_context(signed: Signed, path: Path, dockerfile: str | None, say: Console = console) -> tuple[str, str]:
    """Pack `path` and give it to the server: by its SHA-256 when the server still holds the same context from
    this caller (nothing is sent), else uploaded; return (ContextId, the Dockerfile's path inside the context)."""
    import httpx2 as httpx

    from byoi.build.context import ContextError, pack_directory

    with tempfile.TemporaryFile() as fh, httpx.Client(timeout=None, verify=signed.verify) as http:
        try:
            packed = pack_directory(path, fh, dockerfile)
        except (ContextError, OSError) as exc:
            raise _fail(str(exc), ExitCode.INVALID_INPUT) from None
        size = fh.tell()
        digest = hashlib.sha256()
        for chunk in _file_chunks(fh):
            digest.update(chunk)
        note = f", {packed.excluded} excluded by .dockerignore" if packed.excluded else ""
        what = f"{packed.files} files, {packed.size / 1e6:.1f} MB{note}"
        reuse = f"/byoi/build-contexts/by-digest/{digest.hexdigest()}"
        try:
            response = http.post(signed.url(reuse), headers=signed.headers("POST", reuse))
            if response.status_code == 200:
                say.print(f"Build context unchanged since its last upload: {what}, not sent again")
                return str(response.json()["ContextId"]), packed.dockerfile
            # ResourceNotFound: not held; a plain 404: a server without reuse. Either way it is uploaded.
            if response.status_code != 404 and _error_code(response) != "ResourceNotFound":
                raise _refused("context reuse refused: ", response)
            say.print(f"Sending build context: {what}")
            headers = signed.headers(
                "POST",
                "/byoi/build-contexts",
                {"Content-Type": "application/x-tar", "X-Amz-Content-SHA256": digest.hexdigest()},
            )
            headers["Content-Length"] = str(size)
            response = http.post(signed.url("/byoi/build-contexts"), content=_file_chunks(fh), headers=headers)
        except httpx.TransportError as exc:
            raise _unreachable(signed.endpoint, exc) from None
    if response.status_code != 200:
        raise _refused("context upload refused: ", response)
    return str(response.json()["ContextId"]), packed.dockerfile


# -- following a build ---------------------------------------------------------------------------


class LogView:
    """Renders build events: steps and output as lines, push progress as one bar per layer."""

    def __init__(self, quiet: bool = False, out: Console = console) -> None:
        self.quiet = quiet
        self.out = out  # stdout; stderr when stdout is for the JSON or YAML answer
        self.progress: Progress | None = None
        self.layers: dict[str, Any] = {}

    def _print(self, text: str, style: str | None = None) -> None:
        target = self.progress.console if self.progress else self.out
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
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self.progress = Progress(
                TextColumn("{task.fields[layer]}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[state]}"),
                console=self.out,
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
    import httpx2 as httpx

    position = position or StreamPosition()
    failures = 0
    path = f"/byoi/builds/{build_id}/events"
    while True:
        query = f"offset={position.offset}"
        try:
            with httpx.stream(
                "GET",
                signed.url(path) + "?" + query,
                headers=signed.headers("GET", path, query=query),
                timeout=None,
                verify=signed.verify,
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise _refused(f"cannot follow build {build_id}: ", response)
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
                raise _fail(f"lost the log stream of build {build_id}; {hint}", ExitCode.UNAVAILABLE) from None
            time.sleep(1)


def _follow_with_stop(signed: Signed, ext: Any, build_id: str, view: LogView) -> bool:
    """Follow; on Ctrl-C ask whether to stop the build on the server too (no, or no terminal to ask on: leave it
    running, say how to stop it, and exit). Returns whether the build was stopped that way."""
    position = StreamPosition()  # after the prompt, go on from where the log stopped rather than print it again
    stopped = False
    while True:
        try:
            follow(signed, build_id, view, position)
            return stopped
        except KeyboardInterrupt:
            view.close()
            left_running = (
                f"build {build_id} keeps running on the server; follow it with `byoi builds logs {build_id} -f`, "
                f"stop it with `byoi builds stop {build_id}`"
            )
            if stopped:  # a second Ctrl-C while the stopped build's log ends
                err.print(left_running, markup=False)
                raise typer.Exit(ExitCode.INTERRUPTED) from None
            ask_to_stop(
                f"Stop build {build_id} on the server too?",
                lambda: ext.stop_image_build(BuildId=build_id),
                f"stopping {build_id} ...",
                left_running,
            )
            stopped = True


def _wait_for_version(endpoint_url: str | None, profile: str | None, arn: str, say: Console) -> dict[str, Any]:
    sm = sagemaker_client(endpoint_url, profile)
    image, number = arn.split(":image-version/", 1)[1].rsplit("/", 1)
    with say.status(f"registering {arn} ..."):
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
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Build an image from a Dockerfile on the byoi server's builder and push it to the registry."""
    from byoi.registry import reference

    # Everything that can be checked here is checked before anything is packed or sent.
    if not path.is_dir():
        raise _fail(f"build context {path} is not a directory")
    repository = image.split("/", 1)[1] if registry is None and _has_host(image) else image
    if not reference.REPOSITORY.fullmatch(repository):
        raise _fail(
            f"--image {image!r} is not a valid repository name: lower-case letters and digits, "
            "with . _ __ - between them and / between path components",
            ExitCode.INVALID_INPUT,
        )
    if not reference.TAG.fullmatch(tag):
        raise _fail(f"--tag {tag!r} is not a valid tag", ExitCode.INVALID_INPUT)
    image_name = repository.rsplit("/", 1)[-1] if register_version else None
    if image_name is not None and not _IMAGE_NAME.fullmatch(image_name):
        raise _fail(
            f"{image_name!r} cannot be a byoi image name (letters, digits, single - or . between them)",
            ExitCode.INVALID_INPUT,
        )
    args = parse_pairs(build_arg, "--build-arg", from_env=True)
    labels = parse_pairs(label, "--label", from_env=False)

    say = for_people(output)
    signed = Signed(endpoint_url, profile)
    context_id, dockerfile = upload_context(signed, path, file, say)
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

    def run(ext: Any) -> tuple[dict[str, Any], bool]:
        build_id = ext.start_image_build(**request)["BuildId"]
        say.print(f"Build {build_id} started")
        if detach:
            return {"BuildId": build_id}, False
        stopped = _follow_with_stop(signed, ext, build_id, LogView(quiet, say))
        return ext.describe_image_build(BuildId=build_id), stopped

    result, stopped = call(endpoint_url, profile, run, extension=True)
    if detach:
        if output == "table":
            console.print(result["BuildId"])
        else:
            print_document(result, output)
        return
    _report(result, endpoint_url, profile, output, stopped)


def _has_host(image: str) -> bool:
    first = image.split("/", 1)[0]
    return "/" in image and ("." in first or ":" in first or first == "localhost")


def _report(
    result: dict[str, Any], endpoint_url: str | None, profile: str | None, output: str = "table", stopped: bool = False
) -> None:
    """How the build ended; with --register, the version once registered. Exit status: 0 when all went well,
    INTERRUPTED when Ctrl-C stopped it, FAILED when it (or the version) failed."""
    say = for_people(output)
    status = result["BuildStatus"]
    pushed = f"pushed {result['ImageUri']}@{result['ImageDigest']}" if result.get("ImageDigest") else None
    arn = result.get("ImageVersionArn") if status == "SUCCEEDED" else None
    version = call(endpoint_url, profile, lambda _c: _wait_for_version(endpoint_url, profile, arn, say)) if arn else {}
    if output != "table":
        print_document({**result, **({"ImageVersion": version} if version else {})}, output)
    if status != "SUCCEEDED":
        # the reason may quote the failed step's output, [brackets] and all: shown as is, not as markup.
        err.print(f"[red]{status}[/red]: {literal(result.get('FailureReason') or '')}")
        if pushed:
            say.print(pushed, markup=False)
        raise typer.Exit(ExitCode.INTERRUPTED if stopped else ExitCode.FAILED)
    say.print(pushed, markup=False)
    if version:
        say.print(f"{arn} {version['ImageVersionStatus']}", markup=False)
        if version["ImageVersionStatus"] != "CREATED":
            # the reason names each failed rule in [brackets]: shown as is, not as markup.
            err.print(f"[red]error[/red]: {literal(version.get('FailureReason'))}")
            raise typer.Exit(ExitCode.FAILED)


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
    import httpx2 as httpx

    check_build_id(build_id)
    signed = Signed(endpoint_url, profile)
    if follow_log:
        ext_call = lambda c: _follow_with_stop(signed, c, build_id, LogView())  # noqa: E731
        if call(endpoint_url, profile, ext_call, extension=True):
            raise typer.Exit(ExitCode.INTERRUPTED)  # Ctrl-C, and the build was stopped
        return
    path = f"/byoi/builds/{build_id}/log"
    try:
        response = httpx.get(signed.url(path), headers=signed.headers("GET", path), timeout=60, verify=signed.verify)
    except httpx.TransportError as exc:
        raise _unreachable(signed.endpoint, exc) from None
    if response.status_code != 200:
        raise _refused("", response)
    console.print(response.text, end="", markup=False, highlight=False)


@builds_app.command("stop")
def builds_stop(
    build_id: str, output: Output = "table", endpoint_url: EndpointUrl = None, profile: Profile = None
) -> None:
    """Stop a queued or running build."""
    check_build_id(build_id)
    result = call(endpoint_url, profile, lambda c: c.stop_image_build(BuildId=build_id), extension=True)
    if output != "table":
        print_document(result, output)
        return
    note = "" if result["BuildStatus"] in TERMINAL else " (stopping)"
    console.print(f"{result['BuildId']} {result['BuildStatus']}{note}", markup=False)
