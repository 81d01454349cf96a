"""Image builds end to end: the `byoi` CLI and the Byoi.* API against a real server, a real Docker Engine
and the real local registry (Distribution)."""

from __future__ import annotations

import io
import json
import os
import platform
import select
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import regex
from botocore.exceptions import ClientError

from byoi.cli import wire
from byoi.cli.builds import Signed
from byoi.cli.client import extension_client
from byoi.cli.output import document
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support.docker_images import BASE_IMAGE, containers, docker_available, docker_client, ensure_base_image
from tests.support.errors import code
from tests.support.processes import ByoiServer, byoi_cli

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)"),
]
BYOI = str(Path(sys.executable).parent / "byoi")
IMAGES = Path(__file__).parent / "images"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@pytest.fixture(scope="module")
def server(catalog_server: ByoiServer) -> ByoiServer:
    return catalog_server  # shared with the other catalog, CLI and build modules (tests/conftest.py)


@pytest.fixture(scope="module", autouse=True)
def base_image() -> str:
    return ensure_base_image()


@pytest.fixture
def ext(server):
    server.session()  # points AWS_SHARED_CREDENTIALS_FILE at the server's key
    return extension_client(server.endpoint, "byoi")


def byoi(server, *args: str) -> subprocess.CompletedProcess[str]:
    """`byoi ARGS` in-process (tests/support/processes.py `byoi_cli`): the same command, no Python start-up."""
    return byoi_cli(list(args), {**server.aws_env(), "COLUMNS": "200"})


def byoi_process(server, *args: str) -> subprocess.CompletedProcess[str]:
    """`byoi ARGS` as a process of the console script (as `--follow` and Ctrl-C below need one anyway)."""
    env = {**server.aws_env(), "COLUMNS": "200"}
    return subprocess.run([BYOI, *args], env=env, capture_output=True, text=True, timeout=300)


def context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "ctx"
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\n{dockerfile}\n")
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def signed(server) -> Signed:
    server.session()
    return Signed(server.endpoint, "byoi")


def upload_tar(server, data: bytes, sign_hash: bool = True) -> httpx.Response:
    import hashlib

    s = signed(server)
    extra = {"Content-Type": "application/x-tar"}
    if sign_hash:
        extra["X-Amz-Content-SHA256"] = hashlib.sha256(data).hexdigest()
    return httpx.post(
        s.url("/byoi/build-contexts"), content=data, headers=s.headers("POST", "/byoi/build-contexts", extra)
    )


def tar_of(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def start(server, ext, root: Path, **request: Any) -> str:
    from byoi.cli.builds import upload_context

    context_id, dockerfile = upload_context(signed(server), root, None)
    return str(ext.start_image_build(ContextId=context_id, Dockerfile=dockerfile, **request)["BuildId"])


def wait(ext, build_id: str, statuses=TERMINAL, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d: dict[str, Any] = ext.describe_image_build(BuildId=build_id)
        if d["BuildStatus"] in statuses:
            return d
        time.sleep(0.3)
    raise TimeoutError(f"build {build_id} is still {d['BuildStatus']}")


def log_text(server, build_id: str) -> str:
    s = signed(server)
    path = f"/byoi/builds/{build_id}/log"
    response = httpx.get(s.url(path), headers=s.headers("GET", path))
    assert response.status_code == 200, response.text
    return response.text


def wait_log(server, build_id: str, needle: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while needle not in log_text(server, build_id):
        assert time.monotonic() < deadline, f"{needle!r} never appeared in the log of {build_id}"
        time.sleep(0.3)


MANIFESTS = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def registry_digest(registry: str, repository: str, tag: str, auth: tuple[str, str] | None = None) -> str:
    url = f"http://{registry}/v2/{repository}/manifests/{tag}"
    response = httpx.head(url, headers={"Accept": MANIFESTS}, auth=auth)
    assert response.status_code == 200
    return response.headers["docker-content-digest"]


def registry_image_config(registry: str, repository: str, tag: str) -> dict[str, Any]:
    """The image config of what the registry holds under the tag (what was pushed, not the Engine's copy)."""
    base = f"http://{registry}/v2/{repository}"
    manifest = httpx.get(f"{base}/manifests/{tag}", headers={"Accept": MANIFESTS})
    assert manifest.status_code == 200, manifest.text
    blob = httpx.get(f"{base}/blobs/{manifest.json()['config']['digest']}", follow_redirects=True)
    assert blob.status_code == 200
    config: dict[str, Any] = blob.json()
    return config


def all_events(server, build_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every (event, record) of a finished build's event stream."""
    s = signed(server)
    path = f"/byoi/builds/{build_id}/events"
    out, event = [], "message"
    with httpx.stream("GET", s.url(path), headers=s.headers("GET", path), timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                out.append((event, json.loads(line[5:])))
    return out


# -- success, failures ---------------------------------------------------------------------------


def test_cli_build_with_register_pins_the_pushed_digest(server, sm, ext, registry, name, tmp_path):
    root = context(tmp_path, f'ARG FLAVOUR=plain\nRUN echo "flavour=$FLAVOUR {name}" > /flavour && cat /flavour')
    result = byoi_process(server, "build", str(root), "--image", name, "--tag", "v1", "--register",
                          "--build-arg", "FLAVOUR=tidy", "--label", "team=r")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    digest = registry_digest(registry, name, "v1")
    assert f"pushed {registry}/{name}:v1@{digest}" in result.stdout
    assert "Step 2/4 : ARG FLAVOUR=plain" in result.stdout and f"flavour=tidy {name}" in result.stdout
    arn = f"arn:aws:sagemaker:us-east-1:000000000000:image-version/{name}/1"
    assert f"{arn} CREATED" in result.stdout

    version = sm.describe_image_version(ImageName=name, Version=1)
    assert version["ContainerImage"] == f"{registry}/{name}@{digest}"
    assert version["BaseImage"] == f"{registry}/{name}:v1@{digest}"
    builds = ext.list_image_builds(ImageNameEquals=name)["ImageBuilds"]
    assert len(builds) == 1
    d = ext.describe_image_build(BuildId=builds[0]["BuildId"])
    assert (d["BuildStatus"], d["ImageDigest"], d["ImageVersionArn"]) == ("SUCCEEDED", digest, arn)
    assert d["PinnedImage"] == f"{registry}/{name}@{digest}" and d["ImageUri"] == f"{registry}/{name}:v1"
    assert d["BuildArgs"] == {"FLAVOUR": "tidy"} and d["Labels"] == {"team": "r"}
    assert d["CreationTime"] <= d["StartTime"] <= d["EndTime"]
    labels = docker_client().images.get(f"{registry}/{name}:v1").labels
    assert labels["team"] == "r"

    logs = byoi(server, "builds", "logs", d["BuildId"])
    assert logs.returncode == 0 and "--> SUCCEEDED" in logs.stdout and f"flavour=tidy {name}" in logs.stdout
    listed = byoi(server, "builds", "list", "--output", "json")
    assert d["BuildId"] in listed.stdout


def test_failing_run_names_the_step_and_registers_nothing(server, sm, ext, name):
    result = byoi(server, "build", str(IMAGES / "run-fails"), "--image", name, "--register")
    assert result.returncode == 7
    assert "FAILED" in result.stderr and "Step 3/4" in result.stderr
    [build] = ext.list_image_builds(ImageNameEquals=name)["ImageBuilds"]
    d = ext.describe_image_build(BuildId=build["BuildId"])
    assert d["BuildStatus"] == "FAILED"
    assert d["FailedStep"] == 'Step 3/4 : RUN echo "about to fail" && exit 3'
    assert "returned a non-zero code: 3" in d["FailureReason"] and "about to fail" in d["FailureReason"]
    assert "ImageDigest" not in d and "ImageVersionArn" not in d
    with pytest.raises(ClientError) as e:
        sm.describe_image(ImageName=name)
    assert code(e) == "ResourceNotFound"


def test_dockerfile_syntax_error_fails_before_any_step(server, ext, name):
    build_id = start(server, ext, IMAGES / "syntax-error", Repository=name, ImageName=name)
    d = wait(ext, build_id)
    assert d["BuildStatus"] == "FAILED"
    assert "unknown instruction: RUNN" in d["FailureReason"].upper().replace(
        "UNKNOWN INSTRUCTION", "unknown instruction"
    )
    assert "FailedStep" not in d
    assert "Step 1/" not in log_text(server, build_id)


def test_dockerignore_is_honoured_by_the_cli_and_by_the_server(server, ext, name, tmp_path):
    files = {".dockerignore": "secret.txt\ndata\n!data/keep.txt\n", "secret.txt": "s3cret", "data/big.bin": "x" * 100,
             "data/keep.txt": "keep", "app.R": "print(1)"}  # fmt: skip
    listing = f"COPY . /ctx/\nRUN echo {name} && find /ctx -type f | sort"
    root = context(tmp_path, listing, files)
    result = byoi(server, "build", str(root), "--image", name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/ctx/app.R" in result.stdout and "/ctx/data/keep.txt" in result.stdout
    assert "/ctx/secret.txt" not in result.stdout and "/ctx/data/big.bin" not in result.stdout

    # A client that sends everything (a raw tar through the API) gets the same result: the server filters too.
    dockerfile = f"FROM {BASE_IMAGE}\n{listing} && echo raw\n"
    upload = upload_tar(server, tar_of({"Dockerfile": dockerfile, **files}))
    assert upload.status_code == 200, upload.text
    build_id = ext.start_image_build(ContextId=upload.json()["ContextId"], Repository=name, Tag="raw")["BuildId"]
    done = wait(ext, build_id)
    assert (done["BuildStatus"], done["ContextId"]) == ("SUCCEEDED", upload.json()["ContextId"])
    text = log_text(server, build_id)
    assert "/ctx/app.R" in text and "/ctx/secret.txt" not in text and "/ctx/data/big.bin" not in text
    assert "3 excluded by .dockerignore" not in text and "excluded by .dockerignore" in text


# -- stopping, restarts, queueing, live logs ---------------------------------------------------------


def _running_sleepers(marker: str) -> list[Any]:
    return [c for c in containers(all=False) if marker in " ".join(c.attrs["Config"]["Cmd"] or [])]


def test_stop_a_running_build(server, ext, name, tmp_path):
    marker = f"sleep 120 # {name}"
    build_id = start(server, ext, context(tmp_path, f'RUN echo st""arted && {marker}'), Repository=name)
    wait_log(server, build_id, "\nstarted\n")  # the output, not the step's text
    assert _running_sleepers(marker)
    result = byoi(server, "builds", "stop", build_id)
    assert result.returncode == 0 and build_id in result.stdout
    d = wait(ext, build_id, timeout=30)
    assert d["BuildStatus"] == "STOPPED" and d["StopRequested"] is True
    deadline = time.monotonic() + 20
    while _running_sleepers(marker):  # the Engine stops the build once its request is closed
        assert time.monotonic() < deadline, "the build's container is still running"
        time.sleep(0.5)
    again = ext.stop_image_build(BuildId=build_id)
    assert again["BuildStatus"] == "STOPPED"
    assert "--> STOPPED" in log_text(server, build_id)


def test_server_killed_mid_build_resumes_after_restart(server_factory, registry, name, tmp_path):
    srv = server_factory([f"http://{registry}"])
    srv.session()
    ext1 = extension_client(srv.endpoint, "byoi")
    build_id = start(srv, ext1, context(tmp_path, f'RUN echo be""gin {name} && sleep 4 && echo end'), Repository=name)
    wait_log(srv, build_id, f"begin {name}")
    srv.kill()
    srv2 = server_factory([f"http://{registry}"], data_dir=srv.data_dir)
    srv2.session()
    ext2 = extension_client(srv2.endpoint, "byoi")
    d = wait(ext2, build_id, timeout=120)
    assert d["BuildStatus"] == "SUCCEEDED", d.get("FailureReason")
    assert d["ImageDigest"] == registry_digest(registry, name, "latest")
    assert "restarted after the server stopped (restart 1)" in log_text(srv2, build_id)


@pytest.fixture(scope="module")
def limited(registry: str, tmp_path_factory: pytest.TempPathFactory):
    """A server that runs one build at a time and caps build logs at 3000 bytes: the queue's test and the log
    cap's, each about one of these settings (the queue's builds write short logs; the cap's is one build)."""
    srv = ByoiServer(
        data_dir=tmp_path_factory.mktemp("byoi-limited"),
        registries=[f"http://{registry}"],
        env={"BYOI_BUILD_CONCURRENCY": "1", "BYOI_BUILD_LOG_LIMIT": "3000"},
    ).start()
    yield srv
    srv.stop()


def test_builds_beyond_the_limit_queue_in_order(limited, name, tmp_path):
    srv = limited
    srv.session()
    ext = extension_client(srv.endpoint, "byoi")
    # The first build sleeps long enough for the checks below to see the others QUEUED behind it.
    first = start(srv, ext, context(tmp_path / "a", f"RUN echo first {name} && sleep 6"), Repository=name, Tag="a")
    second = start(srv, ext, context(tmp_path / "b", f"RUN echo second {name}"), Repository=name, Tag="b")
    third = start(srv, ext, context(tmp_path / "c", f"RUN echo third {name}"), Repository=name, Tag="c")
    wait(ext, first, ("BUILDING",), timeout=30)
    d2, d3 = ext.describe_image_build(BuildId=second), ext.describe_image_build(BuildId=third)
    assert (d2["BuildStatus"], d2["QueuePosition"]) == ("QUEUED", 1)
    assert (d3["BuildStatus"], d3["QueuePosition"]) == ("QUEUED", 2)
    # A queued build stops at once (or, if the worker is looking at it that instant, at its next look).
    assert ext.stop_image_build(BuildId=third)["BuildStatus"] in ("STOPPED", "QUEUED")
    a, b = wait(ext, first), wait(ext, second)
    assert (a["BuildStatus"], b["BuildStatus"]) == ("SUCCEEDED", "SUCCEEDED")
    assert b["StartTime"] >= a["EndTime"]
    assert wait(ext, third)["BuildStatus"] == "STOPPED"


def test_live_log_stream_is_seen_during_the_build(server, ext, name, tmp_path):
    steps = f"RUN for i in 1 2 3 4 5 6 7 8; do echo tick-$i-{name}; sleep 1; done"  # 3 s of slack
    build_id = start(server, ext, context(tmp_path, steps), Repository=name)
    s = signed(server)
    path = f"/byoi/builds/{build_id}/events"
    seen: list[tuple[float, str, dict[str, Any], int | None]] = []
    status_at_first_tick = None
    with httpx.stream("GET", s.url(path), headers=s.headers("GET", path), timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event, event_id = "message", None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                event_id = int(line[3:])
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                seen.append((time.monotonic(), event, data, event_id))
                event_id = None
                if status_at_first_tick is None and f"tick-1-{name}" in str(data.get("m")):
                    status_at_first_tick = ext.describe_image_build(BuildId=build_id)["BuildStatus"]
                if event == "end":
                    break
    first_tick = next(t for t, e, d, _ in seen if e == "log" and d["m"] == f"tick-1-{name}")
    end_time, end_event, end_data, _ = seen[-1]
    assert end_event == "end" and end_data["BuildStatus"] == "SUCCEEDED"
    described = ext.describe_image_build(BuildId=build_id)  # the end carries the build as DescribeImageBuild tells it
    assert document(wire.answer("Byoi", "DescribeImageBuild", end_data["Build"])) == document(described)
    assert status_at_first_tick == "BUILDING"
    assert end_time - first_tick > 3  # the client saw tick-1 while the build still had seconds to run
    ids = [i for *_, i in seen if i is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # Resuming from an event id continues after it.
    tick1_id = next(i for _, e, d, i in seen if e == "log" and d["m"] == f"tick-1-{name}")
    query = f"offset={tick1_id}"
    with httpx.stream("GET", s.url(path) + "?" + query, headers=s.headers("GET", path, query=query)) as response:
        rest = [json.loads(ln[5:]) for ln in response.iter_lines() if ln.startswith("data:")]
    assert all("tick-1-" not in str(r.get("m")) for r in rest) and any("tick-2-" in str(r.get("m")) for r in rest)


def test_builds_logs_follow_prints_lines_while_the_build_runs(server, ext, name, tmp_path):
    steps = f"RUN for i in 1 2 3 4 5 6 7 8; do echo tick-$i-{name}; sleep 1; done"
    build_id = start(server, ext, context(tmp_path, steps), Repository=name)
    env = {**server.aws_env(), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "byoi", "builds", "logs", build_id, "--follow"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        status_at_first_tick = None
        while line := proc.stdout.readline():  # each line as the CLI writes it
            lines.append(line.rstrip("\n"))
            if status_at_first_tick is None and lines[-1] == f"tick-1-{name}":
                status_at_first_tick = ext.describe_image_build(BuildId=build_id)["BuildStatus"]
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status_at_first_tick == "BUILDING"  # the first tick came while the build still ran
    ticks = [ln for ln in lines if ln.startswith("tick-")]
    assert ticks == [f"tick-{i}-{name}" for i in range(1, 9)]
    assert lines[-1] == "--> SUCCEEDED" and lines.index(f"tick-8-{name}") < len(lines) - 1
    assert ext.describe_image_build(BuildId=build_id)["BuildStatus"] == "SUCCEEDED"


def test_output_lines_the_engine_sends_in_pieces_are_logged_whole(server, ext, name, tmp_path):
    # The Engine cuts a RUN's output into stream messages anywhere, also inside a line (about every 20 kB here).
    lines = f'RUN i=0; while [ $i -lt 10000 ]; do i=$((i+1)); echo "line-$i-{name}"; done'
    build_id = start(server, ext, context(tmp_path, lines), Repository=name)
    assert wait(ext, build_id)["BuildStatus"] == "SUCCEEDED"
    logged = [r["m"] for e, r in all_events(server, build_id) if e == "log" and r["m"].endswith(f"-{name}")]
    expected = [f"line-{i}-{name}" for i in range(1, 10001)]
    assert logged == expected, [m for m in logged if m not in set(expected)][:5]


# -- stages, private registries, push progress, log cap, Ctrl-C -------------------------------------------


def test_cli_build_of_a_target_stage_pushes_that_stage(server, ext, registry, name, tmp_path):
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE} AS tools\nLABEL org.byoi.test.stage=tools\nRUN echo tools-{name} > /stage\n"
        f"FROM {BASE_IMAGE} AS final\nLABEL org.byoi.test.stage=final\nRUN echo final-{name} > /stage\n"
    )
    result = byoi(server, "build", str(root), "--image", name, "--tag", "tools", "--target", "tools")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"echo tools-{name}" in result.stdout and f"echo final-{name}" not in result.stdout
    config = registry_image_config(registry, name, "tools")
    assert config["config"]["Labels"]["org.byoi.test.stage"] == "tools"
    [build] = [b for b in ext.list_image_builds()["ImageBuilds"] if b["ImageUri"] == f"{registry}/{name}:tools"]
    assert ext.describe_image_build(BuildId=build["BuildId"])["Target"] == "tools"
    # The file the target stage wrote is in the pushed image (the Engine's copy carries the pushed digest).
    image = f"{registry}/{name}@{registry_digest(registry, name, 'tools')}"
    assert docker_client().containers.run(image, ["cat", "/stage"], remove=True).decode().strip() == f"tools-{name}"


def _registries_file(path: Path, host: str, password: str | None) -> str:
    lines = ["[[registry]]", f'url = "http://{host}"']
    if password is not None:
        lines += [f'username = "{REGISTRY_USER}"', f'password = "{password}"']
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _server_knowing(server_factory, registry: str, host: str, password: str | None, path: Path) -> ByoiServer:
    """A server whose registries file names `host`, with the test user's credentials or (None) without any."""
    registries = _registries_file(path, host, password)
    return server_factory([f"http://{registry}"], extra_args=["--registries-file", registries])


def _the_build(srv: ByoiServer) -> dict[str, Any]:
    """The one build a fresh server ran."""
    srv.session()
    [build] = extension_client(srv.endpoint, "byoi").list_image_builds()["ImageBuilds"]
    return build


def test_build_pushes_to_a_registry_that_wants_credentials(server_factory, registry, basic_registry, name, tmp_path):
    root = context(tmp_path, f"RUN echo private-{name} > /private")
    repository = f"private/{name}"
    srv = _server_knowing(server_factory, registry, basic_registry, REGISTRY_PASSWORD, tmp_path / "with.toml")
    result = byoi(srv, "build", str(root), "--image", f"{basic_registry}/{repository}", "--tag", "v1")
    assert result.returncode == 0, result.stdout + result.stderr
    digest = registry_digest(basic_registry, repository, "v1", auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    assert f"pushed {basic_registry}/{repository}:v1@{digest}" in result.stdout

    # The same registry configured without credentials: the push fails, and says why.
    srv2 = _server_knowing(server_factory, registry, basic_registry, None, tmp_path / "without.toml")
    result = byoi(srv2, "build", str(root), "--image", f"{basic_registry}/{repository}", "--tag", "v2")
    assert result.returncode == 7
    build = _the_build(srv2)
    assert build["BuildStatus"] == "FAILED"
    reason = build["FailureReason"]
    assert reason.startswith(f"Push to {basic_registry}/{repository}:v2 failed: ") and "credentials" in reason, reason
    assert reason.split(" | ")[0] in result.stderr.replace("\n", "")


def test_a_base_image_on_a_registry_that_wants_credentials_is_pulled_with_them(
    server_factory, registry, basic_registry, name, tmp_path
):
    engine = docker_client()
    base = f"{basic_registry}/private-base/{name}"
    engine.images.get(BASE_IMAGE).tag(base, tag="v1")
    pushed = engine.images.push(base, tag="v1", auth_config={"username": REGISTRY_USER, "password": REGISTRY_PASSWORD})
    assert '"error"' not in pushed, pushed
    engine.images.remove(f"{base}:v1")  # only the registry has it now: the build must pull it
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text(f"FROM {base}:v1\nRUN echo from-private-{name}\n")

    try:
        # Without credentials for that registry the pull is refused, and the reason says so.
        srv = _server_knowing(server_factory, registry, basic_registry, None, tmp_path / "without.toml")
        result = byoi(srv, "build", str(root), "--image", f"{registry}/{name}", "--tag", "v1")
        assert result.returncode == 7
        build = _the_build(srv)
        assert build["FailureReason"].startswith("Step 1/2 : FROM ") and "auth" in build["FailureReason"], build

        srv = _server_knowing(server_factory, registry, basic_registry, REGISTRY_PASSWORD, tmp_path / "with.toml")
        result = byoi(srv, "build", str(root), "--image", f"{basic_registry}/{name}", "--tag", "v1")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"from-private-{name}" in result.stdout
    finally:
        subprocess.run(["docker", "rmi", "-f", f"{base}:v1"], capture_output=True)


def test_push_progress_is_reported_per_layer(server, ext, name, tmp_path):
    # About 3 MB that does not compress: a layer whose push takes more than one progress report.
    build_id = start(
        server, ext, context(tmp_path, f"RUN head -c 3000000 /dev/urandom > /blob-{name}"), Repository=name
    )
    assert wait(ext, build_id)["BuildStatus"] == "SUCCEEDED"
    events = all_events(server, build_id)
    statuses = [r["s"] for e, r in events if e == "status"]
    assert statuses == ["BUILDING", "PUSHING", "SUCCEEDED"]
    pushing = next(i for i, (e, r) in enumerate(events) if e == "status" and r["s"] == "PUSHING")
    pushes = [r for e, r in events[pushing:] if e == "push"]
    assert all(regex.fullmatch(r"[0-9a-f]{12}", r["id"]) for r in pushes), pushes
    assert len({r["id"] for r in pushes}) >= 2  # the base image's layer and the RUN's
    # Every layer reported ends pushed, found in the registry, or mounted from another repository there.
    final = {r["id"]: r["s"] for r in pushes}
    assert all(s in ("Pushed", "Layer already exists") or s.startswith("Mounted from") for s in final.values()), final
    assert "Pushed" in final.values()  # the RUN's new layer
    sized = [r for r in pushes if "n" in r]
    assert any(r["n"] >= 3_000_000 and 0 <= r["c"] <= r["n"] for r in sized), sized
    assert [e for e, _ in events].index("push") > pushing  # nothing was pushed before PUSHING


def test_log_is_capped_on_a_real_server(limited, name, tmp_path):
    srv = limited
    srv.session()
    ext = extension_client(srv.endpoint, "byoi")
    lines = f'RUN for i in $(seq 1 300); do echo "line-$i-{name}"; done'
    build_id = start(srv, ext, context(tmp_path, lines), Repository=name)
    d = wait(ext, build_id)
    assert d["BuildStatus"] == "SUCCEEDED"
    text = log_text(srv, build_id)
    assert "log truncated at 3000 bytes" in text
    assert f"line-300-{name}" not in text and text.endswith("--> SUCCEEDED\n")
    log_file = srv.data_dir / "builds" / build_id / "log.jsonl"
    assert d["LogSize"] == log_file.stat().st_size < 5000  # the cap, the truncation note and the final records


class Terminal:
    """A pseudo-terminal for a CLI process: what it wrote so far, and a way to type."""

    def __init__(self) -> None:
        import fcntl
        import struct
        import termios

        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.text = ""

    def wait_for(self, pattern: str, timeout: float) -> regex.Match[str]:
        deadline = time.monotonic() + timeout
        while not (found := regex.search(pattern, self.text)):
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} never appeared in:\n{self.text}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.text += os.read(self.master, 65536).decode(errors="replace").replace("\r", "")
                except OSError:  # the process ended and closed its side
                    time.sleep(0.1)
        return found

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        os.close(self.master)


def _blocked_writing_to_the_terminal(pid: int) -> bool:
    """The process sits in write(2) on its stdout or stderr (the terminal is full: nobody reads it)."""
    write = {"x86_64": 1, "aarch64": 64}[platform.machine()]
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] == str(write) and int(fields[1], 16) in (1, 2)


def test_ctrl_c_in_byoi_build_asks_and_stops_the_build(server, ext, name, tmp_path):
    marker = f"sleep 120 # {name}"
    lines = f'i=0; while [ $i -lt 10000 ]; do i=$((i+1)); echo "line-$i-{name}"; done'  # far more than a pty holds
    root = context(tmp_path, f'RUN echo "wo""rking-{name}" && {lines} && {marker}')
    term = Terminal()
    env = {**server.aws_env(), "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [BYOI, "build", str(root), "--image", name], stdin=term.slave, stdout=term.slave, stderr=term.slave, env=env
    )
    os.close(term.slave)
    try:
        build_id = term.wait_for(r"Build (b-[0-9a-f]{16}) started", 60)[1]
        term.wait_for(f"\nworking-{name}\n", 120)  # the RUN's output: the build is in its long step
        # Stop reading the terminal until the CLI is stuck inside a print (its write blocks), then Ctrl-C it there:
        # the line being printed must come out once, and the log go on after the prompt from the next line.
        deadline = time.monotonic() + 120
        while not _blocked_writing_to_the_terminal(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "the CLI never blocked on the full terminal"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        term.wait_for(rf"Stop build {build_id} on the server too\? \[y/N\]", 30)
        assert ext.describe_image_build(BuildId=build_id)["BuildStatus"] == "BUILDING"  # asked, not yet stopped
        interrupted_at = max(int(n) for n in regex.findall(rf"line-(\d+)-{name}\n", term.text))
        term.type("y\n")
        term.wait_for(f"stopping {build_id}", 30)
        term.wait_for("--> STOPPED", 60)
        assert proc.wait(timeout=30) == 130  # interrupted, whatever was answered
        assert term.text.count(f"\nworking-{name}\n") == 1  # after the prompt it went on, not from the start
        printed = [int(n) for n in regex.findall(rf"line-(\d+)-{name}", term.text)]
        # Every line once, in order, none lost: the one being printed at the Ctrl-C included.
        assert printed == list(range(1, len(printed) + 1)), [n for i, n in enumerate(printed, 1) if n != i][:5]
        assert len(printed) > interrupted_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        term.close()
    d = ext.describe_image_build(BuildId=build_id)
    assert (d["BuildStatus"], d["StopRequested"]) == ("STOPPED", True)
    deadline = time.monotonic() + 20
    while _running_sleepers(marker):  # the Engine stopped the RUN too
        assert time.monotonic() < deadline, "the build's container is still running"
        time.sleep(0.5)


def test_a_rebuild_of_an_unchanged_context_sends_nothing(server, ext, registry, name, tmp_path):
    """`byoi build` asks for its context by SHA-256 first: the second build of the same directory uploads nothing
    and builds the same image; a changed file is uploaded again."""
    root = context(tmp_path, f"COPY data.txt /data.txt\nRUN cat /data.txt # {name}", {"data.txt": "one\n"})
    first = byoi_process(server, "build", str(root), "--image", name, "--tag", "v1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Sending build context: 2 files" in first.stdout and "not sent again" not in first.stdout
    again = byoi_process(server, "build", str(root), "--image", name, "--tag", "v2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Build context unchanged since its last upload: 2 files" in again.stdout, again.stdout
    assert "Sending build context" not in again.stdout
    assert registry_digest(registry, name, "v2") == registry_digest(registry, name, "v1")
    (root / "data.txt").write_text("two\n")
    changed = byoi_process(server, "build", str(root), "--image", name, "--tag", "v3")
    assert changed.returncode == 0 and "Sending build context: 2 files" in changed.stdout, changed.stdout
    assert registry_image_config(registry, name, "v3") != registry_image_config(registry, name, "v1")


def test_a_kept_context_is_its_uploaders_only_and_digests_are_checked(server, ext):
    import hashlib

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    data = tar_of({"Dockerfile": f"FROM {BASE_IMAGE}\n", "note.txt": f"{time.time_ns()}\n"})
    digest = hashlib.sha256(data).hexdigest()
    s = signed(server)

    def reuse(sha: str, creds: Any = None) -> httpx.Response:
        path = f"/byoi/build-contexts/by-digest/{sha}"
        if creds is None:
            return httpx.post(s.url(path), headers=s.headers("POST", path))
        request = AWSRequest(method="POST", url=s.url(path), data=b"", headers={})
        SigV4Auth(creds, "sagemaker", "us-east-1").add_auth(request)
        return httpx.post(s.url(path), headers=dict(request.headers.items()))

    unknown = reuse(digest)
    assert unknown.status_code == 400 and unknown.json()["__type"] == "ResourceNotFound", unknown.text
    assert digest in unknown.json()["Message"] and "upload it" in unknown.json()["Message"]
    assert upload_tar(server, data).status_code == 200
    kept = reuse(digest)
    assert kept.status_code == 200 and kept.json()["Reused"] is True and kept.json()["Files"] == 2, kept.text
    other_id = f"builder-{time.time_ns()}"
    ext.create_principal(Name=other_id, Role="admin")
    key = ext.create_access_key(PrincipalName=other_id)["AccessKey"]
    other = reuse(digest, Credentials(key["AccessKeyId"], key["SecretAccessKey"]))
    assert other.json().get("__type") == "ResourceNotFound", other.text  # another principal's: not theirs to use
    for bad in ("ABC", digest.upper(), digest[:-1], digest + "0", "g" * 64):
        refused = reuse(bad)
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["__type"] == "ValidationException" and "SHA-256" in refused.json()["Message"]
    assert reuse("%2e%2e%2f" + digest[:58]).status_code == 404  # "../": no route, never another path
    unsigned = httpx.post(s.url(f"/byoi/build-contexts/by-digest/{digest}"))
    assert unsigned.status_code == 403
    # Each reuse is a context of its own: one build each, like an upload.
    build = ext.start_image_build(ContextId=kept.json()["ContextId"], Repository=f"reuse/{other_id}", Tag="x")
    with pytest.raises(ClientError, match="already used"):
        ext.start_image_build(ContextId=kept.json()["ContextId"], Repository=f"reuse/{other_id}", Tag="y")
    wait(ext, build["BuildId"])
