"""`byoi server --runtime kubernetes` through its real doors: CreateApp with boto3 runs a session as a pod on an
emulated cluster, the test playing the kubelet; DescribeApp follows it to InService; the session proxy, signed in
with a presigned URL, reaches RStudio at the pod's Service; DeleteApp removes pod and Service and keeps the home.

The cluster is kmock's emulator (tests/support/kube.py), a TEST DOUBLE of the Kubernetes API server, on 127.0.0.1
in a thread of this process. RStudio is a TEST DOUBLE too: a small HTTP server on loopback that answers as rserver
does, which the Service is pointed at (the "cluster" assigns the Service's address, so the test does). The byoi
server, its store, the registry and the stand-in image it registers are real.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx2 as httpx
import pytest
from botocore.exceptions import ClientError

from byoi.build.kubernetes_job import CONTEXT_DIR, job_name
from byoi.runtime.kubernetes_spec import PORT_NAME
from tests.support import sessions as s
from tests.support.kube import NAMESPACE, EmulatedCluster, JobController, Kubelet, add_jobs, emulated_cluster
from tests.test_builds_bad_input import upload

pytestmark = [pytest.mark.slow, pytest.mark.docker]  # docker: the stand-in image is pushed from Docker Engine

T = TypeVar("T")


class ClusterThread:
    """The emulated cluster on an event loop of its own thread, driven from this (synchronous) test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._cm = emulated_cluster()
        self.cluster: EmulatedCluster = self.run(self._cm.__aenter__())
        self.kubelet = Kubelet(self.cluster)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def objects(self, plural: str, group_version: str = "v1") -> dict[str, dict[str, Any]]:
        async def read() -> dict[str, dict[str, Any]]:
            return self.cluster.objects(plural, group_version)

        return self.run(read())

    def wait_for(self, plural: str, timeout: float = 60) -> str:
        """The name of the first object of `plural` to appear."""
        deadline = time.monotonic() + timeout
        while not (found := self.objects(plural)):
            assert time.monotonic() < deadline, f"no {plural} were created"
            time.sleep(0.05)
        return next(iter(found))

    def close(self) -> None:
        self.run(self._cm.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class FakeRStudio(http.server.BaseHTTPRequestHandler):
    """Answers as rserver behind a root path would: the page, and what the proxy sent it."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = f"rstudio stand-in at {self.path} root={self.headers.get('X-RStudio-Root-Path')}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture
def cluster() -> Iterator[ClusterThread]:
    running = ClusterThread()
    yield running
    running.close()


@pytest.fixture
def rstudio() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeRStudio)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emulated\n"
        f"clusters:\n- name: emulated\n  cluster:\n    server: {server}\n"
        "users:\n- name: nobody\n  user: {}\n"
        "contexts:\n- name: emulated\n  context:\n    cluster: emulated\n    user: nobody\n"
        f"    namespace: {NAMESPACE}\n"
    )
    return path


def test_a_session_on_kubernetes_from_create_app_to_the_browser_and_deleted(
    server_factory, registry, shared_inspection, cluster, rstudio, tmp_path
):
    env = {
        **s.SESSION_ENV,
        "BYOI_SESSION_KUBE_CONFIG": str(kubeconfig(tmp_path / "kubeconfig", cluster.cluster.url)),
        "BYOI_SESSION_KUBE_NAMESPACE": NAMESPACE,
        "BYOI_SESSION_KUBE_NODE_CPUS": "8",  # byoi's Role is namespaced: it is told the node size
        "BYOI_SESSION_KUBE_NODE_MEMORY_GIB": "32",
    }
    srv = server_factory(
        [f"http://{registry}"], env=env, extra_args=["--runtime", "kubernetes"], inspection_config=shared_inspection
    )
    sm, ext = srv.client(), s.extension(srv)
    image = s.unique("kube")
    s.register(sm, registry, image, "rstudio-standin", "v1")
    s.ensure_config(sm)
    domain = s.rstudio_domain(sm, [{"ImageName": image, "AppImageConfigName": s.CONFIG}])
    sm.create_user_profile(DomainId=domain, UserProfileName="kim")
    ext.create_principal(Name=f"{domain}-kim", Role="user", DomainId=domain, UserProfileName="kim")
    with pytest.raises(ClientError) as too_big:  # 96 vCPU on nodes of 8: refused, saying what a node has
        sm.create_app(
            DomainId=domain,
            UserProfileName="kim",
            AppType="RSessionGateway",
            AppName="too-big",
            ResourceSpec={
                "SageMakerImageArn": sm.describe_image(ImageName=image)["ImageArn"],
                "InstanceType": "ml.m5.24xlarge",
            },
        )
    assert "but a node (BYOI_SESSION_KUBE_NODE_CPUS, _MEMORY_GIB) has 8 CPUs and 32.0 GiB" in str(too_big.value)
    sm.create_app(
        DomainId=domain,
        UserProfileName="kim",
        AppType="RSessionGateway",
        AppName="on-kube",
        ResourceSpec={"SageMakerImageArn": sm.describe_image(ImageName=image)["ImageArn"]},
    )

    # byoi makes the Service, the home claim and the pod; the test, as the cluster, gives the Service an address
    # (the fake RStudio's) and runs the pod.
    pod = cluster.wait_for("pods")
    sent = cluster.objects("pods")[pod]
    pinned = sm.describe_image_version(ImageName=image, Version=1)["ContainerImage"]
    container = sent["spec"]["containers"][0]
    assert container["image"] == pinned and "--www-port=8787" in container["args"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert sent["spec"]["securityContext"]["runAsNonRoot"] is True
    [claim] = cluster.objects("persistentvolumeclaims")
    assert s.app_status(sm, domain, "kim", "on-kube")["Status"] == "Pending"

    service = f"/api/v1/namespaces/{NAMESPACE}/services/{pod}"
    patch = {"spec": {"clusterIP": "127.0.0.1", "ports": [{"name": PORT_NAME, "port": rstudio, "targetPort": 8787}]}}
    patched = cluster.run(cluster.kubelet.http.patch(service, json=patch))
    assert patched.status == 200
    cluster.run(cluster.kubelet.event(pod, "Pulled", f'Container image "{pinned}" already present on machine'))
    cluster.run(cluster.kubelet.running(pod))
    described = s.wait_app(sm, domain, "kim", "on-kube", ("InService", "Failed"), timeout=60)
    assert described["Status"] == "InService", described

    health = httpx.get(srv.endpoint + "/healthz").json()["checks"]
    assert health["kubernetes"] == "ok" and "docker" not in health, health  # the sessions' runtime is the cluster

    # Through byoi's proxy, signed in as kim with a presigned URL: the request reaches the pod's Service.
    url = sm.create_presigned_domain_url(DomainId=domain, UserProfileName="kim")["AuthorizedUrl"]
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        signed_in = browser.get(srv.endpoint + "/auth/" + url.split("/auth/", 1)[1])
        assert signed_in.status_code == 303, signed_in.text
        session_url = s.progress(ext, domain, "kim", "on-kube")["Url"]
        page = browser.get(srv.endpoint + "/sessions/" + session_url.split("/sessions/", 1)[1])
    assert page.status_code == 200, page.text
    session_id = session_url.split("/sessions/", 1)[1].split("/", 1)[0]
    assert page.text == f"rstudio stand-in at / root=/sessions/{session_id}", page.text
    with httpx.Client(follow_redirects=False, timeout=30) as stranger:  # no sign-in: no way in
        refused = stranger.get(srv.endpoint + f"/sessions/{session_id}/", headers={"Accept": "text/html"})
    assert refused.status_code == 303 and "/auth/sign-in" in refused.headers["location"]

    # DeleteApp: the pod and its Service go (the test's kubelet has nothing to do: the emulator deletes at once),
    # the home claim stays for the next session.
    sm.delete_app(DomainId=domain, UserProfileName="kim", AppType="RSessionGateway", AppName="on-kube")
    s.wait_app(sm, domain, "kim", "on-kube", ("Deleted",), timeout=60)
    assert cluster.objects("pods") == {} and cluster.objects("services") == {}
    assert list(cluster.objects("persistentvolumeclaims")) == [claim]


def test_a_bad_runtime_setting_is_a_usage_error_naming_it(tmp_path):
    from typer.testing import CliRunner

    from byoi.cli.main import app

    result = CliRunner().invoke(
        app,
        ["server", "--data-dir", str(tmp_path), "--runtime", "kubernetes"],
        env={"BYOI_SESSION_KUBE_NODE_CPUS": "4"},
    )
    assert result.exit_code == 2, result.output
    assert "BYOI_SESSION_KUBE_NODE_MEMORY_GIB go together" in " ".join(result.output.replace("│", " ").split())
    result = CliRunner().invoke(app, ["server", "--data-dir", str(tmp_path), "--runtime", "podman"])
    assert result.exit_code == 2 and "BYOI_RUNTIME='podman' must be docker or kubernetes" in result.output


LONG_PATH = "deep/" + "/".join(["a-directory-with-a-long-name"] * 5) + "/data.txt"  # > 100 bytes: a PAX path
AWKWARD_NAMES = ["Dockerfile", LONG_PATH, "données/é.txt", "run.sh", "link-to-run"]


def awkward_context(dockerfile: bytes) -> bytes:
    """A context a ustar-only tar would mangle: a path over 100 bytes and a UTF-8 name (PAX headers), an
    executable, a symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in (
            ("Dockerfile", dockerfile, 0o644),
            (LONG_PATH, b"deep\n", 0o644),
            ("données/é.txt", "café\n".encode(), 0o644),
            ("run.sh", b"#!/bin/sh\necho hi\n", 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link-to-run")
        link.type, link.linkname = tarfile.SYMTYPE, "run.sh"
        tar.addfile(link)
    return buf.getvalue()


def fetch_as_the_init_container(container: dict[str, Any], tmp_path: Path) -> Path:
    """Run the fetch-context container's command as the kubelet would (`$$` back to `$`), with busybox's
    applets first on PATH; only the target directory differs (a temporary one, not /work/context)."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox is not installed: run scripts/install.sh"
    applets = tmp_path / "busybox-bin"
    applets.mkdir()
    for applet in ("sh", "wget", "tar"):
        (applets / applet).symlink_to(busybox)
    into = tmp_path / "work-context"
    into.mkdir()
    command = [arg.replace("$$", "$") for arg in container["command"]]
    assert command[:2] == ["sh", "-c"] and CONTEXT_DIR in command[2]
    command[2] = command[2].replace(CONTEXT_DIR, str(into))
    done = subprocess.run(
        [str(applets / "sh"), *command[1:]], env={"PATH": str(applets)}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return into


def tree(root: Path) -> dict[str, tuple[str, int | None, bytes | str]]:
    found: dict[str, tuple[str, int | None, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[name] = ("link", None, os.readlink(path))
        elif path.is_file():
            found[name] = ("file", path.stat().st_mode & 0o111, path.read_bytes())
    return found


def tree_of_tar(data: bytes) -> dict[str, tuple[str, int | None, bytes | str]]:
    found: dict[str, tuple[str, int | None, bytes | str]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            if info.issym():
                found[info.name] = ("link", None, info.linkname)
            elif info.isfile():
                found[info.name] = ("file", info.mode & 0o111, tar.extractfile(info).read())  # type: ignore[union-attr]
    return found


def test_a_build_on_kubernetes_from_start_image_build_to_succeeded(server_factory, registry, cluster, tmp_path):
    """`--builder kubernetes`: StartImageBuild makes a BuildKit Job; its init container's URL serves the checked
    context (only with its signature, only while the build runs); the Job's log becomes the build log; the digest
    BuildKit reports is the build's. The test is the Job controller and the kubelet (tests/support/kube.py)."""
    add_jobs(cluster.cluster)
    env = {
        "BYOI_BUILD_KUBE_CONFIG": str(kubeconfig(tmp_path / "kubeconfig", cluster.cluster.url)),
        "BYOI_BUILD_KUBE_NAMESPACE": NAMESPACE,
    }
    srv = server_factory([f"http://{registry}"], env=env, extra_args=["--builder", "kubernetes"])
    ext = s.extension(srv)
    dockerfile = b"FROM scratch\nCOPY data.txt /\n"
    context_id = upload(srv, awkward_context(dockerfile)).json()["ContextId"]
    build_id = ext.start_image_build(ContextId=context_id, Repository="kube/built", Tag="v1")["BuildId"]
    job = job_name(build_id)
    controller, kubelet = JobController(cluster.cluster), Kubelet(cluster.cluster)

    sent = cluster.run(controller.wait_for_job(job, timeout=30))
    [buildkit] = sent["spec"]["template"]["spec"]["containers"]
    # The registry is configured as http://: BuildKit is told to push to it over plain HTTP.
    assert f"type=image,name={registry}/kube/built:v1,push=true,registry.insecure=true" in buildkit["args"]
    [url] = [a for a in sent["spec"]["template"]["spec"]["initContainers"][0]["command"] if "/context.tar?" in a]
    assert url.startswith(f"{srv.endpoint}/byoi/builds/{build_id}/context.tar?expires=")
    fetched = httpx.get(url)  # what the init container fetches: the checked context, with no SigV4
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(fetched.content)) as tar:
        assert tar.getnames() == AWKWARD_NAMES and tar.extractfile("Dockerfile").read() == dockerfile
    # The init container's own command, run by busybox's sh, wget and tar (what the BuildKit image has): the
    # context arrives whole, PAX headers (a long path, a UTF-8 name) and all.
    fetched_into = fetch_as_the_init_container(sent["spec"]["template"]["spec"]["initContainers"][0], tmp_path)
    assert tree(fetched_into) == tree_of_tar(fetched.content)
    for bad in (url[:-1] + ("0" if url[-1] != "0" else "1"), url.replace("expires=", "expires=9")):
        assert httpx.get(bad).status_code == 403  # a changed signature, or a longer life than byoi gives
    other = url.replace(build_id, "b-" + "0" * 16)
    assert httpx.get(other).status_code == 403  # the signature is for this build only

    digest = "sha256:" + "ab" * 32
    log = [
        "#1 [internal] load build definition from Dockerfile",
        "#2 [1/1] COPY data.txt /",
        "#2 DONE 0.1s",
        f"#3 pushing manifest for {registry}/kube/built:v1@{digest}",
        "#3 DONE 0.2s",
    ]
    pod = cluster.run(controller.make_pod(job))
    kubelet.logs(pod, log)
    running = {"name": "buildkit", "ready": True, "restartCount": 0, "image": "x", "imageID": "x"}
    cluster.run(
        kubelet.status(
            pod,
            {
                "phase": "Running",
                "initContainerStatuses": [
                    {**running, "name": "fetch-context", "state": {"terminated": {"exitCode": 0}}}
                ],
                "containerStatuses": [{**running, "state": {"running": {"startedAt": "2026-12-01T18:00:00Z"}}}],
            },
        )
    )
    cluster.run(controller.finish(job, "Complete"))
    deadline = time.monotonic() + 30
    while (described := ext.describe_image_build(BuildId=build_id))["BuildStatus"] not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline, described
        time.sleep(0.2)
    assert described["BuildStatus"] == "SUCCEEDED", described
    assert described["ImageDigest"] == digest
    text = httpx.get(srv.endpoint + "/healthz").json()["checks"]
    assert text["kubernetes builds"] == "ok", text
    assert httpx.get(url).status_code == 404  # settled: the context is gone, and so is the URL's use
