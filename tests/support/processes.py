"""Start real registries and real byoi servers for tests, on loopback, and stop them afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx2 as httpx
from botocore.config import Config

REPO = Path(__file__).resolve().parents[2]
# Synthetic test images are not RStudio images: with this file the contract's required rules only warn.
LENIENT_INSPECTION = REPO / "tests" / "support" / "inspection-lenient.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, ok=(200, 401, 503), verify: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1, verify=verify).status_code in ok:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


# Ports of the registries this test run started: their image tags in Docker are removed at the end.
STARTED_REGISTRY_PORTS: set[int] = set()


def start_registry(workdir: Path, port: int, auth_yaml: str = "") -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    STARTED_REGISTRY_PORTS.add(port)
    config = workdir / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {workdir / 'storage'}\n"
        f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=(workdir / "log").open("wb"), stderr=subprocess.STDOUT
    )
    scheme = "https" if "tls:" in auth_yaml else "http"
    wait_http(f"{scheme}://127.0.0.1:{port}/v2/", verify=False)
    return proc


@dataclass
class ByoiServer:
    """A real `byoi server` process. `kill()` is SIGKILL, as a crash would be.

    `inspection_config` is the file given as BYOI_INSPECTION_CONFIG: the lenient one unless told otherwise;
    None starts the server with no inspection config at all (the variable unset, as a user's server runs),
    so the contract's default rule levels apply. A BYOI_INSPECTION_CONFIG in `env` still wins.
    """

    data_dir: Path
    registries: list[str]
    database_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    inspection_config: Path | None = LENIENT_INSPECTION
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / "credentials"

    def start(self) -> ByoiServer:
        args = [sys.executable, "-m", "byoi", "server", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        for reg in self.registries:
            args += ["--registry", reg]
        if self.database_url:
            args += ["--database-url", self.database_url]
        env = {
            **os.environ,
            "BYOI_LEASE_SECONDS": "3",
            "BYOI_RESOLVE_ATTEMPTS": "2",
            "BYOI_RETRY_BASE_DELAY": "0.2",
            "BYOI_REGISTRY_TIMEOUT": "5",
        }
        env.pop("BYOI_INSPECTION_CONFIG", None)
        if self.inspection_config is not None:
            env["BYOI_INSPECTION_CONFIG"] = str(self.inspection_config)
        env.update(self.env)
        env.pop("BYOI_REGISTRY", None)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "server.log"
        log_start = log.stat().st_size if log.exists() else 0  # the log is appended to across restarts
        logs_info = env.get("BYOI_LOG_LEVEL", "INFO").upper() in ("DEBUG", "INFO")
        self.proc = subprocess.Popen(
            args + self.extra_args, env=env, stdout=(self.data_dir / "server.log").open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"byoi server exited: {(self.data_dir / 'server.log').read_text()[-3000:]}")
            try:
                httpx.get(self.endpoint + "/healthz", timeout=1)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            # The answer must come from this process, not from one that took the port first: uvicorn logs the
            # address once it has bound it (at INFO; a server started with a higher level, as the benchmarks do,
            # is taken at its word once it answers and is still running).
            if not logs_info:
                time.sleep(0.2)
                if self.proc.poll() is None:
                    return self
                continue
            with log.open("rb") as f:
                f.seek(log_start)
                if f"Uvicorn running on {self.endpoint} ".encode() in f.read():
                    return self
            time.sleep(0.1)
        raise TimeoutError("byoi server did not start:\n" + (self.data_dir / "server.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def session(self) -> boto3.Session:
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(self.credentials_file)
        session = boto3.Session(profile_name="byoi")
        return session

    def client(self, **config):
        return self.session().client(
            "sagemaker",
            endpoint_url=self.endpoint,
            config=Config(retries={"max_attempts": 1}, **config),
        )

    def client_as(self, ext, principal: str):
        """A SageMaker client signed with a new access key of `principal` (made through `ext`, an admin's)."""
        key = ext.create_access_key(PrincipalName=principal)["AccessKey"]
        return boto3.client(
            "sagemaker",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            config=Config(retries={"max_attempts": 1}),
        )

    def aws_env(self) -> dict[str, str]:
        """Environment for the AWS CLI and the byoi CLI, the way a user would set it."""
        return {
            **os.environ,
            "AWS_SHARED_CREDENTIALS_FILE": str(self.credentials_file),
            "AWS_PROFILE": "byoi",
            "AWS_ENDPOINT_URL_SAGEMAKER": self.endpoint,
        }


def byoi_cli(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`byoi ARGS` run in this process with typer's CliRunner, answering what
    `subprocess.run([byoi, *args], env=env, capture_output=True, text=True)` would: the same command code
    against the same real server, without the second or two of Python start-up a `byoi` process costs.

    `env` is the command's whole environment, as for a subprocess: variables of this process that it lacks
    are unset while the command runs, and everything is put back afterwards (also what the command itself
    set). An exception the command does not handle comes back as its traceback on stderr with status 1, as
    the console script prints it, so `"Traceback" not in stderr` checks the same thing. Run from the main
    thread only (the runner swaps sys.stdout); tests that need a terminal, a signal or several processes at
    once keep starting real `byoi` processes, and a few plain ones do too, so the console script is exercised.
    """
    from typer.testing import CliRunner

    from byoi.cli.main import app

    saved = dict(os.environ)
    try:
        with _plain_consoles():
            result = CliRunner().invoke(
                app, args, env={**{k: None for k in saved if k not in env}, **env}, prog_name="byoi"
            )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["byoi", *args], result.exit_code, result.stdout, stderr)


@contextlib.contextmanager
def _plain_consoles() -> Iterator[None]:
    """byoi's two rich consoles (stdout, stderr) are made when byoi.cli.common is imported, and take their
    colours and a COLUMNS/LINES size from that moment: under `pytest -s` on a terminal they would colour what
    a command piped to a file never does. While a command runs in-process, they decide as for a pipe: no
    colour, and the size from the command's own COLUMNS/LINES (rich reads those when it draws)."""
    from byoi.cli import common

    consoles = (common.console, common.err)
    saved = [(c._color_system, c._width, c._height) for c in consoles]
    for c in consoles:
        c._color_system, c._width, c._height = None, None, None
    try:
        yield
    finally:
        for c, (color, width, height) in zip(consoles, saved, strict=True):
            c._color_system, c._width, c._height = color, width, height
