"""`byoi server` and `byoi up`: run the API, and on a single machine the local registry beside it."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx2 as httpx
import uvicorn

from byoi import logs
from byoi.cli.client import credentials_hint
from byoi.config import CREDENTIALS_PROFILE as PROFILE
from byoi.config import Settings
from byoi.reachability import connection_failure

log = logging.getLogger("byoi")

UNAVAILABLE = 69  # exit status of `byoi up` when Docker Engine or a registry is missing or silent (EX_UNAVAILABLE)
STARTUP_FAILURE = 3  # uvicorn's: the server did not start (a port in use, a failed start-up; the log says)

REGISTRY_CONFIG = """version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
"""


def with_tls(settings: Settings, cert: Path | None, key: Path | None) -> Settings:
    """Settings serving HTTPS with `cert` and `key` (both or neither), checked before the server starts so a
    missing or unreadable file is a usage error naming it, not a traceback from uvicorn."""
    import dataclasses
    import ssl

    import typer

    if cert is None and key is None:
        return settings
    if cert is None or key is None:
        raise typer.BadParameter("--tls-cert and --tls-key go together: give both, or neither for plain HTTP")
    cert, key = cert.expanduser().resolve(), key.expanduser().resolve()
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise typer.BadParameter(f"cannot serve HTTPS with --tls-cert {cert} and --tls-key {key}: {exc}") from None
    return dataclasses.replace(settings, tls_cert=cert, tls_key=key)


# -- serving, and saying so once it is ready --------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server, calling `on_ready` once it listens and the app has started (migrations run, the
    administrator key written), so what it prints then is true."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        # uvicorn raises the signal that stopped it again once it has shut down; SIGTERM's default action
        # would then end the process before `byoi up` stops its registry. Stopped gracefully is done.
        self._captured_signals.clear()


def run_server(
    settings: Settings,
    log_level: str = "INFO",
    log_format: str = "auto",
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve until Ctrl-C / SIGTERM. Logs go to stderr; what a person reads once (where byoi is, the
    credentials) goes to stdout when the server is ready: `on_ready`, else the short hint of `byoi server`."""
    from byoi.app import create_app  # here: `byoi up` refuses a missing part before loading the whole server
    from byoi.errors import StartupRefused
    from byoi.store.db import migrate_in_child, normalise_url

    logs.configure(log_level, log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:  # before any thread starts: the child is forked
        migrate_in_child(normalise_url(settings.effective_database_url))
    except (StartupRefused, RuntimeError) as exc:
        log.error("byoi server refuses to start: %s", exc)
        raise SystemExit(STARTUP_FAILURE) from None
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=log_level.upper() == "DEBUG",  # byoi logs each request itself, with its id
        lifespan="on",
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
    )
    server = _Server(config, on_ready or (lambda: _say(_server_hint(settings))))
    try:
        server.run()
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        pass
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)  # as uvicorn.run: the log says why (a port in use, a failed start-up)


def _server_hint(settings: Settings) -> str:
    return (
        f"byoi serves the SageMaker API on {settings.endpoint_url} (data in {settings.data_dir})\n"
        + credentials_hint(settings.data_dir, settings.endpoint_url)
    )


def _say(text: str) -> None:
    """Print for the person at the terminal, on stdout (stderr carries the logs), at once."""
    print(text, flush=True)


def next_steps(settings: Settings, registry_port: int) -> str:
    """What `byoi up` prints once everything is ready: where things are, the credentials, the next command."""
    endpoint, data = settings.endpoint_url, settings.data_dir
    rule = "─" * 72
    return f"""{rule}
byoi is ready.
  API       {endpoint}   (SageMaker's API: boto3, the AWS CLI and byoi)
  console   {endpoint}/console/   (sign in as admin after `byoi admin password set admin`)
  registry  127.0.0.1:{registry_port}   (docker push 127.0.0.1:{registry_port}/<name>:<tag>)
  data      {data}

In another shell, use the administrator key byoi wrote (its profile sets the region, {settings.region}):
  export AWS_SHARED_CREDENTIALS_FILE={data / "credentials"}
  export AWS_PROFILE={PROFILE}
  export AWS_ENDPOINT_URL_SAGEMAKER={endpoint}
  byoi whoami

Next, an RStudio image and a session on it: the README's journey, from "1. An RStudio image".
  byoi build examples/rocker --image rstudio --register     (in byoi's clone; offline: skopeo, see README)
  byoi versions report rstudio

Ctrl-C stops byoi and its registry.
{rule}"""


# -- `byoi up`: check what byoi needs, start the local registry, serve -------------------------------


class Unavailable(Exception):
    """Something `byoi up` needs is missing or does not answer; the message says what and what to do."""


def run_up(settings: Settings, registry_port: int, log_level: str = "INFO", log_format: str = "auto") -> None:
    """Check Docker Engine and the other registries, start the local registry, then serve; refuse at once
    (one message on stderr, exit status UNAVAILABLE, no traceback) when a part is not there."""
    try:
        engines = check_docker_engine()
        check_registries(settings, skip=f"127.0.0.1:{registry_port}")
        binary = local_registry_binary(registry_port)
        logs.configure(log_level, log_format)  # after the checks: a refusal is one message, not log lines
        for address, version in engines.items():
            log.info("Docker Engine %s answers at %s", version, address)
        registry = start_local_registry(binary, settings.data_dir, registry_port)
    except Unavailable as exc:
        print(f"byoi up: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(UNAVAILABLE) from None
    try:
        run_server(settings, log_level, log_format, on_ready=lambda: _say(next_steps(settings, registry_port)))
    finally:
        registry.terminate()
        try:
            registry.wait(10)
        except subprocess.TimeoutExpired:
            registry.kill()
        _say("byoi and its registry stopped.")


DEFAULT_DOCKER_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock")  # where aiodocker looks, in order


def docker_hosts(env: Mapping[str, str]) -> dict[str | None, str | None]:
    """{address (None: the local default): the variable that set it}, for builds and for sessions."""
    found: dict[str | None, str | None] = {}
    for own in ("BYOI_BUILD_DOCKER_HOST", "BYOI_SESSION_DOCKER_HOST"):
        source = own if env.get(own) else "DOCKER_HOST" if env.get("DOCKER_HOST") else None
        found.setdefault(env[source] if source else None, source)
    return found


def check_docker_engine(env: Mapping[str, str] | None = None, timeout: float = 5.0) -> dict[str, str]:
    """{address: version} of the Docker Engines byoi uses; Unavailable unless every one answers."""
    versions: dict[str, str] = {}
    for host, source in docker_hosts(os.environ if env is None else env).items():
        address = host or next(
            (f"unix://{p}" for p in DEFAULT_DOCKER_SOCKETS if Path(p).is_socket()),
            f"unix://{DEFAULT_DOCKER_SOCKETS[1]}",
        )
        try:
            versions[address] = asyncio.run(_docker_version(host, timeout))
        except _NoAnswer as exc:
            raise Unavailable(_docker_advice(address, source, exc.why)) from None
    return versions


class _NoAnswer(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


async def _docker_version(host: str | None, timeout: float) -> str:
    import aiodocker

    try:
        docker = aiodocker.Docker(url=host)
    except AssertionError:  # aiodocker found no socket to use
        raise _NoAnswer("the socket does not exist") from None
    except (ValueError, aiodocker.DockerError) as exc:  # an address it cannot use (a bad scheme, ssh://)
        raise _NoAnswer(str(exc).strip()) from None
    try:
        return str((await asyncio.wait_for(docker.version(), timeout)).get("Version", "?"))
    except TimeoutError:
        raise _NoAnswer(f"no answer within {timeout:g} s") from None
    except (aiodocker.DockerError, OSError) as exc:
        raise _NoAnswer(connection_failure(exc)) from None
    finally:
        await docker.close()


def _docker_advice(address: str, source: str | None, why: str) -> str:
    """The refusal: what does not answer and why, then what to do about it."""
    lines = [f"Docker Engine is not reachable at {address}: {why}."]
    if source:
        lines.append(f"The address comes from {source}: correct it, or unset it to use the local Docker Engine.")
    elif why == "permission denied":
        lines.append("Run byoi as root, or add your user to the docker group (`sudo usermod -aG docker $USER`).")
    elif not (shutil.which("dockerd") or os.path.exists("/usr/sbin/dockerd")):  # /usr/sbin: not on a user's PATH
        lines.append("Docker Engine is not installed: `sudo apt-get install -y docker.io` (`bash scripts/up.sh` does).")
    else:
        lines.append("byoi builds images and runs sessions on it. Start it, then run byoi up again:")
        lines.append("  sudo dockerd &            (or: sudo systemctl start docker)")
        lines.append("`bash scripts/up.sh` starts it for you when run as root.")
    return "\n".join(lines)


def check_registries(settings: Settings, skip: str, timeout: float = 5.0) -> None:
    """Raise Unavailable when a configured registry (other than `skip`, the local one `up` starts) does not
    answer its API root. Any answer counts, a 401 too: credentials are the server's to use, and /healthz
    reports what it finds."""
    from byoi.registry.errors import unreachable_message

    for reg in settings.registries:
        if reg.host == skip:
            continue
        try:
            httpx.get(f"{reg.url}/v2/", timeout=timeout, verify=reg.ca_file or True).close()
        except httpx.TransportError as exc:
            why = connection_failure(exc)
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                why = "its TLS certificate could not be verified (a private CA? set ca_file in --registries-file)"
            raise Unavailable(
                f"{unreachable_message(reg.host, why)} ({reg.url}).\n"
                "Start it or correct its URL (--registry, --registries-file), or leave it out."
            ) from None


def local_registry_binary(port: int) -> str:
    """The `docker-registry` to start on 127.0.0.1:<port>; Unavailable when it is not installed or something
    listens there already (byoi would register images in a registry it did not start)."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not os.path.exists(binary):
        raise Unavailable("docker-registry is not installed: `sudo apt-get install -y docker-registry` (see README)")
    if _listening(port):
        raise Unavailable(
            f"127.0.0.1:{port} is in use (another byoi up?): stop what listens there, or pass --registry-port"
        )
    return binary


def start_local_registry(binary: str, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """Start CNCF Distribution (Debian's `docker-registry`) on 127.0.0.1:<port>, storage in the data dir."""
    root = data_dir / "registry"
    (root / "storage").mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(REGISTRY_CONFIG.format(storage=root / "storage", port=port))
    log_path = root / "registry.log"
    log_start = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(
                f"the local registry (docker-registry) exited with status {proc.returncode}:\n"
                f"{_tail(log_path, log_start)}\n(its log: {log_path})"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                log.info("local registry on http://127.0.0.1:%d (storage in %s)", port, root / "storage")
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.terminate()
    raise Unavailable(f"the local registry did not answer on 127.0.0.1:{port} within 15 s; see {log_path}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, start: int, lines: int = 5) -> str:
    with path.open("rb") as fh:
        fh.seek(start)
        text = fh.read().decode(errors="replace")
    return "\n".join("  " + line for line in text.strip().splitlines()[-lines:])
