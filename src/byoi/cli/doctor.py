"""`byoi doctor`: is every part byoi needs there and answering, and what to fix when one is not.

Each check is a small function returning a `Check` (name, ok/warn/fail/skip, what it found, the one line that
says what to fix); `byoi doctor` runs them in order and prints them as a table (or JSON/YAML). The exit status
is 0 when no check failed (warnings and skipped checks are shown, and do not count), 1 otherwise.

- server: byoi answers at the endpoint (GET /healthz), and its version (Byoi.GetServerInfo);
- server health: what the server itself finds (its /healthz checks: store, Docker Engine, registries);
- credentials: who the credentials sign in as (Byoi.GetCallerIdentity);
- clock: this machine's clock against the server's (the HTTP Date header): SigV4 refuses a request signed
  5 minutes off, so 1 minute warns and 4 minutes fails;
- docker: the Docker Engine byoi uses here: version, storage driver, and a container run from an image
  already present (none pulled);
- registry: the server's default registry (or --registry) reached from here: a tiny image pushed, pulled
  and deleted again;
- disk: free space in the data dir, when the server is on this machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from byoi import __version__
from byoi.cli.common import EndpointUrl, ExitCode, Output, Profile, console, literal, print_document

now: Callable[[], float] = time.time  # this machine's clock (tests set it to check the clock check)

WARN_SKEW = 60.0  # seconds off the server's clock that warn
FAIL_SKEW = 240.0  # ... and that fail: SigV4 refuses requests signed 300 s off
MIN_FREE = 1e9  # bytes free in the data dir below which the disk check fails
LOW_FREE = 5e9  # ... and warns (a build, the registry's storage and the database grow there)
DOCKER_TIMEOUT = 30.0
HTTP_TIMEOUT = 10.0
DOCTOR_REPOSITORY = "byoi-doctor/check"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class Status(StrEnum):
    ok = "ok"
    warn = "warn"
    fail = "fail"
    skip = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class Server:
    """What the server checks learned, for the checks after them."""

    endpoint: str
    answered: bool = False
    health: dict[str, Any] | None = None
    info: dict[str, Any] | None = None
    error: str | None = None  # why GetServerInfo was refused, when it was
    date: str | None = None  # the server's Date header
    sent: float = 0.0  # this machine's clock when the request went out...
    received: float = 0.0  # ... and when its answer came back
    local: bool = field(init=False)

    def __post_init__(self) -> None:
        host = self.endpoint.split("://", 1)[-1].split("/", 1)[0]
        host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        self.local = host in LOOPBACK


# -- the server, its health, the credentials, the clock ----------------------------------------------


def probe_server(endpoint: str, client: Callable[[], Any]) -> Server:
    """GET /healthz (unsigned: it answers whatever the credentials), then Byoi.GetServerInfo; each answer's Date
    header is kept with this machine's clock (`now`) before and after the request, for the clock check."""
    import httpx2 as httpx
    from botocore.exceptions import BotoCoreError, ClientError

    from byoi.cli.client import ClientSetupError
    from byoi.reachability import connection_failure

    server = Server(endpoint.rstrip("/"))
    sent = now()
    try:
        response = httpx.get(f"{server.endpoint}/healthz", timeout=HTTP_TIMEOUT, verify=_verify(server.endpoint))
    except httpx.TransportError as exc:
        server.error = connection_failure(exc)
        return server
    server.answered, server.date, server.sent, server.received = True, response.headers.get("date"), sent, now()
    try:
        server.health = response.json()
    except ValueError:
        server.health = None
    sent = now()
    try:
        server.info = client().get_server_info()
        headers = server.info.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    except ClientError as exc:
        server.error = f"{exc.response['Error'].get('Code')}: {exc.response['Error'].get('Message')}"
        headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    except (BotoCoreError, ClientSetupError) as exc:
        server.error = str(exc)
        return server
    if headers.get("date"):  # a quicker answer than /healthz's, so a closer measure
        server.date, server.sent, server.received = headers["date"], sent, now()
    return server


def _verify(url: str) -> Any:
    """How to verify an HTTPS byoi: with AWS_CA_BUNDLE when set, as botocore does."""
    import ssl

    bundle = os.environ.get("AWS_CA_BUNDLE")
    return ssl.create_default_context(cafile=bundle) if bundle and url.startswith("https://") else True


def check_server(server: Server) -> Check:
    if not server.answered:
        return Check(
            "server",
            Status.fail,
            f"byoi does not answer at {server.endpoint}: {server.error}",
            "start it (`byoi up`, or `byoi server`), or point --endpoint-url / AWS_ENDPOINT_URL_SAGEMAKER at it",
        )
    if server.info is None:
        return Check("server", Status.ok, f"byoi answers at {server.endpoint} (version unknown: {server.error})")
    version = server.info.get("Version", "?")
    if version != __version__:
        return Check(
            "server",
            Status.warn,
            f"byoi {version} at {server.endpoint}, but this CLI is byoi {__version__}",
            "use the same byoi version for the server and the CLI",
        )
    return Check("server", Status.ok, f"byoi {version} at {server.endpoint}")


def check_health(server: Server) -> Check:
    if not server.answered:
        return Check("server health", Status.skip, "the server does not answer")
    checks = (server.health or {}).get("checks")
    if not isinstance(checks, dict):
        return Check("server health", Status.fail, "/healthz gave no checks", "is this a byoi server?")
    failing = {name: value for name, value in checks.items() if value != "ok"}
    if not failing:
        return Check("server health", Status.ok, ", ".join(checks) + ": ok")
    return Check(
        "server health",
        Status.fail,
        "; ".join(f"{name}: {str(value).removeprefix('error: ')}" for name, value in failing.items()),
        "the server cannot use these parts: start them, or correct the server's settings (docs/operations.md)",
    )


def check_credentials(server: Server, client: Callable[[], Any]) -> Check:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from byoi.cli.client import ClientSetupError

    if not server.answered:
        return Check("credentials", Status.skip, "the server does not answer")
    try:
        who = client().get_caller_identity()
    except NoCredentialsError:
        return Check("credentials", Status.fail, "no credentials found", _CREDENTIALS_FIX)
    except ClientSetupError as exc:
        return Check("credentials", Status.fail, str(exc), "correct --profile / AWS_PROFILE")
    except ClientError as exc:
        code, message = exc.response["Error"].get("Code"), exc.response["Error"].get("Message")
        fix = _CREDENTIALS_FIX
        if "Signature expired" in str(message):
            fix = "set this machine's clock right (see the clock check)"
        elif code == "UnrecognizedClientException":
            fix = "the server knows no such key: an administrator makes one with `byoi admin keys create NAME`"
        return Check("credentials", Status.fail, f"refused: {code}: {message}", fix)
    except BotoCoreError as exc:
        return Check("credentials", Status.fail, str(exc), _CREDENTIALS_FIX)
    bound = f", user profile {who['UserProfileName']} in {who['DomainId']}" if who.get("UserProfileName") else ""
    role = f"role {who.get('Role')}{bound}"
    return Check("credentials", Status.ok, f"{who.get('PrincipalName')} ({role}), key {who.get('AccessKeyId')}")


_CREDENTIALS_FIX = (
    "export AWS_SHARED_CREDENTIALS_FILE=<data-dir>/credentials AWS_PROFILE=byoi (the key `byoi up` wrote), "
    "or use --profile"
)


def check_clock(date: str | None, sent: float, received: float) -> Check:
    """This machine's clock (`sent`, `received`: when the request left and its answer came) against the
    server's `Date` header, which has whole seconds: a skew under 2 s is not measurable and is fine."""
    import email.utils

    if not date:
        return Check("clock", Status.skip, "the server sent no Date header")
    try:
        server_time = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return Check("clock", Status.skip, f"the server's Date header {date!r} is not a date")
    skew = server_time - (sent + received) / 2
    if abs(skew) < 2:
        return Check("clock", Status.ok, "within a second or two of the server's")
    way = "behind" if skew > 0 else "ahead of"
    detail = f"this machine's clock is {abs(skew):.0f} s {way} the server's"
    fix = "set the clocks right: `sudo timedatectl set-ntp true` (or run chrony) here and on the server"
    if abs(skew) >= FAIL_SKEW:
        return Check("clock", Status.fail, f"{detail}: SigV4 refuses requests signed 5 minutes off", fix)
    if abs(skew) >= WARN_SKEW:
        return Check("clock", Status.warn, f"{detail} (SigV4 refuses 5 minutes)", fix)
    return Check("clock", Status.ok, detail)


# -- Docker Engine -----------------------------------------------------------------------------------


class _Unreachable(Exception):
    pass


def check_docker(server: Server, env: dict[str, str] | None = None) -> list[Check]:
    """The Docker Engines byoi uses from this machine (DOCKER_HOST, BYOI_BUILD_DOCKER_HOST,
    BYOI_SESSION_DOCKER_HOST, else the local socket): one check each."""
    env = dict(os.environ if env is None else env)
    explicit = any(env.get(v) for v in ("DOCKER_HOST", "BYOI_BUILD_DOCKER_HOST", "BYOI_SESSION_DOCKER_HOST"))
    if not server.local and not explicit:
        return [
            Check(
                "docker",
                Status.skip,
                f"the server ({server.endpoint}) is not on this machine: its Docker Engine is in its health",
            )
        ]
    import asyncio

    from byoi.cli.server import docker_hosts

    hosts = list(docker_hosts(env))
    checks = []
    for host in hosts:
        name = "docker" if len(hosts) == 1 else f"docker {host or 'local'}"
        checks.append(asyncio.run(_docker(name, host)))
    return checks


async def _docker(name: str, host: str | None) -> Check:
    import asyncio

    from byoi.docker_engine import START_HINT, EngineClient

    fix = "start Docker Engine: `sudo systemctl start docker` (or `sudo dockerd &`; `bash scripts/up.sh` does as root)"
    try:
        docker = EngineClient(host, _Unreachable)
    except _Unreachable as exc:
        return Check(name, Status.fail, str(exc).replace(f"; {START_HINT}", ""), fix)
    import aiodocker

    try:
        version = await asyncio.wait_for(docker.version(), DOCKER_TIMEOUT)
        info = await asyncio.wait_for(docker.system.info(), DOCKER_TIMEOUT)
        found = f"Docker Engine {version.get('Version', '?')} at {docker.address}, storage driver {info.get('Driver')}"
        ran = await asyncio.wait_for(_run_a_container(docker), DOCKER_TIMEOUT * 2)
    except _Unreachable as exc:
        reason = str(exc).replace(f"; {START_HINT}", "")
        if "permission denied" in reason:
            fix = "run byoi as root, or add your user to the docker group (`sudo usermod -aG docker $USER`)"
        return Check(name, Status.fail, reason, fix)
    except TimeoutError:
        silent = f"Docker Engine at {docker.address} did not answer within {DOCKER_TIMEOUT:g} s"
        return Check(name, Status.fail, silent, fix)
    except aiodocker.DockerError as exc:  # it answered, and refused
        return Check(name, Status.fail, f"Docker Engine at {docker.address} refused: {exc.message}", "see its log")
    finally:
        await docker.close()
    if ran.status != Status.ok:
        return Check(name, ran.status, f"{found}; {ran.detail}", ran.fix)
    if info.get("Driver") == "vfs":
        return Check(
            name,
            Status.warn,
            f"{found}: vfs copies every layer, so builds and sessions are slow and fill the disk",
            "configure the overlay2 storage driver (/etc/docker/daemon.json)",
        )
    return Check(name, Status.ok, f"{found}; {ran.detail}")


async def _run_a_container(docker: Any) -> Check:
    """Run `true` in a container of a small image already present (none is pulled): the smallest tagged
    images over 1 MB (smaller ones seldom hold a `true`), trying the next when one has no `true`."""
    import aiodocker

    images = [i for i in await docker.images.list() if i.get("RepoTags") and i["RepoTags"][0] != "<none>:<none>"]
    images = sorted((i for i in images if i.get("Size", 0) > 1e6), key=lambda i: i["Size"])[:3]
    if not images:
        return Check(
            "", Status.skip, "no image here to run a container from (none is pulled)", "build or load one to check it"
        )
    tried = []
    for image in images:
        tag = image["RepoTags"][0]
        config = {
            "Image": image["Id"],
            "Entrypoint": ["true"],
            "Cmd": [],
            "Labels": {"byoi.doctor": "1"},
            "HostConfig": {"NetworkMode": "none"},
        }
        container = await docker.containers.create(config, name=f"byoi-doctor-{uuid.uuid4().hex[:8]}")
        try:
            await container.start()
            status = (await container.wait()).get("StatusCode")
        except aiodocker.DockerError as exc:
            if "executable file not found" in str(exc) or "no such file" in str(exc):
                tried.append(tag)
                continue
            return Check("", Status.fail, f"could not run a container of {tag}: {exc.message}", "see the Engine's log")
        finally:
            await container.delete(force=True)
        if status == 0:
            return Check("", Status.ok, f"ran `true` in a container of {tag}")
        return Check("", Status.fail, f"`true` in a container of {tag} exited {status}", "see the Engine's log")
    return Check("", Status.skip, f"no image here has a `true` to run ({', '.join(tried)})", "build or load one")


# -- the registry ------------------------------------------------------------------------------------


def registry_url(server: Server, given: str | None) -> str | None:
    """--registry, else the server's default registry."""
    if given:
        return given if "://" in given else f"https://{given}"
    info = server.info or {}
    default = info.get("DefaultRegistry")
    return next((u for u in info.get("Registries") or [] if u.split("://", 1)[-1] == default), None)


def check_registry(server: Server, url: str | None, docker_config: Path | None) -> Check:
    if url is None:
        why = "the server does not answer" if not server.answered else "the server did not say which registry it uses"
        return Check("registry", Status.skip, f"{why}; name one with --registry URL")
    host = url.split("://", 1)[1].rstrip("/")
    if host.rsplit(":", 1)[0] in LOOPBACK and not server.local:
        return Check("registry", Status.skip, f"{host} is the server's own loopback address: see the server health")
    from byoi.registry.errors import unreachable_message

    probe = _RegistryProbe(url.rstrip("/"), docker_config)
    try:
        return probe.run()
    except _Refused as exc:
        return Check("registry", exc.status, f"{host}: {exc}", exc.fix)
    except OSError as exc:  # httpx2's TransportError is not one; see _RegistryProbe.send
        return Check("registry", Status.fail, unreachable_message(host, str(exc)), _REGISTRY_FIX)
    finally:
        probe.close()


_REGISTRY_FIX = "start it (`byoi up` starts the local one), or correct its URL (--registry, the server's --registry)"


class _Refused(Exception):
    def __init__(self, message: str, status: Status = Status.fail, fix: str = "") -> None:
        super().__init__(message)
        self.status, self.fix = status, fix


class _RegistryProbe:
    """Push a tiny image (a config and one 64-byte layer) to DOCTOR_REPOSITORY, pull it back, delete it.
    Credentials for a registry that asks: Basic, or a Bearer token from its realm, with those in the Docker
    config.json (DOCKER_CONFIG, else ~/.docker)."""

    def __init__(self, url: str, docker_config: Path | None) -> None:
        import httpx2 as httpx

        from byoi.registry.client import docker_config_credentials

        self.url, self.host = url, url.split("://", 1)[1]
        self.http = httpx.Client(timeout=HTTP_TIMEOUT)
        self.credentials = docker_config_credentials(docker_config).get(self.host)
        self.auth: dict[str, str] = {}

    def close(self) -> None:
        self.http.close()

    def send(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx2 as httpx

        from byoi.reachability import connection_failure

        headers = {**self.auth, **kwargs.pop("headers", {})}
        try:
            return self.http.request(method, path if "://" in path else self.url + path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise OSError(connection_failure(exc)) from None

    def run(self) -> Check:
        root = self.send("GET", "/v2/")
        if root.status_code == 401:
            self._authorize(root.headers.get("www-authenticate", ""))
        elif root.status_code != 200:
            raise _Refused(f"GET /v2/ answered HTTP {root.status_code}: is this an OCI registry?", fix=_REGISTRY_FIX)
        config, layer = b"{}", os.urandom(64)
        for blob in (config, layer):
            self._push_blob(blob)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
                "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
            }
        ).encode()
        tag = f"doctor-{uuid.uuid4().hex[:12]}"
        base = f"/v2/{DOCTOR_REPOSITORY}"
        put = self.send("PUT", f"{base}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST})
        self._expect(put, 201, "pushing a manifest")
        digest = _digest(manifest)
        pulled = self.send("GET", f"{base}/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
        self._expect(pulled, 200, "pulling the manifest back")
        blob = self.send("GET", f"{base}/blobs/{_digest(layer)}", follow_redirects=True)
        self._expect(blob, 200, "pulling the layer back")
        if pulled.content != manifest or blob.content != layer:
            raise _Refused("what was pulled back differs from what was pushed", fix="check the registry's storage")
        deleted = self.send("DELETE", f"{base}/manifests/{digest}")
        self.send("DELETE", f"{base}/blobs/{_digest(layer)}")
        kept = "" if deleted.status_code == 202 else f"; it does not allow deletes, so {tag} stays"
        size = len(manifest) + len(config) + len(layer)
        return Check(
            "registry", Status.ok, f"{self.host}: pushed and pulled a {size}-byte image ({DOCTOR_REPOSITORY}){kept}"
        )

    def _authorize(self, challenge: str) -> None:
        if self.credentials is None:
            raise _Refused(
                "answers, and asks for credentials to push (none in the Docker config.json here)",
                Status.warn,
                f"`docker login {self.host}` to check pushing too (byoi's server has its own credentials)",
            )
        scheme, _, params = challenge.partition(" ")
        creds = self.credentials
        if scheme.lower() == "basic":
            import base64

            pair = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            self.auth = {"Authorization": f"Basic {pair}"}
            return
        fields = dict(part.split("=", 1) for part in params.replace('"', "").split(",") if "=" in part)
        query = {"service": fields.get("service", ""), "scope": f"repository:{DOCTOR_REPOSITORY}:push,pull"}
        auth = (creds.username or "", creds.password or "") if creds.username else None
        answer = self.send("GET", fields.get("realm", ""), params=query, auth=auth)
        self._expect(answer, 200, "getting a token")
        token = answer.json().get("token") or answer.json().get("access_token")
        self.auth = {"Authorization": f"Bearer {token}"}

    def _push_blob(self, blob: bytes) -> None:
        started = self.send("POST", f"/v2/{DOCTOR_REPOSITORY}/blobs/uploads/")
        self._expect(started, 202, "starting an upload")
        location = started.headers["location"]
        location = location if "://" in location else self.url + location
        joiner = "&" if "?" in location else "?"
        put = self.send(
            "PUT",
            f"{location}{joiner}digest={_digest(blob)}",
            content=blob,
            headers={"Content-Type": "application/octet-stream"},
        )
        self._expect(put, 201, "pushing a blob")

    def _expect(self, response: Any, status: int, doing: str) -> None:
        if response.status_code == status:
            return
        if response.status_code in (401, 403):
            raise _Refused(
                f"refused {doing} (HTTP {response.status_code})",
                fix=f"use credentials that may push to {DOCTOR_REPOSITORY} (`docker login {self.host}`)",
            )
        raise _Refused(f"{doing} answered HTTP {response.status_code}: {response.text[:200]}", fix="see its log")


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}


# -- disk --------------------------------------------------------------------------------------------


def check_disk(server: Server, data_dir: Path, usage: Callable[[Path], Any] = shutil.disk_usage) -> Check:
    if not server.local:
        return Check("disk", Status.skip, f"the server ({server.endpoint}) is not on this machine")
    if not data_dir.is_dir():
        return Check("disk", Status.skip, f"no data dir at {data_dir} (the server's is elsewhere? --data-dir)")
    free = usage(data_dir).free
    detail = f"{free / 1e9:.1f} GB free in {data_dir}"
    fix = f"free space where {data_dir} is (`docker image prune`, unused image versions), or move the data dir"
    if free < MIN_FREE:
        return Check("disk", Status.fail, detail, fix)
    if free < LOW_FREE:
        return Check("disk", Status.warn, detail, fix)
    return Check("disk", Status.ok, detail)


# -- the command -------------------------------------------------------------------------------------


def run_checks(
    endpoint_url: str | None, profile: str | None, registry: str | None, data_dir: Path, docker_config: Path | None
) -> list[Check]:
    from byoi.cli.client import ClientSetupError, _endpoint, extension_client

    try:
        endpoint = _endpoint(endpoint_url)
    except ClientSetupError as exc:
        return [Check("server", Status.fail, str(exc), "correct --endpoint-url / AWS_ENDPOINT_URL_SAGEMAKER")]

    def client() -> Any:
        return extension_client(endpoint_url, profile, attempts=1)

    server = probe_server(endpoint, client)
    checks = [check_server(server), check_health(server), check_credentials(server, client)]
    checks.append(check_clock(server.date, server.sent, server.received) if server.answered else _skipped("clock"))
    checks += check_docker(server)
    checks.append(check_registry(server, registry_url(server, registry), docker_config))
    checks.append(check_disk(server, data_dir))
    return checks


def _skipped(name: str) -> Check:
    return Check(name, Status.skip, "the server does not answer")


_STYLE = {Status.ok: "green", Status.warn: "yellow", Status.fail: "red", Status.skip: "dim"}


def doctor(
    registry: Annotated[
        str | None, typer.Option("--registry", help="Registry URL to check (default: the server's default one).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", envvar="BYOI_DATA_DIR", help="The server's data dir (disk check).")
    ] = None,
    output: Output = "table",
    endpoint_url: EndpointUrl = None,
    profile: Profile = None,
) -> None:
    """Check Docker Engine, the registry, the server, the credentials, the clock and the disk; say what to fix."""
    import logging

    from byoi.config import default_data_dir

    # The parts' reachability is logged by the modules the checks reuse; here the table says it, once.
    logging.getLogger("byoi").addHandler(logging.NullHandler())
    docker_config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    checks = run_checks(endpoint_url, profile, registry, (data_dir or default_data_dir()).expanduser(), docker_config)
    failed = any(c.status == Status.fail for c in checks)
    if output != "table":
        rows = [{k.title(): v for k, v in asdict(c).items()} for c in checks]
        print_document({"Checks": rows, "Ok": not failed}, output)
    else:
        from rich.table import Table

        table = Table("check", "status", "detail", "fix")
        for c in checks:
            style = _STYLE[c.status]
            table.add_row(literal(c.name), f"[{style}]{c.status.value}[/{style}]", literal(c.detail), literal(c.fix))
        console.print(table)
    if failed:
        raise typer.Exit(ExitCode.ERROR)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
