"""The AWS CLI and the byoi CLI against a real server, configured the way a user would."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import sessions as s
from tests.support.docker_images import containers, docker_available, push_test_image
from tests.support.oci import Pusher
from tests.support.processes import ByoiServer, byoi_cli, free_port, wait_http

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(catalog_server: ByoiServer) -> ByoiServer:
    return catalog_server  # shared with the other catalog, CLI and build modules (tests/conftest.py)


def run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    return _checked(result, check)


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`byoi ARGS` in-process (tests/support/processes.py `byoi_cli`): the same command against the same real
    server, without a Python start-up per command. `run([BIN / "byoi", ...])` starts the console script."""
    return _checked(byoi_cli(list(args), env), check)


def _checked(result: subprocess.CompletedProcess[str], check: bool) -> subprocess.CompletedProcess[str]:
    if check and result.returncode != 0:
        raise AssertionError(f"{result.args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def aws(server, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "aws"), "sagemaker", *args, "--output", "json"], server.aws_env(), check)


def wait_version_created(server, name: str, version: int) -> None:
    """`aws sagemaker wait image-version-created` for one version. The waiter's `--version` is the AWS CLI's
    global `--version` (it prints `aws-cli/1.x ...`, exits 0 and never waits) and the waiter has no
    `--version-number`, so the version goes in as JSON. A real wait prints nothing and exits 0 once the version
    is CREATED (255 on CREATE_FAILED); it polls every 60 s."""
    request = json.dumps({"ImageName": name, "Version": version})
    waited = aws(server, "wait", "image-version-created", "--cli-input-json", request, check=False)
    assert (waited.returncode, waited.stdout, waited.stderr) == (0, "", ""), waited


def test_aws_cli_follows_the_rstudio_byoi_create_steps(server, pusher, registry, name):
    """The AWS documentation's create steps (reference §2.4), unchanged but for the endpoint."""
    pushed = pusher.image("rstudio-custom", "v1")
    out = json.loads(
        aws(
            server,
            "create-image",
            "--image-name",
            name,
            "--role-arn",
            "arn:aws:iam::000000000000:role/service-role/exec",
        ).stdout
    )
    assert out["ImageArn"].endswith(f":image/{name}")
    out = json.loads(
        aws(
            server, "create-image-version", "--image-name", name, "--base-image", f"{registry}/rstudio-custom:v1"
        ).stdout
    )  # the CLI fills ClientToken itself
    assert out["ImageVersionArn"].endswith(f"/{name}/1")
    wait_version_created(server, name, 1)
    d = json.loads(aws(server, "describe-image-version", "--image-name", name, "--version-number", "1").stdout)
    assert d["ImageVersionStatus"] == "CREATED"
    assert d["ContainerImage"] == f"{registry}/rstudio-custom@{pushed.digest}"
    listed = json.loads(aws(server, "list-images", "--name-contains", name).stdout)
    assert [i["ImageName"] for i in listed["Images"]] == [name]

    bad = aws(server, "describe-image", "--image-name", name + "-nope", check=False)
    assert bad.returncode != 0 and "ResourceNotFound" in bad.stderr
    invalid = aws(
        server,
        "create-image",
        "--image-name",
        "bad_name",
        "--role-arn",
        "arn:aws:iam::000000000000:role/x",
        check=False,
    )
    assert invalid.returncode != 0 and "ValidationException" in invalid.stderr

    aws(server, "delete-image", "--image-name", name)
    # awscli 1.46's own `wait image-deleted` expects "ResourceNotFoundException", a code the model never
    # declares (DescribeImage raises ResourceNotFound, as boto3's waiter expects); so poll as a user would.
    for _ in range(40):
        gone = aws(server, "describe-image", "--image-name", name, check=False)
        if gone.returncode != 0:
            break
        time.sleep(0.5)
    assert "ResourceNotFound" in gone.stderr


def _aws_until(server, *args: str, field: str, until: tuple[str, ...], timeout: float = 180) -> dict:
    """Describe with the AWS CLI until `field` is one of `until` (as a user polls: awscli has no app waiter)."""
    deadline = time.monotonic() + timeout
    while True:
        described: dict = json.loads(aws(server, *args).stdout)
        if described[field] in until:
            return described
        assert time.monotonic() < deadline, f"{field} is still {described[field]}: {described}"
        time.sleep(0.5)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)")
def test_aws_cli_creates_an_rstudio_app_from_the_custom_image(rstudio_server, registry, name):
    """The rest of the create steps: the image attached to an RStudio domain, then `aws sagemaker create-app`.
    The image is the RStudio Server STAND-IN (tests/images/rstudio-standin), a TEST DOUBLE for the IDE binary.
    On the session servers' shared `rstudio_server` (tests/conftest.py): its own image, domain and user."""
    srv, sm = rstudio_server, rstudio_server.client()
    app_arn = None
    try:
        digest = push_test_image("rstudio-standin", registry, f"cli/{name}", "v1")
        image_arn = json.loads(aws(srv, "create-image", "--image-name", name, "--role-arn", s.ROLE).stdout)["ImageArn"]
        aws(srv, "create-image-version", "--image-name", name, "--base-image", f"{registry}/cli/{name}:v1")
        # The waiter polls every 60 s: let the stand-in's inspection finish first, so it answers on its first poll
        # (waited for through boto3, which costs no process per poll; the AWS CLI then describes the outcome).
        deadline = time.monotonic() + 180
        while sm.describe_image_version(ImageName=name, Version=1)["ImageVersionStatus"] == "CREATING":
            assert time.monotonic() < deadline, "version 1 is still CREATING"
            time.sleep(0.2)
        version_args = ("describe-image-version", "--image-name", name, "--version-number", "1")
        _aws_until(srv, *version_args, field="ImageVersionStatus", until=("CREATED", "CREATE_FAILED"))
        wait_version_created(srv, name, 1)
        version_arn = json.loads(aws(srv, *version_args).stdout)["ImageVersionArn"]
        aws(srv, "create-app-image-config", "--app-image-config-name", f"{name}-config")
        user_settings = {
            "ExecutionRole": s.ROLE,
            "RSessionAppSettings": {"CustomImages": [{"ImageName": name, "AppImageConfigName": f"{name}-config"}]},
        }
        domain_settings = {"RStudioServerProDomainSettings": {"DomainExecutionRoleArn": s.ROLE}}
        domain = json.loads(
            aws(
                srv,
                "create-domain",
                "--domain-name",
                name,
                "--auth-mode",
                "IAM",
                "--default-user-settings",
                json.dumps(user_settings),
                "--domain-settings",
                json.dumps(domain_settings),
            ).stdout  # fmt: skip
        )["DomainId"]
        _aws_until(srv, "describe-domain", "--domain-id", domain, field="Status", until=("InService",))
        aws(srv, "create-user-profile", "--domain-id", domain, "--user-profile-name", "ana")
        app = ["--domain-id", domain, "--user-profile-name", "ana", "--app-type", "RSessionGateway"]
        spec = {"SageMakerImageArn": image_arn, "SageMakerImageVersionArn": version_arn, "InstanceType": "ml.t3.medium"}
        created = json.loads(
            aws(srv, "create-app", *app, "--app-name", "analysis", "--resource-spec", json.dumps(spec)).stdout
        )
        app_arn = created["AppArn"]
        assert created["AppArn"].endswith(f":app/{domain}/ana/RSessionGateway/analysis")

        s.wait_app(sm, domain, "ana", "analysis", ("InService", "Failed"), timeout=180)  # then the AWS CLI's view
        described = _aws_until(
            srv, "describe-app", *app, "--app-name", "analysis", field="Status", until=("InService", "Failed")
        )
        assert described["Status"] == "InService", described
        assert described["ResourceSpec"] == spec and described["AppArn"] == created["AppArn"]
        [container] = containers(label=f"byoi.app-arn={created['AppArn']}")
        assert container.attrs["Config"]["Image"] == f"{registry}/cli/{name}@{digest}"  # the pushed stand-in
        listed = json.loads(aws(srv, "list-apps", "--domain-id-equals", domain).stdout)["Apps"]
        assert [(a["UserProfileName"], a["AppName"], a["Status"]) for a in listed] == [
            ("domain-shared", "default", "InService"),  # the domain's RStudioServerPro app, made with it
            ("ana", "analysis", "InService"),
        ]

        aws(srv, "delete-app", *app, "--app-name", "analysis")
        s.wait_app(sm, domain, "ana", "analysis", ("Deleted",), timeout=180)
        gone = _aws_until(srv, "describe-app", *app, "--app-name", "analysis", field="Status", until=("Deleted",))
        assert gone["AppArn"] == created["AppArn"]
        assert not containers(label=f"byoi.app-arn={created['AppArn']}")
    finally:
        # The server is shared: remove this test's session only (if it is still there, the test failed).
        import docker.errors

        for container in containers(label=f"byoi.app-arn={app_arn}") if app_arn else ():
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


def test_byoi_cli_catalog_commands(server, pusher, name):
    pushed = pusher.image("cli/img", "v1")
    env = server.aws_env()
    # The console script once, then the same commands in-process.
    assert name in run([str(BIN / "byoi"), "images", "create", name, "--display-name", "From CLI"], env).stdout
    out = cli(env, "versions", "create", name, "cli/img:v1", "--alias", "stable").stdout
    assert "CREATED" in out and pushed.digest in out
    listed = json.loads(cli(env, "versions", "list", name, "-o", "json").stdout)
    assert [v["Version"] for v in listed["ImageVersions"]] == [1]
    described = json.loads(cli(env, "versions", "describe", name, "--alias", "stable").stdout)
    assert described["ContainerImage"].endswith(pushed.digest)
    assert name in cli(env, "images", "list").stdout

    failed = cli(env, "versions", "create", name, "cli/never:v1", check=False)
    assert failed.returncode == 7 and "CREATE_FAILED" in failed.stdout and "does not exist" in failed.stdout
    missing = cli(env, "images", "describe", name + "-x", check=False)
    assert missing.returncode == 5 and "ResourceNotFound" in missing.stderr and "Traceback" not in missing.stderr


def test_byoi_cli_falls_back_to_the_local_data_dir(server, name):
    """No AWS_* configuration at all: the CLI uses the data dir's credentials and --endpoint-url."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(BYOI_DATA_DIR=str(server.data_dir), HOME=str(server.data_dir))
    out = run([str(BIN / "byoi"), "images", "create", name, "--endpoint-url", server.endpoint], env).stdout
    assert name in out


def test_byoi_cli_reports_an_unreachable_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # Dummy credentials: the server is never reached.
    env.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_DEFAULT_REGION="us-east-1", HOME=str(tmp_path))  # noqa: S106
    result = run(
        [str(BIN / "byoi"), "images", "list", "--endpoint-url", f"http://127.0.0.1:{free_port()}"], env, check=False
    )
    assert result.returncode == 69 and "cannot reach byoi" in result.stderr


def _offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's environment with dummy credentials and no byoi server: these errors are caught before sending."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_DEFAULT_REGION="us-east-1", HOME=str(tmp_path))  # noqa: S106
    env["AWS_ENDPOINT_URL_SAGEMAKER"] = f"http://127.0.0.1:{free_port()}"
    env.update(extra)
    return env


@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        (["images", "list", "--profile", "nope"], {}, "--profile: profile 'nope' not found"),
        (["images", "list"], {"AWS_PROFILE": "gone"}, "AWS_PROFILE: profile 'gone' not found"),
        (["images", "list", "--endpoint-url", "not-a-url"], {}, "--endpoint-url 'not-a-url' is not a URL"),
        (["images", "list"], {"AWS_ENDPOINT_URL_SAGEMAKER": "nope:"}, "AWS_ENDPOINT_URL_SAGEMAKER 'nope:' is not"),
        (["images", "create", ""], {}, "invalid input: Invalid length for parameter ImageName, value: 0"),
        (["versions", "describe", "p1", "--version", "-1"], {}, "invalid input: Invalid value for parameter Version"),
        # A command that signs its own HTTP (outside common.call) is covered by the group's safety net.
        (["builds", "logs", "b-0123456789abcdef", "--profile", "nope"], {}, "--profile: profile 'nope' not found"),
    ],
)
def test_byoi_cli_bad_input_is_one_clear_line(tmp_path, args, extra_env, message):
    result = cli(_offline_env(tmp_path, **extra_env), *args, check=False)
    # A value the API's rules refuse is invalid input (4); a wrong setting is a usage error (2). Nothing is sent.
    assert result.returncode == (4 if message.startswith("invalid input") else 2), result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BYOI_LEASE_SECONDS", "abc", "BYOI_LEASE_SECONDS must be a number, not 'abc'"),
        ("BYOI_LEASE_SECONDS", "0", "BYOI_LEASE_SECONDS must be a number > 0, not '0'"),
        ("BYOI_RESOLVE_ATTEMPTS", "x", "BYOI_RESOLVE_ATTEMPTS must be a whole number, not 'x'"),
        ("BYOI_RETRY_BASE_DELAY", "-1", "BYOI_RETRY_BASE_DELAY must be a number >= 0, not '-1'"),
        ("BYOI_WORKER_CONCURRENCY", "1.5", "BYOI_WORKER_CONCURRENCY must be a whole number, not '1.5'"),
        ("BYOI_REGISTRY_TIMEOUT", "nan", "BYOI_REGISTRY_TIMEOUT must be a number > 0, not 'nan'"),
        # The build and session settings (their own modules word the message) are checked before start too.
        ("BYOI_BUILD_CONCURRENCY", "two", "BYOI_BUILD_CONCURRENCY must be"),
        ("BYOI_SESSION_UID", "root", "BYOI_SESSION_UID must be"),
    ],
)
def test_byoi_server_refuses_a_bad_numeric_setting_by_name(tmp_path, monkeypatch, variable, value, message):
    """In-process (the console script refusing a bad setting: the instance-types test below)."""
    import byoi.cli.server

    def started(*_args: object, **_kwargs: object) -> None:
        raise AssertionError(f"byoi server started with {variable}={value!r}")

    monkeypatch.setattr(byoi.cli.server, "run_server", started)  # in this process: fail, never serve
    env = {**os.environ, variable: value, "BYOI_DATA_DIR": str(tmp_path / "data")}
    result = cli(env, "server", "--port", str(free_port()), check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    text = " ".join(result.stderr.replace("│", " ").split())  # typer boxes usage errors and wraps them
    assert f"Invalid value: {message}" in text and repr(value) in text, result.stderr
    assert not (tmp_path / "data" / "credentials").exists()  # stopped before anything started


@pytest.mark.parametrize("command", ["server", "up"])
def test_help_shows_square_brackets(command):
    """Help texts are rich markup: an unescaped "[[registry]]" would be shown as "[]" (rendered in-process)."""
    env = {**os.environ, "COLUMNS": "200"}
    out = cli(env, command, "--help").stdout
    assert "TOML file of [[registry]] url/username/password." in out


def test_no_help_text_loses_brackets_to_rich_markup():
    """Every help text of every command renders with all its brackets (escape them with rich.markup.escape)."""
    import typer.main
    from rich.text import Text

    from byoi.cli.main import app

    def texts(cmd, path):
        yield path, cmd.help or ""
        for param in cmd.params:
            yield f"{path} {param.name}", getattr(param, "help", None) or ""
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            yield from texts(sub, f"{path} {sub_name}")

    eaten = [
        (where, raw)
        for where, raw in texts(typer.main.get_command(app), "byoi")
        # An escaped "\\[" renders as "[": the counts stay; a "[tag]" rich takes for markup is dropped.
        if [Text.from_markup(raw).plain.count(c) for c in "[]"] != [raw.count(c) for c in "[]"]
    ]
    assert not eaten


@pytest.mark.slow
def test_byoi_up_starts_registry_and_server_and_stops_both(tmp_path, pusher, registry, basic_registry, token_registry):
    port, registry_port = free_port(), free_port()
    env = {**os.environ, "BYOI_DATA_DIR": str(tmp_path / "data")}
    env.pop("BYOI_REGISTRY", None)
    env.pop("BYOI_INSPECTION_CONFIG", None)
    lenient = tmp_path / "inspection.toml"  # the pushed test image has no R: let it through, still inspected
    lenient.write_text('[rules]\nr-present = "off"\nrstudio-server = "off"\n')
    # `up` takes the registry options of `server`: more registries after the local one, their credentials.
    registries = tmp_path / "registries.toml"
    registries.write_text(
        f'[[registry]]\nurl = "http://{basic_registry}"\n'
        f'username = "{REGISTRY_USER}"\npassword = "{REGISTRY_PASSWORD}"\n'
    )
    private = Pusher(f"http://{basic_registry}", auth=(REGISTRY_USER, REGISTRY_PASSWORD)).image("private/up", "v1")
    token_host, issuer = token_registry  # not configured: its credentials come from the Docker config.json
    docker_config = tmp_path / "config.json"
    auth = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    docker_config.write_text(json.dumps({"auths": {token_host: {"auth": auth}}}))
    tokened = Pusher(f"http://{token_host}", token_for=lambda scope: issuer.token(REGISTRY_USER, [scope])).image(
        "team/up-tok", "v1"
    )
    proc = subprocess.Popen(
        [
            str(BIN / "byoi"),
            "up",
            "--port",
            str(port),
            "--registry-port",
            str(registry_port),
            "--inspection-config",
            str(lenient),
            "--registry",
            f"http://{registry}",
            "--registries-file",
            str(registries),
            "--docker-config",
            str(docker_config),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30, ok=(200,))
        health = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
        assert health["checks"] == {
            "store": "ok",
            "docker": "ok",
            f"registry 127.0.0.1:{registry_port}": "ok",
            f"registry {basic_registry}": "ok",
            f"registry {registry}": "ok",
        }
        assert (tmp_path / "data" / "credentials").exists()
        assert (tmp_path / "data" / "registry" / "storage").is_dir()
        # The local registry is the default one: push there, register with a bare reference.
        pushed = Pusher(f"http://127.0.0.1:{registry_port}").image("team/up", "v1")
        user_env = {**env, "AWS_ENDPOINT_URL_SAGEMAKER": f"http://127.0.0.1:{port}"}
        user_env = {k: v for k, v in user_env.items() if k not in ("AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE")}
        run([str(BIN / "byoi"), "images", "create", "up-img"], user_env)
        out = cli(user_env, "versions", "create", "up-img", "team/up:v1").stdout
        assert "CREATED" in out and f"127.0.0.1:{registry_port}/team/up@{pushed.digest}" in out
        # The Basic-auth registry's credentials come from --registries-file, the token registry's from --docker-config.
        for ref, pinned in (
            (f"{basic_registry}/private/up:v1", f"{basic_registry}/private/up@{private.digest}"),
            (f"{token_host}/team/up-tok:v1", f"{token_host}/team/up-tok@{tokened.digest}"),
        ):
            out = cli(user_env, "versions", "create", "up-img", ref).stdout
            assert "CREATED" in out and pinned in out, out
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "AWS_SHARED_CREDENTIALS_FILE=" in output and "byoi and its registry stopped" in output
    time.sleep(0.5)
    for p in (port, registry_port):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{p}/", timeout=1)


def test_byoi_server_refuses_a_bad_instance_types_file(tmp_path):
    """The instance-types table is loaded before the server starts, so a bad file is a usage error naming it."""
    table = tmp_path / "types.toml"
    table.write_text("types = 5\n")
    env = {**os.environ, "BYOI_INSTANCE_TYPES": str(table), "BYOI_DATA_DIR": str(tmp_path / "data")}
    result = run([str(BIN / "byoi"), "server", "--port", str(free_port())], env, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    text = " ".join(result.stderr.replace("│", " ").split())
    assert "types must be a table" in text and "types.toml" in text, result.stderr
    assert not (tmp_path / "data" / "credentials").exists()
