"""`byoi server` and `byoi up`: run the API, and on a single machine the local registry beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import uvicorn

from byoi import logs
from byoi.app import create_app
from byoi.cli.client import credentials_hint
from byoi.config import Settings

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


def run_server(settings: Settings, log_level: str = "INFO") -> None:
    logs.configure(log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    first_start = not (settings.data_dir / "credentials").exists()
    app = create_app(settings)
    print(f"byoi serves the SageMaker API on {settings.endpoint_url} (data in {settings.data_dir})", file=sys.stderr)
    if first_start:
        print("An administrator access key is written on first start.", file=sys.stderr)
    print(credentials_hint(settings.data_dir, settings.endpoint_url), file=sys.stderr)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
    )


def start_local_registry(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """Start CNCF Distribution (Debian's `docker-registry`) on 127.0.0.1:<port>, storage in the data dir."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not os.path.exists(binary):
        raise SystemExit("docker-registry is not installed: run `apt-get install -y docker-registry` (see README)")
    root = data_dir / "registry"
    (root / "storage").mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(REGISTRY_CONFIG.format(storage=root / "storage", port=port))
    log_file = (root / "registry.log").open("ab")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"docker-registry exited with {proc.returncode}; see {root / 'registry.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                print(f"registry: http://127.0.0.1:{port} (storage in {root / 'storage'})", file=sys.stderr)
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"docker-registry did not answer on 127.0.0.1:{port} within 15 s; see {root / 'registry.log'}")


def run_up(settings: Settings, registry_port: int, log_level: str = "INFO") -> None:
    registry = start_local_registry(settings.data_dir, registry_port)
    try:
        run_server(settings, log_level)  # returns when uvicorn stops on Ctrl-C / SIGTERM
    finally:
        registry.terminate()
        try:
            registry.wait(10)
        except subprocess.TimeoutExpired:
            registry.kill()
        print("byoi and its registry stopped.", file=sys.stderr)
