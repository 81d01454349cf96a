"""The `byoi` CLI in one shape: every command that prints data takes --output table|json|yaml, every client
command takes --profile and --endpoint-url, and the exit status says what kind of failure it was (docs/cli.md).

Against the shared catalog server (a real `byoi server`, the real registry; Docker Engine for the build and
launch tests), mostly in-process through typer's CliRunner (tests/support/processes.py `byoi_cli`: the same
command code, no Python start-up per command); the console script runs where a real process matters (the exit
status a shell sees, Ctrl-C, what a command imports at start-up).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from byoi.cli.admin import write_profile
from byoi.cli.client import CLI_OPERATIONS, cut_model
from byoi.cli.common import API_EXIT_CODES, ExitCode
from byoi.cli.main import app
from tests.support import sessions as s
from tests.support.attach import unique
from tests.support.docker_images import BASE_IMAGE, docker_available, ensure_base_image
from tests.support.processes import ByoiServer, byoi_cli, free_port

REPO = Path(__file__).resolve().parents[1]
BYOI = str(Path(sys.executable).parent / "byoi")
ROLE = "arn:aws:iam::000000000000:role/byoi-test"
# The commands that take neither --profile nor --endpoint-url: they run byoi, or work offline on its data.
NOT_CLIENTS = {"byoi server", "byoi up", "byoi rotate-master-key"}
# Client commands without --output: they change something and print one line saying so, or print a log.
NO_DATA = {
    "byoi attach",
    "byoi detach",
    "byoi images delete",
    "byoi versions delete",
    "byoi domains delete",
    "byoi users delete",
    "byoi builds logs",
    "byoi sessions logs",
    "byoi sessions stop",
    "byoi sessions open",
    "byoi admin users delete",
    "byoi admin keys deactivate",
    "byoi admin keys activate",
    "byoi admin keys delete",
    "byoi admin password set",
    "byoi admin password remove",
    "byoi admin sessions revoke",
}


@pytest.fixture(scope="module")
def server(catalog_server: ByoiServer) -> ByoiServer:
    return catalog_server  # shared with the other catalog, CLI and build modules (tests/conftest.py)


@pytest.fixture(scope="module")
def world(server: ByoiServer, pusher: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An image with two CREATED versions, a domain with the image attached and a user profile, a user principal
    bound to it; a credentials file with the administrator's profile, the user's and one with a wrong secret."""
    sm, ext = server.client(), s.extension(server)
    image, domain_name, user = unique("shape"), unique("shape-dom"), unique("ana")
    sm.create_image(ImageName=image, RoleArn=ROLE)
    for tag in ("v1", "v2"):
        pusher.image(f"shape/{image}", tag, files={"hello.txt": tag.encode()})
        sm.create_image_version(ImageName=image, BaseImage=f"shape/{image}:{tag}")
    for number in (1, 2):
        sm.get_waiter("image_version_created").wait(
            ImageName=image, Version=number, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150}
        )
    domain = sm.create_domain(DomainName=domain_name, AuthMode="IAM", DefaultUserSettings={"ExecutionRole": ROLE})
    sm.create_user_profile(DomainId=domain["DomainId"], UserProfileName=user)
    ext.create_principal(Name=user, Role="user", DomainId=domain["DomainId"], UserProfileName=user)
    credentials = tmp_path_factory.mktemp("shape") / "credentials"
    credentials.write_text(server.credentials_file.read_text())
    key = ext.create_access_key(PrincipalName=user)["AccessKey"]
    write_profile(credentials, "user", key["AccessKeyId"], key["SecretAccessKey"], "us-east-1")
    write_profile(credentials, "bad", key["AccessKeyId"], "not-the-secret", "us-east-1")
    env = {**server.aws_env(), "AWS_SHARED_CREDENTIALS_FILE": str(credentials), "COLUMNS": "200"}
    assert byoi_cli(["attach", image, "-d", domain_name], env).returncode == 0
    return {"image": image, "domain": domain_name, "user": user, "env": env, "server": server}


def byoi(world: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    result = byoi_cli(list(args), world["env"])
    assert "Traceback" not in result.stderr, result.stderr
    return result


# -- the shape, from the command tree (no server) ----------------------------------------------------------


def _commands() -> dict[str, Any]:
    found = {}

    def walk(cmd: Any, path: str) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, f"{path} {name}")
        else:
            found[path] = cmd

    walk(typer.main.get_command(app), "byoi")
    return found


def _options(cmd: Any) -> dict[str, Any]:
    return {opt: p for p in cmd.params for opt in getattr(p, "opts", [])}


def test_every_client_command_takes_profile_and_endpoint_url():
    missing = [
        path
        for path, cmd in _commands().items()
        if path not in NOT_CLIENTS and not {"--profile", "--endpoint-url"} <= set(_options(cmd))
    ]
    assert not missing


def test_every_command_that_prints_data_takes_output_table_json_yaml():
    commands = _commands()
    assert NO_DATA <= set(commands)  # the list names real commands
    without = [p for p, c in commands.items() if p not in NOT_CLIENTS | NO_DATA and "--output" not in _options(c)]
    assert not without
    choices = {
        p: list(typing.get_args(_options(c)["--output"].type_descriptor.annotation))
        for p, c in commands.items()
        if "--output" in _options(c)
    }
    assert {p: c for p, c in choices.items() if c != ["table", "json", "yaml"]} == {}
    assert "byoi doctor" in choices and "byoi build" in choices and "byoi launch" in choices


def test_exit_codes_are_distinct_and_the_docs_list_each():
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+)\|", (REPO / "docs" / "cli.md").read_text(), re.MULTILINE))
    assert {int(code) for code in table} == {int(c) for c in ExitCode}
    assert len({int(c) for c in ExitCode}) == len(ExitCode)
    words = {"USAGE": "usage", "INVALID_INPUT": "invalid input", "NOT_FOUND": "not found", "FAILED": "failed"}
    for name, word in words.items():
        assert word in table[str(int(ExitCode[name]))], (name, table)
    import byoi.errors

    assert all(isinstance(getattr(byoi.errors, code, None), type) for code in API_EXIT_CODES)  # real wire codes


def test_the_cli_calls_only_the_sagemaker_operations_its_cut_model_holds():
    """The CLI's clients load SageMaker's model cut down to CLI_OPERATIONS: any SageMaker method the CLI's code
    calls (`x.describe_image(`, `get_paginator("list_images")`) must be one of them."""
    import botocore.session
    from botocore import xform_name

    full = botocore.session.get_session().get_service_model("sagemaker")
    snake = {xform_name(op): op for op in full.operation_names}
    source = "\n".join(p.read_text() for p in (REPO / "src" / "byoi" / "cli").glob("*.py"))
    called = set(re.findall(r"\.([a-z_]+)\(", source)) | set(re.findall(r'get_paginator\("([a-z_]+)"\)', source))
    used = {snake[name] for name in called if name in snake}
    assert used and used <= set(CLI_OPERATIONS), sorted(used - set(CLI_OPERATIONS))
    loader = botocore.session.get_session().get_component("data_loader")
    cut = cut_model(loader.load_service_model("sagemaker", "service-2"))
    assert set(cut["operations"]) == set(CLI_OPERATIONS)
    shapes = cut["shapes"]
    for shape in shapes.values():  # every shape a kept shape names is kept
        refs = [m["shape"] for m in shape.get("members", {}).values()]
        refs += [shape[part]["shape"] for part in ("member", "key", "value") if part in shape]
        assert set(refs) <= set(shapes)


def test_client_commands_import_no_server_stack(tmp_path):
    """`python -X importtime`: neither --help nor a client command loads the server's stack or boto3, and --help
    loads no botocore at all."""
    env = {**os.environ, "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    heavy = ("sqlalchemy", "alembic", "uvicorn", "fastapi", "aiodocker", "boto3", "byoi.services", "byoi.store")

    def imported(*args: str) -> set[str]:
        run = subprocess.run([sys.executable, "-X", "importtime", "-m", "byoi", *args], env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        return {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}

    at_help = imported("--help")
    assert not {m for m in at_help if m.startswith((*heavy, "botocore"))}
    listing = imported("images", "list", "--endpoint-url", f"http://127.0.0.1:{free_port()}")
    assert "botocore.client" in listing  # it did make a client
    assert not {m for m in listing if m.startswith(heavy)}


def test_the_quick_build_parser_is_typers_option_for_option():
    """`byoi build` is parsed by byoi/cli/entry.py without typer: the same options, short names, defaults and
    kinds as the typer command, each under the name of the function's parameter."""
    import argparse

    from byoi.cli.entry import build_parser

    typer_build = _commands()["byoi build"]
    ours = {a.dest: a for a in build_parser()._actions}
    assert set(ours) == {p.name for p in typer_build.params}
    for param in typer_build.params:
        action = ours[param.name]
        assert sorted(action.option_strings) == sorted(getattr(param, "opts", []) if param.param_type_name == "option"
                                                       else []), param.name  # fmt: skip
        assert action.required == bool(param.required), param.name
        flag = bool(getattr(param, "is_flag", False))
        assert isinstance(action, argparse._StoreTrueAction) == flag, param.name
        assert isinstance(action, argparse._AppendAction) == bool(getattr(param, "multiple", False)), param.name
        if not param.required:
            assert action.default == (param.default if not (flag and param.default is None) else False), param.name


@pytest.mark.parametrize(
    "args",
    [
        ["build", "{missing}", "--image", "team/r"],  # not a directory: usage error
        ["build", "{ctx}", "--image", "Team/R"],  # invalid input
        ["build", "{ctx}", "--image", "team/r", "--tag", "bad tag!"],
        ["build", "{ctx}", "--image", "team/r", "--build-arg", "=x"],
        ["build", "{ctx}", "--image", "team/r", "-o", "XML"],  # refused by the quick parser: typer answers
        ["build", "{ctx}"],  # --image missing: typer's usage error
        ["build", "{ctx}", "--image", "team/r", "--endpoint-url", "http://127.0.0.1:{port}"],  # unreachable
    ],
)
def test_the_quick_build_answers_as_typer_does(tmp_path, args):
    """The console script (quick path, or typer for what it does not take) and typer's own command give the
    same exit status and the same first line of stderr, and the quick path never imports pydantic."""
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\n")
    values = {"missing": str(tmp_path / "nope"), "ctx": str(tmp_path / "ctx"), "port": str(free_port())}
    argv = [a.format(**values) for a in args]
    env = {**os.environ, "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "AWS_ENDPOINT_URL_SAGEMAKER": f"http://127.0.0.1:{values['port']}", "COLUMNS": "200"}  # fmt: skip
    quick = subprocess.run([BYOI, *argv], env=env, capture_output=True, text=True, timeout=120)
    typed = byoi_cli(argv, env)
    assert quick.returncode == typed.returncode != 0, (quick.stderr, typed.stderr)
    first = [" ".join(r.stderr.replace("│", " ").split()).split(" Usage:")[0][:60] for r in (quick, typed)]
    assert first[0] == first[1], first
    assert "Traceback" not in quick.stderr


def test_a_plain_build_starts_without_typers_parameter_checks(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    argv = [sys.executable, "-X", "importtime", "-m", "byoi", "build", str(tmp_path / "nope"), "-i", "a/b"]
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    imported = {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert run.returncode == ExitCode.USAGE and "is not a directory" in run.stderr
    assert "byoi.cli.build_run" in imported and not {m for m in imported if m.startswith(("pydantic", "typer"))}
    assert not {"byoi.cli.main", "byoi.cli.builds", "byoi.cli.common"} & imported  # no typer command tree at all


def test_the_model_directory_is_made_once_and_a_read_only_cache_falls_back(tmp_path, monkeypatch):
    from byoi.cli import client

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    client.cli_data_path.cache_clear()
    try:
        path = client.cli_data_path()
        assert path is not None and (Path(path) / "complete").exists()
        assert (Path(path) / "sagemaker" / "2017-07-24" / "service-2.json").stat().st_size < 500_000  # cut down
        client.cli_data_path.cache_clear()
        assert client.cli_data_path() == path  # found, not made again
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        monkeypatch.setenv("XDG_CACHE_HOME", str(ro))
        client.cli_data_path.cache_clear()
        if os.geteuid() != 0:  # root writes anywhere
            assert client.cli_data_path() is None
    finally:
        client.cli_data_path.cache_clear()


# -- every data command: JSON and YAML that parse -----------------------------------------------------------

DATA_COMMANDS = [
    (["images", "list"], "Images"),
    (["images", "describe", "{image}"], "ImageArn"),
    (["images", "available", "-d", "{domain}"], "EffectiveImages"),
    (["versions", "list", "{image}"], "ImageVersions"),
    (["versions", "describe", "{image}", "-v", "1"], "ImageVersionStatus"),
    (["versions", "report", "{image}", "-v", "2"], "Report"),
    (["versions", "diff", "{image}", "1", "2"], "From"),
    (["domains", "list"], "Domains"),
    (["domains", "describe", "{domain}"], "DomainId"),
    (["domains", "available", "-d", "{domain}"], "EffectiveImages"),
    (["users", "list", "-d", "{domain}"], "UserProfiles"),
    (["users", "describe", "{user}", "-d", "{domain}"], "UserProfileArn"),
    (["builds", "list"], "ImageBuilds"),
    (["sessions", "list", "-d", "{domain}"], "Apps"),
    (["admin", "users", "list"], "Principals"),
    (["admin", "users", "describe", "{user}"], "Principal"),
    (["admin", "keys", "list", "{user}"], "AccessKeys"),
    (["admin", "audit", "--limit", "3"], "AuditEvents"),
    (["whoami"], "PrincipalName"),
    # Commands that create something: a new name each run.
    (["images", "create", "{new}"], "ImageArn"),
    (["versions", "create", "{image}", "shape/{image}:v1"], "ImageVersionStatus"),
    (["domains", "create", "{new}", "--no-rstudio"], "DomainId"),
    (["users", "create", "{new}", "-d", "{domain}"], "UserProfileArn"),
    (["admin", "users", "create", "{new}", "--admin"], "Principal"),
    (["admin", "keys", "create", "{user}"], "AccessKey"),
]


@pytest.mark.parametrize("output", ["json", "yaml"])
@pytest.mark.parametrize(("args", "key"), DATA_COMMANDS, ids=[" ".join(a[:2]) for a, _ in DATA_COMMANDS])
def test_data_commands_print_a_document_that_parses(world, output, args, key):
    names = {"image": world["image"], "domain": world["domain"], "user": world["user"], "new": unique("shape-new")}
    result = byoi(world, *[a.format(**names) for a in args], "--output", output)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout) if output == "json" else yaml.safe_load(result.stdout)
    assert isinstance(document, dict) and key in document, result.stdout
    assert "ResponseMetadata" not in document


def test_the_console_script_prints_json_a_shell_can_pipe(world):
    """The same through a real `byoi` process: stdout is the document alone."""
    run = subprocess.run([BYOI, "versions", "list", world["image"], "-o", "json"], env=world["env"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    numbers = [v["Version"] for v in json.loads(run.stdout)["ImageVersions"]]
    assert numbers[-2:] == [2, 1] and numbers == sorted(numbers, reverse=True)  # others' runs may add versions


def test_table_stays_the_default_for_lists_and_json_for_describes(world):
    listed = byoi(world, "versions", "list", world["image"])
    assert listed.returncode == 0 and "┃ Version" in listed.stdout
    described = byoi(world, "versions", "describe", world["image"], "-v", "1")
    assert json.loads(described.stdout)["Version"] == 1


# -- exit statuses -----------------------------------------------------------------------------------------

NOT_FOUND = [
    ["images", "describe", "{image}-nope"],
    ["versions", "describe", "{image}", "-v", "99"],
    ["versions", "delete", "{image}", "-v", "99"],
    ["domains", "describe", "no-such-domain"],
    ["users", "describe", "nobody", "-d", "{domain}"],
    ["sessions", "describe", "no-such-app", "-d", "{domain}", "-u", "{user}"],
    ["builds", "describe", "b-0000000000000000"],
    ["builds", "logs", "b-0000000000000000"],
    ["admin", "users", "describe", "nobody"],
    ["detach", "{image}", "-d", "{domain}", "-u", "{user}"],  # attached to the domain, not to the profile
]


@pytest.mark.parametrize("args", NOT_FOUND, ids=[" ".join(a[:2]) for a in NOT_FOUND])
def test_not_found_exits_5(world, args):
    result = byoi(world, *[a.format(**world) for a in args])
    assert result.returncode == ExitCode.NOT_FOUND == 5, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["images", "create", "not a name"], "ValidationException"),  # the server's check
        (["images", "create", ""], "invalid input: Invalid length for parameter ImageName"),  # botocore's, unsent
        (["versions", "describe", "{image}", "-v", "-1"], "invalid input: Invalid value for parameter Version"),
        (["builds", "describe", "x/y"], "is not a build id"),  # the CLI's, before it goes into a URL path
    ],
)
def test_invalid_input_exits_4(world, args, says):
    result = byoi(world, *[a.format(**world) for a in args])
    assert result.returncode == ExitCode.INVALID_INPUT == 4, result.stdout + result.stderr
    assert says in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["images", "list", "-o", "xml"], "'xml' is not one of 'table', 'json', 'yaml'"),
        (["images", "list", "--no-such-option"], "No such option"),
        (["versions", "delete", "{image}"], "name the version to delete with --version N or --alias NAME"),
        (["admin", "users", "create", "someone"], "a user needs --domain and --user-profile"),
        (["images", "list", "--endpoint-url", "not-a-url"], "--endpoint-url 'not-a-url' is not a URL"),
        (["images", "list", "--profile", "nope"], "--profile: profile 'nope' not found"),
    ],
)
def test_usage_errors_exit_2(world, args, says):
    result = byoi(world, *[a.format(**world) for a in args])
    assert result.returncode == ExitCode.USAGE == 2, result.stdout + result.stderr
    assert says in " ".join(result.stderr.replace("│", " ").split()), result.stderr


@pytest.mark.parametrize(
    ("profile", "args", "says"),
    [
        ("user", ["images", "create", "{image}-by-a-user"], "AccessDeniedException"),
        ("user", ["admin", "users", "list"], "AccessDeniedException"),
        ("bad", ["images", "list"], "InvalidSignatureException"),
    ],
)
def test_access_denied_exits_6(world, profile, args, says):
    result = byoi(world, *[a.format(**world) for a in args], "--profile", profile)
    assert result.returncode == ExitCode.ACCESS_DENIED == 6, result.stdout + result.stderr
    assert says in result.stderr


def test_no_credentials_at_all_exits_6(world, tmp_path):
    env = {k: v for k, v in world["env"].items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), BYOI_DATA_DIR=str(tmp_path / "nothing"))
    env["AWS_ENDPOINT_URL_SAGEMAKER"] = world["env"]["AWS_ENDPOINT_URL_SAGEMAKER"]
    result = byoi_cli(["images", "list"], env)
    assert result.returncode == 6 and "no credentials" in result.stderr, result.stderr


def test_a_version_that_fails_exits_7_with_its_description(world):
    result = byoi(world, "versions", "create", world["image"], f"shape/{world['image']}:never", "-o", "json")
    assert result.returncode == ExitCode.FAILED == 7, result.stdout + result.stderr
    described = json.loads(result.stdout)  # stdout: the document alone; the progress went to stderr
    assert described["ImageVersionStatus"] == "CREATE_FAILED" and "tag never not found" in described["FailureReason"]
    assert "CREATE_FAILED" in result.stderr


def test_an_unreachable_server_exits_69(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", HOME=str(tmp_path))  # noqa: S106 - never sent
    run = subprocess.run([BYOI, "images", "list", "--endpoint-url", f"http://127.0.0.1:{free_port()}"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == ExitCode.UNAVAILABLE == 69, run.stderr
    assert "cannot reach byoi at http://127.0.0.1:" in run.stderr and "Traceback" not in run.stderr


def test_ctrl_c_without_a_terminal_never_stops_work_on_the_server(monkeypatch):
    """The question is asked only on a terminal; from a script the work is left running."""
    from byoi.cli import common

    class Piped:
        def isatty(self) -> bool:
            return False

    monkeypatch.setattr(common.sys, "stdin", Piped())
    assert common.stop_on_server("Stop build b-0 on the server too?") is False


def test_ctrl_c_stops_the_work_only_on_yes_and_otherwise_says_how_and_exits_130(monkeypatch, capsys):
    """The one path the build, launch and version waits take after Ctrl-C (cli.common.ask_to_stop)."""
    import typer

    from byoi.cli import common

    stops: list[str] = []
    for answer in (True, False):
        monkeypatch.setattr(common, "stop_on_server", lambda question, answer=answer: answer)
        try:
            common.ask_to_stop("Stop it?", lambda: stops.append("stopped"), "stopping it", "it keeps running")
            returned = True
        except typer.Exit as exc:
            assert exc.exit_code == ExitCode.INTERRUPTED == 130
            returned = False
        assert returned is answer  # on yes the caller goes on (a build follows its log to the end)
    assert stops == ["stopped"]
    assert capsys.readouterr().err.split("\n")[:2] == ["stopping it", "it keeps running"]


# -- builds and sessions (Docker Engine) -------------------------------------------------------------------

docker = pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)")


@pytest.mark.docker
@pytest.mark.slow
@docker
def test_a_failed_build_exits_7_and_ctrl_c_stops_one_only_when_told_to(world, tmp_path):
    ensure_base_image()
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo shape-{world['image']} && false\n")
    name = unique("shape-build")
    failed = byoi(world, "build", str(root), "--image", name, "-o", "json")
    assert failed.returncode == ExitCode.FAILED, failed.stdout + failed.stderr
    build = json.loads(failed.stdout)
    assert build["BuildStatus"] == "FAILED" and f"shape-{world['image']}" in failed.stderr  # the log: stderr
    described = byoi(world, "builds", "describe", build["BuildId"], "-o", "yaml")
    assert yaml.safe_load(described.stdout)["BuildStatus"] == "FAILED"

    (root / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo started-{name} && sleep 120\n")
    proc = subprocess.Popen([BYOI, "build", str(root), "--image", name], env=world["env"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        seen = ""
        deadline = time.monotonic() + 120
        while f"started-{name}" not in seen:  # the build is in its long step
            assert time.monotonic() < deadline and proc.poll() is None, seen
            seen += proc.stdout.readline()  # type: ignore[union-attr]
        build_id = re.search(r"Build (b-[0-9a-f]{16}) started", seen)[1]  # type: ignore[index]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == ExitCode.INTERRUPTED == 130, stderr
        assert f"keeps running on the server; follow it with `byoi builds logs {build_id} -f`" in stderr
        assert f"stop it with `byoi builds stop {build_id}`" in stderr and "Traceback" not in stderr
        assert s.extension(world["server"]).describe_image_build(BuildId=build_id)["BuildStatus"] == "BUILDING"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stopped = byoi(world, "builds", "stop", build_id, "-o", "json")
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["BuildId"] == build_id

    # On a terminal the question is asked, and answering y stops the build on the server.
    master, slave = os.openpty()
    env = {**world["env"], "TERM": "dumb", "NO_COLOR": "1"}
    proc = subprocess.Popen([BYOI, "build", str(root), "--image", name], env=env, stdin=slave, stdout=slave,
                            stderr=slave)  # fmt: skip
    os.close(slave)
    screen = ""

    def wait_for(pattern: str, timeout: float = 120) -> re.Match[str]:
        nonlocal screen
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, screen)):
            assert time.monotonic() < deadline, f"{pattern!r} never appeared in:\n{screen}"
            if select.select([master], [], [], 0.5)[0]:
                try:
                    screen += os.read(master, 65536).decode(errors="replace").replace("\r", "")
                except OSError:  # the process ended
                    time.sleep(0.1)
        return found

    try:
        build_id = wait_for(r"Build (b-[0-9a-f]{16}) started")[1]
        wait_for(f"\nstarted-{name}\n")
        proc.send_signal(signal.SIGINT)
        wait_for(rf"Stop build {build_id} on the server too\? \[y/N\]")
        os.write(master, b"y\n")
        wait_for(f"stopping {build_id}")
        wait_for("--> STOPPED")
        assert proc.wait(timeout=60) == ExitCode.INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    described = s.extension(world["server"]).describe_image_build(BuildId=build_id)
    assert (described["BuildStatus"], described["StopRequested"]) == ("STOPPED", True)


# A plain `byoi build` process, with a hook that lists the modules it imported once it is done.
MODULES_AT_EXIT = """
import atexit, json, os, sys
atexit.register(lambda: open(os.environ["BYOI_MODULES_OUT"], "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["byoi", *json.loads(os.environ["BYOI_ARGV"])]
from byoi.cli.entry import main
main()
"""
HEAVY_CLIENTS = ("botocore", "boto3", "httpx2", "httpcore2", "typer", "pydantic")


@pytest.mark.docker
@pytest.mark.slow
@docker
def test_a_plain_build_imports_no_heavy_client_and_answers_as_botocore_would(world, tmp_path):
    """The console script's build, against the real server: built, pushed and registered without botocore, boto3,
    httpx2/httpcore2, typer or pydantic ever imported, and with the document botocore's clients describe; a
    warm rebuild through typer's command (the other door) prints a document of the same shape."""
    from byoi.cli.common import document

    ensure_base_image()
    root = tmp_path / "ctx"
    root.mkdir()
    name = unique("shape-lean")
    (root / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo lean-{name} > /lean\n")
    argv = ["build", str(root), "--image", name, "--register", "-o", "json"]
    out = tmp_path / "modules.json"
    env = {**world["env"], "BYOI_MODULES_OUT": str(out), "BYOI_ARGV": json.dumps(argv)}
    run = subprocess.run([sys.executable, "-c", MODULES_AT_EXIT], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    modules = json.loads(out.read_text())
    assert "byoi.cli.build_run" in modules and "byoi.cli.http1" in modules  # it did build, over byoi's HTTP/1.1
    assert "http.client" not in modules and "rich" not in modules  # nor the email package, nor rich off a terminal
    assert [m for m in modules if m.split(".")[0] in HEAVY_CLIENTS] == []

    printed = json.loads(run.stdout)
    version = printed.pop("ImageVersion")
    assert printed == document(s.extension(world["server"]).describe_image_build(BuildId=printed["BuildId"]))
    theirs = world["server"].client().describe_image_version(ImageName=name, Version=1)
    assert version["ImageVersionStatus"] == "CREATED" and f"lean-{name}" in run.stderr  # the log: stderr
    assert version == document(theirs)  # the API's answer, without the HTTP exchange's ResponseMetadata

    typed = byoi(world, *argv[:-2], "--tag", "again", "-o", "json")
    assert typed.returncode == 0, typed.stdout + typed.stderr
    again = json.loads(typed.stdout)  # a warm rebuild may be the build-result cache's: ReusedBuildId and all
    described = s.extension(world["server"]).meta.service_model.operation_model("DescribeImageBuild")
    model = list(described.output_shape.members)
    for built in (printed, again):
        assert [k for k in built if k != "ImageVersion"] == [m for m in model if m in built]  # the model's order
    assert list(again["ImageVersion"]) == list(version)


@pytest.mark.docker
@pytest.mark.slow
@docker
def test_a_launch_that_fails_exits_7(world, server, pusher):
    """A CREATED version of an image without RStudio Server (lenient inspection lets it register): the session
    ends Failed, `launch` exits 7 with the reason, and `sessions url` has nothing to open (7)."""
    sm = server.client()
    domain = unique("shape-rs")
    sm.create_domain(
        DomainName=domain,
        AuthMode="IAM",
        DefaultUserSettings={"ExecutionRole": ROLE},
        DomainSettings={"RStudioServerProDomainSettings": {"DomainExecutionRoleArn": ROLE}},
    )
    assert byoi(world, "users", "create", "ana", "-d", domain).returncode == 0
    assert byoi(world, "attach", world["image"], "-d", domain).returncode == 0
    launched = byoi(world, "launch", "-d", domain, "-u", "ana", "-i", world["image"], "--name", "doomed", "-o", "json")
    assert launched.returncode == ExitCode.FAILED, launched.stdout + launched.stderr
    assert json.loads(launched.stdout)["Status"] == "Failed" and "session doomed Failed" in launched.stderr
    url = byoi(world, "sessions", "url", "doomed", "-d", domain, "-u", "ana")
    assert url.returncode == ExitCode.FAILED and "is Failed: there is nothing to open" in url.stderr
    described = byoi(world, "sessions", "describe", "doomed", "-d", domain, "-u", "ana", "-o", "yaml")
    assert yaml.safe_load(described.stdout)["Status"] == "Failed"
