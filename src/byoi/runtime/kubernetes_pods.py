"""What a session's pod says, as plain functions of the dicts the API server gives: its typed state (`pod_state`),
and what `start` has seen of a new pod and its events (`StartWatch`: started, still on its way, or failed with
the kubelet's or the scheduler's reason). No I/O: the runtime (kubernetes.py) reads and watches, and these
decide; tests/test_kubernetes_runtime.py drives them through the runtime against the emulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import regex

from byoi.kube_api import CREATE_FAILURES, PULL_FAILURES
from byoi.runtime.base import GONE, RuntimeFailure, SessionState, StateKind
from byoi.runtime.kubernetes_spec import CONTAINER
from byoi.runtime.spec import PullProgress

__all__ = ["StartWatch", "pod_state", "unschedulable_reason"]

_IMAGE_SIZE = regex.compile(r"Image size: (\d+) bytes")
_INSUFFICIENT = regex.compile(r"Insufficient ([A-Za-z0-9./_-]*[A-Za-z0-9])")
# The scheduler's word for a home claim a storage class with Immediate binding has not bound yet: it binds in
# moments (a new profile's first session), so it is waited for, up to the start timeout, not a failure.
_WAITING_FOR_CLAIM = regex.compile(r"unbound immediate PersistentVolumeClaims")


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return dict(status)
    return {}


def _terminated(term: dict[str, Any], error: str | None = None) -> SessionState:
    code = term.get("exitCode")
    reason = str(term.get("reason") or "")
    kind = StateKind.OUT_OF_MEMORY if reason == "OOMKilled" else StateKind.EXITED
    words = error or ": ".join(p for p in (reason, str(term.get("message") or "").strip()) if p) or None
    return SessionState(
        kind,
        exit_code=int(code) if code is not None else None,
        error=words,
        finished_at=str(term.get("finishedAt") or "") or None,
    )


def pod_state(pod: dict[str, Any] | None) -> SessionState:
    """The typed state of a pod (a dict as the API server gives it). Being deleted counts as gone, as Docker's
    "removing": the exit code then is the kill's, not RStudio's."""
    if pod is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return GONE
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    container = _container(pod)
    state = container.get("state") or {}
    if state.get("running") is not None:  # {} is running too (startedAt is optional)
        return SessionState(StateKind.RUNNING)
    if state.get("terminated") is not None:
        return _terminated(state["terminated"])
    waiting = state.get("waiting") or {}
    last = (container.get("lastState") or {}).get("terminated")  # a dict when the container ran before
    if waiting.get("reason") == "CrashLoopBackOff" and last:
        return _terminated(last, f"CrashLoopBackOff: {waiting.get('message') or 'back-off restarting the container'}")
    if phase in ("Failed", "Succeeded", "Unknown"):
        words = ": ".join(p for p in (status.get("reason"), status.get("message")) if p)
        if phase == "Unknown":
            words = words or "the pod's node stopped reporting (phase Unknown)"
        return SessionState(StateKind.EXITED, exit_code=0 if phase == "Succeeded" else None, error=words or None)
    error = ": ".join(p for p in (waiting.get("reason"), waiting.get("message")) if p)
    return SessionState(StateKind.CREATED, error=error or None)


def unschedulable_reason(message: str) -> str:
    """The scheduler's words, led by the resources it found short ("not enough cpu, memory")."""
    short = sorted(set(_INSUFFICIENT.findall(message)))
    if short:
        return f"Unschedulable: no node has enough {', '.join(short)} for this instance type ({message.strip()})"
    return f"Unschedulable: {message.strip() or 'no node can run this session'}"


@dataclass
class StartWatch:
    """What `start` has seen of a new pod: its latest state and the events about it. `verdict()` says whether
    the container started (True), is still on its way (None), or failed (RuntimeFailure raised)."""

    pod: dict[str, Any] | None = None
    seen_events: set[str] = field(default_factory=set)
    scheduling: str = ""  # the last FailedScheduling message
    scaling_up: bool = False  # the cluster autoscaler is adding a node for it
    pulled: PullProgress | None = None
    pulling: bool = False
    deleted: bool = False

    def event(self, ev: dict[str, Any]) -> PullProgress | None:
        """Take one Event; the pull progress it tells, if any."""
        meta = ev.get("metadata") or {}
        key = f"{meta.get('name')}/{ev.get('count')}/{ev.get('reason')}"
        if key in self.seen_events:
            return None
        self.seen_events.add(key)
        reason, message = str(ev.get("reason") or ""), str(ev.get("message") or "")
        if reason == "FailedScheduling":
            self.scheduling = message
        elif reason == "TriggeredScaleUp":
            self.scaling_up = True
        elif reason == "Pulling" and not self.pulling:
            self.pulling = True
            return PullProgress(layers=1)
        elif reason == "Pulled":
            size = _IMAGE_SIZE.search(message)
            if size:  # "already present on machine" says no size: nothing was fetched
                n = int(size.group(1))
                self.pulled = PullProgress(done=n, total=n, layers=1, layers_done=1)
                return self.pulled
        return None

    def verdict(self) -> bool | None:
        if self.deleted:
            return True  # gone: the launcher sees it in state()
        if self.pod is None:
            return None
        status = self.pod.get("status") or {}
        container = _container(self.pod)
        state = container.get("state") or {}
        last = (container.get("lastState") or {}).get("terminated")
        if state.get("running") is not None or state.get("terminated") is not None or last is not None:
            return True  # started (an exit is state()'s to tell, with the logs)
        if status.get("phase") in ("Running", "Succeeded", "Failed", "Unknown"):
            return True
        waiting = state.get("waiting") or {}
        reason, message = str(waiting.get("reason") or ""), str(waiting.get("message") or "").strip()
        if reason in PULL_FAILURES:
            raise RuntimeFailure(f"{reason}: {message or 'the image could not be pulled'}")
        if reason in CREATE_FAILURES:
            raise RuntimeFailure(f"{reason}: {message or 'the container could not be created'}")
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                said = str(cond.get("message") or self.scheduling)
                if (
                    cond.get("reason") == "Unschedulable"
                    and not self.scaling_up
                    and not _WAITING_FOR_CLAIM.search(said)
                ):
                    raise RuntimeFailure(unschedulable_reason(said))
        return None

    def waiting_for(self) -> str:
        if self.pod is None:
            return "the pod to be created"
        waiting = (_container(self.pod).get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return f"{waiting['reason']}: {waiting.get('message') or ''}".strip(": ")
        if self.scheduling:
            return f"scheduling ({self.scheduling})"
        return f"the pod (phase {(self.pod.get('status') or {}).get('phase') or 'Pending'})"
