"""The Kubernetes backend of the `SessionRuntime` seam (runtime/base.py), through lightkube's AsyncClient: I/O
only: the objects come from kubernetes_spec.py, what pod statuses and events mean from kubernetes_pods.py, and
the watches launches share from kubernetes_watch.py.

A session is, in one namespace: a pod running rserver on TCP port 8787, a ClusterIP Service in front of it
(the endpoint byoi's proxy dials), a Secret holding byoi's files, the profile's home claim (kept when the
session goes: homes persist), and one NetworkPolicy per installation that admits only byoi's control plane.

How the seam's steps map onto Kubernetes, which has no "created, not started" container:

- `ensure_image` cannot pull: the kubelet of whichever node the pod lands on pulls when the pod starts. It
  writes the registry credentials byoi has as a `kubernetes.io/dockerconfigjson` Secret (used as the pod's
  imagePullSecrets) and returns False; it also remembers its progress callback for the calling task (a
  ContextVar), so that `start`, later in the same launch, reports the pull from the pod's events through it.
- `create` makes the claim (if missing), the Service, the NetworkPolicy and the Secret of byoi's files
  (`SessionSpec.files`), and keeps the pod's spec in this process; `start` creates the pod, with the files
  mounted read-only one by one (subPath) over the image's, and waits until its container runs. While the pod
  is created but not yet started, `state` says CREATED (the Service exists, the pod not).
- `read_image_file` returns None: an image's files cannot be read before a pod runs it (and the API has no archive
  endpoint). The launcher then writes Renviron.site with byoi's lines only (`merged_renviron(None, env)`),
  mounted over the image's own: an image's Renviron.site entries are not seen in a Kubernetes session (R's
  Renviron and the image's Rprofile.site still are; variables an image sets with ENV reach R anyway, as the
  container environment is copied into Renviron.site).
- `start` waits on watches, not a poll loop (the emulator the tests use serves watches): one watch on the
  namespace's byoi pods and one on its pod events, shared by every launch waiting at the moment
  (`SharedWatch`; one pair per launch ran out of the client's 100 pooled connections at 100 concurrent
  launches), each change routed to its pod's waiter; a watch that breaks is resumed after a short back-off
  and every waiter reads its pod afresh (resync), as it does after RESYNC_EVERY seconds without a change (so
  a change a watch missed delays a launch by at most that). It reports "pulling" when the kubelet's `Pulling` event
  comes and the image's bytes when the `Pulled` event gives its size (the kubelet reports no per-layer
  progress), and fails with the reason:
  `ImagePullBackOff` / `ErrImagePull` and the kubelet's message, `Unschedulable` naming the resource the
  scheduler found short (unless the cluster autoscaler reported `TriggeredScaleUp`, then it keeps waiting),
  other container-creation errors, or no start within `start_timeout`. A container that starts and exits is
  left to `state` (exited with code, `OOMKilled` as out of memory, CrashLoopBackOff with the last exit), and
  the launcher adds the last log lines.
- `remove` deletes the pod (grace period = stop_timeout), the Service and the files Secret, waits (short
  back-off reads) until the pod is gone so a launch may reuse the name, and keeps the claim.
- `list_managed` lists pods and Services by label (created-not-started sessions too, so their leftovers are
  orphans the reconciler removes), filtering on the client as well: the emulator ignores label selectors.

Label values are hashed where they are not valid label values (an app ARN), with the value in an annotation;
`list_managed` gives the original values back (kubernetes_spec.labels_and_annotations).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import httpx2 as httpx
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Node, PersistentVolumeClaim, Pod, Secret, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import PatchType
from lightkube.utils.quantity import parse_quantity

from byoi import kube_api
from byoi.runtime.base import (
    GONE,
    Endpoint,
    ManagedSession,
    ProgressCallback,
    RuntimeFailure,
    SessionState,
    StateKind,
    Unreachable,
)
from byoi.runtime.instance_types import HostCapacity, InstanceTypes
from byoi.runtime.kubernetes_pods import StartWatch, pod_state
from byoi.runtime.kubernetes_spec import (
    CONTAINER,
    CREATED_ANNOTATION,
    FILES_ANNOTATION,
    INSTALLATION,
    NAME_ANNOTATION,
    PORT_NAME,
    KubernetesSessionSpec,
    digest,
    from_session_spec,
    make_files_secret,
    make_home_pvc,
    make_network_policy,
    make_pod,
    make_pull_secret,
    make_service,
    object_name,
    pull_secret_name,
    selector_labels,
)
from byoi.runtime.kubernetes_watch import SharedWatch
from byoi.runtime.settings import RuntimeSettings, kube_namespace, label_pairs
from byoi.runtime.spec import SessionSpec

__all__ = ["KubernetesRuntime", "pod_state", "runtime_from_settings", "StartWatch"]

PING_TIMEOUT = 5.0
RESYNC_EVERY = 10.0  # seconds without a change after which a waiting start() reads its pod anyway
GONE_POLL = (0.05, 1.0)  # first and longest wait between reads while a removed pod terminates
CAPACITY_TTL = 60.0  # nodes come and go (autoscaling): their allocatable is read again after this long
# The sessions' NetworkPolicy and the registries' pull Secrets are made sure of again after this long: one
# deleted by hand (or by a namespace clean-up) is back within a minute, not at byoi's next restart. Without the
# policy, sessions would admit anyone in the cluster; without the Secret, launches would fail ImagePullBackOff.
ENSURE_AGAIN = 60.0
DOMAIN_LABEL = "byoi.domain-id"
PROFILE_LABEL = "byoi.user-profile"

# The progress callback ensure_image was given, for the rest of the calling task (the launch): start() reports
# the kubelet's pull through it. Each launch runs in its own task, so concurrent launches never share one.
_PROGRESS: contextvars.ContextVar[ProgressCallback | None] = contextvars.ContextVar("byoi_k8s_progress", default=None)

R = TypeVar("R")


def _recent(made_at: float | None) -> bool:
    """Whether something this process made sure of at `made_at` (monotonic time) need not be checked again yet."""
    return made_at is not None and time.monotonic() - made_at < ENSURE_AGAIN


def _when(value: Any) -> float:
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


class KubernetesRuntime:
    """Sessions as pods in one namespace of one cluster (in-cluster config, or a kubeconfig)."""

    name = "kubernetes"

    def __init__(
        self,
        namespace: str = "byoi-sessions",
        config: KubeConfig | None = None,
        *,
        instance_types: InstanceTypes | None = None,
        storage_class: str | None = None,
        access_mode: str = "ReadWriteOnce",
        home_size: str = "10Gi",
        image_pull_secrets: tuple[str, ...] = (),
        control_plane_labels: dict[str, str] | None = None,
        control_plane_namespace: str | None = None,
        start_timeout: float = 900.0,
        stop_timeout: int = 10,
        cluster_domain: str = "cluster.local",
        capacity: HostCapacity | None = None,
        request_timeout: float = 10.0,
        trust_env: bool = True,
    ) -> None:
        self.namespace = namespace
        self._config = config
        self._trust_env = trust_env
        self._timeout = httpx.Timeout(request_timeout)  # per request (a watch's read waits as long as it must)
        self._client: AsyncClient | None = None
        self.instance_types = instance_types or InstanceTypes()
        self.storage_class = storage_class
        self.access_mode = access_mode
        self.home_size = home_size
        self.image_pull_secrets = tuple(image_pull_secrets)
        self.control_plane_labels = control_plane_labels
        self.control_plane_namespace = control_plane_namespace
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout  # the pods' terminationGracePeriodSeconds (an eviction, a drain)
        self.cluster_domain = cluster_domain
        self._fixed_capacity = capacity
        self._capacity: tuple[float, HostCapacity] | None = None
        self._registries: dict[str, str] = {}  # registry host -> pull Secret written by ensure_image
        # registry host -> (digest of the credentials its Secret holds, when it was written)
        self._written: dict[str, tuple[str, float]] = {}
        self._created: dict[str, KubernetesSessionSpec] = {}  # created, not started: the pod's spec
        self._policies: dict[str, float] = {}  # installation -> when this process last made sure of its policy
        self._watches = SharedWatch(lambda: self.client, namespace)

    # -- the client and its errors ----------------------------------------------------------------

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            try:
                self._client = kube_api.make_client(self._config, self.namespace, self._timeout, self._trust_env)
            except kube_api.NoConfiguration as exc:
                raise Unreachable(str(exc)) from None
        return self._client

    def _server(self) -> str:
        try:
            return kube_api.server_of(self.client)
        except Unreachable:
            return "the configured server"

    async def _call(self, what: str, call: Callable[[], Awaitable[R]]) -> R | None:
        """Run one API call; 404 gives None, other refusals RuntimeFailure, no answer Unreachable."""
        try:
            return await call()
        except httpx.HTTPStatusError as exc:
            code, message = kube_api.refusal(exc)
            if code == 404:
                return None
            raise RuntimeFailure(f"Kubernetes API refused to {what} ({code}): {message}") from None
        except (httpx.TransportError, OSError) as exc:
            raise Unreachable(kube_api.not_reachable(self._server(), exc)) from None

    async def _create(self, what: str, obj: Any, replace_on_conflict: bool = False) -> None:
        """Create `obj`; one that exists already is left (or, with replace_on_conflict, patched to `obj`)."""
        try:
            await self.client.create(obj)
        except httpx.HTTPStatusError as exc:
            code, message = kube_api.refusal(exc)
            if code != 409:
                raise RuntimeFailure(f"Kubernetes API refused to create {what} ({code}): {message}") from None
            if replace_on_conflict:
                name = obj.metadata.name if obj.metadata else ""
                await self._call(
                    f"update {what}",
                    lambda: self.client.patch(
                        type(obj), name, obj.to_dict(), namespace=self.namespace, patch_type=PatchType.MERGE
                    ),
                )
        except (httpx.TransportError, OSError) as exc:
            raise Unreachable(kube_api.not_reachable(self._server(), exc)) from None

    async def _get(self, res: Any, name: str) -> dict[str, Any] | None:
        obj = await self._call(
            f"read {res.__name__} {name}", lambda: self.client.get(res, name, namespace=self.namespace)
        )
        return obj.to_dict() if obj is not None else None

    async def _list(self, res: Any, labels: dict[str, Any]) -> list[dict[str, Any]]:
        async def collect() -> list[dict[str, Any]]:
            return [o.to_dict() async for o in self.client.list(res, namespace=self.namespace, labels=labels)]

        found = await self._call(f"list {res.__name__}s", collect)
        # The API server filters by the selector; filtering again costs nothing and keeps the emulator honest.
        return [
            o
            for o in found or []
            if all(((o.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    async def _delete(self, res: Any, name: str, grace: int | None = None) -> None:
        await self._call(
            f"delete {res.__name__} {name}",
            lambda: self.client.delete(res, name, namespace=self.namespace, grace_period=grace),
        )

    # -- the seam -----------------------------------------------------------------------------------

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self._call("list pods", lambda: self._first_pod())
        except TimeoutError:
            raise Unreachable(
                f"the Kubernetes API server at {self._server()} gave no answer within {PING_TIMEOUT:g} s"
            ) from None

    async def _first_pod(self) -> None:
        async for _ in self.client.list(Pod, namespace=self.namespace, chunk_size=1):
            break

    async def close(self) -> None:
        await self._watches.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def capacity(self) -> HostCapacity:
        """The most CPUs and the most memory any one node can give a pod (its allocatable), read again every
        CAPACITY_TTL seconds. A type that fits no single node stays Pending and fails Unschedulable naming the
        resource. Without the right to list nodes, configure `capacity`."""
        if self._fixed_capacity is not None:
            return self._fixed_capacity
        if self._capacity is not None and time.monotonic() - self._capacity[0] < CAPACITY_TTL:
            return self._capacity[1]

        async def nodes() -> list[dict[str, Any]]:
            return [n.to_dict() async for n in self.client.list(Node)]

        found = await self._call("list nodes (to size sessions; or configure the capacity)", nodes)
        cpus, memory = 0, 0
        for node in found or []:
            alloc = (node.get("status") or {}).get("allocatable") or {}
            cpu, mem = parse_quantity(alloc.get("cpu")), parse_quantity(alloc.get("memory"))
            cpus = max(cpus, int(cpu) if cpu is not None else 0)
            memory = max(memory, int(mem) if mem is not None else 0)
        if not cpus or not memory:
            raise RuntimeFailure("the cluster reports no node with allocatable CPU and memory")
        self._capacity = (time.monotonic(), HostCapacity(cpus, memory, "the largest node"))
        return self._capacity[1]

    async def ensure_image(self, ref: str, auth: dict[str, str] | None, on_progress: ProgressCallback) -> bool:
        """The kubelet pulls when the pod starts: write the pull Secret, remember `on_progress` for `start`."""
        _PROGRESS.set(on_progress)
        registry = ref.split("/", 1)[0]
        if auth:
            written = digest(json.dumps(auth, sort_keys=True))
            known = self._written.get(registry)
            if known is None or known[0] != written or not _recent(known[1]):  # once a minute per registry and key
                secret = Secret.from_dict(make_pull_secret(self.namespace, registry, auth))
                await self._create(f"the pull Secret for {registry}", secret, replace_on_conflict=True)
                self._written[registry] = (written, time.monotonic())
            self._registries[registry] = pull_secret_name(registry)
        return False

    def kube_spec(self, spec: SessionSpec) -> KubernetesSessionSpec:
        """The session's Kubernetes spec: its home claim is the profile's (domain, profile name and home
        directory name, as services/session_files.home_dir keys a home), its placement the instance type's."""
        domain = spec.labels.get(DOMAIN_LABEL, "")
        home_key = f"{domain}/{os.path.basename(spec.home_host_path.rstrip('/'))}"
        instance_type = str(getattr(spec, "instance_type", "") or "")
        registry = spec.image.split("/", 1)[0]
        pull = tuple(dict.fromkeys([*self.image_pull_secrets, *filter(None, [self._registries.get(registry)])]))
        home_labels = {k: spec.labels[k] for k in (INSTALLATION, DOMAIN_LABEL, PROFILE_LABEL) if k in spec.labels}
        return from_session_spec(
            spec,
            namespace=self.namespace,
            pvc_name=f"byoi-home-{digest(home_key, 24)}",
            placement=self.instance_types.placement_of(instance_type),
            pull_secrets=pull,
            storage_class=self.storage_class,
            access_mode=self.access_mode,
            home_size=self.home_size,
            home_labels=home_labels,
            home_key=home_key,
            created_at=time.time(),
            stop_timeout=self.stop_timeout,
        )

    async def create(self, spec: SessionSpec) -> None:
        try:
            kspec = self.kube_spec(spec)
            make_pod(kspec)  # refused here, before anything is created, if a label or value cannot be sent
        except ValueError as exc:
            raise RuntimeFailure(f"the session cannot run on Kubernetes: {exc}") from None
        installation = spec.labels.get(INSTALLATION)
        if installation and not _recent(self._policies.get(installation)):
            policy = make_network_policy(
                self.namespace, installation, self.control_plane_labels, self.control_plane_namespace
            )
            await self._create("the sessions' NetworkPolicy", NetworkPolicy.from_dict(policy))
            self._policies[installation] = time.monotonic()
        pvc = make_home_pvc(kspec)
        if await self._get(PersistentVolumeClaim, kspec.pvc_name) is None:
            await self._create("the home's PersistentVolumeClaim", PersistentVolumeClaim.from_dict(pvc))
        await self._create("the session's Service", Service.from_dict(make_service(kspec)), replace_on_conflict=True)
        if spec.files:
            secret = Secret.from_dict(make_files_secret(kspec, spec.files))
            await self._create("the session's files Secret", secret, replace_on_conflict=True)
            kspec = replace(kspec, files=tuple(sorted(spec.files)))
        self._created[spec.name] = kspec

    async def read_image_file(self, image: str, path: str) -> bytes | None:
        """None: the API cannot read an image's files (see the module docstring for what byoi does)."""
        return None

    async def start(self, name: str, on_progress: ProgressCallback | None = None) -> None:
        """Create the pod and wait until its container runs (scheduled, pulled, started), or fail saying why."""
        kspec = self._created.get(name)
        if kspec is None:
            raise RuntimeFailure(f"the session {name} was not created by this byoi process; it is launched again")
        if not kspec.files:  # written by another process before a restart: the Secret says which files
            secret = await self._get(Secret, kspec.files_secret)
            paths = json.loads(
                ((secret or {}).get("metadata") or {}).get("annotations", {}).get(FILES_ANNOTATION, "[]")
            )
            kspec = replace(kspec, files=tuple(paths))
        await self._create("the session's pod", Pod.from_dict(make_pod(kspec)))
        await self._wait_started(kspec.object_name, on_progress or _PROGRESS.get())

    async def _wait_started(self, pod_name: str, on_progress: ProgressCallback | None) -> None:
        seen = StartWatch()
        queue = self._watches.subscribe(pod_name)
        queue.put_nowait(("resync", "", {}))  # one read of the pod as it is now, whatever the watch has sent
        try:
            async with asyncio.timeout(self.start_timeout):
                while True:
                    try:
                        kind, change, obj = await asyncio.wait_for(queue.get(), RESYNC_EVERY)
                    except TimeoutError:  # quiet for a while: read the pod, in case a change was missed
                        kind, change, obj = "resync", "", {}
                    if kind == "resync":
                        seen.pod = await self._get(Pod, pod_name)
                        seen.deleted = seen.pod is None
                    elif kind == "pod":
                        seen.pod, seen.deleted = (None, True) if change == "DELETED" else (obj, False)
                    else:
                        progress = seen.event(obj)
                        if progress is not None and on_progress is not None:
                            await on_progress(progress)
                    if seen.verdict():
                        return
        except TimeoutError:
            raise RuntimeFailure(
                f"the session's pod did not start within {self.start_timeout:g} s; waiting for {seen.waiting_for()}"
            ) from None
        finally:
            await self._watches.unsubscribe(pod_name)

    async def state(self, name: str) -> SessionState:
        obj = object_name(name)
        pod = await self._get(Pod, obj)
        if pod is None:
            return SessionState(StateKind.CREATED) if await self._get(Service, obj) is not None else GONE
        return pod_state(pod)

    async def endpoint(self, name: str) -> Endpoint | None:
        """The session's Service: its ClusterIP (a headless one: its cluster DNS name) and its http port."""
        svc = await self._get(Service, object_name(name))
        if svc is None:
            return None
        spec = svc.get("spec") or {}
        port = next((p.get("port") for p in spec.get("ports") or [] if p.get("name") == PORT_NAME), None)
        if not port:
            return None
        ip = spec.get("clusterIP")
        host = ip if ip and ip != "None" else f"{object_name(name)}.{self.namespace}.svc.{self.cluster_domain}"
        return Endpoint(host=str(host), port=int(port))

    async def answers(self, name: str, root_path: str, timeout: float = 2.0, endpoint: Endpoint | None = None) -> bool:
        endpoint = endpoint or await self.endpoint(name)
        if endpoint is None or endpoint.host is None:
            return False
        headers = {"X-RStudio-Root-Path": root_path.rstrip("/") or "/"}
        transport = httpx.AsyncHTTPTransport(verify=False)  # plain HTTP: no CA bundle to load per probe
        async with httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False) as http:
            try:
                await http.get(f"http://{endpoint.host}:{endpoint.port}/", headers=headers)
                return True
            except httpx.TransportError:
                return False

    async def logs_tail(self, name: str, lines: int = 50) -> list[str]:
        """The container's last log lines; none while it has not started (the API refuses with 400)."""

        async def read() -> list[str]:
            stream = self.client.log(object_name(name), namespace=self.namespace, container=CONTAINER, tail_lines=lines)
            return [line async for line in stream]

        try:
            found = await self._call("read the session's log", read)
        except RuntimeFailure as exc:
            if "(400)" in str(exc):
                return []
            raise
        return [line.rstrip("\n") for line in found or [] if line.strip()][-lines:]

    async def remove(self, name: str, stop_timeout: int = 10) -> None:
        """Delete the pod (TERM, then KILL after `stop_timeout`), its Service and files Secret, and wait until the
        pod is gone; the home claim stays. A session that is not there is fine."""
        obj = object_name(name)
        self._created.pop(name, None)
        await self._delete(Pod, obj, grace=stop_timeout)
        await self._delete(Service, obj)
        await self._delete(Secret, f"{obj}-files")
        deadline = time.monotonic() + stop_timeout + 30
        delay = GONE_POLL[0]
        while await self._get(Pod, obj) is not None:
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"the session's pod {obj} is still terminating after {stop_timeout + 30} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, GONE_POLL[1])

    async def list_managed(self, labels: dict[str, str]) -> list[ManagedSession]:
        """Pods and Services carrying all these labels: a Service without its pod is a created, not started
        session (or a leftover the reconciler removes as an orphan)."""
        selector = selector_labels(labels)
        found: dict[str, ManagedSession] = {}
        for kind in (Service, Pod):
            for item in await self._list(kind, selector):
                meta = item.get("metadata") or {}
                annotations = meta.get("annotations") or {}
                original = {k: annotations.get(k, v) for k, v in (meta.get("labels") or {}).items()}
                name = str(annotations.get(NAME_ANNOTATION) or meta.get("name"))
                created = _when(meta.get("creationTimestamp")) or float(annotations.get(CREATED_ANNOTATION) or 0)
                running = kind is Pod and pod_state(item).running
                found[name] = ManagedSession(name=name, labels=original, running=running, created_at=created)
        return list(found.values())

    async def remove_domain_homes(self, domain_id: str, installation: str | None = None) -> None:
        """Delete the home claims of a domain (DeleteDomain with RetentionPolicy Delete): of this installation's
        when it is given, so that another installation sharing the namespace keeps its own."""
        wanted = {DOMAIN_LABEL: domain_id, **({INSTALLATION: installation} if installation else {})}
        for claim in await self._list(PersistentVolumeClaim, selector_labels(wanted)):
            await self._delete(PersistentVolumeClaim, str((claim.get("metadata") or {}).get("name")))


def runtime_from_settings(rt: RuntimeSettings, types: InstanceTypes) -> KubernetesRuntime:
    """The runtime `byoi server --runtime kubernetes` runs sessions with, from its BYOI_SESSION_KUBE_* settings:
    the cluster from BYOI_SESSION_KUBE_CONFIG, else in-cluster config or KUBECONFIG (lightkube's order)."""
    fixed = None
    if rt.kube_node_cpus > 0:
        fixed = HostCapacity(
            rt.kube_node_cpus,
            int(rt.kube_node_memory_gib * (1 << 30)),
            "a node (BYOI_SESSION_KUBE_NODE_CPUS, _MEMORY_GIB)",
        )
    return KubernetesRuntime(
        kube_namespace(rt.kube_namespace),
        KubeConfig.from_file(rt.kube_config) if rt.kube_config else None,
        instance_types=types,
        storage_class=rt.kube_storage_class or None,
        access_mode=rt.kube_access_mode,
        home_size=rt.kube_home_size,
        image_pull_secrets=tuple(s for s in rt.kube_pull_secrets.split(",") if s),
        control_plane_labels=label_pairs(rt.kube_control_plane_labels),
        control_plane_namespace=rt.kube_control_plane_namespace or None,
        start_timeout=rt.kube_start_timeout,
        stop_timeout=rt.stop_timeout,
        capacity=fixed,
    )
