"""The doors users register images through — the AWS CLI, `byoi versions create` and `byoi build --register` —
on a byoi server started with NO inspection config at all (BYOI_INSPECTION_CONFIG unset, no
--inspection-config: what a user's server runs), so the RStudio image contract's default rule levels apply.

The compatible image is the RStudio Server STAND-IN (tests/images/rstudio-standin): a TEST DOUBLE for the IDE
binary only; R, its packages, the registry, Docker Engine, the builder, the inspection and both CLIs are
real. The incompatible one is the plain Debian base (byoi-test/debian:bookworm), with neither R nor RStudio
Server, or a one-step build FROM it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from byoi.cli.client import extension_client
from tests.conftest import ROLE
from tests.support import sessions as s
from tests.support.docker_images import (
    BASE_IMAGE,
    build_test_image,
    docker_available,
    ensure_base_image,
    local_tag,
    push_test_image,
)
from tests.support.processes import ByoiServer, byoi_cli
from tests.test_inspect_images import push_local
from tests.test_inspect_synthetic import register

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)"),
]
BIN = Path(sys.executable).parent
ACCOUNT = "arn:aws:sagemaker:us-east-1:000000000000"

# docs/compatibility.md's table: each rule's level when the operator configures nothing.
DOCUMENTED_DEFAULT_LEVELS = {
    "linux-platform": "required",
    "r-present": "required",
    "rstudio-server": "required",
    "rstudio-socket": "warning",
    "non-root-user": "warning",
    "rstudio-urls": "warning",
    "image-size": "warning",
    "reticulate": "warning",
    "entrypoint-override": "info",
}
R_MISSING = "R is missing: no R on PATH"
RSTUDIO_MISSING = "RStudio Server is missing: /usr/lib/rstudio-server/bin/rserver does not exist [rstudio-server]"


@pytest.fixture(scope="module")
def defaults(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ByoiServer]:
    """One byoi server for the module, started without any inspection config."""
    srv = ByoiServer(
        data_dir=tmp_path_factory.mktemp("byoi-defaults"), registries=[f"http://{registry}"], inspection_config=None
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def images(registry: str) -> dict[str, str]:
    """The stand-in and the plain Debian base, pushed once for the module: kind -> reference."""
    push_test_image("rstudio-standin", registry, "strict-doors/standin", "v1")
    push_local(ensure_base_image(), registry, "strict-doors/debian", "v1")
    return {"standin": f"{registry}/strict-doors/standin:v1", "debian": f"{registry}/strict-doors/debian:v1"}


def run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=timeout)


def aws(server: ByoiServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "aws"), "sagemaker", *args, "--output", "json"], server.aws_env())


def byoi(server: ByoiServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`byoi ARGS` in-process (tests/support/processes.py `byoi_cli`): the same command, no Python start-up."""
    return byoi_cli(list(args), {**server.aws_env(), "COLUMNS": "200"})


def byoi_process(server: ByoiServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`byoi ARGS` as a process, the way a user runs it (`python -m byoi`)."""
    return run([sys.executable, "-m", "byoi", *args], server.aws_env())


def assert_not_compatible(reason: str) -> None:
    """The FailureReason names both missing parts of the contract, and nothing else."""
    assert reason.startswith("Not compatible with RStudio: "), reason
    assert R_MISSING in reason and "[r-present]" in reason, reason
    assert RSTUDIO_MISSING in reason, reason
    assert "[linux-platform]" not in reason and "non-root" not in reason, reason


def test_a_server_without_inspection_config_runs_the_contract_defaults(defaults, images):
    environ = Path(f"/proc/{defaults.proc.pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"BYOI_INSPECTION_CONFIG=")]
    assert b"--inspection-config" not in Path(f"/proc/{defaults.proc.pid}/cmdline").read_bytes()

    name, d = register(defaults.client(), images["debian"])
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert_not_compatible(d["FailureReason"])
    defaults.session()
    report = extension_client(defaults.endpoint, "byoi").describe_image_version_report(ImageName=name)["Report"]
    assert {r["Name"]: r["Level"] for r in report["Rules"]} == DOCUMENTED_DEFAULT_LEVELS
    assert report["Compatible"] is False and report["Os"]["Id"] == "debian"


def wait_aws(server: ByoiServer, name: str, version: int, timeout: float = 180) -> dict:
    """The version once it is no longer CREATING, as the AWS CLI describes it. Waited for through boto3 first
    (no process per poll), then described with the AWS CLI, which must agree."""
    deadline = time.monotonic() + timeout
    sm = server.client()
    while sm.describe_image_version(ImageName=name, Version=version)["ImageVersionStatus"] == "CREATING":
        assert time.monotonic() < deadline, f"version {version} of {name} is still CREATING"
        time.sleep(0.2)
    while time.monotonic() < deadline:
        out = aws(server, "describe-image-version", "--image-name", name, "--version-number", str(version))
        assert out.returncode == 0, out.stderr
        d = json.loads(out.stdout)
        if d["ImageVersionStatus"] != "CREATING":
            return d
        time.sleep(1)
    raise AssertionError(f"version {version} of {name} is still CREATING")


def test_aws_cli_registers_the_standin_and_refuses_plain_debian(defaults, images, registry, name):
    created = aws(defaults, "create-image", "--image-name", name, "--role-arn", ROLE)
    assert created.returncode == 0, created.stderr
    for number, kind in ((1, "standin"), (2, "debian")):
        out = aws(defaults, "create-image-version", "--image-name", name, "--base-image", images[kind])
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["ImageVersionArn"] == f"{ACCOUNT}:image-version/{name}/{number}"

    standin = wait_aws(defaults, name, 1)
    assert standin["ImageVersionStatus"] == "CREATED", standin.get("FailureReason")
    assert standin["ContainerImage"].startswith(f"{registry}/strict-doors/standin@sha256:")
    assert "FailureReason" not in standin
    debian = wait_aws(defaults, name, 2)
    assert debian["ImageVersionStatus"] == "CREATE_FAILED"
    assert_not_compatible(debian["FailureReason"])

    # The AWS CLI's waiter: settled versions answer on its first poll (it would sleep 60 s otherwise). Its
    # `--version` option is shadowed by the CLI's global `--version` (which prints the CLI's own version and
    # exits 0), so the version number goes in as JSON.
    def waiter(version: int) -> subprocess.CompletedProcess[str]:
        request = json.dumps({"ImageName": name, "Version": version})
        return aws(defaults, "wait", "image-version-created", "--cli-input-json", request)

    ok = waiter(1)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    failed = waiter(2)
    assert failed.returncode == 255, failed.stdout + failed.stderr
    assert "Waiter ImageVersionCreated failed" in failed.stderr and "CREATE_FAILED" in failed.stderr


def test_byoi_versions_create_prints_created_or_the_failure_reason(defaults, images, registry, name):
    made = byoi(defaults, "images", "create", name)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == f"{ACCOUNT}:image/{name}"

    ok = byoi(defaults, "versions", "create", name, images["standin"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    arn, status = ok.stdout.strip().splitlines()
    assert arn == f"{ACCOUNT}:image-version/{name}/1"
    assert status.startswith(f"CREATED: {registry}/strict-doors/standin@sha256:"), status

    bad = byoi(defaults, "versions", "create", name, images["debian"])
    assert bad.returncode == 7, bad.stdout + bad.stderr
    arn, status = bad.stdout.strip().splitlines()
    assert arn == f"{ACCOUNT}:image-version/{name}/2"
    assert status.startswith("CREATE_FAILED: ")
    assert_not_compatible(status.removeprefix("CREATE_FAILED: "))
    d = defaults.client().describe_image_version(ImageName=name, Version=2)
    assert (d["ImageVersionStatus"], d["FailureReason"]) == ("CREATE_FAILED", status.removeprefix("CREATE_FAILED: "))


def build_context(root: Path, base: str) -> Path:
    root.mkdir(parents=True)
    (root / "Dockerfile").write_text(f"FROM {base}\nRUN echo strict-doors > /etc/byoi-strict-doors\n")
    return root


def test_byoi_build_register_creates_the_standin_and_fails_plain_debian(defaults, images, registry, name, tmp_path):
    standin_ctx = build_context(tmp_path / "standin", local_tag("rstudio-standin"))
    debian_ctx = build_context(tmp_path / "debian", BASE_IMAGE)
    build_test_image("rstudio-standin")  # cached; the build starts FROM it
    sm = defaults.client()

    ok = byoi_process(defaults, "build", str(standin_ctx), "--image", name, "--tag", "v1", "--register")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"pushed {registry}/{name}:v1@sha256:" in ok.stdout
    assert f"{ACCOUNT}:image-version/{name}/1 CREATED" in ok.stdout
    d = sm.describe_image_version(ImageName=name, Version=1)
    assert d["ImageVersionStatus"] == "CREATED" and d["ContainerImage"].startswith(f"{registry}/{name}@sha256:")

    plain = name + "-plain"
    bad = byoi_process(defaults, "build", str(debian_ctx), "--image", plain, "--tag", "v1", "--register")
    assert bad.returncode == 7, bad.stdout + bad.stderr
    assert "--> SUCCEEDED" in bad.stdout  # the build itself worked: only the registration failed
    assert f"pushed {registry}/{plain}:v1@sha256:" in bad.stdout
    assert f"{ACCOUNT}:image-version/{plain}/1 CREATE_FAILED" in bad.stdout
    error = bad.stderr.strip()
    assert error.startswith("error: "), error
    assert_not_compatible(error.removeprefix("error: "))
    d = sm.describe_image_version(ImageName=plain, Version=1)
    assert d["ImageVersionStatus"] == "CREATE_FAILED" and d["FailureReason"] == error.removeprefix("error: ")


# -- server text printed by the byoi CLI as the server wrote it -----------------------------------------------
# Rich reads "[r-present]" as a markup tag and drops it unless the CLI escapes server-provided text.


def wide(server: ByoiServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`byoi` (in-process) on a terminal wide enough that no table cell wraps (a wrapped cell could split a
    [tag])."""
    return byoi_cli(list(args), {**server.aws_env(), "COLUMNS": "1000"})


def test_byoi_tables_and_report_keep_the_rule_tags_of_a_failure_reason(defaults, images):
    name, d = register(defaults.client(), images["debian"])
    reason = d["FailureReason"]
    assert_not_compatible(reason)  # "... no R on PATH [r-present]; ... [rstudio-server]"
    outputs = {
        command: wide(defaults, "versions", command, name, *extra)
        for command, extra in (("describe", ("--version", "1", "--output", "table")), ("list", ()), ("report", ()))
    }
    assert {c: out.returncode for c, out in outputs.items()} == {"describe": 0, "list": 0, "report": 0}, outputs
    assert [c for c, out in outputs.items() if reason not in out.stdout] == [], outputs


def test_byoi_build_prints_a_failed_steps_reason_with_its_brackets(defaults, name, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f'FROM {BASE_IMAGE}\nRUN echo "[doors-tag] about to fail" && exit 3\n')
    failed = wide(defaults, "build", str(ctx), "--image", name)
    assert failed.returncode == 7, failed.stdout + failed.stderr
    [build_id] = [line.split()[1] for line in failed.stdout.splitlines() if line.endswith(" started")]
    defaults.session()
    d = extension_client(defaults.endpoint, "byoi").describe_image_build(BuildId=build_id)
    assert d["BuildStatus"] == "FAILED" and "[doors-tag] about to fail" in d["FailureReason"], d
    assert failed.stderr.strip() == f"FAILED: {d['FailureReason']}".strip(), failed.stderr
    described = wide(defaults, "builds", "describe", build_id, "--output", "table")
    assert described.returncode == 0, described.stdout + described.stderr
    assert "[doors-tag] about to fail" in described.stdout, described.stdout


def test_byoi_launch_prints_a_failed_sessions_reason_with_its_brackets(defaults, registry, name, tmp_path):
    """The stand-in, but its rserver prints a [tag] and exits 3: inspection passes, the launch fails."""
    ctx = tmp_path / "exits"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {local_tag('rstudio-standin')}\n"
        "RUN printf '#!/bin/sh\\necho \"[doors-tag] rserver gives up\"\\nexit 3\\n' "
        "> /usr/lib/rstudio-server/bin/rserver\n"
    )
    build_test_image("rstudio-standin")  # cached; the build starts FROM it
    built = byoi(defaults, "build", str(ctx), "--image", name, "--tag", "v1", "--register")
    assert built.returncode == 0, built.stdout + built.stderr
    sm = defaults.client()
    s.ensure_config(sm)
    domain = s.rstudio_domain(sm, [{"ImageName": name, "AppImageConfigName": s.CONFIG}])
    sm.create_user_profile(DomainId=domain, UserProfileName="ana")
    try:
        launched = wide(defaults, "launch", "-d", domain, "-u", "ana", "--image", name, "--name", "exits")
        assert launched.returncode == 7, launched.stdout + launched.stderr
        d = sm.describe_app(DomainId=domain, UserProfileName="ana", AppType="RSessionGateway", AppName="exits")
        assert d["Status"] == "Failed" and "[doors-tag] rserver gives up" in d["FailureReason"], d
        assert launched.stderr.strip() == f"session exits Failed: {d['FailureReason']}", launched.stderr
    finally:
        s.remove_sessions_of(defaults.data_dir)
