"""RStudio sessions (CreateApp and friends) on a real Docker Engine, from images in a real registry.

RStudio Server here is the STAND-IN image (tests/images/rstudio-standin): a TEST DOUBLE for the IDE binary
only. The registry, the images, inspection, Docker Engine, the containers and R are all real. A few sessions
are shared by the tests of this module (in file order), and the server is the session's `rstudio_server`
(tests/conftest.py), shared with the proxy, launcher and console modules, to keep the wall time down: each
module makes its own domains, and this one removes only their sessions.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import regex
from botocore.exceptions import ClientError

from tests.support import sessions as s
from tests.support.docker_images import containers, docker_available, docker_client, push_test_image
from tests.support.processes import ByoiServer, byoi_cli

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)"),
]

DOMAINS: list[str] = []  # this module's domains: their sessions are removed after it (the server is shared)


@pytest.fixture(scope="module")
def server(rstudio_server: ByoiServer) -> Any:
    yield rstudio_server
    s.remove_sessions_of(rstudio_server.data_dir, DOMAINS)


@pytest.fixture(scope="module")
def world(server: ByoiServer, registry: str, rstudio_image: str) -> dict[str, Any]:
    """A domain with RStudio on, users alice and bob, and the image `standin`: version 1 is the plain stand-in,
    version 2 the stand-in plus an R package only it has. The image is attached without a version. `other`
    is an image attached nowhere here: the shared stand-in image (`rstudio_image`)."""
    sm = server.client()
    image = s.unique("standin")
    v1 = s.register(sm, registry, image, "rstudio-standin", "v1")
    v2 = s.register(sm, registry, image, "rstudio-standin-extra", "v2", create=False)
    s.ensure_config(sm)
    domain = s.rstudio_domain(sm, [{"ImageName": image, "AppImageConfigName": s.CONFIG}])
    DOMAINS.append(domain)
    for user in ("alice", "bob"):
        sm.create_user_profile(DomainId=domain, UserProfileName=user)
    arn = sm.describe_image(ImageName=image)["ImageArn"]
    return {"sm": sm, "domain": domain, "image": image, "image_arn": arn, "v1": v1, "v2": v2, "other": rstudio_image}


def version_arn(world: dict[str, Any], version: int) -> str:
    return world["image_arn"].replace(":image/", ":image-version/").lower() + f"/{version}"


def launch(world: dict[str, Any], user: str, name: str, version: int | None = None, **spec: Any) -> str:
    resource = {"SageMakerImageArn": world["image_arn"], **spec}
    if version is not None:
        resource["SageMakerImageVersionArn"] = version_arn(world, version)
    world["sm"].create_app(
        DomainId=world["domain"], UserProfileName=user, AppType="RSessionGateway", AppName=name, ResourceSpec=resource
    )
    return name


@pytest.fixture(scope="module")
def alice(world: dict[str, Any], server: ByoiServer) -> dict[str, Any]:
    """Alice's session on version 2 (the stand-in with the extra package), InService."""
    name = launch(world, "alice", "alice-extra", world["v2"])
    described = s.wait_app(world["sm"], world["domain"], "alice", name, ("InService", "Failed"))
    assert described["Status"] == "InService", described
    ext = s.extension(server)
    prog = s.progress(ext, world["domain"], "alice", name)
    return {"name": name, "described": described, "progress": prog, "ext": ext}


def test_session_answers_and_describes_as_modeled(world: dict[str, Any], alice: dict[str, Any]) -> None:
    d = alice["described"]
    assert d["AppArn"].endswith(f":app/{world['domain']}/alice/RSessionGateway/alice-extra")
    assert d["ResourceSpec"] == {
        "SageMakerImageArn": world["image_arn"],
        "SageMakerImageVersionArn": version_arn(world, world["v2"]),
        "InstanceType": "ml.t3.medium",
    }
    assert d["LastHealthCheckTimestamp"] and "FailureReason" not in d
    p = alice["progress"]
    # Reached on a Unix socket (rserver --www-socket), and opened by browsers through byoi's proxy.
    assert p["Phase"] == "ready" and p["Endpoint"].startswith("unix:") and p["Endpoint"].endswith("/rserver.sock")
    assert p["Url"].endswith(f"/sessions/{p['SessionId']}/") and p.get("HostPort") is None
    info = s.evaluate(
        p["Endpoint"], "jsonlite::toJSON(list(user = Sys.info()[['user']], uid = system('id -u', intern = TRUE)))"
    )
    assert "1000" in str(info)
    listed = world["sm"].list_apps(DomainIdEquals=world["domain"], UserProfileNameEquals="alice")["Apps"]
    assert [a["AppName"] for a in listed] == ["alice-extra"] and listed[0]["Status"] == "InService"


def test_r_sees_the_custom_image_package_and_the_domain_environment(
    alice: dict[str, Any], world: dict[str, Any]
) -> None:
    endpoint = alice["progress"]["Endpoint"]
    assert s.evaluate(endpoint, 'requireNamespace("byoitestpkg", quietly = TRUE)') is True
    assert s.evaluate(endpoint, "byoitestpkg::greeting()") == "hello from byoitestpkg"
    assert s.evaluate(endpoint, 'Sys.getenv("RSTUDIO_CONNECT_URL")') == s.CONNECT_URL
    assert s.evaluate(endpoint, 'Sys.getenv("BYOI_DOMAIN_ID")') == world["domain"]
    # R started the way RStudio starts rsessions, without the container's environment, reads Renviron.site:
    wanted = '"RSTUDIO_PACKAGE_MANAGER_URL", "BYOI_USER_PROFILE_NAME", "R_LIBS_SITE"'
    clean = s.evaluate(
        endpoint,
        "system2('env', c('-i', file.path(R.home('bin'), 'Rscript'), '-e', "
        f"shQuote('cat(Sys.getenv(c({wanted})), sep = \"|\")')), stdout = TRUE)",
    )
    pm, user, libs = str(clean).split("|")
    assert pm == s.PACKAGE_MANAGER_URL and user == "alice"
    assert "site-library" in libs  # the image's own Renviron.site lines are kept


def test_docker_inspect_shows_a_locked_down_container(alice: dict[str, Any], world: dict[str, Any]) -> None:
    p = alice["progress"]
    c = docker_client().api.inspect_container(p["ContainerName"])
    described = world["sm"].describe_image_version(ImageName=world["image"], Version=world["v2"])
    assert c["Config"]["Image"] == described["ContainerImage"] == p["ContainerImage"]  # pinned by digest
    assert "@sha256:" in c["Config"]["Image"]
    host = c["HostConfig"]
    assert host["NanoCpus"] == 2_000_000_000 and host["Memory"] == 4 << 30 and host["MemorySwap"] == 4 << 30
    assert host["PidsLimit"] == 4096
    assert c["Config"]["User"] == "1000:100"
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"] and host["Privileged"] is False
    # No port is published: RStudio is reached only through its socket, in a directory only byoi can traverse.
    # (8787 may be listed, from the image's EXPOSE, but bound to nothing)
    assert not host["PortBindings"] and not any(c["NetworkSettings"]["Ports"].values())
    assert c["Config"]["Labels"]["byoi.app-arn"] == alice["described"]["AppArn"]
    assert c["Config"]["Labels"]["byoi.managed"] == "true"
    mounts = {m["Destination"]: m for m in c["Mounts"]}
    home = mounts["/home/sagemaker-user"]
    assert home["Type"] == "bind" and home["RW"] is True
    cmd = c["Config"]["Entrypoint"] + c["Config"]["Cmd"]
    assert cmd[0] == "/usr/lib/rstudio-server/bin/rserver"
    assert f"--www-root-path=/sessions/{p['SessionId']}/" in cmd and "--auth-none=1" in cmd
    assert "--server-user=rstudio" in cmd  # the image's own user with UID 1000
    # The user cannot gain privileges inside: no capabilities at all, even for root-owned setuid binaries.
    caps = docker_client().containers.get(p["ContainerName"]).exec_run(["grep", "Cap", "/proc/self/status"]).output
    assert b"CapEff:\t0000000000000000" in caps


def test_home_survives_the_session_and_an_image_version_change(
    alice: dict[str, Any], world: dict[str, Any], server: ByoiServer
) -> None:
    sm, domain = world["sm"], world["domain"]
    endpoint = alice["progress"]["Endpoint"]
    assert s.evaluate(endpoint, "path.expand('~')") == "/home/sagemaker-user"
    s.evaluate(endpoint, "writeLines('kept across sessions', '~/notes.txt')")
    # Deleting the profile is refused while the session lives.
    with pytest.raises(ClientError) as err:
        sm.delete_user_profile(DomainId=domain, UserProfileName="alice")
    assert err.value.response["Error"]["Code"] == "ResourceInUse" and "alice-extra" in str(err.value)
    sm.delete_app(DomainId=domain, UserProfileName="alice", AppType="RSessionGateway", AppName="alice-extra")
    assert s.app_status(sm, domain, "alice", "alice-extra")["Status"] in ("Deleting", "Deleted")
    gone = s.wait_app(sm, domain, "alice", "alice-extra", ("Deleted",), timeout=60)
    assert gone["Status"] == "Deleted"
    assert not containers(name=alice["progress"]["ContainerName"])
    with pytest.raises(ClientError) as err:
        sm.delete_app(DomainId=domain, UserProfileName="alice", AppType="RSessionGateway", AppName="alice-extra")
    assert "already Deleted" in str(err.value)
    # Re-create the same app name (the record is reused) on version 1, which lacks the extra package.
    launch(world, "alice", "alice-extra", world["v1"])
    again = s.wait_app(sm, domain, "alice", "alice-extra", ("InService", "Failed"))
    assert again["Status"] == "InService", again
    assert again["AppArn"] == alice["described"]["AppArn"]
    assert again["ResourceSpec"]["SageMakerImageVersionArn"].endswith(f"/{world['v1']}")
    endpoint = s.progress(alice["ext"], domain, "alice", "alice-extra")["Endpoint"]
    assert s.evaluate(endpoint, "readLines('~/notes.txt')") == "kept across sessions"
    assert s.evaluate(endpoint, 'requireNamespace("byoitestpkg", quietly = TRUE)') is False
    homes = list((server.data_dir / "homes" / domain).iterdir())
    assert len(homes) == 1 and homes[0].stat().st_uid == 1000 and (homes[0] / "notes.txt").stat().st_uid == 1000


@pytest.fixture(scope="module")
def bob(world: dict[str, Any], alice: dict[str, Any]) -> dict[str, Any]:
    name = launch(world, "bob", "bob-plain", world["v1"])
    described = s.wait_app(world["sm"], world["domain"], "bob", name, ("InService", "Failed"))
    assert described["Status"] == "InService", described
    return {"name": name, "progress": s.progress(alice["ext"], world["domain"], "bob", name)}


def test_sessions_cannot_reach_each_other(alice: dict[str, Any], bob: dict[str, Any], world: dict[str, Any]) -> None:
    client = docker_client()
    alice_p = s.progress(alice["ext"], world["domain"], "alice", "alice-extra")
    assert alice_p["Status"] == "InService"
    bob_c = client.api.inspect_container(bob["progress"]["ContainerName"])
    bob_ip = next(iter(bob_c["NetworkSettings"]["Networks"].values()))["IPAddress"]
    gateway = next(iter(bob_c["NetworkSettings"]["Networks"].values()))["Gateway"]
    # A TCP connect from R inside a session, given up after 3 s (dropped packets never answer).
    probe = (
        "if (system2('timeout', c('3', 'bash', '-c', shQuote('exec 3<>/dev/tcp/{host}/{port}')), "
        "stdout = FALSE, stderr = FALSE) == 0) 'reached' else 'unreachable'"
    )
    # Bob's session listens on TCP 8787 as well (an R server of its own, like a Shiny app a user starts): rserver
    # itself listens only on its socket, so this gives Alice something to try to reach.
    assert s.evaluate(
        bob["progress"]["Endpoint"],
        "exists('tcp_probe_server') || { tcp_probe_server <- httpuv::startServer('0.0.0.0', 8787, "
        "list(call = function(req) list(status = 200L, headers = list(), body = 'bob'))); TRUE }",
    )
    # From inside Alice's session: Bob's container address, and the host's side of the bridge.
    assert s.evaluate(alice_p["Endpoint"], probe.format(host=bob_ip, port=8787)) == "unreachable"
    assert s.evaluate(alice_p["Endpoint"], probe.format(host=gateway, port=8787)) == "unreachable"
    # ...while Bob's session answers itself on that address (the probe can succeed).
    assert s.evaluate(bob["progress"]["Endpoint"], probe.format(host=bob_ip, port=8787)) == "reached"


def test_a_container_killed_from_outside_ends_failed(bob: dict[str, Any], world: dict[str, Any]) -> None:
    sm, domain = world["sm"], world["domain"]
    docker_client().containers.get(bob["progress"]["ContainerName"]).kill()
    failed = s.wait_app(sm, domain, "bob", "bob-plain", ("Failed",), timeout=30)
    assert "exit code 137" in failed["FailureReason"] and "killed" in failed["FailureReason"]
    assert not containers(name=bob["progress"]["ContainerName"])
    with pytest.raises(ClientError) as err:  # as on SageMaker, a Failed app cannot be deleted
        sm.delete_app(DomainId=domain, UserProfileName="bob", AppType="RSessionGateway", AppName="bob-plain")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    sm.delete_user_profile(DomainId=domain, UserProfileName="bob")  # Failed apps do not hold the profile


def test_launches_that_cannot_run_are_refused(world: dict[str, Any], registry: str) -> None:
    sm, domain = world["sm"], world["domain"]

    def refused(user: str = "alice", app_type: str = "RSessionGateway", name: str = "refused", **spec: Any) -> str:
        with pytest.raises(ClientError) as err:
            sm.create_app(DomainId=domain, UserProfileName=user, AppType=app_type, AppName=name, ResourceSpec=spec)
        return f"{err.value.response['Error']['Code']}: {err.value.response['Error']['Message']}"

    other_arn = sm.describe_image(ImageName=world["other"])["ImageArn"]
    message = refused(SageMakerImageArn=other_arn)
    assert message.startswith("ValidationException") and world["other"] in message and "not attached" in message
    assert "not supported" in refused(app_type="JupyterServer", SageMakerImageArn=world["image_arn"])
    message = refused(SageMakerImageArn=world["image_arn"], InstanceType="ml.m5.24xlarge")
    assert "ml.m5.24xlarge" in message and "96 vCPU" in message and "CPUs" in message
    assert "not offered" in refused(SageMakerImageArn=world["image_arn"], InstanceType="ml.g4dn.xlarge")
    assert "built-in" in refused()
    assert "does not exist" in refused(user="nobody", SageMakerImageArn=world["image_arn"])
    missing = version_arn(world, 99)
    assert refused(SageMakerImageArn=world["image_arn"], SageMakerImageVersionArn=missing).startswith(
        "ResourceNotFound"
    )
    # A version that is not CREATED (its tag never existed: CREATE_FAILED) cannot be launched.
    arn = sm.create_image_version(ImageName=world["image"], BaseImage=f"{registry}/sessions/missing:v9")
    number = int(arn["ImageVersionArn"].rsplit("/", 1)[1])
    deadline = time.monotonic() + 30
    while sm.describe_image_version(ImageName=world["image"], Version=number)["ImageVersionStatus"] == "CREATING":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    message = refused(SageMakerImageArn=world["image_arn"], SageMakerImageVersionArn=version_arn(world, number))
    assert "CREATE_FAILED" in message and "only CREATED versions" in message
    with pytest.raises(ClientError) as err:
        sm.describe_app(DomainId=domain, UserProfileName="alice", AppType="RSessionGateway", AppName="refused")
    assert err.value.response["Error"]["Code"] == "ResourceNotFound"


def test_rstudio_server_pro_is_a_record_of_domain_shared(world: dict[str, Any]) -> None:
    sm, domain = world["sm"], world["domain"]
    # Made with the domain (it has RStudio settings), as on SageMaker; a second one is refused.
    described = sm.describe_app(
        DomainId=domain, UserProfileName="domain-shared", AppType="RStudioServerPro", AppName="default"
    )
    assert described["AppArn"].endswith(f":app/{domain}/domain-shared/RStudioServerPro/default")
    assert described["Status"] == "InService" and described["ResourceSpec"] == {"InstanceType": "system"}
    with pytest.raises(ClientError) as err:
        sm.create_app(DomainId=domain, UserProfileName="domain-shared", AppType="RStudioServerPro", AppName="default")
    assert err.value.response["Error"]["Code"] == "ResourceInUse"
    with pytest.raises(ClientError) as err:
        sm.create_app(DomainId=domain, UserProfileName="alice", AppType="RStudioServerPro", AppName="default")
    assert "domain-shared" in str(err.value)
    listed = sm.list_apps(DomainIdEquals=domain, UserProfileNameEquals="domain-shared")["Apps"]
    assert [(a["AppType"], a["Status"]) for a in listed] == [("RStudioServerPro", "InService")]
    # The documented "delete and recreate RStudioServerPro" steps work.
    sm.delete_app(DomainId=domain, UserProfileName="domain-shared", AppType="RStudioServerPro", AppName="default")
    deadline = time.monotonic() + 20
    while s.app_status(sm, domain, "domain-shared", "default", "RStudioServerPro")["Status"] != "Deleted":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    sm.create_app(DomainId=domain, UserProfileName="domain-shared", AppType="RStudioServerPro", AppName="default")
    with pytest.raises(ClientError) as err:
        sm.delete_domain(DomainId=domain)
    assert err.value.response["Error"]["Code"] == "ResourceInUse"  # its user profiles; never the shared app
    assert "RStudioServerPro" not in err.value.response["Error"]["Message"]


def test_rserver_exiting_fails_the_launch_with_its_last_lines(world: dict[str, Any], registry: str) -> None:
    sm, domain = world["sm"], world["domain"]
    image = s.unique("exits")
    s.register(sm, registry, image, "rserver-exits", "v1")
    sm.update_user_profile(
        DomainId=domain,
        UserProfileName="alice",
        UserSettings={
            "RSessionAppSettings": {
                "CustomImages": [
                    {"ImageName": image, "AppImageConfigName": s.CONFIG},
                    {"ImageName": world["image"], "AppImageConfigName": s.CONFIG},
                ]
            }
        },
    )
    arn = sm.describe_image(ImageName=image)["ImageArn"]
    sm.create_app(
        DomainId=domain,
        UserProfileName="alice",
        AppType="RSessionGateway",
        AppName="exits",
        ResourceSpec={"SageMakerImageArn": arn},
    )
    failed = s.wait_app(sm, domain, "alice", "exits", ("Failed", "InService"), timeout=60)
    assert failed["Status"] == "Failed"
    reason = failed["FailureReason"]
    assert "exited with code 3" in reason and "database is on fire" in reason, reason
    logs = _ext_logs(world, "exits")
    assert logs["Source"] == "saved" and any("database is on fire" in line for line in logs["Lines"])


def _ext_logs(world: dict[str, Any], name: str) -> dict[str, Any]:
    from byoi.cli.client import extension_client

    ext = extension_client(world["sm"].meta.endpoint_url, "byoi")
    return ext.get_app_logs(DomainId=world["domain"], UserProfileName="alice", AppName=name)  # type: ignore[no-any-return]


def test_cli_launch_list_logs_stop(world: dict[str, Any], server: ByoiServer, registry: str) -> None:
    import subprocess

    from docker.errors import ImageNotFound

    client = docker_client()
    pinned = world["sm"].describe_image_version(ImageName=world["image"], Version=world["v1"])["ContainerImage"]
    # Drop the host's references to the pinned image, so the launch has to pull it from the registry.
    for ref in (pinned, f"{registry}/sessions/{world['image']}:v1"):
        try:
            client.images.remove(ref)
        except ImageNotFound:  # not every reference exists on every engine; any other failure is the test's
            pass
    with pytest.raises(ImageNotFound):  # so the digest found after the launch is one the launch pulled
        client.images.get(pinned)

    def byoi(*args: str) -> subprocess.CompletedProcess[str]:
        # In-process (tests/support/processes.py): the cold launch below runs `byoi launch` as a process.
        return byoi_cli(list(args), server.aws_env())

    dom = world["domain"]
    run = byoi("launch", "-d", dom, "-u", "alice", "--image", f"{world['image']}:{world['v1']}", "--name", "from-cli")
    assert run.returncode == 0, run.stdout + run.stderr
    assert regex.search(r"RStudio is ready at http://127\.0\.0\.1:\d+/sessions/[0-9a-f]{16}/", run.stdout), run.stdout
    assert "Only the session's owner gets in" in run.stdout
    assert client.images.get(pinned)  # pulled by digest
    listed = byoi("sessions", "list", "-d", dom, "-u", "alice", "-o", "json")
    assert '"AppName": "from-cli"' in listed.stdout and '"Status": "InService"' in listed.stdout
    described = byoi("sessions", "describe", "from-cli", "-d", dom, "-u", "alice")
    assert '"Phase": "ready"' in described.stdout and pinned in described.stdout
    logs = byoi("sessions", "logs", "from-cli", "-d", dom, "-u", "alice", "-n", "20")
    assert "listening on unix:/run/byoi-www/rserver.sock" in logs.stdout, logs.stdout + logs.stderr
    stopped = byoi("sessions", "stop", "from-cli", "-d", dom, "-u", "alice")
    assert stopped.returncode == 0 and "from-cli: Deleted" in stopped.stdout
    refused = byoi("launch", "-d", dom, "-u", "alice", "--image", world["other"])
    assert refused.returncode == 4 and "not attached" in refused.stderr and "Traceback" not in refused.stderr


NOISE_MIB = 6  # a layer no other image on the host has: what a cold launch must download
PULL_RATE = 1.5 * (1 << 20)  # bytes/s through the relay while the CLI launches: a pull of about 4 s to watch


@pytest.fixture(scope="module")
def relayed(world: dict[str, Any], server: ByoiServer, registry: str) -> Any:
    """A second domain (user erin) whose image `noisy` is registered through a Relay in front of the registry:
    version 1 is the stand-in plus NOISE_MIB MiB found on no other image on this host, version 2 the plain
    stand-in. The world's image is attached too."""
    sm = world["sm"]
    relay = s.Relay(int(registry.rsplit(":", 1)[1]))
    image = s.unique("noisy")
    repo = f"sessions/{image}"
    s.push_noise_image(registry, repo, "v1", NOISE_MIB)
    push_test_image("rstudio-standin", registry, repo, "v2")
    v1 = s.register_as(sm, image, f"{relay.host}/{repo}:v1")
    v2 = s.register_as(sm, image, f"{relay.host}/{repo}:v2", create=False)
    attached = [{"ImageName": n, "AppImageConfigName": s.CONFIG} for n in (image, world["image"])]
    domain = s.rstudio_domain(sm, attached)
    DOMAINS.append(domain)
    sm.create_user_profile(DomainId=domain, UserProfileName="erin")
    arn = sm.describe_image(ImageName=image)["ImageArn"]
    yield {
        "sm": sm,
        "ext": s.extension(server),
        "relay": relay,
        "domain": domain,
        "image": image,
        "arn": arn,
        "v1": v1,
        "v2": v2,
        "attached": attached,
    }
    relay.close()
    s.remove_sessions_of(server.data_dir, [domain])  # module teardown: the pulled image may still run a session
    client = docker_client()
    for img in client.images.list():
        if any(ref.startswith(relay.host + "/") for ref in (img.attrs.get("RepoDigests") or []) + img.tags):
            client.images.remove(img.id, force=True)


def test_a_cold_launch_records_pull_progress_and_the_cli_draws_the_bar(
    relayed: dict[str, Any], server: ByoiServer
) -> None:
    import docker.errors

    sm, ext, domain = relayed["sm"], relayed["ext"], relayed["domain"]
    client = docker_client()
    pinned = sm.describe_image_version(ImageName=relayed["image"], Version=relayed["v1"])["ContainerImage"]
    assert pinned.startswith(relayed["relay"].host + "/")
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(pinned)  # not on the host: the launch has to pull it
    relayed["relay"].rate = PULL_RATE
    command = [sys.executable, "-m", "byoi", "launch", "-d", domain, "-u", "erin"]
    command += ["--image", f"{relayed['image']}:{relayed['v1']}", "--name", "pulled"]
    seen: list[tuple[str, int, int]] = []
    with ThreadPoolExecutor(1) as pool:
        cli = pool.submit(s.run_in_terminal, command, server.aws_env(), 300)
        while not cli.done():
            try:
                p = s.progress(ext, domain, "erin", "pulled")
                seen.append((p["Phase"], p.get("BytesDone") or 0, p.get("BytesTotal") or 0))
            except ClientError:
                pass  # not created yet
            time.sleep(0.1)
        code, out = cli.result()
    relayed["relay"].rate = None
    assert code == 0, out
    # Seen while it pulled: the phase, and bytes moving towards the total.
    pulling = [(done, total) for phase, done, total in seen if phase == "pulling" and done > 0]
    assert pulling and all(0 < done <= total for done, total in pulling), seen
    assert len({done for done, _ in pulling}) > 1, f"the bytes never moved: {pulling}"
    # After it: the launch keeps what it pulled (all of the new layer, nothing of the layers the host had).
    final = s.progress(ext, domain, "erin", "pulled")
    assert final["Phase"] == "ready" and final["BytesDone"] == final["BytesTotal"] >= NOISE_MIB << 20, final
    assert client.images.get(pinned)
    # The CLI drew the pull bar (rich, on a terminal): its label and "done/total MB", then the address.
    assert "pulling image" in out and regex.search(r"[0-9.]+/[0-9.]+ MB", out), out
    assert regex.search(r"RStudio is ready at http://127\.0\.0\.1:\d+/sessions/[0-9a-f]{16}/", out), out


def test_a_container_removed_from_outside_ends_failed_as_gone(relayed: dict[str, Any]) -> None:
    sm, domain = relayed["sm"], relayed["domain"]
    p = s.progress(relayed["ext"], domain, "erin", "pulled")
    assert p["Status"] == "InService"
    docker_client().containers.get(p["ContainerName"]).remove(force=True)
    failed = s.wait_app(sm, domain, "erin", "pulled", ("Failed",), timeout=30)
    assert failed["FailureReason"].startswith("The session's container is gone"), failed["FailureReason"]
    assert s.progress(relayed["ext"], domain, "erin", "pulled")["Phase"] == "failed"
    assert not containers(name=p["ContainerName"])


def test_a_registry_that_went_away_fails_the_launch_naming_the_image(relayed: dict[str, Any]) -> None:
    sm, domain = relayed["sm"], relayed["domain"]
    pinned = sm.describe_image_version(ImageName=relayed["image"], Version=relayed["v2"])["ContainerImage"]
    relayed["relay"].close()  # the registry this version was registered from no longer answers
    version = relayed["arn"].replace(":image/", ":image-version/").lower() + f"/{relayed['v2']}"
    sm.create_app(
        DomainId=domain,
        UserProfileName="erin",
        AppType="RSessionGateway",
        AppName="unpullable",
        ResourceSpec={"SageMakerImageArn": relayed["arn"], "SageMakerImageVersionArn": version},
    )
    failed = s.wait_app(sm, domain, "erin", "unpullable", ("Failed", "InService"), timeout=120)
    assert failed["Status"] == "Failed"
    assert failed["FailureReason"].startswith(f"Cannot pull {pinned}: "), failed["FailureReason"]
    progress = s.progress(relayed["ext"], domain, "erin", "unpullable")
    assert progress["Phase"] == "failed" and not containers(name=progress["ContainerName"])


def test_the_image_is_chosen_by_alias_or_by_the_default_resource_spec(
    relayed: dict[str, Any], world: dict[str, Any]
) -> None:
    sm, domain, ext = relayed["sm"], relayed["domain"], relayed["ext"]
    v1_arn, v2_arn = version_arn(world, world["v1"]), version_arn(world, world["v2"])
    names: list[str] = []

    def resolved(name: str, **spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        sm.create_app(
            DomainId=domain, UserProfileName="erin", AppType="RSessionGateway", AppName=name, ResourceSpec=spec
        )
        names.append(name)
        described = s.app_status(sm, domain, "erin", name)
        sm.delete_app(DomainId=domain, UserProfileName="erin", AppType="RSessionGateway", AppName=name)
        return described["ResourceSpec"], s.progress(ext, domain, "erin", name)

    # An alias picks its version (not the newest CREATED one, version 2).
    sm.update_image_version(ImageName=world["image"], Version=world["v1"], AliasesToAdd=["1.0.0"])
    spec, _ = resolved("by-alias", SageMakerImageArn=world["image_arn"], SageMakerImageVersionAlias="1.0.0")
    assert spec == {
        "SageMakerImageArn": world["image_arn"],
        "SageMakerImageVersionArn": v1_arn,
        "SageMakerImageVersionAlias": "1.0.0",
        "InstanceType": "ml.t3.medium",
    }
    # No image given: the domain's DefaultResourceSpec, its instance type included.
    default = {"SageMakerImageArn": world["image_arn"], "SageMakerImageVersionArn": v1_arn}
    sm.update_domain(
        DomainId=domain,
        DefaultUserSettings={
            "RSessionAppSettings": {
                "CustomImages": relayed["attached"],
                "DefaultResourceSpec": {**default, "InstanceType": "ml.t3.small"},
            }
        },
    )
    spec, progress = resolved("domain-default")
    assert spec == {**default, "InstanceType": "ml.t3.small"}
    assert (progress["Vcpu"], progress["MemoryMiB"]) == (2, 2048)
    # The profile's DefaultResourceSpec wins over the domain's (an image without a version: the newest CREATED).
    sm.update_user_profile(
        DomainId=domain,
        UserProfileName="erin",
        UserSettings={
            "RSessionAppSettings": {
                "DefaultResourceSpec": {"SageMakerImageArn": world["image_arn"], "InstanceType": "ml.c5.large"}
            }
        },
    )
    spec, progress = resolved("profile-default")
    assert spec == {
        "SageMakerImageArn": world["image_arn"],
        "SageMakerImageVersionArn": v2_arn,
        "InstanceType": "ml.c5.large",
    }
    assert (progress["Vcpu"], progress["MemoryMiB"]) == (2, 4096)
    # An image given without an InstanceType still takes the default's type; a given type wins.
    spec, _ = resolved("type-default", SageMakerImageArn=world["image_arn"], SageMakerImageVersionArn=v1_arn)
    assert spec["InstanceType"] == "ml.c5.large" and spec["SageMakerImageVersionArn"] == v1_arn
    spec, _ = resolved("type-given", SageMakerImageArn=world["image_arn"], InstanceType="ml.t3.small")
    assert spec["InstanceType"] == "ml.t3.small"
    for name in names:
        s.wait_app(sm, domain, "erin", name, ("Deleted",), timeout=60)


def test_a_version_that_failed_inspection_cannot_be_launched(strict: ByoiServer, pusher: Any) -> None:
    """With the contract's default (strict) rules, an image without R or rserver fails inspection."""
    from tests.support.layers import Layer, base_files, push_image

    sm = strict.client()
    image = s.unique("no-rserver")
    push_image(pusher, f"sessions/{image}", "v1", [Layer().files(base_files())])
    sm.create_image(ImageName=image, RoleArn=s.ROLE)
    sm.create_image_version(ImageName=image, BaseImage=f"sessions/{image}:v1")
    deadline = time.monotonic() + 60
    while (d := sm.describe_image_version(ImageName=image, Version=1))["ImageVersionStatus"] == "CREATING":
        assert time.monotonic() < deadline, d
        time.sleep(0.2)
    assert d["ImageVersionStatus"] == "CREATE_FAILED" and "rserver does not exist" in d["FailureReason"], d
    s.ensure_config(sm)
    domain = s.rstudio_domain(sm, [{"ImageName": image, "AppImageConfigName": s.CONFIG}])
    sm.create_user_profile(DomainId=domain, UserProfileName="frank")
    with pytest.raises(ClientError) as err:
        sm.create_app(
            DomainId=domain,
            UserProfileName="frank",
            AppType="RSessionGateway",
            AppName="refused",
            ResourceSpec={"SageMakerImageArn": d["ImageArn"], "SageMakerImageVersionArn": d["ImageVersionArn"]},
        )
    error = err.value.response["Error"]
    assert error["Code"] == "ValidationException", error
    assert f"Version 1 of image {image} is CREATE_FAILED: Not compatible with RStudio" in error["Message"]
    assert "only CREATED versions can be launched" in error["Message"]
    with pytest.raises(ClientError) as err:
        s.app_status(sm, domain, "frank", "refused")
    assert err.value.response["Error"]["Code"] == "ResourceNotFound"


def test_homes_outlive_the_profile_and_go_with_the_domain_when_asked(world: dict[str, Any], server: ByoiServer) -> None:
    sm, domain = world["sm"], world["domain"]
    sm.delete_app(DomainId=domain, UserProfileName="alice", AppType="RSessionGateway", AppName="alice-extra")
    sm.delete_app(DomainId=domain, UserProfileName="domain-shared", AppType="RStudioServerPro", AppName="default")
    s.wait_app(sm, domain, "alice", "alice-extra", ("Deleted",), timeout=60)
    sm.delete_user_profile(DomainId=domain, UserProfileName="alice")  # its apps are Deleted or Failed now
    homes = server.data_dir / "homes" / domain
    deadline = time.monotonic() + 30
    while True:
        try:
            sm.delete_domain(DomainId=domain, RetentionPolicy={"HomeEfsFileSystem": "Delete"})
            break
        except ClientError as exc:  # the profile (or the RStudioServerPro app) may still be going
            assert exc.response["Error"]["Code"] == "ResourceInUse" and time.monotonic() < deadline, exc
            assert any(homes.iterdir())  # kept after the profile was deleted
            time.sleep(0.3)
    while homes.exists():
        assert time.monotonic() < deadline, "homes were not removed with the domain"
        time.sleep(0.2)
