"""Logs for people and for machines, and what `byoi up` checks and says before it is ready.

Real `byoi server` and `byoi up` processes on loopback ports, each with its own data dir: stderr (the log) is
read apart from stdout (what a person reads once), from a pipe, or from a pseudo-terminal for the coloured
text a person sees in a shell. The refusals run `byoi up` against a Docker socket where nothing listens and a
registry port where nothing answers, and must say so in words, never with a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx2 as httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from byoi import logs
from tests.support.docker_images import docker_available
from tests.support.processes import byoi_cli, free_port

BYOI = [sys.executable, "-m", "byoi"]
TEXT_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S+  \S")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
UNAVAILABLE = 69  # `byoi up`'s exit status when a part it needs is not there (docs/operations.md)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BYOI_", "AWS_"))}
    env.pop("NO_COLOR", None)
    return {**env, "BYOI_LEASE_SECONDS": "3", **extra}


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"byoi exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def served(tmp_path: Path, registry: str) -> Iterator:
    """`served(*args)`: a real `byoi server` with stdout and stderr to two files, until it is ready; stopped with
    SIGTERM at the end of the test. Returns (endpoint, stdout file, stderr file)."""
    procs: list[subprocess.Popen] = []
    files: list = []

    def start(*args: str) -> tuple[str, Path, Path]:
        port = free_port()
        out, err = tmp_path / f"{port}.out", tmp_path / f"{port}.err"
        cmd = [*BYOI, "server", "--port", str(port), "--data-dir", str(tmp_path / f"data-{port}")]
        cmd += ["--registry", f"http://{registry}", *args]
        files.extend([out.open("wb"), err.open("wb")])
        proc = subprocess.Popen(cmd, env=_env(), stdout=files[-2], stderr=files[-1])
        procs.append(proc)
        endpoint = f"http://127.0.0.1:{port}"
        _wait_for(lambda: "AWS_ENDPOINT_URL_SAGEMAKER=" in out.read_text(), "ready hint on stdout", proc)
        return endpoint, out, err

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    for f in files:
        f.close()


def _client(endpoint: str, credentials: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    session = boto3.Session(profile_name="byoi")
    return session.client("sagemaker", endpoint_url=endpoint, config=Config(retries={"max_attempts": 1}))


def _credentials(endpoint: str, tmp_path: Path) -> Path:
    return tmp_path / f"data-{endpoint.rsplit(':', 1)[1]}" / "credentials"


# -- byoi server: the two formats, and library chatter ----------------------------------------------------


def test_server_logs_json_lines_on_a_pipe_and_keeps_library_chatter_out_at_info(served, tmp_path, monkeypatch):
    endpoint, out, err = served()
    with pytest.raises(ClientError) as e:
        _client(endpoint, _credentials(endpoint, tmp_path), monkeypatch).describe_image(ImageName="no-such-image")
    rid = e.value.response["ResponseMetadata"]["RequestId"]
    time.sleep(0.3)
    lines = err.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line of stderr is one JSON object
    assert entries and all({"time", "level", "logger", "message"} <= set(x) for x in entries)
    loggers = {x["logger"] for x in entries}
    assert not [n for n in loggers if n.startswith("alembic")], loggers  # migrations ran, quietly
    messages = [x["message"] for x in entries]
    assert "Waiting for application startup." not in messages and "Application startup complete." not in messages
    assert any(m.startswith(f"Uvicorn running on {endpoint} ") for m in messages)  # where byoi listens stays
    mine = [x for x in entries if x.get("request_id") == rid]
    assert [(x["operation"], x["error_code"], x["status"]) for x in mine] == [
        ("DescribeImage", "ResourceNotFound", 400)
    ]
    # What a person reads once is on stdout, printed when the server answers: it names the real endpoint.
    assert f"export AWS_ENDPOINT_URL_SAGEMAKER={endpoint}\n" in out.read_text()


def test_server_logs_text_when_asked_and_library_lines_come_back_at_debug(served, tmp_path, monkeypatch):
    endpoint, _out, err = served("--log-format", "text", "--log-level", "debug")
    _client(endpoint, _credentials(endpoint, tmp_path), monkeypatch).list_images()
    time.sleep(0.3)
    text = err.read_text()
    assert not ANSI.search(text)  # stderr is a file, not a terminal: no colour codes
    lines = text.splitlines()
    assert lines and not [line for line in lines if line.startswith("{")]
    assert all(TEXT_LINE.match(line) for line in lines), lines  # one line a record (no traceback here)
    # The libraries' INFO lines are back, shown as DEBUG: the migrations, uvicorn's start-up, its access log.
    assert re.search(r" DEBUG +alembic\.runtime\.migration  Running upgrade ", text)
    assert re.search(r" DEBUG +uvicorn\.error  Application startup complete\.", text)
    assert re.search(r' DEBUG +uvicorn\.access  127\.0\.0\.1:\d+ - "POST / HTTP/1\.1" 200', text)
    # byoi's own request line, readable: the operation, the outcome, then its fields.
    assert re.search(r" INFO +byoi\.api  ListImages ok  request_id=[0-9a-f-]{36} status=200 duration_ms=", text)
    # Libraries' own DEBUG lines (one per SQL statement or socket event) stay out even at debug.
    assert " aiosqlite  " not in text and " httpcore2." not in text


def test_bad_log_format_or_level_is_a_usage_error(tmp_path):
    env = _env(BYOI_DATA_DIR=str(tmp_path / "data"))
    bad = [
        (["--log-format", "xml"], "'xml' is not one of 'auto', 'text', 'json'"),
        (["--log-level", "loud"], "'loud' is not one of 'debug', 'info'"),
    ]
    for args, named in bad:
        for command in ("server", "up"):
            result = byoi_cli([command, *args], env)
            assert result.returncode == 2, result.stderr
            assert named in " ".join(result.stderr.replace("│", " ").split()) and "Traceback" not in result.stderr
    result = byoi_cli(["server", "--port", "1"], {**env, "BYOI_LOG_FORMAT": "yaml"})  # the variable is checked too
    assert result.returncode == 2 and "BYOI_LOG_FORMAT" in result.stderr, result.stderr
    assert not (tmp_path / "data").exists()


def test_a_store_that_does_not_answer_is_one_line_naming_it_without_its_password_and_no_traceback(tmp_path):
    port = free_port()  # nothing listens there
    cmd = [*BYOI, "server", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--log-format", "text"]
    url = f"postgresql://byoi:hunter2@127.0.0.1:{port}/byoi"
    done = subprocess.run(cmd, env=_env(BYOI_DATABASE_URL=url), capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout
    [line] = [line for line in done.stderr.splitlines() if "refuses to start" in line]
    assert f"the store at postgresql+psycopg://byoi:***@127.0.0.1:{port}/byoi is not reachable" in line
    assert "Connection refused" in line


# -- byoi up: refusals -------------------------------------------------------------------------------------


def _up(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [*BYOI, "up", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), *args]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=60)


def _up_in_process(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The same command in this process (no Python start-up): it refuses before it configures any logging."""
    return byoi_cli(["up", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), *args], _env(**env))


def test_up_refuses_at_once_when_docker_engine_is_not_reachable(tmp_path):
    nothing = tmp_path / "nothing.sock"
    result = _up(tmp_path, "--registry-port", str(free_port()), DOCKER_HOST=f"unix://{nothing}")
    assert result.returncode == UNAVAILABLE, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    first = result.stderr.splitlines()[0]
    assert first == f"byoi up: Docker Engine is not reachable at unix://{nothing}: the socket does not exist."
    assert "The address comes from DOCKER_HOST: correct it, or unset it" in result.stderr
    assert "byoi is ready" not in result.stdout
    assert not (tmp_path / "data" / "registry").exists()  # nothing was started

    # A socket file where nothing listens: refused, in words.
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead))
    result = _up_in_process(tmp_path, BYOI_SESSION_DOCKER_HOST=f"unix://{dead}")
    assert result.returncode == UNAVAILABLE, result.stderr
    assert f"Docker Engine is not reachable at unix://{dead}: connection refused." in result.stderr
    assert "The address comes from BYOI_SESSION_DOCKER_HOST" in result.stderr and "Traceback" not in result.stderr


def test_up_advice_for_the_local_docker_engine_says_how_to_start_it():
    """The default address (no DOCKER_HOST): the refusal says how to start the Engine. (A unit: this machine's
    own Engine runs, and the tests may not stop it.)"""
    from byoi.cli import server

    advice = server._docker_advice("unix:///var/run/docker.sock", None, "the socket does not exist")
    lines = advice.splitlines()
    assert lines[0] == "Docker Engine is not reachable at unix:///var/run/docker.sock: the socket does not exist."
    if os.path.exists("/usr/bin/dockerd") or os.path.exists("/usr/sbin/dockerd"):
        assert "  sudo dockerd &            (or: sudo systemctl start docker)" in lines
        assert "`bash scripts/up.sh` starts it for you when run as root." in lines
    assert "usermod -aG docker" in server._docker_advice("unix:///var/run/docker.sock", None, "permission denied")


@pytest.mark.skipif(not docker_available(), reason="needs Docker Engine: the Engine check comes first")
def test_up_refuses_a_registry_that_does_not_answer_and_a_taken_registry_port(tmp_path, registry):
    silent = free_port()
    result = _up_in_process(tmp_path, "--registry-port", str(free_port()), "--registry", f"http://127.0.0.1:{silent}")
    assert result.returncode == UNAVAILABLE, result.stderr
    assert (
        f"byoi up: The registry 127.0.0.1:{silent} is not reachable: connection refused (http://127.0.0.1:{silent})."
        in result.stderr
    )
    assert "--registry, --registries-file" in result.stderr and "Traceback" not in result.stderr
    # The local registry's port already taken (here by the test registry): refused before anything starts,
    # rather than registering images in a registry byoi did not start.
    taken = registry.rsplit(":", 1)[1]
    result = _up_in_process(tmp_path, "--registry-port", taken)
    assert result.returncode == UNAVAILABLE, result.stderr
    assert f"byoi up: 127.0.0.1:{taken} is in use (another byoi up?)" in result.stderr
    assert "--registry-port" in result.stderr and "Traceback" not in result.stderr


# -- byoi up: healthy, on a terminal ----------------------------------------------------------------------


class _Reader(threading.Thread):
    """Read a file descriptor to its end, keeping the text and when each line arrived."""

    def __init__(self, fd: int, on_line=None) -> None:
        super().__init__(daemon=True)
        self.fd, self.text, self.on_line = fd, "", on_line

    def run(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # the pty's other side closed
                break
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                decoded = line.decode(errors="replace").rstrip("\r")
                self.text += decoded + "\n"
                if self.on_line:
                    self.on_line(decoded)
        self.text += buffer.decode(errors="replace")


@pytest.mark.skipif(not docker_available(), reason="byoi up checks Docker Engine before it starts")
def test_healthy_up_on_a_terminal_logs_coloured_text_and_says_what_next_once_ready(tmp_path):
    port, registry_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    at_ready: dict[str, object] = {}

    def on_stdout(line: str) -> None:
        if line == "byoi is ready." and not at_ready:  # what is true the moment it says so
            at_ready["credentials"] = (data / "credentials").exists()
            try:
                at_ready["health"] = httpx.get(endpoint + "/healthz", timeout=5).status_code
            except httpx.TransportError as exc:
                at_ready["health"] = f"no answer: {exc!r}"

    master, slave = pty.openpty()  # stderr is a terminal: `auto` is coloured text
    out_r, out_w = os.pipe()
    proc = subprocess.Popen(
        [*BYOI, "up", "--data-dir", str(data), "--port", str(port), "--registry-port", str(registry_port)],
        env=_env(TERM="xterm"),
        stdout=out_w,
        stderr=slave,
        stdin=subprocess.DEVNULL,
    )
    os.close(slave), os.close(out_w)
    err, out = _Reader(master), _Reader(out_r, on_stdout)
    err.start(), out.start()
    try:
        _wait_for(lambda: "Ctrl-C stops byoi and its registry." in out.text, "next steps on stdout", proc)
    finally:
        proc.send_signal(signal.SIGTERM)  # as a service manager stops it (Ctrl-C: tests/test_cli.py)
        proc.wait(30)
        out.join(10), err.join(10)
        os.close(master)
    assert proc.returncode == 0, err.text
    assert at_ready == {"health": 200, "credentials": True}  # printed once the server answers, healthy

    block = out.text
    assert block.count("byoi is ready.") == 1
    assert f"  API       {endpoint}   " in block
    assert f"  console   {endpoint}/console/   " in block
    assert f"  registry  127.0.0.1:{registry_port}   " in block
    assert f"  export AWS_SHARED_CREDENTIALS_FILE={data / 'credentials'}\n" in block
    assert f"  export AWS_ENDPOINT_URL_SAGEMAKER={endpoint}\n" in block
    assert "  byoi build examples/rocker --image rstudio --register " in block  # the README's first step
    assert block.rstrip().endswith("byoi and its registry stopped.")
    with pytest.raises(httpx.TransportError):  # the registry stopped with it
        httpx.get(f"http://127.0.0.1:{registry_port}/v2/", timeout=2)

    log = err.text
    assert "Traceback" not in log and '{"time"' not in log
    assert ANSI.search(log)  # coloured on a terminal
    plain = [ANSI.sub("", line) for line in log.splitlines() if line.strip()]
    assert plain and all(TEXT_LINE.match(line) for line in plain), plain
    assert any(re.search(r" INFO +byoi  Docker Engine \S+ answers at unix://", line) for line in plain)
    assert any(f" INFO     byoi  local registry on http://127.0.0.1:{registry_port} " in line for line in plain)
    assert any(f"Uvicorn running on {endpoint} " in line for line in plain)
    assert not [line for line in plain if " alembic" in line or "Application startup" in line]


# -- the formats, as functions --------------------------------------------------------------------------


def _record(name: str, level: int, msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def test_library_info_lines_are_shown_as_debug_and_their_warnings_kept():
    at_info, at_debug = logs.ChatterAsDebug(logging.INFO), logs.ChatterAsDebug(logging.DEBUG)
    migration = _record("alembic.runtime.migration", logging.INFO, "Running upgrade  -> 0001")
    assert not at_info.filter(migration)
    assert at_debug.filter(migration) and migration.levelname == "DEBUG"
    assert not at_info.filter(_record("httpx2", logging.INFO, "HTTP Request: GET /v2/"))
    assert at_info.filter(_record("uvicorn.error", logging.INFO, "Uvicorn running on %s", where="x"))
    assert at_info.filter(_record("uvicorn.error", logging.WARNING, "Invalid HTTP request received."))
    assert at_info.filter(_record("byoi.app", logging.INFO, "created administrator access key"))
    assert not at_info.filter(_record("byoi.app", logging.DEBUG, "a detail"))
    assert at_info.filter(_record("alembicish", logging.INFO, "x"))  # alembic and its children only


def test_text_and_json_carry_the_same_fields():
    fields = {"operation": "DescribeImage", "status": 400, "duration_ms": 2.5, "error_code": "ResourceNotFound"}
    record = _record("byoi.api", logging.INFO, "%s %s", request_id="r-1", **fields)
    record.args = ("DescribeImage", "ResourceNotFound")
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry.pop("time")
    assert entry == {"level": "info", "logger": "byoi.api", "message": "DescribeImage ResourceNotFound"} | {
        "request_id": "r-1",
        **fields,
    }
    line = logs.TextFormatter().format(record)
    assert TEXT_LINE.match(line)
    assert line.endswith(
        " INFO     byoi.api  DescribeImage ResourceNotFound  request_id=r-1 status=400 duration_ms=2.5"
    )
    coloured = logs.TextFormatter(color=True).format(record)
    assert ANSI.sub("", coloured) == line and "\x1b[32m" in coloured  # INFO in green


def test_auto_is_text_on_a_terminal_only():
    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    assert logs.use_text("auto", Stream(True)) and not logs.use_text("auto", Stream(False))
    assert logs.use_text("text", Stream(False)) and not logs.use_text("json", Stream(True))
