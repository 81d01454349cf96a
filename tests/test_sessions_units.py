"""Unit tests of the session runtime's pure parts: container arguments, instance types, settings, session files,
pull progress accounting and failure reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from byoi.runtime.base import Endpoint, SessionState, StateKind
from byoi.runtime.docker import PullTracker, container_state
from byoi.runtime.docker_args import container_args, file_sources, network_args
from byoi.runtime.instance_types import (
    DEFAULTS,
    GiB,
    HostCapacity,
    InstanceTypeError,
    InstanceTypes,
    model_instance_types,
)
from byoi.runtime.settings import RuntimeSettings, SessionConfigError
from byoi.runtime.spec import SessionSpec
from byoi.services import session_files as files
from byoi.services.app_launch import FAST_PROBE, FAST_WINDOW, POLL, failure_with_logs, probe_delay

SPEC = SessionSpec(
    name="byoi-abc-s1-1",
    image="127.0.0.1:5000/team/r@sha256:" + "a" * 64,
    uid=1000,
    gid=100,
    user_name="rstudio",
    home_host_path="/data/homes/d-x/alice-200001",
    home_mount_path="/home/sagemaker-user",
    root_path="/sessions/s1/",
    nano_cpus=2_000_000_000,
    memory_bytes=4 * GiB,
    network="byoi-sessions",
    env={"RSTUDIO_CONNECT_URL": "https://connect.example", "BYOI_DOMAIN_ID": "d-x"},
    labels={"byoi.managed": "true", "byoi.app-arn": "arn:aws:sagemaker:r:000000000000:app/d-x/alice/RSessionGateway/a"},
)


def test_container_args_are_exactly_the_locked_down_session() -> None:
    assert container_args(SPEC, "/data/sockets/0123456789abcdef") == {
        "Image": SPEC.image,
        "Entrypoint": ["/usr/lib/rstudio-server/bin/rserver"],
        "Cmd": [
            "--server-daemonize=0",
            "--www-socket=/run/byoi-www/rserver.sock",
            "--auth-none=1",
            "--server-user=rstudio",
            "--www-root-path=/sessions/s1/",
            "--www-frame-origin=same",
            "--www-verify-user-agent=0",
            "--server-data-dir=/run/byoi/rserver",
            "--database-config-file=/etc/byoi/database.conf",
            "--secure-cookie-key-file=/run/byoi/secure-cookie-key",
        ],
        "User": "1000:100",
        "WorkingDir": "/home/sagemaker-user",
        "Env": [
            "BYOI_DOMAIN_ID=d-x",
            "HOME=/home/sagemaker-user",
            "RSTUDIO_CONNECT_URL=https://connect.example",
            "USER=rstudio",
        ],
        "Labels": {**SPEC.labels, "byoi.listen": "socket"},
        "ExposedPorts": {},
        "StopSignal": "SIGTERM",
        "HostConfig": {
            "Init": True,
            "NetworkMode": "byoi-sessions",
            "PortBindings": {},  # no port: only the socket, in a directory only byoi can traverse
            "Mounts": [
                {
                    "Type": "bind",
                    "Source": "/data/homes/d-x/alice-200001",
                    "Target": "/home/sagemaker-user",
                    "ReadOnly": False,
                },
                {
                    "Type": "bind",
                    "Source": "/data/sockets/0123456789abcdef",
                    "Target": "/run/byoi-www",
                    "ReadOnly": False,
                },
            ],
            "Tmpfs": {"/run/byoi": "rw,nosuid,nodev,size=268435456,uid=1000,gid=100,mode=0700"},
            "NanoCpus": 2_000_000_000,
            "Memory": 4 * GiB,
            "MemorySwap": 4 * GiB,
            "PidsLimit": 4096,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Privileged": False,
            "ReadonlyRootfs": False,
            "RestartPolicy": {"Name": "no"},
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
        },
    }


def test_old_rstudio_falls_back_to_a_loopback_port_and_nothing_else() -> None:
    """For an RStudio older than 2024.12 (no --www-socket): port 8787 on the host's 127.0.0.1 only, no socket."""
    args = container_args(SessionSpec(**{**SPEC.__dict__, "listen_socket": False}))
    assert args["Cmd"][:3] == ["--server-daemonize=0", "--www-address=0.0.0.0", "--www-port=8787"]
    assert not any(a.startswith("--www-socket") for a in args["Cmd"])
    assert args["HostConfig"]["PortBindings"] == {"8787/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert args["ExposedPorts"] == {"8787/tcp": {}} and args["Labels"]["byoi.listen"] == "tcp"
    assert [m["Target"] for m in args["HostConfig"]["Mounts"]] == ["/home/sagemaker-user"]
    with pytest.raises(ValueError, match="socket directory"):
        container_args(SPEC)  # a socket session without its directory is a bug, not a silent TCP session


def test_byois_files_are_read_only_bind_mounts_of_host_files() -> None:
    files = {"/usr/lib/R/etc/Renviron.site": b"A='1'\n", "/etc/byoi/database.conf": b"x\n", "/etc/R/Renviron.site": b""}
    spec = SessionSpec(**{**SPEC.__dict__, "files": files})
    mounts = container_args(spec, "/s/0123", "/s/0123.files")["HostConfig"]["Mounts"]
    assert mounts[2:] == [
        {
            "Type": "bind",
            "Source": "/s/0123.files/00-Renviron.site",
            "Target": "/etc/R/Renviron.site",
            "ReadOnly": True,
        },
        {
            "Type": "bind",
            "Source": "/s/0123.files/01-database.conf",
            "Target": "/etc/byoi/database.conf",
            "ReadOnly": True,
        },
        {
            "Type": "bind",
            "Source": "/s/0123.files/02-Renviron.site",  # the same base name, another host file
            "Target": "/usr/lib/R/etc/Renviron.site",
            "ReadOnly": True,
        },
    ]
    with pytest.raises(ValueError, match="host directory"):
        container_args(spec, "/s/0123")
    for bad in ("etc/x", "/etc/../root/x", "/etc//x", "/", "/etc/x/"):
        with pytest.raises(ValueError, match="absolute and normal"):
            file_sources("/s/0123.files", [bad])


def test_endpoints_round_trip_and_are_one_kind() -> None:
    for endpoint in (Endpoint(socket="/d/s/rserver.sock"), Endpoint(host="127.0.0.1", port=40001)):
        assert Endpoint.from_json(endpoint.to_json()) == endpoint
    assert Endpoint(socket="/x").display() == "unix:/x" and Endpoint(host="h", port=1).display() == "h:1"
    assert Endpoint.from_json(None) is None and Endpoint.from_json({"Host": "h"}) is None
    with pytest.raises(ValueError):
        Endpoint(socket="/x", host="h", port=1)
    with pytest.raises(ValueError):
        Endpoint()


def test_the_session_env_cannot_override_home_or_user() -> None:
    spec = SessionSpec(**{**SPEC.__dict__, "env": {"HOME": "/root", "USER": "root"}})
    args = container_args(spec, "/s")
    assert "HOME=/home/sagemaker-user" in args["Env"] and "USER=rstudio" in args["Env"]


def test_network_turns_inter_container_traffic_off() -> None:
    args = network_args("byoi-sessions", {"byoi.managed": "true"})
    assert args["Options"] == {"com.docker.network.bridge.enable_icc": "false"} and args["Driver"] == "bridge"


HOST = HostCapacity(cpus=2, memory_bytes=23 * GiB)


def test_instance_types_default_and_host_limits() -> None:
    types = InstanceTypes()
    medium = types.get("ml.t3.medium", HOST)
    assert (medium.vcpu, medium.memory_bytes, medium.nano_cpus) == (2, 4 * GiB, 2_000_000_000)
    with pytest.raises(InstanceTypeError, match=r"ml\.m5\.4xlarge needs 16 vCPU and 64 GiB.*2 CPUs and 23\.0 GiB"):
        types.get("ml.m5.4xlarge", HOST)
    with pytest.raises(InstanceTypeError, match=r"ml\.r5\.large needs 2 vCPU and 16 GiB"):
        types.get("ml.r5.large", HostCapacity(2, 8 * GiB))
    with pytest.raises(InstanceTypeError, match="not offered"):
        types.get("ml.g4dn.xlarge", HOST)
    assert "ml.t3.medium" in types.offered(HOST) and "ml.m5.xlarge" not in types.offered(HOST)


def test_instance_types_file_overrides_and_adds(tmp_path: Path) -> None:
    path = tmp_path / "types.toml"
    path.write_text(
        '[types."ml.t3.medium"]\nvcpu = 0.5\nmemory_gib = 1\n[types."ml.g4dn.xlarge"]\nvcpu = 1\nmemory_gib = 2\n'
    )
    types = InstanceTypes.load(path)
    assert types.get("ml.t3.medium", HOST).nano_cpus == 500_000_000
    assert types.get("ml.g4dn.xlarge", HOST).memory_bytes == 2 * GiB
    assert types.get("ml.m5.large", HOST).vcpu == 2  # the defaults stay


def test_every_default_instance_type_is_in_the_model() -> None:
    assert set(DEFAULTS) <= model_instance_types() and "ml.t3.medium" in model_instance_types()
    InstanceTypes()  # the defaults load


@pytest.mark.parametrize(
    ("content", "wanted"),
    [
        ("types = 5", 'types must be a table of [types."ml.*"] entries, not 5'),
        ('types = "ml.t3.medium"', "types must be a table"),
        ('[types]\n"ml.t3.medium" = 4', "[types.'ml.t3.medium'] must be a table with vcpu and memory_gib, not 4"),
        (
            '[types."ml.t3.medium"]\nvcpu = "many"\nmemory_gib = 1',
            "[types.'ml.t3.medium'] vcpu must be a number > 0, not 'many'",
        ),
        ('[types."ml.t3.medium"]\nvcpu = true\nmemory_gib = 1', "vcpu must be a number > 0, not True"),
        ('[types."ml.t3.medium"]\nvcpu = 1\nmemory_gib = -2', "memory_gib must be a number > 0, not -2"),
        ('[types."ml.t3.medium"]\nvcpu = 1\nmemory_gib = nan', "memory_gib must be a number > 0, not nan"),
        ('[types."ml.t3.medium"]\nvcpu = 1\nmemory_gib = [2]', "memory_gib must be a number > 0, not [2]"),
        ('[types."ml.t3.medium"]\nvcpu = 1', "[types.'ml.t3.medium'] needs memory_gib"),
        ('[types."ml.t3.medium"]\nvcpu = 1\nmemory_gb = 2', "unknown key 'memory_gb' (only vcpu and memory_gib)"),
        ('[types."t3"]\nvcpu = 1\nmemory_gib = 1', "'t3' is not an instance type of the SageMaker model"),
        ('[types."ml.t3.huge"]\nvcpu = 1\nmemory_gib = 1', "'ml.t3.huge' is not an instance type of the SageMaker"),
        ('[types."system"]\nvcpu = 1\nmemory_gib = 1', "'system' is not an instance type"),
        ('[type."ml.t3.medium"]\nvcpu = 1\nmemory_gib = 1', "unknown key 'type'"),
        ("types = [", "cannot read instance types"),
    ],
)
def test_a_bad_instance_types_file_names_the_file_key_and_value(tmp_path: Path, content: str, wanted: str) -> None:
    path = tmp_path / "types.toml"
    path.write_text(content + "\n")
    with pytest.raises(SessionConfigError) as err:
        InstanceTypes.load(path)
    assert f"BYOI_INSTANCE_TYPES={path}: " in str(err.value) and wanted in str(err.value)


def test_a_missing_instance_types_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(SessionConfigError, match="missing.toml: cannot read instance types"):
        InstanceTypes.load(tmp_path / "missing.toml")


def test_runtime_settings_from_env_read_the_session_variables() -> None:
    settings = RuntimeSettings.from_env(
        {"BYOI_SESSION_UID": "1001", "BYOI_SESSION_START_TIMEOUT": "5", "DOCKER_HOST": "unix:///x.sock"}
    )
    assert (settings.uid, settings.gid, settings.start_timeout) == (1001, 100, 5.0)
    assert settings.docker_host == "unix:///x.sock" and settings.instance_types is None


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({"BYOI_SESSION_UID": "0"}, "BYOI_SESSION_UID=0 is refused: sessions never run as root"),
        ({"BYOI_SESSION_UID": "-5"}, "BYOI_SESSION_UID=-5 is refused: it must be >= 1"),
        ({"BYOI_SESSION_UID": "x"}, "BYOI_SESSION_UID must be a whole number, not 'x'"),
        ({"BYOI_SESSION_UID": "1.5"}, "BYOI_SESSION_UID must be a whole number, not '1.5'"),
        ({"BYOI_SESSION_UID": "4294967295"}, "BYOI_SESSION_UID=4294967295 is refused"),
        ({"BYOI_SESSION_GID": "-1"}, "BYOI_SESSION_GID=-1 is refused: it must be >= 0"),
        ({"BYOI_SESSION_START_TIMEOUT": "0"}, "BYOI_SESSION_START_TIMEOUT=0.0 is refused: it must be > 0"),
        ({"BYOI_SESSION_START_TIMEOUT": "nan"}, "BYOI_SESSION_START_TIMEOUT=nan is refused"),
        ({"BYOI_SESSION_RECONCILE_SECONDS": "inf"}, "BYOI_SESSION_RECONCILE_SECONDS=inf is refused"),
        ({"BYOI_SESSION_LAUNCH_ATTEMPTS": "0"}, "BYOI_SESSION_LAUNCH_ATTEMPTS=0 is refused: it must be >= 1"),
        ({"BYOI_SESSION_STOP_TIMEOUT": "-1"}, "BYOI_SESSION_STOP_TIMEOUT=-1 is refused"),
        ({"BYOI_SESSION_PIDS_LIMIT": "0"}, "BYOI_SESSION_PIDS_LIMIT=0 is refused"),
        ({"BYOI_SESSION_LAUNCH_CONCURRENCY": "0"}, "BYOI_SESSION_LAUNCH_CONCURRENCY=0 is refused"),
        ({"BYOI_SESSION_HOME_MOUNT": "relative/home"}, "BYOI_SESSION_HOME_MOUNT='relative/home' must be an absolute"),
        ({"BYOI_SESSION_HOME_MOUNT": "/home/../etc"}, "BYOI_SESSION_HOME_MOUNT='/home/../etc' must be an absolute"),
        ({"BYOI_SESSION_USER_NAME": "Root;rm"}, "BYOI_SESSION_USER_NAME='Root;rm' is not a valid user name"),
        ({"BYOI_SESSION_NETWORK": "bad name"}, "BYOI_SESSION_NETWORK='bad name' is not a valid Docker network"),
    ],
)
def test_runtime_settings_refuse_bad_values_naming_the_variable(env: dict[str, str], wanted: str) -> None:
    with pytest.raises(SessionConfigError) as err:
        RuntimeSettings.from_env(env)
    assert wanted in str(err.value)
    assert isinstance(err.value, ValueError)  # the CLI's `except ValueError` turns it into a usage error


def test_renviron_keeps_the_image_lines_and_adds_the_session_env() -> None:
    merged = files.merged_renviron(b'R_LIBS_SITE="/usr/lib/R/site-library"', {"B": "2", "A": "x y"}).decode()
    assert merged.startswith('R_LIBS_SITE="/usr/lib/R/site-library"\n')
    assert merged.endswith("A='x y'\nB='2'\n")
    assert files.merged_renviron(None, {"A": "1"}).endswith(b"A='1'\n")
    assert files.unsafe_env({"OK": "https://a/b?c=d", "Q": "it's", "E": "${HOME}", "N": "a\nb", "1X": "v"}) == [
        "Q",
        "E",
        "N",
        "1X",
    ]


def test_session_files_and_names() -> None:
    written = files.session_files("/usr/lib/R", None, {"A": "1"}, {"AppType": "RSessionGateway"})
    assert set(written) == {
        "/usr/lib/R/etc/Renviron.site",
        "/etc/byoi/database.conf",
        "/etc/rstudio/file-locks",
        "/opt/ml/metadata/resource-metadata.json",
    }
    assert written["/etc/rstudio/file-locks"] == b"lock-type=advisory\n"
    assert b"provider=sqlite" in written["/etc/byoi/database.conf"]
    assert files.container_name("inst", "s1", 3) == "byoi-inst-s1-3"
    assert files.root_path("s1") == "/sessions/s1/"
    assert files.home_dir(Path("/d/homes"), "d-x", "Alice", 200001) == Path("/d/homes/d-x/alice-200001")
    assert files.home_dir(Path("/srv/homes"), "d-x", "Alice", 200001) == Path("/srv/homes/d-x/alice-200001")


@pytest.mark.parametrize(("domain", "profile"), [("..", "bob"), ("d-x", "../../etc"), ("d-x/../..", "bob"), ("", "b")])
def test_no_home_path_leaves_the_homes_root(domain: str, profile: str) -> None:
    with pytest.raises(files.UnsafeHomePath):
        files.home_dir(Path("/srv/homes"), domain, profile, 200001)


def test_a_symlink_out_of_the_homes_root_is_refused_and_never_removed(tmp_path: Path) -> None:
    import os

    root, outside = tmp_path / "homes", tmp_path / "elsewhere"
    (outside / "keep").mkdir(parents=True)
    root.mkdir()
    (root / "d-link").symlink_to(outside)
    with pytest.raises(files.UnsafeHomePath, match="leads out of the homes root"):
        files.ensure_home(files.home_dir(root, "d-link", "bob", 1), os.getuid(), os.getgid())
    files.remove_domain_homes(root, "d-link")
    files.remove_domain_homes(root, "..")
    assert (outside / "keep").is_dir() and root.is_dir()


def test_an_adopted_containers_socket_is_where_its_mount_says() -> None:
    """Another replica may have made the session's socket directory under its own socket root: the endpoint and
    the removal follow the container's mount, and only a directory named for that container is taken."""
    import hashlib

    from byoi.runtime.docker import mounted_socket_dir

    name = "byoi-inst-s1-1"
    own = hashlib.sha256(name.encode()).hexdigest()[:16]
    info = {"Mounts": [{"Type": "bind", "Source": "/data/a/homes/d-x/alice-1", "Destination": "/home/sagemaker-user"}]}
    assert mounted_socket_dir(info, name) is None
    info["Mounts"].append({"Type": "bind", "Source": f"/data/a/sockets/{own}", "Destination": "/run/byoi-www"})
    assert mounted_socket_dir(info, name) == Path(f"/data/a/sockets/{own}")
    info["Mounts"][1]["Source"] = "/etc"  # not a directory byoi made for this container: never taken for one
    assert mounted_socket_dir(info, name) is None


def test_homes_root_setting() -> None:
    assert RuntimeSettings().homes(Path("/data")) == Path("/data/homes")
    assert RuntimeSettings.from_env({"BYOI_SESSION_HOMES_ROOT": "/srv/byoi/homes"}).homes(Path("/d")) == Path(
        "/srv/byoi/homes"
    )
    for bad in ("homes", "/srv/../etc", "/srv/./homes"):
        with pytest.raises(SessionConfigError, match=f"BYOI_SESSION_HOMES_ROOT='{bad}' must be an absolute path"):
            RuntimeSettings.from_env({"BYOI_SESSION_HOMES_ROOT": bad})


def test_home_is_created_owned_and_removed_only_for_its_domain(tmp_path: Path) -> None:
    import os

    home = files.home_dir(tmp_path, "d-abc", "bob", 200002)  # tmp_path as the homes root (BYOI_SESSION_HOMES_ROOT)
    files.ensure_home(home, os.getuid(), os.getgid())
    (home / "f").write_text("x")
    files.ensure_home(home, os.getuid(), os.getgid())  # existing homes are left alone
    assert (home / "f").read_text() == "x" and oct(home.stat().st_mode & 0o777) == "0o750"
    files.remove_domain_homes(tmp_path, "d-other")
    assert home.exists()
    files.remove_domain_homes(tmp_path, "d-abc")
    assert not home.exists()


def test_pull_tracker_sums_layers() -> None:
    t = PullTracker()
    for event in (
        {"status": "Pulling from team/r", "id": "sha256:abc"},
        {"status": "Pulling fs layer", "id": "l1"},
        {"status": "Already exists", "id": "l0"},
        {"status": "Downloading", "id": "l1", "progressDetail": {"current": 50, "total": 200}},
        {"status": "Downloading", "id": "l2", "progressDetail": {"current": 10, "total": 100}},
    ):
        t.feed(event)
    p = t.progress()
    assert (p.done, p.total, p.layers, p.layers_done) == (60, 300, 3, 1)
    t.feed({"status": "Download complete", "id": "l1"})
    t.feed({"status": "Pull complete", "id": "l2"})
    p = t.progress()
    assert (p.done, p.total, p.layers_done) == (300, 300, 3)


def test_failure_reason_keeps_the_last_lines_within_1024() -> None:
    lines = [f"line {i} " + "x" * 100 for i in range(30)]
    reason = failure_with_logs("RStudio Server exited with code 3.", lines)
    assert len(reason) <= 1024 and reason.startswith("RStudio Server exited with code 3. Last log lines: ")
    assert reason.endswith(lines[-1]) and "line 0 " not in reason
    assert failure_with_logs("head", []) == "head"


def test_a_container_being_removed_reads_as_gone() -> None:
    """`docker rm -f` marks the container "removing" before it kills it: its exit code is the kill's, so the
    session is reported gone, not "stopped with exit code 137"."""
    assert container_state(None).gone
    assert container_state({"State": {"Status": "removing", "Running": False, "ExitCode": 137}}).gone
    exited = container_state({"State": {"Status": "exited", "Running": False, "ExitCode": 137}})
    assert exited == SessionState(StateKind.EXITED, exit_code=137) and exited.describe() == "exit code 137 (killed)"
    assert container_state({"State": {"Status": "running", "Running": True}}).running
    assert container_state({"State": {"Status": "created", "Running": False}}).kind is StateKind.CREATED
    oom = container_state({"State": {"Status": "exited", "ExitCode": 137, "OOMKilled": True, "FinishedAt": "t"}})
    assert oom.kind is StateKind.OUT_OF_MEMORY and "out of memory" in oom.describe() and oom.finished_at == "t"


def test_probes_are_fast_while_rstudio_usually_starts_then_back_off() -> None:
    """A session is probed FAST_PROBE apart in its first FAST_WINDOW seconds, then ever less often, to POLL."""
    assert probe_delay(0.0, 0.0) == probe_delay(FAST_WINDOW - 0.01, FAST_PROBE) == FAST_PROBE
    elapsed, delay, delays = FAST_WINDOW, FAST_PROBE, []
    while len(delays) < 8:
        delay = probe_delay(elapsed, delay)
        delays.append(delay)
        elapsed += delay
    assert delays[0] == 2 * FAST_PROBE and delays == sorted(delays) and delays[-1] == POLL
