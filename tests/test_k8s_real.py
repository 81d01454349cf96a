"""The Kubernetes backends on a REAL cluster: the scenarios of tests/test_kubernetes_runtime.py and
tests/test_kubernetes_builder.py (which run against kmock's emulator, a test double), with a real scheduler,
kubelet, container runtime, Job controller and BuildKit doing the work the emulator's tests play by hand.

    BYOI_TEST_KUBECONFIG=~/.kube/config BYOI_TEST_KUBE_IMAGE=REGISTRY/REPO@sha256:… \\
        .venv/bin/pytest -m k8s_real tests/test_k8s_real.py -rs

docs/kubernetes.md ("Tests") lists every variable: BYOI_TEST_KUBECONFIG (the cluster; without it every test
here is skipped, saying so), BYOI_TEST_KUBE_NAMESPACE, BYOI_TEST_KUBE_IMAGE (the RStudio Server stand-in of
tests/images/rstudio-standin, or any image meeting the RStudio image contract, pushed to a registry the
cluster's nodes pull from, pinned by digest) with BYOI_TEST_KUBE_IMAGE_USERNAME/_PASSWORD or
BYOI_TEST_KUBE_PULL_SECRETS, BYOI_TEST_KUBE_STORAGE_CLASS, BYOI_TEST_KUBE_NODE_CPUS/_MEMORY_GIB, BYOI_TEST_KUBECTL;
for builds BYOI_TEST_KUBE_BUILD_REPOSITORY (an HTTPS registry BuildKit pushes to) with
BYOI_TEST_KUBE_BUILD_USERNAME/_PASSWORD, BYOI_TEST_KUBE_BUILDKIT_IMAGE, BYOI_TEST_KUBE_BUILD_NAMESPACE and
BYOI_TEST_KUBE_CONTEXT_HOST; for the run through `byoi server` BYOI_TEST_KUBE_REACHES_SESSIONS.

How the test reaches a session's RStudio from outside the cluster. byoi's proxy dials the session Service's
ClusterIP, which a machine outside the cluster cannot route to, and the sessions' NetworkPolicy admits only byoi's
control-plane pods: the API server's service proxy (`…/services/NAME:http/proxy/`) is a connection from the API
server into the pod network, which that policy refuses on a cluster that enforces it. `kubectl port-forward`
is not: the kubelet connects inside the pod's own network namespace, which no NetworkPolicy filters. So "the
endpoint answers" is checked through `kubectl port-forward pod/NAME :8787` with the runtime's own `answers()`,
beside the kubelet's verdict (the pod's readinessProbe, a TCP check on 8787, makes it Ready: traffic from the
pod's node is always admitted). The run through `byoi server --runtime kubernetes`, whose proxy dials the
ClusterIP itself, needs the tests to run where that works (BYOI_TEST_KUBE_REACHES_SESSIONS=1: in a pod labelled
as byoi's control plane in the sessions' namespace, or on a node of a cluster that enforces no policy).

Each test has its own installation id (labels, NetworkPolicy) and domain (home claims) and removes everything
with its installation's label when it ends, passed or not. It is marked `k8s_real`, not `docker`: the CI guard
(tests/support/ci_guard.py) fails a CI run for skipped `docker` and `postgres` tests only, and no CI machine
has a cluster, so this skip is expected there.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import pytest_asyncio

from byoi.runtime.base import Endpoint, RuntimeFailure, StateKind
from byoi.runtime.instance_types import GiB, HostCapacity, InstanceTypeError, InstanceTypes
from byoi.runtime.spec import SECURE_COOKIE_KEY, PullProgress, SessionSpec

REPO = Path(__file__).resolve().parents[1]
RUN_IT = (
    "BYOI_TEST_KUBECONFIG=~/.kube/config BYOI_TEST_KUBE_IMAGE=REGISTRY/REPO@sha256:… "
    ".venv/bin/pytest -m k8s_real tests/test_k8s_real.py -rs"
)
SEE = "the variables are in docs/kubernetes.md, Tests"
NOT_CONFIGURED = (
    f"BYOI_TEST_KUBECONFIG is not set: the k8s_real suite runs against a real Kubernetes cluster only (none here). "
    f"With a kubeconfig and the RStudio stand-in pushed where the cluster pulls it, run: {RUN_IT} ({SEE})"
)

# Generous but bounded: a first pull of the 414 MB stand-in on a node, a claim provisioned, BuildKit's image.
SESSION_TIMEOUT = 900
BUILD_TIMEOUT = 1500
POD_START = 600.0  # the runtime's start_timeout: pull included
GONE = 180.0  # pods terminating, claims released by their provisioner
pytestmark = [pytest.mark.k8s_real, pytest.mark.timeout(SESSION_TIMEOUT)]

ACCOUNT = "000000000000"
FILES = {
    "/usr/lib/R/etc/Renviron.site": b"AWS_REGION='us-east-1'\n",
    "/etc/byoi/database.conf": b"provider=sqlite\ndirectory=/run/byoi/db\n",
}
_PINNED = re.compile(r"[^@\s]+@sha256:[0-9a-f]{64}")
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8787")


# -- what the cluster is, from the environment -------------------------------------------------------------------


def _auth(prefix: str) -> dict[str, str] | None:
    user = os.environ.get(f"{prefix}_USERNAME")
    return {"username": user, "password": os.environ.get(f"{prefix}_PASSWORD", "")} if user else None


@dataclass(frozen=True)
class RealCluster:
    kubeconfig: Path
    namespace: str
    image: str | None  # registry/repository@sha256:… meeting the RStudio image contract
    image_auth: dict[str, str] | None
    pull_secrets: tuple[str, ...]
    storage_class: str | None
    capacity: HostCapacity | None  # the largest node's allocatable when byoi may not list nodes
    kubectl: str | None
    buildkit_image: str
    build_namespace: str
    build_repository: str | None
    build_auth: dict[str, str] | None
    context_host: str | None  # host[:port] of this machine that the cluster's pods reach
    reaches_sessions: bool

    @property
    def image_registry(self) -> str:
        assert self.image is not None
        return self.image.split("/", 1)[0]

    def config(self) -> Any:
        from lightkube import KubeConfig

        return KubeConfig.from_file(self.kubeconfig)


def real_cluster() -> RealCluster:
    """The cluster the environment names; pytest.skip with the reason and the command when it names none."""
    raw = os.environ.get("BYOI_TEST_KUBECONFIG", "")
    if not raw:
        pytest.skip(NOT_CONFIGURED)
    kubeconfig = Path(raw).expanduser()
    if not kubeconfig.is_file():
        pytest.fail(f"BYOI_TEST_KUBECONFIG={raw!r} is not a file ({SEE})")
    from lightkube import KubeConfig

    context = KubeConfig.from_file(kubeconfig).get()
    namespace = os.environ.get("BYOI_TEST_KUBE_NAMESPACE") or (context.namespace if context else None) or "default"
    image = os.environ.get("BYOI_TEST_KUBE_IMAGE") or None
    if image and not _PINNED.fullmatch(image):
        pytest.fail(
            f"BYOI_TEST_KUBE_IMAGE={image!r} must be pinned by digest (REGISTRY/REPO@sha256:…), as byoi runs "
            "sessions: `docker push` prints the digest, `skopeo inspect --format '{{.Digest}}' docker://REF` too"
        )
    capacity = None
    cpus, memory = os.environ.get("BYOI_TEST_KUBE_NODE_CPUS"), os.environ.get("BYOI_TEST_KUBE_NODE_MEMORY_GIB")
    if cpus or memory:
        if not (cpus and memory):
            pytest.fail("BYOI_TEST_KUBE_NODE_CPUS and BYOI_TEST_KUBE_NODE_MEMORY_GIB go together")
        capacity = HostCapacity(int(cpus), int(float(memory) * GiB), "a node (BYOI_TEST_KUBE_NODE_CPUS, _MEMORY_GIB)")
    build_repository = os.environ.get("BYOI_TEST_KUBE_BUILD_REPOSITORY") or None
    build_auth = _auth("BYOI_TEST_KUBE_BUILD")
    if build_auth is None and build_repository and image and build_repository.split("/", 1)[0] == image.split("/")[0]:
        build_auth = _auth("BYOI_TEST_KUBE_IMAGE")  # the same registry: the same credentials
    return RealCluster(
        kubeconfig=kubeconfig,
        namespace=namespace,
        image=image,
        image_auth=_auth("BYOI_TEST_KUBE_IMAGE"),
        pull_secrets=tuple(s for s in os.environ.get("BYOI_TEST_KUBE_PULL_SECRETS", "").split(",") if s),
        storage_class=os.environ.get("BYOI_TEST_KUBE_STORAGE_CLASS") or None,
        capacity=capacity,
        kubectl=shutil.which(os.environ.get("BYOI_TEST_KUBECTL", "kubectl")),
        buildkit_image=os.environ.get("BYOI_TEST_KUBE_BUILDKIT_IMAGE") or "moby/buildkit:rootless",
        build_namespace=os.environ.get("BYOI_TEST_KUBE_BUILD_NAMESPACE") or namespace,
        build_repository=build_repository,
        build_auth=build_auth,
        context_host=os.environ.get("BYOI_TEST_KUBE_CONTEXT_HOST") or None,
        reaches_sessions=os.environ.get("BYOI_TEST_KUBE_REACHES_SESSIONS", "") in ("1", "true", "yes"),
    )


@pytest.fixture(scope="session")
def real() -> RealCluster:
    return real_cluster()


@pytest.fixture(scope="session")
def image(real: RealCluster) -> str:
    if real.image is None:
        pytest.skip(
            "BYOI_TEST_KUBECONFIG is set but BYOI_TEST_KUBE_IMAGE is not: push the RStudio stand-in "
            f"(tests/images/rstudio-standin) where the cluster pulls it and name it by digest ({SEE})"
        )
    return real.image


@pytest.fixture(scope="session")
def kubectl(real: RealCluster) -> str:
    if real.kubectl is None:
        pytest.skip("kubectl is not on PATH (or BYOI_TEST_KUBECTL names none): it port-forwards to the session pod")
    return real.kubectl


# -- the objects a test made, and their removal -------------------------------------------------------------------


async def _get(client: Any, res: Any, name: str, namespace: str) -> dict[str, Any] | None:
    from lightkube import ApiError

    try:
        return (await client.get(res, name, namespace=namespace)).to_dict()  # type: ignore[no-any-return]
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float, what: str, every: float = 1.0) -> Any:
    """The first truthy value of `check()`, polled every `every` s; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(every)


@dataclass
class Cluster:
    """One test's view of the real cluster: its installation id and domain, a lightkube client of its own."""

    real: RealCluster
    client: Any
    installation: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    domain: str = field(default_factory=lambda: "d-" + uuid.uuid4().hex[:12])

    @property
    def namespace(self) -> str:
        return self.real.namespace

    async def get(self, res: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return await _get(self.client, res, name, namespace or self.namespace)

    async def gone(self, res: Any, name: str, timeout: float = GONE, namespace: str | None = None) -> None:
        async def absent() -> bool:
            return await self.get(res, name, namespace) is None

        await eventually(absent, timeout, f"{res.__name__} {name} is still there")

    async def labelled(self, res: Any, namespace: str | None = None, **more: str) -> list[dict[str, Any]]:
        labels = {"byoi.installation": self.installation, **more}
        return [o.to_dict() async for o in self.client.list(res, namespace=namespace or self.namespace, labels=labels)]


async def remove_everything_of(client: Any, installation: str, namespaces: set[str]) -> list[str]:
    """Delete every object labelled with the installation (pods, Services, Secrets, claims, policy, Jobs); what
    could not be removed, as lines."""
    from lightkube import ApiError
    from lightkube.resources.batch_v1 import Job
    from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod, Secret, Service
    from lightkube.resources.networking_v1 import NetworkPolicy
    from lightkube.types import CascadeType

    labels = {"byoi.installation": installation}
    left: list[str] = []
    for namespace in sorted(namespaces):
        for res in (Job, Pod, Service, Secret, NetworkPolicy, PersistentVolumeClaim):
            try:
                names = [o.metadata.name async for o in client.list(res, namespace=namespace, labels=labels)]
            except ApiError as exc:
                left.append(f"list {res.__name__} in {namespace}: {exc.status.message}")
                continue
            for name in names:
                try:
                    if res is Job:
                        await client.delete(res, name, namespace=namespace, cascade=CascadeType.BACKGROUND)
                    elif res is Pod:
                        await client.delete(res, name, namespace=namespace, grace_period=0)
                    else:
                        await client.delete(res, name, namespace=namespace)
                except ApiError as exc:
                    if exc.status.code != 404:
                        left.append(f"delete {res.__name__} {namespace}/{name}: {exc.status.message}")
        deadline = time.monotonic() + GONE
        for res in (Pod, PersistentVolumeClaim):
            while True:
                there = [o.metadata.name async for o in client.list(res, namespace=namespace, labels=labels)]
                if not there:
                    break
                if time.monotonic() > deadline:
                    left.append(f"{res.__name__}s still there in {namespace}: {', '.join(there)}")
                    break
                await asyncio.sleep(2)
    return left


@pytest_asyncio.fixture()
async def cluster(real: RealCluster) -> AsyncIterator[Cluster]:
    from lightkube import AsyncClient

    client = AsyncClient(config=real.config(), namespace=real.namespace)
    found = Cluster(real, client)
    try:
        yield found
    finally:
        left = await remove_everything_of(client, found.installation, {real.namespace, real.build_namespace})
        await client.close()
        if left:
            warnings.warn(f"k8s_real cleanup of {found.installation}: " + "; ".join(left), stacklevel=1)


@pytest.fixture(scope="session")
def pull_secret_removed(real: RealCluster) -> Iterator[None]:
    """The runtime writes one pull Secret per registry (byoi-pull-…, no installation's): removed at the end."""
    yield
    if real.image is None or real.image_auth is None:
        return
    from lightkube import ApiError, Client
    from lightkube.resources.core_v1 import Secret

    from byoi.runtime.kubernetes_spec import pull_secret_name

    client = Client(config=real.config(), namespace=real.namespace)
    with contextlib.suppress(ApiError):
        client.delete(Secret, pull_secret_name(real.image_registry), namespace=real.namespace)


# -- sessions --------------------------------------------------------------------------------------------------------


def make_runtime(real: RealCluster, **kw: Any) -> Any:
    from byoi.runtime.kubernetes import KubernetesRuntime

    return KubernetesRuntime(
        real.namespace,
        real.config(),
        storage_class=real.storage_class,
        image_pull_secrets=real.pull_secrets,
        capacity=kw.pop("capacity", real.capacity),
        start_timeout=kw.pop("start_timeout", POD_START),
        **kw,
    )


@pytest_asyncio.fixture()
async def runtime(real: RealCluster, cluster: Cluster, pull_secret_removed: None) -> AsyncIterator[Any]:
    rt = make_runtime(real)
    try:
        yield rt
    finally:
        await rt.close()


def session(
    cluster: Cluster,
    image: str,
    session_id: str | None = None,
    generation: int = 1,
    **over: Any,
) -> SessionSpec:
    """A SessionSpec as services/app_launch.py builds one (session_files.labels and container_name), in the
    test's installation and domain."""
    sid = session_id or uuid.uuid4().hex[:16]
    arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:app/{cluster.domain}/alice/RSessionGateway/s-{sid[:8]}"
    spec = SessionSpec(
        name=f"byoi-{cluster.installation}-{sid}-{generation}",
        image=image,
        uid=1000,
        gid=100,
        user_name="rstudio",
        home_host_path=f"/var/lib/byoi/homes/{cluster.domain}/alice-200001",
        home_mount_path="/home/sagemaker-user",
        root_path=f"/sessions/{sid}/",
        nano_cpus=1_000_000_000,
        memory_bytes=2 * GiB,
        network="byoi-sessions",
        env={"AWS_REGION": "us-east-1"},
        labels={
            "byoi.managed": "true",
            "byoi.installation": cluster.installation,
            "byoi.app-arn": arn,
            "byoi.session-id": sid,
            "byoi.generation": str(generation),
            "byoi.domain-id": cluster.domain,
            "byoi.user-profile": "alice",
        },
        instance_type="ml.t3.small",
    )
    return replace(spec, **over)


async def launch(
    rt: Any, real: RealCluster, spec: SessionSpec, files: dict[str, bytes] | None = None
) -> list[PullProgress]:
    """What the launcher does (ensure_image, create with the files, start); the pull progress start() reported."""
    seen: list[PullProgress] = []

    async def report(progress: PullProgress) -> None:
        seen.append(progress)

    await rt.ensure_image(spec.image, real.image_auth, report)
    await rt.create(replace(spec, files=files or FILES))
    await rt.start(spec.name)
    return seen


@contextlib.contextmanager
def port_forward(kubectl: str, real: RealCluster, pod: str, timeout: float = 60) -> Iterator[int]:
    """`kubectl port-forward pod/POD :8787` on 127.0.0.1: the local port (see the module docstring for why)."""
    proc = subprocess.Popen(
        [kubectl, "--kubeconfig", str(real.kubeconfig), "-n", real.namespace, "port-forward", "--address",
         "127.0.0.1", f"pod/{pod}", ":8787"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: list[str] = []
    port: list[int] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if (m := _FORWARDING.search(line)) is not None and not port:
                port.append(int(m[1]))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        ready.wait(timeout)
        if not port:
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"kubectl port-forward to {pod} gave no port: {''.join(lines)}{err}")
        yield port[0]
    finally:
        proc.kill()
        proc.wait(10)


async def test_a_session_runs_on_the_cluster_and_answers(
    real: RealCluster, image: str, kubectl: str, cluster: Cluster, runtime: Any
) -> None:
    from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod, Secret, Service
    from lightkube.resources.networking_v1 import NetworkPolicy

    from byoi.runtime.kubernetes_spec import network_policy_name, object_name

    spec = session(cluster, image)
    pod_name = object_name(spec.name)
    progress = await launch(runtime, real, spec)
    assert (await runtime.state(spec.name)).running
    assert all(isinstance(p, PullProgress) for p in progress)  # "Pulled … Image size" when this node pulled

    # What the API server holds: the pinned image, the session user, a claim bound by the cluster's provisioner.
    pod = await cluster.get(Pod, pod_name)
    assert pod is not None
    [container] = pod["spec"]["containers"]
    assert container["image"] == image and container["securityContext"]["runAsUser"] == 1000
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    claim = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]

    async def bound() -> bool:
        found = await cluster.get(PersistentVolumeClaim, claim)
        return bool(found and (found.get("status") or {}).get("phase") == "Bound")

    await eventually(bound, GONE, f"the home claim {claim} is not Bound")
    assert await cluster.get(Secret, f"{pod_name}-files") is not None
    policy = await cluster.get(NetworkPolicy, network_policy_name(cluster.installation))
    assert policy is not None and policy["spec"]["policyTypes"] == ["Ingress"]

    # The kubelet's own verdict: the readinessProbe (TCP 8787) passes, so rserver listens.
    async def ready() -> bool:
        found = await cluster.get(Pod, pod_name) or {}
        conditions = (found.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    await eventually(ready, 120, f"the pod {pod_name} is not Ready")

    # The endpoint byoi's proxy would dial is the Service's ClusterIP, assigned by the cluster.
    endpoint = await runtime.endpoint(spec.name)
    service = await cluster.get(Service, pod_name)
    assert service is not None and endpoint == Endpoint(host=service["spec"]["clusterIP"], port=8787)

    # And RStudio answers HTTP, reached through the kubelet (kubectl port-forward), with the runtime's probe.
    with port_forward(kubectl, real, pod_name) as port:
        local = Endpoint(host="127.0.0.1", port=port)
        assert await eventually(lambda: runtime.answers(spec.name, spec.root_path, 5.0, local), 60, "no answer")
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            answer = await http.get(f"http://127.0.0.1:{port}/", headers={"X-RStudio-Root-Path": "/sessions/x"})
        assert answer.status_code < 500, answer.text

    managed = await runtime.list_managed({"byoi.installation": cluster.installation})
    assert [(m.name, m.running) for m in managed] == [(spec.name, True)]


async def test_a_digest_that_does_not_exist_fails_with_the_kubelets_pull_error(
    real: RealCluster, image: str, cluster: Cluster, runtime: Any
) -> None:
    from lightkube.resources.core_v1 import Pod

    from byoi.runtime.kubernetes_spec import object_name

    absent = image.split("@", 1)[0] + "@sha256:" + "0" * 64
    spec = session(cluster, absent)
    with pytest.raises(RuntimeFailure) as err:
        await launch(runtime, real, spec)
    reason = str(err.value)
    assert reason.startswith(("ErrImagePull: ", "ImagePullBackOff: ")), reason
    pod = await cluster.get(Pod, object_name(spec.name))
    assert pod is not None and (await runtime.state(spec.name)).kind is StateKind.CREATED
    await runtime.remove(spec.name, 0)
    assert (await runtime.state(spec.name)).gone


async def test_an_instance_type_bigger_than_any_node_is_unschedulable_naming_the_resource(
    real: RealCluster, image: str, cluster: Cluster, runtime: Any
) -> None:
    """The runtime's own node size (the largest node's allocatable, or the configured one) refuses the type, as
    CreateApp would; a pod asking for it anyway (a node that left since) is refused by the real scheduler."""
    try:
        capacity = await runtime.capacity()
    except RuntimeFailure as exc:
        pytest.skip(f"the runtime cannot list nodes ({exc}): set BYOI_TEST_KUBE_NODE_CPUS and _MEMORY_GIB")
    types = InstanceTypes()
    too_big = [
        (name, vcpu, mem)
        for name, (vcpu, mem) in sorted(types.table.items(), key=lambda t: t[1])
        if vcpu > capacity.cpus or mem * GiB > capacity.memory_bytes
    ]
    if not too_big:
        pytest.skip(f"every instance type fits the largest node ({capacity.cpus} CPUs)")
    name, vcpu, mem = too_big[-1]
    with pytest.raises(InstanceTypeError, match=f"{name} needs"):
        types.get(name, capacity)
    spec = session(cluster, image, nano_cpus=int(vcpu * 1e9), memory_bytes=int(mem * GiB), instance_type=name)
    with pytest.raises(RuntimeFailure) as err:
        await launch(runtime, real, spec)
    reason = str(err.value)
    assert reason.startswith("Unschedulable: no node has enough "), reason
    assert "cpu" in reason.split("(", 1)[0] or "memory" in reason.split("(", 1)[0], reason
    await runtime.remove(spec.name, 0)


async def test_an_rserver_that_exits_gives_its_code_and_last_log_lines(
    real: RealCluster, image: str, cluster: Cluster, runtime: Any
) -> None:
    """rserver refuses a secure-cookie key shorter than 32 characters and exits 1 (the real one says the same):
    a key file of byoi's files Secret, mounted over the one it would create, makes it do so at start."""
    spec = session(cluster, image)
    await launch(runtime, real, spec, {**FILES, SECURE_COOKIE_KEY: b"too-short"})

    async def exited() -> Any:
        state = await runtime.state(spec.name)
        return state if state.kind is StateKind.EXITED else None

    state = await eventually(exited, 120, "the session's container did not exit")
    assert state.exit_code == 1, state
    lines = await runtime.logs_tail(spec.name, 20)
    assert any("not strong enough" in line for line in lines), lines
    assert not any(m.running for m in await runtime.list_managed({"byoi.installation": cluster.installation}))


async def test_a_new_runtime_adopts_the_running_session(
    real: RealCluster, image: str, kubectl: str, cluster: Cluster, runtime: Any
) -> None:
    from byoi.runtime.kubernetes_spec import object_name

    spec = session(cluster, image)
    await launch(runtime, real, spec)
    await runtime.close()  # the server stopped: nothing in memory any more

    restarted = make_runtime(real)
    try:
        [adopted] = await restarted.list_managed({"byoi.installation": cluster.installation})
        assert adopted.name == spec.name and adopted.running and adopted.created_at > 0
        assert adopted.labels["byoi.app-arn"] == spec.labels["byoi.app-arn"]  # the annotation's whole ARN
        assert (await restarted.state(spec.name)).running
        assert await restarted.endpoint(spec.name) is not None
        with port_forward(kubectl, real, object_name(spec.name)) as port:
            local = Endpoint(host="127.0.0.1", port=port)
            assert await eventually(lambda: restarted.answers(spec.name, spec.root_path, 5.0, local), 60, "no answer")
        await restarted.remove(spec.name, 1)
        assert (await restarted.state(spec.name)).gone
    finally:
        await restarted.close()


async def test_orphans_with_the_installations_labels_are_found_and_removed_keeping_the_home(
    real: RealCluster, image: str, cluster: Cluster, runtime: Any
) -> None:
    """As the reconciler does for sessions no app claims: a running pod, and a session created but never started
    (its Service, no pod), found by the installation's label and removed; the home claim stays."""
    from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod, Service

    running, half = session(cluster, image), session(cluster, image)
    await launch(runtime, real, running)
    await runtime.create(half)
    managed = {m.name: m for m in await runtime.list_managed({"byoi.installation": cluster.installation})}
    assert set(managed) == {running.name, half.name}
    assert managed[running.name].running and not managed[half.name].running
    for name in managed:
        await runtime.remove(name, 1)
    assert await runtime.list_managed({"byoi.installation": cluster.installation}) == []
    assert await cluster.labelled(Pod) == [] and await cluster.labelled(Service) == []
    assert len(await cluster.labelled(PersistentVolumeClaim)) == 1  # one profile, one home: it persists


async def test_deletion_removes_pod_service_and_files_and_the_home_goes_with_the_domain(
    real: RealCluster, image: str, cluster: Cluster, runtime: Any
) -> None:
    """remove(): the pod (grace period as given), its Service and files Secret; the home claim and the
    installation's NetworkPolicy stay (a new session of the profile mounts the same claim). The claim goes with
    the domain (remove_domain_homes, DeleteDomain with RetentionPolicy Delete); the policy is the installation's
    and byoi never deletes it (the test's cleanup does)."""
    from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod, Secret, Service
    from lightkube.resources.networking_v1 import NetworkPolicy

    from byoi.runtime.kubernetes_spec import network_policy_name, object_name

    sid = uuid.uuid4().hex[:16]
    first = session(cluster, image, sid)
    await launch(runtime, real, first)
    obj = object_name(first.name)
    claim = (await cluster.get(Pod, obj) or {})["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    await runtime.remove(first.name, 1)  # returns once the pod is gone
    assert await cluster.get(Pod, obj) is None and await cluster.get(Service, obj) is None
    assert await cluster.get(Secret, f"{obj}-files") is None
    assert (await runtime.state(first.name)).gone and await runtime.endpoint(first.name) is None
    assert await runtime.logs_tail(first.name) == []
    await runtime.remove(first.name, 0)  # not there: fine
    assert await cluster.get(PersistentVolumeClaim, claim) is not None
    assert await cluster.get(NetworkPolicy, network_policy_name(cluster.installation)) is not None

    second = session(cluster, image, sid, generation=2)
    await launch(runtime, real, second)
    pod = await cluster.get(Pod, object_name(second.name)) or {}
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": claim}
    await runtime.remove(second.name, 1)
    await runtime.remove_domain_homes(cluster.domain)
    await cluster.gone(PersistentVolumeClaim, claim)


# -- builds ----------------------------------------------------------------------------------------------------------


class ContextServer:
    """Serves build contexts to the cluster's pods (what byoi's signed context URL does), on 0.0.0.0 at the port
    of BYOI_TEST_KUBE_CONTEXT_HOST (or any free one). A context marked `hold` is sent in part and then held open,
    so its build's pod stays in its fetch step until the test lets it go."""

    def __init__(self, host: str) -> None:
        name, _, port = host.partition(":")
        self.contexts: dict[str, bytes] = {}
        self.held: set[str] = set()
        self.release = threading.Event()
        self.fetched: list[str] = []
        self.token = secrets.token_hex(8)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                build_id = self.path.strip("/").split("/")[-2] if self.path.count("/") >= 3 else ""
                body = outer.contexts.get(build_id)
                if body is None or f"/{outer.token}/" not in self.path:
                    self.send_error(404)
                    return
                outer.fetched.append(build_id)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if build_id in outer.held:
                    self.wfile.write(body[:512])
                    self.wfile.flush()
                    outer.release.wait(BUILD_TIMEOUT)
                    return
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", int(port or 0)), Handler)  # noqa: S104 - pods
        self.base = f"http://{name}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, build_id: str) -> str:
        return f"{self.base}/{self.token}/builds/{build_id}/context.tar"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def build_target(real: RealCluster) -> str:
    if real.build_repository is None or real.context_host is None:
        pytest.skip(
            "builds need BYOI_TEST_KUBE_BUILD_REPOSITORY (an HTTPS registry BuildKit pushes to) and "
            f"BYOI_TEST_KUBE_CONTEXT_HOST (this machine's address as the cluster's pods reach it) ({SEE})"
        )
    return real.build_repository


@pytest.fixture()
def contexts(real: RealCluster, build_target: str) -> Iterator[ContextServer]:
    assert real.context_host is not None
    served = ContextServer(real.context_host)
    yield served
    served.close()


@pytest_asyncio.fixture()
async def builder(real: RealCluster, cluster: Cluster, contexts: ContextServer) -> AsyncIterator[Any]:
    from byoi.build.kubernetes import KubernetesBuilder

    b = KubernetesBuilder(
        real.build_namespace,
        real.config(),
        installation=cluster.installation,
        context_url=contexts.url,
        image=real.buildkit_image,
        active_deadline=BUILD_TIMEOUT - 300,
        start_timeout=POD_START,
    )
    try:
        yield b
    finally:
        await b.close()


def build_request(tmp_path: Path, contexts: ContextServer, repository: str, auth: dict[str, str] | None) -> Any:
    from byoi.build.base import BuildRequest, PushRequest

    build_id = "b-" + uuid.uuid4().hex[:16]
    folder = tmp_path / build_id
    folder.mkdir()
    dockerfile = b"FROM scratch\nCOPY data.txt /\n"
    data = f"k8s_real {build_id}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in (("Dockerfile", dockerfile), ("data.txt", data)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o644
            tar.addfile(info, io.BytesIO(body))
    (folder / "context.tar").write_bytes(buf.getvalue())
    contexts.contexts[build_id] = buf.getvalue()
    tag = f"k8s-real-{build_id[2:10]}"
    return BuildRequest(
        context_tar=folder / "context.tar", build_id=build_id, push_to=PushRequest("", repository, tag, auth)
    )


@pytest.mark.timeout(BUILD_TIMEOUT)
async def test_a_build_job_succeeds_and_returns_the_digest_it_pushed(
    real: RealCluster, build_target: str, cluster: Cluster, contexts: ContextServer, builder: Any, tmp_path: Path
) -> None:
    from lightkube.resources.batch_v1 import Job
    from lightkube.resources.core_v1 import Secret

    from byoi.build.base import PushRequest
    from byoi.build.kubernetes_job import job_name, secret_name
    from byoi.config import RegistryConfig
    from byoi.registry.client import RegistryClient

    await builder.ping()
    req = build_request(tmp_path, contexts, build_target, real.build_auth)
    events: list[dict[str, Any]] = []
    digest = await builder.build(req, events.append)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), digest
    assert req.build_id in contexts.fetched  # the init container fetched the context from the URL
    steps = [e["m"] for e in events if e["k"] == "step"]
    assert "[1/1] COPY data.txt /" in steps, events
    assert any(e["k"] == "log" and "pushing manifest for" in e["m"] for e in events), events
    # The credentials are gone with the build; the Job stays, Complete, for its TTL.
    assert await cluster.get(Secret, secret_name(req.build_id), real.build_namespace) is None
    job = await cluster.get(Job, job_name(req.build_id), real.build_namespace)
    assert job is not None and any(
        c.get("type") == "Complete" and c.get("status") == "True" for c in job["status"].get("conditions") or []
    )
    pushed = PushRequest(digest, req.push_to.repository, req.push_to.tag, None)
    assert await builder.push(pushed, events.append) == digest  # BuildKit pushed while it built: not again
    # The registry has it: the tag names the digest BuildKit reported.
    host, repository = build_target.split("/", 1)
    auth = real.build_auth or {}
    registry = RegistryClient(
        [RegistryConfig(f"https://{host}", auth.get("username"), auth.get("password"))], timeout=30
    )
    try:
        found, _, _ = await registry.get_manifest(host, repository, req.push_to.tag)
    finally:
        await registry.close()
    assert found == digest


@pytest.mark.timeout(BUILD_TIMEOUT)
async def test_cancelling_a_running_build_deletes_its_job_pod_and_secret(
    real: RealCluster, build_target: str, cluster: Cluster, contexts: ContextServer, builder: Any, tmp_path: Path
) -> None:
    from lightkube.resources.batch_v1 import Job
    from lightkube.resources.core_v1 import Pod, Secret

    from byoi.build.kubernetes_job import BUILD_LABEL, job_name, secret_name

    req = build_request(tmp_path, contexts, build_target, real.build_auth)
    contexts.held.add(req.build_id)  # its pod stays in the fetch step
    task = asyncio.create_task(builder.build(req, lambda e: None))
    ns = real.build_namespace

    async def fetching() -> bool:
        assert not task.done(), task.exception() if not task.cancelled() else "cancelled"
        return req.build_id in contexts.fetched

    await eventually(fetching, POD_START, "the build's pod never fetched its context")
    pods = await cluster.labelled(Pod, ns, **{BUILD_LABEL: req.build_id})
    assert len(pods) == 1 and await cluster.get(Secret, secret_name(req.build_id), ns) is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await cluster.get(Secret, secret_name(req.build_id), ns) is None
    await cluster.gone(Job, job_name(req.build_id), namespace=ns)
    await cluster.gone(Pod, pods[0]["metadata"]["name"], namespace=ns)
    contexts.release.set()


# -- through byoi server ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(2 * SESSION_TIMEOUT)
def test_a_session_through_byoi_server_on_the_real_cluster(
    real: RealCluster, image: str, server_factory: Any, tmp_path: Path
) -> None:
    """`byoi server --runtime kubernetes` (a real process, SQLite) on the real cluster: the version registered from
    the registry, CreateApp to InService, the proxy reaching RStudio, DeleteApp removing pod and Service and keeping
    the home. Its proxy dials the session Service's ClusterIP, so it runs only where that works."""
    if not real.reaches_sessions:
        pytest.skip(
            "BYOI_TEST_KUBE_REACHES_SESSIONS is not 1: byoi's proxy dials the session Service's ClusterIP, which "
            "only a pod the sessions' NetworkPolicy admits (or a node, without policies) reaches; run the suite "
            f"there to include this test ({SEE})"
        )
    from tests.support import sessions as s

    registries = tmp_path / "registries.toml"
    auth = real.image_auth or {}
    url = os.environ.get("BYOI_TEST_KUBE_REGISTRY_URL") or f"https://{real.image_registry}"
    lines = ["[[registry]]", f'url = "{url}"']
    if auth:
        lines += [f'username = "{auth["username"]}"', f'password = "{auth["password"]}"']
    registries.write_text("\n".join(lines) + "\n")
    env = {
        **s.SESSION_ENV,
        "BYOI_SESSION_START_TIMEOUT": "300",
        "BYOI_SESSION_KUBE_CONFIG": str(real.kubeconfig),
        "BYOI_SESSION_KUBE_NAMESPACE": real.namespace,
        "BYOI_SESSION_KUBE_START_TIMEOUT": str(int(POD_START)),
        "BYOI_REGISTRIES_FILE": str(registries),
    }
    if real.capacity is not None:
        env["BYOI_SESSION_KUBE_NODE_CPUS"] = str(real.capacity.cpus)
        env["BYOI_SESSION_KUBE_NODE_MEMORY_GIB"] = str(real.capacity.memory_bytes / GiB)
    if real.storage_class:
        env["BYOI_SESSION_KUBE_STORAGE_CLASS"] = real.storage_class
    if real.pull_secrets:
        env["BYOI_SESSION_KUBE_PULL_SECRETS"] = ",".join(real.pull_secrets)
    srv = server_factory([], env=env, extra_args=["--runtime", "kubernetes"])
    installation = s.installation_of(srv.data_dir)
    try:
        sm, ext = srv.client(), s.extension(srv)
        name = s.unique("kube-real")
        sm.create_image(ImageName=name, RoleArn=s.ROLE)
        sm.create_image_version(ImageName=name, BaseImage=image)
        deadline = time.monotonic() + SESSION_TIMEOUT / 2
        while (version := sm.describe_image_version(ImageName=name))["ImageVersionStatus"] == "CREATING":
            assert time.monotonic() < deadline, version
            time.sleep(1)
        assert version["ImageVersionStatus"] == "CREATED", version
        s.ensure_config(sm)
        domain = s.rstudio_domain(sm, [{"ImageName": name, "AppImageConfigName": s.CONFIG}])
        sm.create_user_profile(DomainId=domain, UserProfileName="kim")
        ext.create_principal(Name=f"{domain}-kim", Role="user", DomainId=domain, UserProfileName="kim")
        app = dict(DomainId=domain, UserProfileName="kim", AppType="RSessionGateway", AppName="on-kube")
        sm.create_app(**app, ResourceSpec={"SageMakerImageArn": sm.describe_image(ImageName=name)["ImageArn"]})
        described = s.wait_app(sm, domain, "kim", "on-kube", ("InService", "Failed"), timeout=SESSION_TIMEOUT / 2)
        assert described["Status"] == "InService", described
        assert httpx.get(srv.endpoint + "/healthz").json()["checks"]["kubernetes"] == "ok"

        presigned = sm.create_presigned_domain_url(DomainId=domain, UserProfileName="kim")["AuthorizedUrl"]
        with httpx.Client(follow_redirects=False, timeout=30) as browser:
            signed_in = browser.get(srv.endpoint + "/auth/" + presigned.split("/auth/", 1)[1])
            assert signed_in.status_code == 303, signed_in.text
            session_url = s.progress(ext, domain, "kim", "on-kube")["Url"]
            page = browser.get(srv.endpoint + "/sessions/" + session_url.split("/sessions/", 1)[1])
        assert page.status_code < 400, page.text  # RStudio's answer, through byoi's proxy

        sm.delete_app(**app)
        s.wait_app(sm, domain, "kim", "on-kube", ("Deleted",), timeout=300)
        left = asyncio.run(_objects_of(real, installation))
        assert left["pods"] == [] and left["services"] == [], left
        assert len(left["claims"]) == 1, left  # the home stays for kim's next session
    finally:
        srv.stop()
        if installation:
            asyncio.run(_cleanup(real, installation))


async def _objects_of(real: RealCluster, installation: str) -> dict[str, list[str]]:
    from lightkube import AsyncClient
    from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod, Service

    client = AsyncClient(config=real.config(), namespace=real.namespace)
    labels = {"byoi.installation": installation}
    try:
        return {
            key: [o.metadata.name async for o in client.list(res, namespace=real.namespace, labels=labels)]
            for key, res in (("pods", Pod), ("services", Service), ("claims", PersistentVolumeClaim))
        }
    finally:
        await client.close()


async def _cleanup(real: RealCluster, installation: str) -> None:
    from lightkube import AsyncClient

    client = AsyncClient(config=real.config(), namespace=real.namespace)
    try:
        left = await remove_everything_of(client, installation, {real.namespace})
    finally:
        await client.close()
    if left:
        warnings.warn(f"k8s_real cleanup of {installation}: " + "; ".join(left), stacklevel=1)
