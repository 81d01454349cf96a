"""The Kubernetes image builder (build/kubernetes.py) through lightkube against kmock's Kubernetes API emulator,
a TEST DOUBLE served over real HTTP on 127.0.0.1 (tests/support/kube.py). The test plays the Job controller
(it makes the Job's pod and writes the Job's condition) and the kubelet (pod statuses, the container's log, as
BuildKit's plain progress prints it). Nothing runs BuildKit here."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lightkube import KubeConfig
from lightkube.config.models import Cluster, User

from byoi.build.base import Builder, BuilderUnavailable, BuildFailed, BuildRequest, PushRequest
from byoi.build.kubernetes import BuildJobFailed, BuildKitLog, KubernetesBuilder, LogPosition
from byoi.build.kubernetes_job import buildctl_args, job_name, make_build_job, secret_name
from tests.support.kube import (
    NAMESPACE,
    EmulatedCluster,
    JobController,
    Kubelet,
    add_jobs,
    emulated_cluster,
    log_timestamp,
)
from tests.support.relay import Relay

pytestmark = pytest.mark.timeout(30)

BUILD = "b-0123456789abcdef"
JOB = job_name(BUILD)
SECRET = secret_name(BUILD)
INSTALLATION = "0123456789abcdef"
REPO = "registry.test:5000/team/rstudio"
DIGEST = "sha256:" + "1f" * 32
CONFIG = "sha256:" + "2e" * 32

SUCCESS_LOG = [
    "#1 [internal] load build definition from Dockerfile",
    "#1 transferring dockerfile: 120B done",
    "#1 DONE 0.0s",
    "",
    "#2 [internal] load metadata for mirror.test/rocker/rstudio:4.4.1",
    "#2 DONE 1.2s",
    "",
    "#3 [1/3] FROM mirror.test/rocker/rstudio:4.4.1@sha256:" + "aa" * 32,
    "#3 DONE 0.1s",
    "",
    "#4 [2/3] RUN apt-get update && apt-get install -y libxml2-dev",
    "#4 0.512 Get:1 http://deb.debian.test/debian bookworm InRelease [151 kB]",
    "#4 DONE 12.3s",
    "",
    "#5 [3/3] COPY install.R /tmp/",
    "#5 DONE 0.1s",
    "",
    "#6 exporting to image",
    "#6 exporting layers 2.1s done",
    f"#6 exporting manifest {DIGEST} done",
    f"#6 exporting config {CONFIG} done",
    f"#6 naming to {REPO}:v1 done",
    "#6 pushing layers 3.2s done",
    f"#6 pushing manifest for {REPO}:v1@{DIGEST}",
    f"#6 pushing manifest for {REPO}:v1@{DIGEST} 0.1s done",
    "#6 DONE 5.5s",
]

FAILURE_LOG = [
    "#1 [internal] load build definition from Dockerfile",
    "#1 DONE 0.0s",
    "#2 [1/2] FROM mirror.test/library/busybox:1.37",
    "#2 DONE 0.3s",
    "#3 [2/2] RUN make",
    "#3 0.301 make: *** No rule to make target 'all'.  Stop.",
    '#3 ERROR: process "/bin/sh -c make" did not complete successfully: exit code: 2',
    "------",
    " > [2/2] RUN make:",
    "0.301 make: *** No rule to make target 'all'.  Stop.",
    "------",
    "Dockerfile:2",
    "   2 | >>> RUN make",
    'error: failed to solve: process "/bin/sh -c make" did not complete successfully: exit code: 2',
]


def request(tmp_path: Path, **over: Any) -> BuildRequest:
    folder = tmp_path / BUILD
    folder.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "context_tar": folder / "context.tar",
        "build_id": BUILD,
        "build_args": {"R_VERSION": "4.4.1"},
        "push_to": PushRequest("", REPO, "v1", {"username": "alice", "password": "pw"}),
    }
    values.update(over)
    return BuildRequest(**values)


def context_url(build_id: str) -> str:
    return f"https://byoi.test/builds/{build_id}/context.tar?sig=abc"


def make_builder(config: KubeConfig, start_timeout: float = 5) -> KubernetesBuilder:
    return KubernetesBuilder(
        NAMESPACE, config, installation=INSTALLATION, context_url=context_url, trust_env=False,
        start_timeout=start_timeout,
    )  # fmt: skip


@pytest_asyncio.fixture()
async def cluster() -> AsyncIterator[EmulatedCluster]:
    async with emulated_cluster() as found:
        add_jobs(found)
        yield found


@pytest_asyncio.fixture()
async def builder(cluster: EmulatedCluster) -> AsyncIterator[KubernetesBuilder]:
    b = make_builder(cluster.config())
    yield b
    await b.close()


async def build_pod_runs(controller: JobController, kubelet: Kubelet, log: list[str], pod: str = "") -> str:
    """The controller makes the pod; the kubelet fetches the context (init container done) and starts BuildKit,
    whose output is `log` (or, with `pod` given, what that pod's log serves already)."""
    if not pod:
        pod = await controller.make_pod(JOB)
        kubelet.logs(pod, log)
    await kubelet.status(
        pod,
        {
            "phase": "Running",
            "initContainerStatuses": [
                {"name": "fetch-context", "ready": True, "restartCount": 0, "image": "x", "imageID": "x",
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            ],
            "containerStatuses": [
                {"name": "buildkit", "ready": True, "restartCount": 0, "image": "x", "imageID": "x",
                 "state": {"running": {"startedAt": "2026-12-01T18:00:00Z"}}},
            ],
        },
    )  # fmt: skip
    return pod


async def build_container_ends(kubelet: Kubelet, pod: str, terminated: dict[str, Any]) -> None:
    status = {"name": "buildkit", "ready": False, "restartCount": 0, "image": "x", "imageID": "x"}
    await kubelet.status(
        pod, {"phase": "Failed", "containerStatuses": [{**status, "state": {"terminated": terminated}}]}
    )


def test_the_builder_is_a_builder(builder: KubernetesBuilder) -> None:
    seam: Builder = builder  # mypy checks the Protocol
    assert all(callable(getattr(seam, m)) for m in ("build", "push", "ping", "close"))


async def test_a_build_that_succeeds_streams_its_log_and_steps_and_returns_the_pushed_digest(
    cluster: EmulatedCluster, builder: KubernetesBuilder, tmp_path: Path
) -> None:
    controller, kubelet = JobController(cluster), Kubelet(cluster)
    events: list[dict[str, Any]] = []
    await builder.ping()
    req = request(tmp_path)
    task = asyncio.create_task(builder.build(req, events.append))
    job = await controller.wait_for_job(JOB)
    # The Job sent is the pure builder's; the Secret holds the push credentials for the registry.
    assert job == make_build_job(builder.build_spec(req))
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == buildctl_args(builder.build_spec(req))
    assert context_url(BUILD) in job["spec"]["template"]["spec"]["initContainers"][0]["command"]
    secret = cluster.objects("secrets")[SECRET]
    auths = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))["auths"]
    assert base64.b64decode(auths["registry.test:5000"]["auth"]) == b"alice:pw"

    await build_pod_runs(controller, kubelet, SUCCESS_LOG)
    await asyncio.sleep(0.1)
    assert not task.done()  # the log has ended; the Job's condition decides
    await controller.finish(JOB, "Complete")
    image_id = await asyncio.wait_for(task, 5)

    assert image_id == DIGEST
    steps = [e for e in events if e["k"] == "step"]
    assert steps == [
        {"k": "step", "n": 1, "of": 3, "m": "[1/3] FROM mirror.test/rocker/rstudio:4.4.1@sha256:" + "aa" * 32},
        {"k": "step", "n": 2, "of": 3, "m": "[2/3] RUN apt-get update && apt-get install -y libxml2-dev"},
        {"k": "step", "n": 3, "of": 3, "m": "[3/3] COPY install.R /tmp/"},
    ]
    logs = [e["m"] for e in events if e["k"] == "log"]
    assert logs == [line for line in SUCCESS_LOG if line and not line.startswith(("#3 [", "#4 [", "#5 ["))]
    # push() returns what BuildKit pushed, without pushing again.
    pushed: list[dict[str, Any]] = []
    assert await builder.push(PushRequest(image_id, REPO, "v1", None), pushed.append) == DIGEST
    with pytest.raises(BuildFailed, match="pushes while it builds") as err:
        await builder.push(PushRequest(image_id, REPO, "other", None), pushed.append)
    assert err.value.phase == "push"
    # The credentials are gone with the build; the Job stays for its TTL (its log can still be read).
    assert SECRET not in cluster.objects("secrets") and JOB in controller.jobs()


async def test_a_build_that_fails_at_a_run_step_names_the_step_and_the_last_lines(
    cluster: EmulatedCluster, builder: KubernetesBuilder, tmp_path: Path
) -> None:
    controller, kubelet = JobController(cluster), Kubelet(cluster)
    events: list[dict[str, Any]] = []
    task = asyncio.create_task(builder.build(request(tmp_path), events.append))
    pod = await build_pod_runs(controller, kubelet, FAILURE_LOG)
    await build_container_ends(kubelet, pod, {"exitCode": 1, "reason": "Error"})
    await controller.finish(JOB, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    with pytest.raises(BuildJobFailed) as err:
        await asyncio.wait_for(task, 5)
    assert err.value.step == "[2/2] RUN make"
    assert err.value.message == 'process "/bin/sh -c make" did not complete successfully: exit code: 2'
    assert err.value.phase == "build"
    assert "0.301 make: *** No rule to make target 'all'.  Stop." in err.value.last_lines
    assert err.value.last_lines[-1].startswith("error: failed to solve")
    assert {"k": "step", "n": 2, "of": 2, "m": "[2/2] RUN make"} in events
    assert SECRET not in cluster.objects("secrets")


async def test_a_job_that_fails_without_buildkits_word_says_why(
    cluster: EmulatedCluster, builder: KubernetesBuilder, tmp_path: Path
) -> None:
    controller, kubelet = JobController(cluster), Kubelet(cluster)
    task = asyncio.create_task(builder.build(request(tmp_path), lambda e: None))
    pod = await build_pod_runs(controller, kubelet, ["#1 [internal] load build definition from Dockerfile"])
    await build_container_ends(kubelet, pod, {"exitCode": 137, "reason": "OOMKilled"})
    await controller.finish(JOB, "Failed", "BackoffLimitExceeded")
    with pytest.raises(BuildJobFailed, match=r"BuildKit ran out of memory \(the build's limit is 4Gi\)"):
        await asyncio.wait_for(task, 5)


async def test_a_context_that_cannot_be_fetched_and_a_deadline_say_so(
    cluster: EmulatedCluster, builder: KubernetesBuilder, tmp_path: Path
) -> None:
    controller, kubelet = JobController(cluster), Kubelet(cluster)
    task = asyncio.create_task(builder.build(request(tmp_path), lambda e: None))
    pod = await controller.make_pod(JOB)
    said = "wget: server returned error: HTTP/1.1 403 Forbidden"  # FallbackToLogsOnError: the last lines
    fetch = {"name": "fetch-context", "ready": False, "restartCount": 0, "image": "x", "imageID": "x"}
    terminated = {"terminated": {"exitCode": 1, "reason": "Error", "message": said}}
    await kubelet.status(pod, {"phase": "Failed", "initContainerStatuses": [{**fetch, "state": terminated}]})
    await controller.finish(JOB, "Failed", "BackoffLimitExceeded")
    with pytest.raises(BuildJobFailed, match=rf"the build context could not be fetched \(exit code 1\): {said}"):
        await asyncio.wait_for(task, 5)

    await controller.http.delete(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{JOB}")
    task = asyncio.create_task(builder.build(request(tmp_path), lambda e: None))
    await controller.wait_for_job(JOB)
    await controller.finish(JOB, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
    with pytest.raises(BuildJobFailed, match=r"ran longer than 3600 s \(the Job's activeDeadlineSeconds\)"):
        await asyncio.wait_for(task, 5)


async def test_a_job_left_by_a_stopped_server_is_followed_not_made_again(
    cluster: EmulatedCluster, builder: KubernetesBuilder, tmp_path: Path
) -> None:
    controller, kubelet = JobController(cluster), Kubelet(cluster)
    req = request(tmp_path)
    left = make_build_job(builder.build_spec(req))
    left["metadata"]["uid"] = "6f1c1c3e-0000-4000-8000-000000000002"  # as the API server gave it
    resp = await controller.http.post(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", json=left)
    assert resp.status in (200, 201)
    await build_pod_runs(controller, kubelet, SUCCESS_LOG)
    await controller.finish(JOB, "Complete")
    assert await asyncio.wait_for(builder.build(req, lambda e: None), 5) == DIGEST
    creates = [r for r in cluster.emulator if r.method == "POST" and r.url.path.endswith("/jobs")]
    assert len(creates) == 2  # the stopped server's, and this one's, refused as existing (409)
    # The Secret written again was given that Job as its owner (the uid from the Job found, before following).
    [owned] = [r for r in cluster.emulator if r.method == "PATCH" and r.url.path.endswith(f"/secrets/{SECRET}")]
    assert owned.data["metadata"]["ownerReferences"][0]["uid"] == "6f1c1c3e-0000-4000-8000-000000000002"


def live_log(cluster: EmulatedCluster, pod: str) -> asyncio.Queue[str]:
    """The pod's log as a stream that stays open (as `follow=true` does while the container runs): each line
    put in the queue is sent as it comes."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def stream() -> AsyncIterator[bytes]:
        yield b""  # the headers go now, the lines as they come
        while True:
            yield (await queue.get() + "\n").encode()

    cluster.emulator[f"get /api/v1/namespaces/{NAMESPACE}/pods/{pod}/log"] << stream()
    return queue


async def test_cancelling_the_build_mid_log_deletes_the_job_and_the_secret(
    cluster: EmulatedCluster, builder: KubernetesBuilder, tmp_path: Path
) -> None:
    controller, kubelet = JobController(cluster), Kubelet(cluster)
    events: list[dict[str, Any]] = []
    task = asyncio.create_task(builder.build(request(tmp_path), events.append))
    pod = await controller.make_pod(JOB)
    lines = live_log(cluster, pod)
    await build_pod_runs(controller, kubelet, [], pod=pod)
    lines.put_nowait("#4 [2/3] RUN apt-get update && apt-get install -y libxml2-dev")
    lines.put_nowait("#4 0.512 Get:1 http://deb.debian.test/debian bookworm InRelease [151 kB]")
    for _ in range(200):  # the lines reach `emit` while the build runs
        if len(events) == 2:
            break
        await asyncio.sleep(0.01)
    assert events == [
        {"k": "step", "n": 2, "of": 3, "m": "[2/3] RUN apt-get update && apt-get install -y libxml2-dev"},
        {"k": "log", "m": "#4 0.512 Get:1 http://deb.debian.test/debian bookworm InRelease [151 kB]"},
    ]
    assert JOB in controller.jobs() and SECRET in cluster.objects("secrets") and not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert JOB not in controller.jobs() and SECRET not in cluster.objects("secrets")
    [delete] = [r for r in cluster.emulator if r.method == "DELETE" and r.url.path.endswith(f"/jobs/{JOB}")]
    assert delete.params.get("propagationPolicy") == "Background"


async def test_a_request_without_its_destination_is_refused_before_anything_is_made(
    cluster: EmulatedCluster, builder: KubernetesBuilder, tmp_path: Path
) -> None:
    folder = tmp_path / BUILD
    folder.mkdir()
    plain = BuildRequest(context_tar=folder / "context.tar")  # the seam as it is today: the id from the folder
    with pytest.raises(BuildFailed, match=r"needs the destination with the request \(BuildRequest.push_to\)"):
        await builder.build(plain, lambda e: None)
    with pytest.raises(BuildFailed, match="not a valid build argument name"):
        await builder.build(request(tmp_path, build_args={"A=B": "x"}), lambda e: None)
    assert not controller_jobs(cluster) and not cluster.objects("secrets")


def controller_jobs(cluster: EmulatedCluster) -> dict[str, dict[str, Any]]:
    return cluster.objects("jobs", "batch/v1")


async def test_an_api_server_that_does_not_answer_is_builder_unavailable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    config = KubeConfig.from_one(cluster=Cluster(server=f"http://127.0.0.1:{port}"), user=User(), namespace=NAMESPACE)
    b = make_builder(config)
    try:
        with pytest.raises(BuilderUnavailable, match=f"API server at http://127.0.0.1:{port} is not reachable"):
            await b.ping()
        with pytest.raises(BuilderUnavailable, match="is not reachable"):
            await b.build(request(tmp_path), lambda e: None)
    finally:
        await b.close()


def test_buildkit_output_of_a_multi_stage_build_and_an_image_index() -> None:
    events: list[dict[str, Any]] = []
    parsed = BuildKitLog(events.append)
    for line in [
        "#4 [builder 1/2] FROM mirror.test/library/golang:1.23",
        "#7 [stage-1 2/2] COPY --from=builder /out /usr/local/bin",
        "#4 [builder 1/2] FROM mirror.test/library/golang:1.23",  # printed again when its output resumes
        f"#9 exporting manifest {CONFIG} done",
        f"#9 exporting manifest list {DIGEST} done",
    ]:
        parsed.line(line)
    assert [e["m"] for e in events if e["k"] == "step"] == [
        "[builder 1/2] FROM mirror.test/library/golang:1.23",
        "[stage-1 2/2] COPY --from=builder /out /usr/local/bin",
    ]
    assert parsed.digest == DIGEST  # the index, not a platform's manifest


def test_a_refused_push_is_a_push_failure() -> None:
    parsed = BuildKitLog(lambda e: None)
    for line in [
        "#6 exporting to image",
        "#6 ERROR: failed to push registry.test:5000/team/rstudio:v1: unexpected status: 401 Unauthorized",
        "error: failed to solve: failed to push registry.test:5000/team/rstudio:v1: unexpected status: 401",
    ]:
        parsed.line(line)
    failure = parsed.failure()
    assert failure is not None and failure.phase == "push" and failure.step is None
    assert failure.message == "failed to push registry.test:5000/team/rstudio:v1: unexpected status: 401"


def test_a_log_read_again_from_its_start_gives_only_the_lines_after_the_last_one_seen() -> None:
    stamped = [f"{log_timestamp(i)} line {i}" for i in range(7)]  # lines 0-1, 2-3, 4-5 share a timestamp
    seen = LogPosition()
    assert [seen.new(s) for s in stamped[:3]] == ["line 0", "line 1", "line 2"]
    seen.again()  # cut after line 2, the first of the pair (2, 3): read from the start again
    assert [seen.new(s) for s in stamped] == [None, None, None, "line 3", "line 4", "line 5", "line 6"]
    seen.again()
    assert [seen.new(s) for s in stamped] == [None] * 7
    assert seen.count == 7
    # A line without a timestamp (not from a kubelet) is given out as it is; a line's own spaces are kept.
    assert seen.new("no stamp here") == "no stamp here"
    assert seen.new(f"{log_timestamp(40)}   indented ") == "  indented "


async def test_a_log_stream_that_breaks_is_opened_again_and_read_on_from_its_last_line(
    cluster: EmulatedCluster, tmp_path: Path
) -> None:
    # The builder reaches the emulator through a relay the test cuts while the log is followed (every connection
    # dropped, the watches' too), as an API server restarting or a proxy timing out would.
    relay = Relay(cluster.server.url.port)
    config = KubeConfig.from_one(cluster=Cluster(server=f"http://{relay.host}"), user=User(), namespace=NAMESPACE)
    builder = make_builder(config)
    controller, kubelet = JobController(cluster), Kubelet(cluster)
    events: list[dict[str, Any]] = []
    stamped = [f"{log_timestamp(i)} {line}\n".encode() for i, line in enumerate(SUCCESS_LOG)]
    served = 0
    task: asyncio.Task[str] | None = None

    async def open_then_cut() -> AsyncIterator[bytes]:
        yield b"".join(stamped[:11])  # up to "#4 [2/3] RUN apt-get ...", then it stays open until the cut
        await asyncio.Event().wait()

    async def whole() -> AsyncIterator[bytes]:
        yield b"".join(stamped)

    def serve(req: Any) -> AsyncIterator[bytes]:
        nonlocal served
        served += 1
        return open_then_cut() if served == 1 else whole()

    try:
        task = asyncio.create_task(builder.build(request(tmp_path), events.append))
        pod = await controller.make_pod(JOB)
        cluster.emulator[f"get /api/v1/namespaces/{NAMESPACE}/pods/{pod}/log"] << serve
        await build_pod_runs(controller, kubelet, [], pod=pod)
        for _ in range(300):
            if len(events) >= 8:
                break
            await asyncio.sleep(0.01)
        assert served == 1 and len(events) == 8 and events[-1]["m"].startswith("[2/3] RUN apt-get")
        relay.close()
        relay.open()
        for _ in range(300):
            if len(events) >= len([line for line in SUCCESS_LOG if line]):
                break
            await asyncio.sleep(0.01)
        await controller.finish(JOB, "Complete")
        assert await asyncio.wait_for(task, 5) == DIGEST
    finally:
        if task is not None and not task.done():
            task.cancel()
        await builder.close()
        relay.stop()
    assert served == 2
    # Every line once, in order: none lost at the break, none repeated after it.
    step_lines = ("#3 [", "#4 [", "#5 [")
    assert [e["m"] for e in events if e["k"] == "log"] == [
        line for line in SUCCESS_LOG if line and not line.startswith(step_lines)
    ]
    assert [e["n"] for e in events if e["k"] == "step"] == [1, 2, 3]
    reads = [r for r in cluster.emulator if r.method == "GET" and r.url.path.endswith(f"/pods/{pod}/log")]
    assert len(reads) == 2
    assert all(r.params.get("timestamps") == "true" and r.params.get("follow") == "true" for r in reads)


async def test_the_push_secret_is_owned_by_the_job_so_it_goes_with_it(
    cluster: EmulatedCluster, builder: KubernetesBuilder, tmp_path: Path
) -> None:
    controller, kubelet = JobController(cluster), Kubelet(cluster)
    task = asyncio.create_task(builder.build(request(tmp_path), lambda e: None))
    await controller.wait_for_job(JOB)
    assert "ownerReferences" not in cluster.objects("secrets")[SECRET]["metadata"]  # no uid known yet
    # The emulator gives objects no uid; the API server would have, in its answer to the create.
    resp = await controller.http.patch(
        f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{JOB}",
        json={"metadata": {"uid": "6f1c1c3e-0000-4000-8000-000000000001"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status == 200
    for _ in range(300):
        if "ownerReferences" in cluster.objects("secrets")[SECRET]["metadata"]:
            break
        await asyncio.sleep(0.01)
    secret = cluster.objects("secrets")[SECRET]
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": JOB, "uid": "6f1c1c3e-0000-4000-8000-000000000001"}
    ]
    assert secret["data"]  # the credentials are still there: the patch only adds the owner
    await build_pod_runs(controller, kubelet, SUCCESS_LOG)
    await controller.finish(JOB, "Complete")
    assert await asyncio.wait_for(task, 5) == DIGEST
    assert SECRET not in cluster.objects("secrets")


async def test_a_job_that_makes_no_pod_fails_at_the_start_timeout_with_the_jobs_own_words(
    cluster: EmulatedCluster, tmp_path: Path
) -> None:
    builder = make_builder(cluster.config(), start_timeout=1)
    controller = JobController(cluster)
    refused = (
        f'pods "{JOB}-x7k2p" is forbidden: violates PodSecurity "restricted:latest": seccompProfile '
        '(pod or container "buildkit" must not set securityContext.seccompProfile.type to "Unconfined")'
    )
    try:
        task = asyncio.create_task(builder.build(request(tmp_path), lambda e: None))
        await controller.wait_for_job(JOB)
        # What the Job controller says when admission refuses its pod (a namespace enforcing `restricted`).
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{JOB}.1", "namespace": NAMESPACE},
            "involvedObject": {"kind": "Job", "name": JOB, "namespace": NAMESPACE},
            "reason": "FailedCreate",
            "message": f"Error creating: {refused}",
            "type": "Warning",
        }
        resp = await controller.http.post(f"/api/v1/namespaces/{NAMESPACE}/events", json=event)
        assert resp.status in (200, 201)
        with pytest.raises(BuildJobFailed) as failed:
            await asyncio.wait_for(task, 10)  # at the start timeout, not the Job's hour-long deadline
    finally:
        await builder.close()
    assert str(failed.value).startswith("the build did not start within 1 s: the Job could not make its pod: ")
    assert refused in str(failed.value)
    assert SECRET not in cluster.objects("secrets")  # the credentials go with the failed build


async def test_a_pod_that_waits_too_long_says_what_it_waits_for(cluster: EmulatedCluster, tmp_path: Path) -> None:
    builder = make_builder(cluster.config(), start_timeout=1)
    controller, kubelet = JobController(cluster), Kubelet(cluster)
    try:
        task = asyncio.create_task(builder.build(request(tmp_path), lambda e: None))
        pod = await controller.make_pod(JOB)
        message = "0/3 nodes are available: 3 Insufficient memory."
        await kubelet.status(
            pod,
            {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]},
        )  # fmt: skip
        with pytest.raises(BuildJobFailed, match=f"did not start within 1 s: its pod is not scheduled: {message}"):
            await asyncio.wait_for(task, 10)
    finally:
        await builder.close()
