"""The Kubernetes session runtime (runtime/kubernetes.py) through lightkube against kmock's Kubernetes API
emulator, a TEST DOUBLE served over real HTTP on 127.0.0.1 (tests/support/kube.py): the test plays the
scheduler and the kubelet, writing pod statuses and events through the API the way they would. Launch to
running and answering, each failure reason, adoption after a restart, orphan removal, deletion."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio

from byoi.runtime.base import Endpoint, RuntimeFailure, SessionRuntime, StateKind, Unreachable
from byoi.runtime.instance_types import GiB, HostCapacity, InstanceTypes
from byoi.runtime.kubernetes import KubernetesRuntime, pod_state
from byoi.runtime.kubernetes_spec import file_key, make_pod, pull_secret_name
from byoi.runtime.spec import PullProgress, SessionSpec
from tests.support.kube import NAMESPACE, EmulatedCluster, Kubelet, emulated_cluster

pytestmark = pytest.mark.timeout(30)

INSTALLATION = "0123456789abcdef"
IMAGE = "registry.test:5000/team/rstudio@sha256:" + "cd" * 32
ARN = "arn:aws:sagemaker:us-east-1:000000000000:app/d-abc123/alice/RSessionGateway/default"
FILES = {
    "/usr/lib/R/etc/Renviron.site": b"AWS_REGION='us-east-1'\n",
    "/etc/byoi/database.conf": b"provider=sqlite\ndirectory=/run/byoi/db\n",
}


def session(session_id: str = "fedcba9876543210", generation: int = 1, installation: str = INSTALLATION) -> SessionSpec:
    """A SessionSpec as services/app_launch.py builds it (session_files.labels and container_name)."""
    return SessionSpec(
        name=f"byoi-{installation}-{session_id}-{generation}",
        image=IMAGE,
        uid=1000,
        gid=100,
        user_name="rstudio",
        home_host_path="/var/lib/byoi/homes/d-abc123/alice-200001",
        home_mount_path="/home/sagemaker-user",
        root_path=f"/sessions/{session_id}/",
        nano_cpus=2_000_000_000,
        memory_bytes=4 * GiB,
        network="byoi-sessions",
        env={"AWS_REGION": "us-east-1"},
        labels={
            "byoi.managed": "true",
            "byoi.installation": installation,
            "byoi.app-arn": ARN,
            "byoi.session-id": session_id,
            "byoi.generation": str(generation),
            "byoi.domain-id": "d-abc123",
            "byoi.user-profile": "alice",
        },
    )


def make_runtime(cluster: EmulatedCluster, **kw: Any) -> KubernetesRuntime:
    return KubernetesRuntime(
        NAMESPACE, cluster.config(), trust_env=False, start_timeout=kw.pop("start_timeout", 5), **kw
    )


@pytest_asyncio.fixture()
async def cluster() -> AsyncIterator[EmulatedCluster]:
    async with emulated_cluster() as found:
        yield found


@pytest_asyncio.fixture()
async def runtime(cluster: EmulatedCluster) -> AsyncIterator[KubernetesRuntime]:
    rt = make_runtime(cluster)
    yield rt
    await rt.close()


@pytest.fixture()
def kubelet(cluster: EmulatedCluster) -> Kubelet:
    return Kubelet(cluster)


async def created(rt: KubernetesRuntime, spec: SessionSpec) -> None:
    await rt.create(spec if spec.files else replace(spec, files=FILES))


async def launched(rt: KubernetesRuntime, kubelet: Kubelet, spec: SessionSpec) -> None:
    """Create (with the files), start, with the kubelet bringing the container up."""
    await created(rt, spec)
    start = asyncio.create_task(rt.start(spec.name))
    await kubelet.wait_for_pod(spec.name)
    await kubelet.running(spec.name)
    await asyncio.wait_for(start, 5)


async def start_failure(rt: KubernetesRuntime, kubelet: Kubelet, spec: SessionSpec, act: Any) -> str:
    """Start, let the kubelet/scheduler `act` on the pod, and return the RuntimeFailure's message."""
    await created(rt, spec)
    start = asyncio.create_task(rt.start(spec.name))
    await kubelet.wait_for_pod(spec.name)
    await act(spec.name)
    with pytest.raises(RuntimeFailure) as err:
        await asyncio.wait_for(start, 5)
    return str(err.value)


class TinyHTTP:
    """An HTTP server on 127.0.0.1 standing in for rserver behind the session's Service (any answer counts)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.headers: list[bytes] = []

    async def __aenter__(self) -> TinyHTTP:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.headers.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(
                b"HTTP/1.1 302 Found\r\nLocation: /auth-sign-in\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def test_the_runtime_is_a_session_runtime(runtime: KubernetesRuntime) -> None:
    seam: SessionRuntime = runtime  # mypy checks the Protocol; this checks the methods exist at run time
    for method in ("ping", "capacity", "ensure_image", "create", "read_image_file", "start", "state"):
        assert callable(getattr(seam, method))
    for method in ("endpoint", "answers", "logs_tail", "remove", "list_managed", "close"):
        assert callable(getattr(seam, method))


async def test_launch_to_running_and_answering(
    cluster: EmulatedCluster, runtime: KubernetesRuntime, kubelet: Kubelet
) -> None:
    spec = session()
    progress: list[PullProgress] = []

    async def report(p: PullProgress) -> None:
        progress.append(p)

    await runtime.ping()
    # ensure_image: the kubelet pulls at start; byoi's credentials become the pod's pull Secret.
    assert await runtime.ensure_image(IMAGE, {"username": "alice", "password": "pw"}, report) is False
    pull = cluster.objects("secrets")[pull_secret_name("registry.test:5000")]
    auths = json.loads(base64.b64decode(pull["data"][".dockerconfigjson"]))["auths"]
    assert auths["registry.test:5000"]["username"] == "alice"

    assert await runtime.read_image_file(IMAGE, "/usr/lib/R/etc/Renviron.site") is None
    await runtime.create(replace(spec, files=FILES))
    assert (await runtime.state(spec.name)).kind is StateKind.CREATED
    assert set(cluster.objects("services")) == {spec.name} and not cluster.objects("pods")
    [claim] = cluster.objects("persistentvolumeclaims").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    [policy] = cluster.objects("networkpolicies", "networking.k8s.io/v1").values()
    assert policy["spec"]["podSelector"]["matchLabels"] == {"byoi.managed": "true", "byoi.installation": INSTALLATION}
    secret = cluster.objects("secrets")[f"{spec.name}-files"]
    assert base64.b64decode(secret["data"][file_key("/etc/byoi/database.conf")]) == FILES["/etc/byoi/database.conf"]

    start = asyncio.create_task(runtime.start(spec.name))  # in this task's context: ensure_image's callback
    pod = await kubelet.wait_for_pod(spec.name)
    # The pod sent is the pure builder's, with the files and the pull secret.
    want = make_pod(runtime.kube_spec(spec))
    assert pod["spec"]["containers"][0]["volumeMounts"][2:] == [
        {"name": "byoi-files", "mountPath": p, "subPath": file_key(p), "readOnly": True} for p in sorted(FILES)
    ]
    assert pod["spec"]["imagePullSecrets"] == [{"name": pull_secret_name("registry.test:5000")}]
    assert pod["spec"]["containers"][0]["args"] == want["spec"]["containers"][0]["args"]
    assert pod["metadata"]["annotations"]["byoi.app-arn"] == ARN

    await kubelet.event(spec.name, "Scheduled", f"Successfully assigned {NAMESPACE}/{spec.name} to node-1")
    await kubelet.event(spec.name, "Pulling", f'Pulling image "{IMAGE}"')
    await kubelet.event(
        spec.name,
        "Pulled",
        f'Successfully pulled image "{IMAGE}" in 3.2s (3.2s including waiting). Image size: 734003200 bytes.',
    )
    await asyncio.sleep(0.1)
    assert not start.done()  # pulled, not started yet
    await kubelet.running(spec.name)
    await asyncio.wait_for(start, 5)
    assert progress == [
        PullProgress(layers=1),
        PullProgress(done=734003200, total=734003200, layers=1, layers_done=1),
    ]
    assert (await runtime.state(spec.name)).running

    # The endpoint is the Service's ClusterIP and port; the "cluster" assigns them, the test points them at a
    # tiny HTTP server on loopback so that `answers` makes its real request.
    svc = f"/api/v1/namespaces/{NAMESPACE}/services/{spec.name}"
    await kubelet.http.patch(svc, json={"spec": {"clusterIP": "10.96.0.15"}})
    assert await runtime.endpoint(spec.name) == Endpoint(host="10.96.0.15", port=8787)
    async with TinyHTTP() as http:
        ports = [{"name": "http", "port": http.port, "targetPort": "http", "protocol": "TCP"}]
        await kubelet.http.patch(svc, json={"spec": {"clusterIP": "127.0.0.1", "ports": ports}})
        endpoint = await runtime.endpoint(spec.name)
        assert endpoint == Endpoint(host="127.0.0.1", port=http.port)
        assert await runtime.answers(spec.name, "/sessions/fedcba9876543210/")
        assert b"X-RStudio-Root-Path: /sessions/fedcba9876543210" in http.headers[0]
    assert not await runtime.answers(spec.name, "/sessions/fedcba9876543210/", timeout=0.5, endpoint=endpoint)

    kubelet.logs(spec.name, ["rserver starting", "", "listening on 0.0.0.0:8787"])
    assert await runtime.logs_tail(spec.name, 10) == ["rserver starting", "listening on 0.0.0.0:8787"]


async def test_a_headless_service_is_reached_by_its_cluster_dns_name(
    cluster: EmulatedCluster, runtime: KubernetesRuntime, kubelet: Kubelet
) -> None:
    spec = session()
    await runtime.create(spec)
    await kubelet.http.patch(
        f"/api/v1/namespaces/{NAMESPACE}/services/{spec.name}", json={"spec": {"clusterIP": "None"}}
    )
    assert await runtime.endpoint(spec.name) == Endpoint(host=f"{spec.name}.{NAMESPACE}.svc.cluster.local", port=8787)
    assert await runtime.endpoint("byoi-not-there") is None


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"'),
        ("ErrImagePull", "failed to pull and unpack image: 401 Unauthorized"),
    ],
)
async def test_an_image_that_cannot_be_pulled_fails_with_the_kubelets_reason(
    runtime: KubernetesRuntime, kubelet: Kubelet, reason: str, message: str
) -> None:
    async def act(name: str) -> None:
        await kubelet.event(name, "Pulling", f'Pulling image "{IMAGE}"')
        await kubelet.container(name, {"waiting": {"reason": reason, "message": message}}, phase="Pending")

    assert await start_failure(runtime, kubelet, session(), act) == f"{reason}: {message}"


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ("0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available.", "cpu"),
        ("0/2 nodes are available: 2 Insufficient memory.", "memory"),
        ("0/4 nodes are available: 1 Insufficient cpu, 3 Insufficient nvidia.com/gpu.", "cpu, nvidia.com/gpu"),
    ],
)
async def test_an_unschedulable_pod_fails_naming_the_resource(
    runtime: KubernetesRuntime, kubelet: Kubelet, message: str, named: str
) -> None:
    reason = await start_failure(runtime, kubelet, session(), lambda name: kubelet.unschedulable(name, message))
    assert reason == f"Unschedulable: no node has enough {named} for this instance type ({message})"


async def test_an_unschedulable_pod_waits_while_the_autoscaler_adds_a_node(
    runtime: KubernetesRuntime, kubelet: Kubelet
) -> None:
    spec = session()
    await created(runtime, spec)
    start = asyncio.create_task(runtime.start(spec.name))
    await kubelet.wait_for_pod(spec.name)
    await kubelet.event(spec.name, "TriggeredScaleUp", "pod triggered scale-up: [{pool-a 1->2 (max: 5)}]")
    await kubelet.unschedulable(spec.name, "0/1 nodes are available: 1 Insufficient memory.")
    await asyncio.sleep(0.2)
    assert not start.done()
    await kubelet.running(spec.name)
    await asyncio.wait_for(start, 5)


async def test_a_pod_that_never_starts_times_out_saying_what_it_waited_for(
    cluster: EmulatedCluster, kubelet: Kubelet
) -> None:
    rt = make_runtime(cluster, start_timeout=0.5)
    try:
        reason = await start_failure(
            rt,
            kubelet,
            session(),
            lambda name: kubelet.container(name, {"waiting": {"reason": "ContainerCreating"}}, phase="Pending"),
        )
    finally:
        await rt.close()
    assert reason == "the session's pod did not start within 0.5 s; waiting for ContainerCreating"


async def test_a_container_that_cannot_be_created_fails_at_once(runtime: KubernetesRuntime, kubelet: Kubelet) -> None:
    message = 'secret "byoi-x-files" not found'

    async def act(name: str) -> None:
        await kubelet.container(
            name, {"waiting": {"reason": "CreateContainerConfigError", "message": message}}, phase="Pending"
        )

    assert await start_failure(runtime, kubelet, session(), act) == f"CreateContainerConfigError: {message}"


async def test_oom_killed_is_out_of_memory(runtime: KubernetesRuntime, kubelet: Kubelet) -> None:
    spec = session()
    await launched(runtime, kubelet, spec)
    terminated = {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-12-01T18:05:00Z"}
    await kubelet.container(spec.name, {"terminated": terminated}, phase="Failed")
    state = await runtime.state(spec.name)
    assert (state.kind, state.exit_code, state.finished_at) == (StateKind.OUT_OF_MEMORY, 137, "2026-12-01T18:05:00Z")
    assert "out of memory" in state.describe()
    assert not any(m.running for m in await runtime.list_managed({"byoi.installation": INSTALLATION}))


async def test_an_exit_and_a_crash_loop_give_the_code_and_the_last_log_lines(
    runtime: KubernetesRuntime, kubelet: Kubelet
) -> None:
    spec = session()
    await launched(runtime, kubelet, spec)
    kubelet.logs(spec.name, ["R: cannot open file '/home/sagemaker-user/.Rprofile'", "rserver: exiting"])
    await kubelet.container(spec.name, {"terminated": {"exitCode": 2, "reason": "Error"}}, phase="Failed")
    state = await runtime.state(spec.name)
    assert (state.kind, state.exit_code, state.error) == (StateKind.EXITED, 2, "Error")
    # A CrashLoopBackOff (a pod restarted by a policy other than byoi's Never) reports the last exit.
    await kubelet.container(
        spec.name,
        {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}},
        last={"terminated": {"exitCode": 1, "reason": "Error"}},
    )
    state = await runtime.state(spec.name)
    assert (state.kind, state.exit_code) == (StateKind.EXITED, 1)
    assert state.error == "CrashLoopBackOff: back-off 20s restarting failed container"
    assert await runtime.logs_tail(spec.name, 1) == ["rserver: exiting"]
    assert await runtime.logs_tail(spec.name) == [
        "R: cannot open file '/home/sagemaker-user/.Rprofile'",
        "rserver: exiting",
    ]


async def test_a_new_runtime_adopts_the_running_pods(
    cluster: EmulatedCluster, runtime: KubernetesRuntime, kubelet: Kubelet
) -> None:
    first, second = session("aaaaaaaaaaaaaaaa"), session("bbbbbbbbbbbbbbbb")
    other = session("cccccccccccccccc", installation="ffffffffffffffff")  # another installation's session
    for spec in (first, second, other):
        await launched(runtime, kubelet, spec)
    await runtime.close()

    restarted = make_runtime(cluster)  # the server restarted: nothing in memory
    try:
        managed = await restarted.list_managed({"byoi.installation": INSTALLATION})
        assert sorted(m.name for m in managed) == [first.name, second.name]
        assert all(m.running for m in managed)
        adopted = next(m for m in managed if m.name == first.name)
        assert adopted.labels["byoi.app-arn"] == ARN  # the annotation's whole ARN, not the label's hash
        assert adopted.labels["byoi.session-id"] == "aaaaaaaaaaaaaaaa" and adopted.created_at > 0
        assert (await restarted.state(first.name)).running
        assert await restarted.endpoint(first.name) is not None
    finally:
        await restarted.close()


async def test_orphans_are_found_by_label_and_removed_keeping_the_home(
    cluster: EmulatedCluster, runtime: KubernetesRuntime, kubelet: Kubelet
) -> None:
    running, half = session("aaaaaaaaaaaaaaaa"), session("bbbbbbbbbbbbbbbb")
    await launched(runtime, kubelet, running)
    await runtime.create(half)  # created, never started (the server died before the pod)
    managed = {m.name: m for m in await runtime.list_managed({"byoi.installation": INSTALLATION})}
    assert set(managed) == {running.name, half.name}
    assert managed[running.name].running and not managed[half.name].running

    for name in managed:  # as the reconciler removes sessions no app claims
        await runtime.remove(name, 0)
    assert not cluster.objects("pods") and not cluster.objects("services")
    assert not [s for s in cluster.objects("secrets") if s.endswith("-files")]
    assert len(cluster.objects("persistentvolumeclaims")) == 1  # homes persist
    assert await runtime.list_managed({"byoi.installation": INSTALLATION}) == []


async def test_deletion_removes_the_session_and_a_new_one_reuses_the_home(
    cluster: EmulatedCluster, runtime: KubernetesRuntime, kubelet: Kubelet
) -> None:
    spec = session()
    await launched(runtime, kubelet, spec)
    await runtime.remove(spec.name, 5)
    deletes = [r for r in cluster.emulator if r.method == "DELETE" and "/pods/" in r.url.path]
    assert deletes and deletes[0].params.get("gracePeriodSeconds") == "5"
    assert (await runtime.state(spec.name)).gone
    assert await runtime.endpoint(spec.name) is None and await runtime.logs_tail(spec.name) == []
    await runtime.remove(spec.name, 0)  # not there: fine
    [claim] = cluster.objects("persistentvolumeclaims")
    await launched(runtime, kubelet, session(generation=2))
    assert list(cluster.objects("persistentvolumeclaims")) == [claim]
    assert cluster.objects("pods")[session(generation=2).name]["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": claim
    }


async def test_rwx_homes_and_gpu_placement_reach_the_cluster(
    cluster: EmulatedCluster, kubelet: Kubelet, tmp_path: Any
) -> None:
    path = tmp_path / "types.toml"
    path.write_text(
        '[types."ml.g4dn.xlarge"]\nvcpu = 4\nmemory_gib = 16\ngpus = 1\n'
        'tolerations = [ { key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" } ]\n'
    )
    rt = make_runtime(
        cluster, instance_types=InstanceTypes.load(path), access_mode="ReadWriteMany", storage_class="nfs"
    )
    try:
        spec = session()
        object.__setattr__(spec, "instance_type", "ml.g4dn.xlarge")  # the SessionSpec field the wiring adds
        await launched(rt, kubelet, spec)
    finally:
        await rt.close()
    pod = cluster.objects("pods")[spec.name]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    [claim] = cluster.objects("persistentvolumeclaims").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "nfs"


async def test_capacity_is_the_largest_node(runtime: KubernetesRuntime, kubelet: Kubelet) -> None:
    await kubelet.node("node-1", "3500m", "16302084Ki")
    await kubelet.node("node-2", "8", "32Gi")
    assert await runtime.capacity() == HostCapacity(cpus=8, memory_bytes=32 * GiB, where="the largest node")


async def test_a_cluster_without_nodes_says_so(runtime: KubernetesRuntime) -> None:
    with pytest.raises(RuntimeFailure, match="no node with allocatable CPU and memory"):
        await runtime.capacity()


async def test_an_api_server_that_does_not_answer_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    from lightkube import KubeConfig
    from lightkube.config.models import Cluster, User

    config = KubeConfig.from_one(cluster=Cluster(server=f"http://127.0.0.1:{port}"), user=User(), namespace=NAMESPACE)
    rt = KubernetesRuntime(NAMESPACE, config, trust_env=False)
    try:
        with pytest.raises(Unreachable, match=f"Kubernetes API server at http://127.0.0.1:{port} is not reachable"):
            await rt.ping()
        with pytest.raises(Unreachable):
            await rt.state("byoi-x")
    finally:
        await rt.close()


def test_pod_states_the_way_the_kubelet_reports_them() -> None:
    def pod(status: dict[str, Any], meta: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"metadata": meta or {"name": "p"}, "status": status}

    assert pod_state(None).gone
    assert pod_state(pod({"phase": "Running"}, {"deletionTimestamp": "2026-12-01T18:00:00Z"})).gone
    assert pod_state(pod({"phase": "Pending"})).kind is StateKind.CREATED
    evicted = pod_state(
        pod({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."})
    )
    assert (evicted.kind, evicted.error) == (StateKind.EXITED, "Evicted: The node was low on resource: memory.")
    assert pod_state(pod({"phase": "Unknown"})).error == "the pod's node stopped reporting (phase Unknown)"
    assert pod_state(pod({"phase": "Succeeded"})).exit_code == 0


async def test_concurrent_launches_share_two_watches_and_keep_their_own_progress(
    cluster: EmulatedCluster, runtime: KubernetesRuntime, kubelet: Kubelet
) -> None:
    """Each launch runs in its own task (as the worker runs claims): ensure_image's callback reaches only its
    own launch's start(), and all the launches waiting at once use one pod watch and one event watch."""
    specs = [session(f"{i:016x}") for i in range(5)]
    seen: dict[str, list[PullProgress]] = {s.name: [] for s in specs}

    async def launch(spec: SessionSpec) -> None:
        async def report(p: PullProgress) -> None:
            seen[spec.name].append(p)

        await runtime.ensure_image(IMAGE, None, report)
        await created(runtime, spec)
        await runtime.start(spec.name)

    tasks = [asyncio.create_task(launch(s)) for s in specs]
    for i, spec in enumerate(specs):
        await kubelet.wait_for_pod(spec.name)
        await kubelet.event(spec.name, "Pulled", f"Successfully pulled image in 1s. Image size: {1000 + i} bytes.")
    await asyncio.sleep(0.1)
    for spec in specs:
        await kubelet.running(spec.name)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    for i, spec in enumerate(specs):
        assert seen[spec.name] == [PullProgress(done=1000 + i, total=1000 + i, layers=1, layers_done=1)]
    watches = [r for r in cluster.emulator if r.params.get("watch") == "true"]
    assert sorted(r.url.path.rsplit("/", 1)[-1] for r in watches) == ["events", "pods"]


async def test_a_change_the_watch_missed_is_found_by_the_resync(
    cluster: EmulatedCluster, runtime: KubernetesRuntime, kubelet: Kubelet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator's objects written directly send no watch event: start() must still see the pod running,
    by reading it after RESYNC_EVERY quiet seconds."""
    import byoi.runtime.kubernetes as kube

    monkeypatch.setattr(kube, "RESYNC_EVERY", 0.2)
    spec = session()
    await created(runtime, spec)
    start = asyncio.create_task(runtime.start(spec.name))
    await kubelet.wait_for_pod(spec.name)
    pod_path = f"/api/v1/namespaces/{NAMESPACE}/pods/{spec.name}"
    while not [r for r in cluster.emulator if r.method == "GET" and r.url.path == pod_path]:
        await asyncio.sleep(0.01)  # start() has read the pod once (Pending) and now waits on the watch
    await asyncio.sleep(0.05)
    [key] = [k for k in cluster.emulator.objects if k[1] == NAMESPACE and k[2] == spec.name and k[0].plural == "pods"]
    cluster.emulator.objects[key].patch({"status": {"phase": "Running", "containerStatuses": [
        {"name": "rstudio", "ready": True, "restartCount": 0, "image": "x", "imageID": "x", "state": {"running": {}}}
    ]}})  # fmt: skip
    await asyncio.wait_for(start, 2)
    assert (await runtime.state(spec.name)).running


async def test_a_spec_kubernetes_cannot_take_is_refused_before_anything_is_created(
    cluster: EmulatedCluster, runtime: KubernetesRuntime
) -> None:
    tagged = replace(session(), image="registry.test:5000/team/rstudio:latest")
    with pytest.raises(RuntimeFailure, match="cannot run on Kubernetes: .*pinned by digest"):
        await runtime.create(tagged)
    assert not cluster.objects("services") and not cluster.objects("persistentvolumeclaims")


async def test_an_unbound_immediate_home_claim_is_waited_for_not_a_failure(
    runtime: KubernetesRuntime, kubelet: Kubelet
) -> None:
    spec = session()
    await created(runtime, spec)
    start = asyncio.create_task(runtime.start(spec.name))
    await kubelet.wait_for_pod(spec.name)
    # A storage class with Immediate binding: the new profile's claim is bound moments after the pod is made.
    await kubelet.unschedulable(spec.name, "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims.")
    await asyncio.sleep(0.3)
    assert not start.done()
    await kubelet.running(spec.name)
    await asyncio.wait_for(start, 5)


async def test_a_domains_homes_go_with_it_but_not_another_installations(
    cluster: EmulatedCluster, runtime: KubernetesRuntime, kubelet: Kubelet
) -> None:
    spec = session()
    await launched(runtime, kubelet, spec)
    await runtime.remove(spec.name, 0)
    [ours] = cluster.objects("persistentvolumeclaims")
    domain = cluster.objects("persistentvolumeclaims")[ours]["metadata"]["labels"]["byoi.domain-id"]
    theirs = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "byoi-home-of-another-installation",
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "byoi", "byoi.installation": "1111222233334444",
                       "byoi.domain-id": domain},
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }  # fmt: skip
    resp = await kubelet.http.post(f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", json=theirs)
    assert resp.status in (200, 201)
    await runtime.remove_domain_homes(domain, installation=INSTALLATION)
    assert list(cluster.objects("persistentvolumeclaims")) == ["byoi-home-of-another-installation"]


def test_the_pods_grace_period_is_the_configured_stop_timeout(cluster: EmulatedCluster) -> None:
    rt = make_runtime(cluster, stop_timeout=45)
    pod = make_pod(rt.kube_spec(session()))
    assert pod["spec"]["terminationGracePeriodSeconds"] == 45


async def test_a_network_policy_or_pull_secret_deleted_by_hand_is_made_again(
    cluster: EmulatedCluster, runtime: KubernetesRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without its NetworkPolicy a session admits anyone in the cluster, without its pull Secret it cannot
    start: one deleted by hand is made again by the next launch once ENSURE_AGAIN has passed, not at a restart."""
    from lightkube.resources.core_v1 import Secret
    from lightkube.resources.networking_v1 import NetworkPolicy

    import byoi.runtime.kubernetes as kube_runtime

    async def report(_p: PullProgress) -> None:
        return None

    auth = {"username": "alice", "password": "pw"}
    policies = lambda: cluster.objects("networkpolicies", "networking.k8s.io/v1")  # noqa: E731
    secret = pull_secret_name("registry.test:5000")
    await runtime.ensure_image(IMAGE, auth, report)
    await created(runtime, session("1111111111111111"))
    [policy] = policies()
    await runtime.client.delete(NetworkPolicy, policy, namespace=NAMESPACE)
    await runtime.client.delete(Secret, secret, namespace=NAMESPACE)
    await runtime.ensure_image(IMAGE, auth, report)
    await created(runtime, session("2222222222222222"))
    assert not policies() and secret not in cluster.objects("secrets")  # within ENSURE_AGAIN: one check a minute
    monkeypatch.setattr(kube_runtime, "ENSURE_AGAIN", 0.0)
    await runtime.ensure_image(IMAGE, auth, report)
    await created(runtime, session("3333333333333333"))
    assert list(policies()) == [policy] and secret in cluster.objects("secrets")
