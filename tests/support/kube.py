"""A Kubernetes API for the runtime's tests: kmock's `KubernetesEmulator`, a TEST DOUBLE of the API server (no
API server can be installed on this machine), served over real HTTP on 127.0.0.1, and a `Kubelet` through
which a test plays the scheduler and the kubelet: it writes pod statuses (`PATCH pods/<name>/status`) and
events (`POST events`) and serves container logs, the way they would. Nothing here runs a container.

The emulator stores objects as given (no defaults, no resourceVersion, no creationTimestamp), ignores label
and field selectors (the runtime filters on its side too) and serves watches (ADDED for what exists, then
every change made through the API)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import kmock
from lightkube import KubeConfig
from lightkube.config.models import Cluster, User

NAMESPACE = "byoi-sessions"
CORE = {
    "pods": "Pod",
    "services": "Service",
    "secrets": "Secret",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "events": "Event",
}


@dataclass
class EmulatedCluster:
    emulator: kmock.KubernetesEmulator
    server: kmock.Server

    @property
    def url(self) -> str:
        return str(self.server.url).rstrip("/")

    def config(self) -> KubeConfig:
        return KubeConfig.from_one(cluster=Cluster(server=self.url), user=User(), namespace=NAMESPACE)

    def objects(self, plural: str, group_version: str = "v1") -> dict[str, dict[str, Any]]:
        """Name -> object of one resource in the sessions' namespace, as the emulator holds them now."""
        found: dict[str, dict[str, Any]] = {}
        for (resource, namespace, name), obj in self.emulator.objects.items():
            gv = f"{resource.group}/{resource.version}" if resource.group else resource.version
            if resource.plural == plural and gv == group_version and namespace == NAMESPACE and not obj.deleted:
                found[name] = dict(obj.raw)
        return found


@contextlib.asynccontextmanager
async def emulated_cluster() -> AsyncIterator[EmulatedCluster]:
    """The emulated API server (a TEST DOUBLE), on a random port of 127.0.0.1, with the resources byoi uses."""
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        for plural, kind in CORE.items():
            emulator.resources[f"v1/{plural}"] = kmock.ResourceInfo(namespaced=True, kind=kind)
        emulator.resources["v1/nodes"] = kmock.ResourceInfo(namespaced=False, kind="Node")
        emulator.resources["networking.k8s.io/v1/networkpolicies"] = kmock.ResourceInfo(
            namespaced=True, kind="NetworkPolicy"
        )
        yield EmulatedCluster(emulator, server)


def log_timestamp(i: int) -> str:
    """The kubelet's timestamp (RFC 3339 with nanoseconds) of a container's i-th log line: two lines share each
    timestamp, as lines written together do."""
    return f"2026-12-01T18:00:{i // 20:02d}.{(i // 2) % 10 * 100_000_000:09d}Z"


class Kubelet:
    """The test's scheduler and kubelet: status, events and logs of pods, written through the API."""

    def __init__(self, cluster: EmulatedCluster) -> None:
        self.cluster = cluster
        self.http = cluster.server.client
        self._events = 0

    def _pod_path(self, name: str) -> str:
        return f"/api/v1/namespaces/{NAMESPACE}/pods/{name}"

    async def wait_for_pod(self, name: str, timeout: float = 5.0, poll: float = 0.01) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while name not in self.cluster.objects("pods"):
            if time.monotonic() > deadline:
                raise AssertionError(f"no pod {name} was created")
            await asyncio.sleep(poll)
        return self.cluster.objects("pods")[name]

    async def status(self, name: str, status: dict[str, Any]) -> None:
        resp = await self.http.patch(
            f"{self._pod_path(name)}/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status == 200, await resp.text()

    async def event(self, name: str, reason: str, message: str, type_: str = "Normal") -> None:
        self._events += 1
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{self._events:04d}", "namespace": NAMESPACE},
            "involvedObject": {"kind": "Pod", "name": name, "namespace": NAMESPACE},
            "reason": reason,
            "message": message,
            "type": type_,
            "count": 1,
        }
        resp = await self.http.post(f"/api/v1/namespaces/{NAMESPACE}/events", json=body)
        assert resp.status in (200, 201), await resp.text()

    def logs(self, name: str, lines: list[str]) -> None:
        """What the pod's log endpoint serves from now on (the container's stdout and stderr); each line with
        its timestamp before it when `timestamps=true` is asked, as the kubelet does (`log_timestamps`)."""

        def serve(request: kmock.Request) -> bytes:
            stamped = request.params.get("timestamps") == "true"
            return "".join(
                f"{log_timestamp(i)} {line}\n" if stamped else f"{line}\n" for i, line in enumerate(lines)
            ).encode()

        self.cluster.emulator[f"get {self._pod_path(name)}/log"] << serve

    async def running(self, name: str, ip: str = "10.1.2.3") -> None:
        await self.status(
            name,
            {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": "rstudio",
                        "ready": True,
                        "restartCount": 0,
                        "image": "x",
                        "imageID": "x",
                        "state": {"running": {"startedAt": "2026-12-01T18:00:00Z"}},
                    }
                ],
            },
        )

    async def container(
        self, name: str, state: dict[str, Any], last: dict[str, Any] | None = None, phase: str = "Running"
    ) -> None:
        status: dict[str, Any] = {
            "name": "rstudio",
            "ready": False,
            "restartCount": 0,
            "image": "x",
            "imageID": "x",
            "state": state,
        }
        if last is not None:
            status["lastState"] = last
        await self.status(name, {"phase": phase, "containerStatuses": [status]})

    async def unschedulable(self, name: str, message: str) -> None:
        await self.event(name, "FailedScheduling", message, "Warning")
        await self.status(
            name,
            {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
                ],
            },
        )

    async def node(self, name: str, cpu: str, memory: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": cpu, "memory": memory}},
        }
        resp = await self.http.post("/api/v1/nodes", json=body)
        assert resp.status in (200, 201), await resp.text()


JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def add_jobs(cluster: EmulatedCluster) -> None:
    """Also serve batch/v1 Jobs (the Kubernetes image builder's): stored as given, as everything else here."""
    cluster.emulator.resources["batch/v1/jobs"] = kmock.ResourceInfo(namespaced=True, kind="Job")


class JobController:
    """The test's Job controller: makes a Job's pod from its template (as the controller would, with the
    job-name label and a suffix) and writes the Job's terminal condition. Pod statuses and logs are the
    `Kubelet`'s."""

    def __init__(self, cluster: EmulatedCluster) -> None:
        self.cluster = cluster
        self.http = cluster.server.client

    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.cluster.objects("jobs", "batch/v1")

    async def wait_for_job(self, name: str, timeout: float = 5.0, poll: float = 0.01) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while name not in self.jobs():
            if time.monotonic() > deadline:
                raise AssertionError(f"no Job {name} was created")
            await asyncio.sleep(poll)
        return self.jobs()[name]

    async def make_pod(self, job_name: str, suffix: str = "x7k2p") -> str:
        job = await self.wait_for_job(job_name)
        template = job["spec"]["template"]
        name = f"{job_name}-{suffix}"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "labels": {**template["metadata"]["labels"], JOB_NAME_LABEL: job_name},
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }
        resp = await self.http.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=body)
        assert resp.status in (200, 201), await resp.text()
        return name

    async def finish(self, job_name: str, condition: str, reason: str = "", message: str = "") -> None:
        """`condition` "Complete" or "Failed", as the controller writes it when the pod ends."""
        cond = {"type": condition, "status": "True", "reason": reason, "message": message}
        counts = {"succeeded": 1} if condition == "Complete" else {"failed": 1}
        resp = await self.http.patch(
            f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{job_name}/status",
            json={"status": {"conditions": [cond], **counts}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status == 200, await resp.text()
