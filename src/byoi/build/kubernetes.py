"""The Kubernetes backend of the `Builder` seam (build/base.py): a rootless BuildKit Job per build, through
lightkube's AsyncClient. The objects come from kubernetes_job.py; this module only sends, follows and reads.

- `build()` writes the push-credentials Secret and the Job, follows the Job's pod on a watch (the pod by the
  build's label, the Job by the same), and once the build container runs, streams its log (`follow=true`) into
  `emit`: every line as `{"k": "log", "m": line}`, except the first header line of a Dockerfile step in
  BuildKit's plain progress (`#7 [stage-1 2/3] RUN make`), which becomes `{"k": "step", "n": 2, "of": 3,
  "m": "[stage-1 2/3] RUN make"}`. The verdict is the Job's condition (Complete / Failed).
- BuildKit pushes as it builds (`--output ...,push=true`): it needs the destination at build time, so the
  request must carry it (`BuildRequest.push_to`), and the pushed manifest digest is read from
  its output (`pushing manifest for <name>@sha256:...`, else `exporting manifest list sha256:...`, else
  `exporting manifest sha256:...`; from the whole log again if the followed stream broke). `build()` returns
  that digest as the image id; `push()` returns it without pushing again.
- A failed Job is `BuildJobFailed` (a `BuildFailed`) naming the step BuildKit reported `#N ERROR:` on and its
  message (`error: failed to solve: ...`), with the last log lines; a push BuildKit could not make is
  `phase="push"`; a Job that failed without BuildKit's word says why from the Job and pod status (the active
  deadline, out of memory, the context fetch). An API server that does not answer is `BuilderUnavailable`.
- Cancelling `build()` deletes the Job (propagationPolicy Background: its pod goes with it) and the Secret.
  After a build that ended, the Secret is deleted at once (the credentials do not outlive the build) and the
  Job is left for its ttlSecondsAfterFinished, so its log can still be read.
- A Job that exists already for the same build (a build resumed on another replica after its server died) is
  followed rather than made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import httpx2 as httpx
import regex
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, Pod, Secret
from lightkube.types import CascadeType, PatchType

from byoi import kube_api
from byoi.auth.secrets import SecretBox
from byoi.build import context_url
from byoi.build.base import BUILD_ID, BuilderUnavailable, BuildFailed, BuildRequest, Emit, PushRequest
from byoi.build.kubernetes_job import (
    BUILD_CONTAINER,
    BUILD_LABEL,
    DEFAULT_IMAGE,
    FETCH_CONTAINER,
    KubernetesBuildSpec,
    job_owner_reference,
    make_build_job,
    make_push_secret,
)
from byoi.build.settings import BuildSettings

__all__ = ["BuildJobFailed", "BuildKitLog", "KubernetesBuilder", "builder_from_settings"]

PING_TIMEOUT = 5.0
RESYNC_DELAY = 0.5  # seconds before a broken watch is resumed (after a fresh read)
RESYNC_EVERY = 10.0  # seconds without a change after which the pod and the Job are read anyway
LAST_LINES = 20

_STEP = regex.compile(r"#(\d+) \[(?:(\S+) )?(\d+)/(\d+)\] (.+)")
_VERTEX_ERROR = regex.compile(r"#(\d+) ERROR: (.*)")
_VERTEX_NAME = regex.compile(r"#(\d+) ([^0-9].*)")
_PUSHED = regex.compile(r"#\d+ pushing manifest for (\S+)@(sha256:[0-9a-f]{64})")
_MANIFEST_LIST = regex.compile(r"#\d+ exporting manifest list (sha256:[0-9a-f]{64})")
_MANIFEST = regex.compile(r"#\d+ exporting manifest (sha256:[0-9a-f]{64})")
_FINAL_ERROR = regex.compile(r"(?:error|ERROR): (?:failed to solve: )?(.*)")

R = TypeVar("R")
log = logging.getLogger(__name__)
LOG_REOPENS = 5  # breaks of the followed log in a row, without a new line between, before it is given up
_STAMP = regex.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) (.*)", regex.DOTALL)


@dataclass
class LogPosition:
    """How far a timestamped log (`timestamps=true`: `2026-12-01T18:00:00.123456789Z <line>`) has been read, so
    that the same log sent again from its start gives only the lines after it. Lines that share the last
    timestamp are counted, so none is lost or repeated when several came in the same nanosecond."""

    last: tuple[int, int] | None = None  # (seconds since the epoch, nanoseconds)
    at_last: int = 0  # lines read with that timestamp
    count: int = 0  # lines given out in all
    _replayed: int = 0  # lines with the last timestamp met again in this reading

    def new(self, stamped: str) -> str | None:
        """The line without its timestamp if it is new, else None."""
        m = _STAMP.fullmatch(stamped.rstrip("\r\n"))
        if m is None:  # not timestamped (never from a kubelet): given out as it is
            self.count += 1
            return stamped
        when = datetime.fromisoformat(m[1] + ("+00:00" if m[3] == "Z" else m[3]))
        key = (int(when.timestamp()), int((m[2] or "0").ljust(9, "0")))
        if self.last is not None and key < self.last:
            return None
        if key == self.last:
            self._replayed += 1
            if self._replayed <= self.at_last:
                return None
            self.at_last += 1
        else:
            self.last, self.at_last, self._replayed = key, 1, 1
        self.count += 1
        return m[4]

    def again(self) -> None:
        """The log is being read again from its start."""
        self._replayed = 0


class BuildJobFailed(BuildFailed):
    def __init__(
        self, message: str, step: str | None = None, phase: str = "build", last_lines: list[str] | None = None
    ):
        super().__init__(message, step, phase)
        self.last_lines = list(last_lines or [])


@dataclass
class BuildKitLog:
    """BuildKit's plain progress, line by line: steps, the vertex that failed, the final error, the digest."""

    emit: Emit
    steps: dict[str, str] = field(default_factory=dict)  # vertex number -> "[2/3] RUN make"
    names: dict[str, str] = field(default_factory=dict)  # vertex number -> its first line ("exporting to image")
    failed_vertex: str | None = None
    vertex_error: str | None = None
    final_error: str | None = None
    pushed: str | None = None
    manifest_list: str | None = None
    manifest: str | None = None
    last: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES))

    def line(self, text: str, quiet: bool = False) -> None:
        text = text.rstrip("\r\n")
        if not text.strip():
            return
        if (m := _PUSHED.match(text)) is not None:
            self.pushed = m[2]
        elif (m := _MANIFEST_LIST.match(text)) is not None:
            self.manifest_list = m[1]
        elif (m := _MANIFEST.match(text)) is not None:
            self.manifest = m[1]
        if (m := _VERTEX_ERROR.match(text)) is not None:
            self.failed_vertex, self.vertex_error = m[1], m[2].strip()
        elif (m := _FINAL_ERROR.fullmatch(text)) is not None:
            self.final_error = m[1].strip()
        step = _STEP.fullmatch(text)
        if step is not None and step[1] not in self.steps:
            label = f"[{step[2] + ' ' if step[2] else ''}{step[3]}/{step[4]}] {step[5]}"
            self.steps[step[1]] = label
            self.names.setdefault(step[1], label)
            if not quiet:
                self.emit({"k": "step", "n": int(step[3]), "of": int(step[4]), "m": label})
            return
        if (m := _VERTEX_NAME.fullmatch(text)) is not None:
            self.names.setdefault(m[1], m[2])
        self.last.append(text)
        if not quiet:
            self.emit({"k": "log", "m": text})

    @property
    def digest(self) -> str | None:
        return self.pushed or self.manifest_list or self.manifest

    def failure(self) -> BuildJobFailed | None:
        """BuildKit's own account of a failure, if it gave one."""
        message = self.final_error or self.vertex_error
        if message is None:
            return None
        vertex = self.failed_vertex
        name = self.names.get(vertex or "", "")
        push = "failed to push" in message or name.startswith(("exporting to image", "pushing"))
        step = self.steps.get(vertex or "")
        return BuildJobFailed(message, step, "push" if push else "build", list(self.last))


def _container_status(pod: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainerStatuses" if init else "containerStatuses"
    for status in (pod.get("status") or {}).get(key) or []:
        if status.get("name") == name:
            return dict(status)
    return {}


def _condition(job: dict[str, Any]) -> tuple[str, str, str] | None:
    """("Complete" | "Failed", reason, message) once the Job has finished."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"]), str(cond.get("reason") or ""), str(cond.get("message") or "")
    return None


class KubernetesBuilder:
    """Builds as rootless BuildKit Jobs in one namespace of one cluster (in-cluster config, or a kubeconfig)."""

    name = "kubernetes"

    def __init__(
        self,
        namespace: str,
        config: KubeConfig | None = None,
        *,
        installation: str,
        context_url: Callable[[str], str],
        image: str = DEFAULT_IMAGE,
        fetch_image: str | None = None,
        active_deadline: int = 3600,
        ttl_after_finished: int = 600,
        start_timeout: float = 900.0,
        request_timeout: float = 10.0,
        trust_env: bool = True,
    ) -> None:
        self.namespace = namespace
        self.installation = installation
        self.context_url = context_url
        self.image = image
        self.fetch_image = fetch_image
        self.active_deadline = active_deadline
        self.ttl_after_finished = ttl_after_finished
        self.start_timeout = start_timeout
        self._config = config
        self._trust_env = trust_env
        self._timeout = httpx.Timeout(request_timeout)
        self._client: AsyncClient | None = None
        self._pushed: dict[str, tuple[str, str]] = {}  # digest -> (repository, tag) this builder pushed it to

    # -- the client and its errors ----------------------------------------------------------------

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            try:
                self._client = kube_api.make_client(self._config, self.namespace, self._timeout, self._trust_env)
            except kube_api.NoConfiguration as exc:
                raise BuilderUnavailable(str(exc)) from None
        return self._client

    def _server(self) -> str:
        try:
            return kube_api.server_of(self.client)
        except BuilderUnavailable:
            return "the configured server"

    def _gone(self, exc: BaseException) -> BuilderUnavailable:
        return BuilderUnavailable(kube_api.not_reachable(self._server(), exc))

    async def _call(self, what: str, call: Callable[[], Awaitable[R]]) -> R | None:
        """One API call: 404 gives None, another refusal BuildFailed, no answer BuilderUnavailable."""
        try:
            return await call()
        except httpx.HTTPStatusError as exc:
            code, message = kube_api.refusal(exc)
            if code == 404:
                return None
            raise BuildFailed(f"the Kubernetes API refused to {what} ({code}): {message}") from None
        except (httpx.TransportError, OSError) as exc:
            raise self._gone(exc) from None

    # -- the seam ---------------------------------------------------------------------------------

    async def base_image_ids(self, refs: Sequence[str], platform: str | None = None) -> dict[str, str] | None:
        """None: BuildKit in the Job pulls its base images from their registries as it builds, so nothing here
        knows which image a tag will name then, and builds on Kubernetes are never reused."""
        return None

    async def ping(self) -> None:
        async def first() -> None:
            async for _ in self.client.list(Job, namespace=self.namespace, chunk_size=1):
                break

        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self._call("list Jobs", first)
        except TimeoutError:
            raise BuilderUnavailable(
                f"the Kubernetes API server at {self._server()} gave no answer within {PING_TIMEOUT:g} s"
            ) from None
        except BuildFailed as exc:
            raise BuilderUnavailable(exc.message) from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def build_spec(self, request: BuildRequest) -> KubernetesBuildSpec:
        """The build's Kubernetes spec; BuildFailed when the request lacks the destination or holds a bad value."""
        build_id = request.build_id or request.context_tar.parent.name
        push_to = request.push_to
        if not BUILD_ID.fullmatch(build_id):
            raise BuildFailed("the Kubernetes builder needs the build's id with the request (BuildRequest.build_id)")
        if push_to is None:
            raise BuildFailed(
                "the Kubernetes builder pushes as it builds and needs the destination with the request "
                "(BuildRequest.push_to)"
            )
        try:
            return KubernetesBuildSpec(
                build_id=build_id,
                namespace=self.namespace,
                installation=self.installation,
                context_url=self.context_url(build_id),
                repository=push_to.repository,
                tag=push_to.tag,
                dockerfile=request.dockerfile,
                build_args=dict(request.build_args),
                target=request.target,
                labels=dict(request.labels),
                platform=request.platform,
                no_cache=request.no_cache,
                insecure=push_to.insecure,
                image=self.image,
                fetch_image=self.fetch_image,
                active_deadline=self.active_deadline,
                ttl_after_finished=self.ttl_after_finished,
            )
        except ValueError as exc:
            raise BuildFailed(f"the build cannot run on Kubernetes: {exc}") from None

    async def build(self, request: BuildRequest, emit: Emit) -> str:
        spec = self.build_spec(request)  # refuses a request without push_to
        assert request.push_to is not None
        try:
            await self._write_secret(spec, request.push_to.auth, request.pull_auths)
            job = await self._create_job(spec)
            digest = await self._follow(spec, emit, job)
        except asyncio.CancelledError:
            # Stopped: the Job goes (its pod with it), and the credentials. Shielded: the caller waits for it.
            await asyncio.shield(self._remove(spec, job=True))
            raise
        except BaseException:
            with contextlib.suppress(BuilderUnavailable, BuildFailed):
                await asyncio.shield(self._remove(spec, job=False))
            raise
        await self._remove(spec, job=False)
        self._pushed[digest] = (spec.repository, spec.tag)
        return digest

    async def push(self, request: PushRequest, emit: Emit) -> str:
        """BuildKit pushed during build(): the digest it pushed, after checking it went where it is asked to."""
        where = self._pushed.get(request.image_id)
        if where != (request.repository, request.tag):
            raise BuildFailed(
                f"the Kubernetes builder pushes while it builds; {request.image_id} was not pushed to "
                f"{request.repository}:{request.tag} by this build",
                phase="push",
            )
        emit({"k": "log", "m": f"pushed by BuildKit during the build: {request.repository}:{request.tag}"})
        return request.image_id

    # -- the objects ------------------------------------------------------------------------------

    async def _write_secret(
        self, spec: KubernetesBuildSpec, auth: dict[str, str] | None, pull_auths: dict[str, dict[str, str]]
    ) -> None:
        secret: Any = Secret.from_dict(make_push_secret(spec, auth, pull_auths))
        try:
            await self.client.create(secret)
        except httpx.HTTPStatusError as exc:
            code, message = kube_api.refusal(exc)
            if code != 409:
                raise BuildFailed(f"the Kubernetes API refused to create the push Secret ({code}): {message}") from None
            await self._call(
                "update the push Secret",
                lambda: self.client.patch(
                    Secret, spec.secret_name, secret.to_dict(), namespace=self.namespace, patch_type=PatchType.MERGE
                ),
            )
        except (httpx.TransportError, OSError) as exc:
            raise self._gone(exc) from None

    async def _create_job(self, spec: KubernetesBuildSpec) -> dict[str, Any]:
        """The Job as the API server has it (made now, or the same build's, made before)."""
        try:
            job: Any = Job.from_dict(make_build_job(spec))
            made = await self.client.create(job)
            return made.to_dict() if made is not None else {}
        except httpx.HTTPStatusError as exc:
            code, message = kube_api.refusal(exc)
            if code != 409:
                raise BuildFailed(f"the Kubernetes API refused to create the build Job ({code}): {message}") from None
            existing = await self._get(Job, spec.job_name)
            labels = ((existing or {}).get("metadata") or {}).get("labels") or {}
            if labels.get(BUILD_LABEL) != spec.build_id:
                raise BuildFailed(f"a Job named {spec.job_name} exists and is not this build's") from None
            return existing or {}  # the same build's Job, made by a server that stopped: follow it
        except (httpx.TransportError, OSError) as exc:
            raise self._gone(exc) from None

    async def _own_secret(self, spec: KubernetesBuildSpec, job: dict[str, Any]) -> bool:
        """Make the Job the owner of the push Secret once its uid is known (the API server gives it in the answer
        to the create; an emulator may only show it later); True once done."""
        uid = str((job.get("metadata") or {}).get("uid") or "")
        if not uid:
            return False
        await self._call(
            "make the build's Job own its push Secret",
            lambda: self.client.patch(
                Secret,
                spec.secret_name,
                job_owner_reference(spec, uid),
                namespace=self.namespace,
                patch_type=PatchType.MERGE,
            ),
        )
        return True

    async def _get(self, res: Any, name: str) -> dict[str, Any] | None:
        obj = await self._call(
            f"read {res.__name__} {name}", lambda: self.client.get(res, name, namespace=self.namespace)
        )
        return obj.to_dict() if obj is not None else None

    async def _pods(self, spec: KubernetesBuildSpec) -> list[dict[str, Any]]:
        async def collect() -> list[dict[str, Any]]:
            return [
                o.to_dict()
                async for o in self.client.list(Pod, namespace=self.namespace, labels={BUILD_LABEL: spec.build_id})
            ]

        found = await self._call("list the build's pods", collect) or []
        return [p for p in found if ((p.get("metadata") or {}).get("labels") or {}).get(BUILD_LABEL) == spec.build_id]

    async def _remove(self, spec: KubernetesBuildSpec, job: bool) -> None:
        if job:
            await self._call(
                f"delete the Job {spec.job_name}",
                lambda: self.client.delete(
                    Job, spec.job_name, namespace=self.namespace, cascade=CascadeType.BACKGROUND
                ),
            )
        await self._call(
            f"delete the Secret {spec.secret_name}",
            lambda: self.client.delete(Secret, spec.secret_name, namespace=self.namespace),
        )

    # -- following the Job ------------------------------------------------------------------------

    async def _pump(
        self, queue: asyncio.Queue[tuple[str, str, dict[str, Any]]], kind: str, res: Any, spec: KubernetesBuildSpec
    ) -> None:
        while True:
            try:
                watch = self.client.watch(res, namespace=self.namespace, labels={BUILD_LABEL: spec.build_id})
                async for change, obj in watch:
                    queue.put_nowait((kind, change, obj.to_dict()))
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, OSError, ValueError) as exc:
                queue.put_nowait(("resync", str(exc), {}))
            await asyncio.sleep(RESYNC_DELAY)

    async def _follow(self, spec: KubernetesBuildSpec, emit: Emit, job: dict[str, Any] | None = None) -> str:
        queue: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
        pumps = [
            asyncio.create_task(self._pump(queue, "pod", Pod, spec), name=f"byoi-build-pod-watch-{spec.build_id}"),
            asyncio.create_task(self._pump(queue, "job", Job, spec), name=f"byoi-build-job-watch-{spec.build_id}"),
        ]
        queue.put_nowait(("resync", "", {}))
        parsed = BuildKitLog(emit)
        pod: dict[str, Any] | None = None
        owned = await self._own_secret(spec, job or {})
        streamed = False
        began = time.monotonic()
        try:
            async with asyncio.timeout(self.active_deadline + self.start_timeout):
                while True:
                    wait = (
                        RESYNC_EVERY if streamed else min(RESYNC_EVERY, began + self.start_timeout - time.monotonic())
                    )
                    try:
                        kind, change, obj = await asyncio.wait_for(queue.get(), max(wait, 0.0))
                    except TimeoutError:
                        kind, change, obj = "resync", "", {}
                    if kind == "resync":
                        job = await self._get(Job, spec.job_name)
                        if job is None:
                            raise BuildJobFailed(f"the build's Job {spec.job_name} was deleted outside byoi")
                        pods = await self._pods(spec)
                        pod = pods[-1] if pods else pod
                    elif kind == "job" and change != "DELETED":
                        job = obj
                    elif kind == "job":
                        raise BuildJobFailed(f"the build's Job {spec.job_name} was deleted outside byoi")
                    elif change != "DELETED":
                        pod = obj
                    if not owned and job is not None:
                        owned = await self._own_secret(spec, job)
                    if pod is not None and not streamed and self._started(pod):
                        streamed = True
                        await self._stream(spec, pod, parsed)
                    verdict = _condition(job or {})
                    if verdict is not None:
                        return await self._verdict(spec, verdict, pod, parsed, streamed)
                    if not streamed and time.monotonic() - began >= self.start_timeout:
                        raise BuildJobFailed(await self._not_started(spec, pod))
        except TimeoutError:
            raise BuildJobFailed(
                f"the build's Job did not finish within {self.active_deadline + self.start_timeout:g} s",
                last_lines=list(parsed.last),
            ) from None
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _not_started(self, spec: KubernetesBuildSpec, pod: dict[str, Any] | None) -> str:
        """Why BuildKit has not started within start_timeout: the Job's FailedCreate event when it made no pod
        (a Pod Security level, a quota or an admission webhook refusing it), else what the pod waits for."""
        limit = f"the build did not start within {self.start_timeout:g} s"
        if pod is None:
            said = [
                str(ev.get("message") or "").strip()
                for ev in await self._job_events(spec)
                if ev.get("reason") == "FailedCreate"
            ]
            if said:
                return f"{limit}: the Job could not make its pod: {said[-1]}"
            return f"{limit}: the Job made no pod (see `kubectl -n {self.namespace} describe job {spec.job_name}`)"
        status = pod.get("status") or {}
        for name, init in ((FETCH_CONTAINER, True), (BUILD_CONTAINER, False)):
            waiting = (_container_status(pod, name, init).get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                return (
                    f"{limit}: its {name} container waits: {waiting['reason']} {waiting.get('message') or ''}".strip()
                )
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"{limit}: its pod is not scheduled: {cond.get('message') or cond.get('reason') or ''}".strip()
        return f"{limit}: its pod is {status.get('phase') or 'Pending'}"

    async def _job_events(self, spec: KubernetesBuildSpec) -> list[dict[str, Any]]:
        async def collect() -> list[dict[str, Any]]:
            found = self.client.list(Event, namespace=self.namespace, fields={"involvedObject.name": spec.job_name})
            return [o.to_dict() async for o in found]

        with contextlib.suppress(BuildFailed):  # events are a courtesy: a Role without them still fails clearly
            events = await self._call("list the Job's events", collect) or []
            wanted = {"kind": "Job", "name": spec.job_name}
            return [e for e in events if {k: (e.get("involvedObject") or {}).get(k) for k in wanted} == wanted]
        return []

    def _started(self, pod: dict[str, Any]) -> bool:
        """Whether the build container has started (its log can be followed); raise when it cannot start."""
        for name, init in ((FETCH_CONTAINER, True), (BUILD_CONTAINER, False)):
            state = _container_status(pod, name, init).get("state") or {}
            waiting = state.get("waiting") or {}
            reason, message = str(waiting.get("reason") or ""), str(waiting.get("message") or "").strip()
            if reason in kube_api.PULL_FAILURES | kube_api.CREATE_FAILURES:
                raise BuildJobFailed(f"the build's {name} container could not start: {reason}: {message}".rstrip(": "))
        state = _container_status(pod, BUILD_CONTAINER).get("state") or {}
        return state.get("running") is not None or state.get("terminated") is not None

    async def _lines(self, pod: str, container: str, follow: bool, timestamps: bool = False) -> AsyncIterator[str]:
        stream = self.client.log(pod, namespace=self.namespace, container=container, follow=follow,
                                 timestamps=timestamps)  # fmt: skip
        try:
            async for line in stream:
                yield line
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def _stream(self, spec: KubernetesBuildSpec, pod: dict[str, Any], parsed: BuildKitLog) -> None:
        """Follow the build container's log to its end (the container's), each line through `parsed`.

        The log is asked for with the kubelet's timestamps, so that a stream that breaks (an API server restarted,
        a proxy's timeout, a replica's network) is opened again and read on from the last line seen: the lines
        up to it are skipped by their timestamp (the whole log is sent again; the kubelet's clock, not ours, so
        no skew). After LOG_REOPENS breaks in a row without a new line, it says so in the log and stops
        following; the verdict then reads the whole log once more for the digest and the failure."""
        name = str((pod.get("metadata") or {}).get("name"))
        seen = LogPosition()
        breaks = 0
        while True:
            before = seen.count
            seen.again()
            try:
                async for stamped in self._lines(name, BUILD_CONTAINER, follow=True, timestamps=True):
                    line = seen.new(stamped)
                    if line is not None:
                        parsed.line(line)
                return  # the stream ended: the container has
            except httpx.HTTPStatusError as exc:
                code, message = kube_api.refusal(exc)
                parsed.emit({"k": "log", "m": f"(the build's log could not be read: {code} {message})"})
                return
            except (httpx.TransportError, OSError) as exc:
                breaks = 0 if seen.count > before else breaks + 1
                why = str(exc) or type(exc).__name__
                if breaks >= LOG_REOPENS:
                    parsed.emit({"k": "log", "m": f"(the build's log was cut: {why})"})
                    return
                log.info("the log of build %s broke after %d lines (%s); reading on", spec.build_id, seen.count, why)
            await asyncio.sleep(RESYNC_DELAY)

    async def _verdict(
        self,
        spec: KubernetesBuildSpec,
        verdict: tuple[str, str, str],
        pod: dict[str, Any] | None,
        parsed: BuildKitLog,
        streamed: bool,
    ) -> str:
        kind, reason, message = verdict
        if parsed.digest is None and pod is not None and not (kind == "Failed" and parsed.failure()):
            # The followed stream broke (or never started): BuildKit's whole output is read once more, quietly.
            reread = BuildKitLog(parsed.emit)
            name = str((pod.get("metadata") or {}).get("name"))
            with contextlib.suppress(httpx.HTTPError, OSError):
                async for line in self._lines(name, BUILD_CONTAINER, follow=False):
                    reread.line(line, quiet=streamed)
            parsed = reread if reread.digest or reread.failure() else parsed
        if kind == "Complete":
            if parsed.digest is None:
                raise BuildJobFailed(
                    "BuildKit finished without reporting the pushed manifest's digest", last_lines=list(parsed.last)
                )
            return parsed.digest
        failure = parsed.failure()
        if failure is not None:
            raise failure
        # The Job's watch may run ahead of the pod's: the pod as it ended, read afresh.
        pods = await self._pods(spec)
        pod = pods[-1] if pods else pod
        raise BuildJobFailed(self._why(spec, reason, message, pod), last_lines=list(parsed.last))

    def _why(self, spec: KubernetesBuildSpec, reason: str, message: str, pod: dict[str, Any] | None) -> str:
        """Why a Job failed when BuildKit did not say: its deadline, the context fetch, memory, the exit code."""
        if reason == "DeadlineExceeded":
            return (
                f"the build ran longer than {spec.active_deadline} s (the Job's activeDeadlineSeconds) and was stopped"
            )
        if pod is not None:
            fetch = (_container_status(pod, FETCH_CONTAINER, True).get("state") or {}).get("terminated") or {}
            if fetch.get("exitCode") not in (None, 0):
                said = f": {fetch['message']}" if fetch.get("message") else ""
                return f"the build context could not be fetched (exit code {fetch['exitCode']}){said}"
            term = (_container_status(pod, BUILD_CONTAINER).get("state") or {}).get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                return f"BuildKit ran out of memory (the build's limit is {spec.memory})"
            if term.get("exitCode") is not None:
                return f"BuildKit exited with code {term['exitCode']}: {term.get('reason') or ''}".rstrip(": ")
        return f"the build's Job failed: {': '.join(p for p in (reason, message) if p) or 'no reason given'}"


def builder_from_settings(
    settings: BuildSettings, installation: str, base_url: str, secrets: SecretBox
) -> KubernetesBuilder:
    """The builder `byoi server --builder kubernetes` builds with, from its BYOI_BUILD_KUBE_* settings; the Job
    fetches each context from a signed URL on `base_url` (build/context_url.py)."""
    from byoi.runtime.settings import kube_namespace

    key = secrets.derived_key(context_url.KEY_PURPOSE)
    return KubernetesBuilder(
        kube_namespace(settings.kube_namespace),
        KubeConfig.from_file(settings.kube_config) if settings.kube_config else None,
        installation=installation,
        context_url=lambda build_id: context_url.sign(base_url, key, build_id),
        image=settings.kube_image,
    )
