"""The Kubernetes objects of a session: pure functions of one `KubernetesSessionSpec`, returning plain dicts.

As docker_args.py is for Docker, everything that makes a session pod safe is here, where a unit test compares
it as a dict and checks it against the Kubernetes OpenAPI schema: the pinned image, rserver as the command, a
non-root UID/GID (runAsNonRoot, fsGroup for the home), every capability dropped, no privilege escalation,
seccomp RuntimeDefault, no service-account token, no service links, requests and limits from the instance
type (GPUs as `nvidia.com/gpu` limits), the instance type's node selector and tolerations, the home on a
per-profile PersistentVolumeClaim, RStudio's runtime state on a memory-backed emptyDir, and byoi's files
(Renviron.site, database.conf...) from a Secret mounted read-only, file by file.

rserver listens on TCP port 8787 in a pod, not on a Unix socket as on Docker: a socket inside the pod cannot
be reached by byoi's proxy, which runs in another pod. `from_session_spec` therefore builds the command with
`SessionSpec(listen_socket=False).rserver_command()`, i.e. `--www-address=0.0.0.0 --www-port=8787`, and
the NetworkPolicy (`make_network_policy`) is what keeps that port closed to everyone but byoi's control plane.

Labels carry what ties an object to its app and installation. A label value is at most 63 characters of
`[A-Za-z0-9._-]`, which an ARN is not: such values are replaced by a hash in the label (so selectors still
work) and kept whole in an annotation under the same key (`labels_and_annotations`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import regex

from byoi.runtime.instance_types import NO_PLACEMENT, Placement, label_key_ok, label_value_ok
from byoi.runtime.spec import RUN_DIR, SESSION_PORT, SessionSpec

CONTAINER = "rstudio"
PORT_NAME = "http"
HOME_VOLUME = "home"
RUN_VOLUME = "run"
FILES_VOLUME = "byoi-files"
GPU_RESOURCE = "nvidia.com/gpu"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED = "byoi.managed"  # as services/session_files.py labels every session
INSTALLATION = "byoi.installation"
SESSION_LABEL = "byoi.session"  # the objects' name: the Service selects its pod by it
NAME_ANNOTATION = "byoi.session-name"  # the session's name as the launcher knows it (SessionSpec.name)
CREATED_ANNOTATION = "byoi.created-at"  # epoch seconds, so an adopted object's age is known without the server
FILES_ANNOTATION = "byoi.files"  # JSON list of the absolute paths the files Secret holds
HOME_ANNOTATION = "byoi.home"  # which profile's home a claim is
# The pods allowed to reach sessions: byoi's own (the deployment manifests give its pods these labels).
DEFAULT_CONTROL_PLANE_LABELS = {"app.kubernetes.io/name": "byoi", "app.kubernetes.io/component": "control-plane"}
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod")
MAX_NAME = 63
HASH_LEN = 40

_DNS_LABEL = regex.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_PINNED = regex.compile(r"[^@\s]+@sha256:[0-9a-f]{64}")
_QUANTITY = regex.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")


def digest(value: str, length: int = HASH_LEN) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:length]


def object_name(name: str) -> str:
    """The Kubernetes name of a session's pod, Service and Secret: its own name when that is a DNS-1035 label
    (a Service's name must be one), else `byoi-` and a hash of it (the name is kept in an annotation)."""
    if len(name) <= MAX_NAME - len("-files") and _DNS_LABEL.fullmatch(name):
        return name
    return f"byoi-{digest(name, 24)}"


def file_key(path: str) -> str:
    """The key of a file in the files Secret (keys are `[-._a-zA-Z0-9]+`; paths are not)."""
    return f"f-{digest(path, 16)}"


def labels_and_annotations(values: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Labels as given where they are valid; a value that is not a valid label value (an ARN) becomes a
    hash in the label and is kept whole in an annotation of the same key."""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    for key, value in values.items():
        if not label_key_ok(key):
            raise ValueError(f"{key!r} is not a valid Kubernetes label key")
        if label_value_ok(value):
            labels[key] = value
        else:
            labels[key] = digest(value)
            annotations[key] = value
    return labels, annotations


def selector_labels(values: Mapping[str, str]) -> dict[str, str]:
    """The label values that select objects labelled with `values` (hashes where the value was hashed)."""
    return labels_and_annotations(values)[0]


def cpu_quantity(vcpu: float) -> str:
    millis = round(vcpu * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def bytes_quantity(n: int) -> str:
    for suffix, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


@dataclass(frozen=True)
class KubernetesSessionSpec:
    """What a session is on Kubernetes: the facts of `SessionSpec` plus the cluster's (namespace, claim,
    pull secrets, placement). Built by `from_session_spec`; every builder below is a function of it alone."""

    name: str  # SessionSpec.name; the objects are named object_name(name)
    namespace: str
    image: str  # registry/repository@sha256:... (pinned by digest, never a tag)
    command: tuple[str, ...]  # rserver and its flags, listening on TCP (see the module docstring)
    uid: int
    gid: int
    home_mount_path: str
    cpu: float  # vCPU, requests = limits
    memory_bytes: int  # requests = limits
    pvc_name: str
    user_name: str = "rstudio"
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    home_labels: dict[str, str] = field(default_factory=dict)  # the claim's labels (the profile's, not the app's)
    home_key: str = ""  # which home the claim is (domain/profile-uid), in its annotation
    pull_secrets: tuple[str, ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    gpus: int = 0
    storage_class: str | None = None  # None: the cluster's default StorageClass
    access_mode: str = "ReadWriteOnce"
    home_size: str = "10Gi"
    run_dir_bytes: int = 256 * 1024 * 1024
    files: tuple[str, ...] = ()  # absolute paths of the files byoi wrote (in the files Secret)
    port: int = SESSION_PORT
    stop_timeout: int = 10  # terminationGracePeriodSeconds
    created_at: float = 0.0

    def __post_init__(self) -> None:
        if not _PINNED.fullmatch(self.image):
            raise ValueError(f"a session's image must be pinned by digest (repo@sha256:...), not {self.image!r}")
        if not _DNS_LABEL.fullmatch(self.namespace):
            raise ValueError(f"{self.namespace!r} is not a valid namespace name")
        if not _DNS_LABEL.fullmatch(self.pvc_name):
            raise ValueError(f"{self.pvc_name!r} is not a valid claim name")
        if self.uid < 1 or self.gid < 0:
            raise ValueError("sessions never run as root")
        if self.access_mode not in ACCESS_MODES:
            raise ValueError(f"access mode {self.access_mode!r} is not one of {', '.join(ACCESS_MODES)}")
        if not _QUANTITY.fullmatch(self.home_size):
            raise ValueError(f"home size {self.home_size!r} is not a Kubernetes quantity such as 10Gi")
        if self.gpus < 0 or self.cpu <= 0 or self.memory_bytes <= 0:
            raise ValueError("cpu and memory must be > 0 and gpus >= 0")

    @property
    def object_name(self) -> str:
        return object_name(self.name)

    @property
    def files_secret(self) -> str:
        return f"{self.object_name}-files"

    def metadata(self, extra_annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
        labels, annotations = labels_and_annotations(
            {**self.labels, MANAGED_BY: "byoi", SESSION_LABEL: self.object_name}
        )
        annotations[NAME_ANNOTATION] = self.name
        annotations[CREATED_ANNOTATION] = f"{self.created_at:.3f}"
        annotations.update(extra_annotations or {})
        return {
            "name": self.object_name,
            "namespace": self.namespace,
            "labels": labels,
            "annotations": dict(sorted(annotations.items())),
        }


def from_session_spec(
    spec: SessionSpec,
    *,
    namespace: str,
    pvc_name: str,
    placement: Placement = NO_PLACEMENT,
    pull_secrets: tuple[str, ...] = (),
    storage_class: str | None = None,
    access_mode: str = "ReadWriteOnce",
    home_size: str = "10Gi",
    home_labels: Mapping[str, str] | None = None,
    home_key: str = "",
    stop_timeout: int = 10,
    created_at: float = 0.0,
) -> KubernetesSessionSpec:
    # In a pod rserver listens on TCP: the proxy, in another pod, cannot reach a Unix socket inside this one.
    tcp = replace(spec, listen_socket=False, port=SESSION_PORT)
    return KubernetesSessionSpec(
        name=spec.name,
        namespace=namespace,
        image=spec.image,
        command=tuple(tcp.rserver_command()),
        uid=spec.uid,
        gid=spec.gid,
        user_name=spec.user_name,
        home_mount_path=spec.home_mount_path,
        cpu=spec.nano_cpus / 1e9,
        memory_bytes=spec.memory_bytes,
        pvc_name=pvc_name,
        env=dict(spec.env),
        labels=dict(spec.labels),
        home_labels=dict(home_labels or {}),
        home_key=home_key,
        pull_secrets=pull_secrets,
        node_selector=dict(placement.node_selector),
        tolerations=tuple(dict(t) for t in placement.tolerations),
        gpus=placement.gpus,
        storage_class=storage_class,
        access_mode=access_mode,
        home_size=home_size,
        run_dir_bytes=spec.run_dir_bytes,
        stop_timeout=stop_timeout,
        created_at=created_at,
    )


def _restricted() -> dict[str, Any]:
    return {"seccompProfile": {"type": "RuntimeDefault"}}


def make_pod(spec: KubernetesSessionSpec) -> dict[str, Any]:
    """The session's pod. restartPolicy Never, as Docker's "no": an RStudio that exits ends the session, and
    the reconciler marks the app Failed with the exit code and the last log lines."""
    env = {**spec.env, "HOME": spec.home_mount_path, "USER": spec.user_name}
    resources: dict[str, Any] = {
        "requests": {"cpu": cpu_quantity(spec.cpu), "memory": bytes_quantity(spec.memory_bytes)},
        "limits": {"cpu": cpu_quantity(spec.cpu), "memory": bytes_quantity(spec.memory_bytes)},
    }
    if spec.gpus:
        resources["limits"][GPU_RESOURCE] = str(spec.gpus)
    mounts: list[dict[str, Any]] = [
        {"name": HOME_VOLUME, "mountPath": spec.home_mount_path},
        {"name": RUN_VOLUME, "mountPath": RUN_DIR},
    ]
    mounts += [
        {"name": FILES_VOLUME, "mountPath": path, "subPath": file_key(path), "readOnly": True}
        for path in sorted(spec.files)
    ]
    volumes: list[dict[str, Any]] = [
        {"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": spec.pvc_name}},
        {"name": RUN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": bytes_quantity(spec.run_dir_bytes)}},
    ]
    if spec.files:
        # Root-owned, world-readable, read-only: the session user can read byoi's files but not change them.
        volumes.append({"name": FILES_VOLUME, "secret": {"secretName": spec.files_secret, "defaultMode": 0o444}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(spec.command[:1]),
        "args": list(spec.command[1:]),
        "workingDir": spec.home_mount_path,
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "ports": [{"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        "readinessProbe": {
            "tcpSocket": {"port": PORT_NAME},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": spec.uid,
            "runAsGroup": spec.gid,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": False,  # users may change their session's image layer; it is thrown away
            **_restricted(),
        },
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,  # no environment variables naming the namespace's other Services
        "terminationGracePeriodSeconds": spec.stop_timeout,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": spec.uid,
            "runAsGroup": spec.gid,
            "fsGroup": spec.gid,
            "fsGroupChangePolicy": "OnRootMismatch",
            **_restricted(),
        },
        "containers": [container],
        "volumes": volumes,
    }
    if spec.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in spec.pull_secrets]
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": spec.metadata(), "spec": pod_spec}


def make_service(spec: KubernetesSessionSpec) -> dict[str, Any]:
    """A ClusterIP Service in front of the session's pod: its stable address for byoi's proxy."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": spec.metadata(),
        "spec": {
            "type": "ClusterIP",
            "selector": {SESSION_LABEL: spec.object_name},
            "ports": [{"name": PORT_NAME, "port": spec.port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def make_home_pvc(spec: KubernetesSessionSpec) -> dict[str, Any]:
    """The profile's home: one claim per profile, kept when its sessions are removed (homes persist)."""
    labels, annotations = labels_and_annotations({**spec.home_labels, MANAGED_BY: "byoi"})
    if spec.home_key:
        annotations[HOME_ANNOTATION] = spec.home_key
    claim: dict[str, Any] = {
        "accessModes": [spec.access_mode],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": spec.home_size}},
    }
    if spec.storage_class is not None:
        claim["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": spec.pvc_name,
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": dict(sorted(annotations.items())),
        },
        "spec": claim,
    }


def make_files_secret(spec: KubernetesSessionSpec, files: Mapping[str, bytes]) -> dict[str, Any]:
    """The files byoi writes before a session starts (Renviron.site, database.conf, file-locks, metadata), as
    a Secret: the container environment copied into Renviron.site may hold credentials."""
    paths = sorted(files)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": spec.metadata({FILES_ANNOTATION: json.dumps(paths)}) | {"name": spec.files_secret},
        "data": {file_key(p): base64.b64encode(files[p]).decode() for p in paths},
    }


def pull_secret_name(registry: str) -> str:
    return f"byoi-pull-{digest(registry, 16)}"


def make_pull_secret(namespace: str, registry: str, auth: Mapping[str, str]) -> dict[str, Any]:
    """A `kubernetes.io/dockerconfigjson` Secret with byoi's credentials for `registry` (the form the
    Engine's X-Registry-Auth takes: username/password, or an identity token)."""
    entry: dict[str, str] = {}
    if auth.get("username") is not None:
        user, password = auth["username"], auth.get("password", "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        entry = {"username": user, "password": password, "auth": token}
    elif auth.get("identitytoken"):
        entry = {"identitytoken": auth["identitytoken"]}
    config = json.dumps({"auths": {registry: entry}}, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {
            "name": pull_secret_name(registry),
            "namespace": namespace,
            "labels": {MANAGED_BY: "byoi"},
            "annotations": {"byoi.registry": registry},
        },
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    }


def network_policy_name(installation: str) -> str:
    return object_name(f"byoi-sessions-{installation}")


def make_network_policy(
    namespace: str,
    installation: str,
    control_plane_labels: Mapping[str, str] | None = None,
    control_plane_namespace: str | None = None,
    port: int = SESSION_PORT,
) -> dict[str, Any]:
    """Ingress to this installation's session pods only from byoi's control plane, on RStudio's port.

    Every other ingress is denied, including from other session pods, so no session reaches another (a
    NetworkPolicy is enforced at the receiving pod, whatever the sender's egress allows). Egress is left
    open on purpose: sessions install packages from CRAN and PyPI mirrors, reach data sources and the cluster
    DNS, and a session that dials another session is refused by that session's ingress rule. An operator who
    wants egress closed adds a policy of their own (it composes: policies are a union of allows).

    The control plane is selected by `control_plane_labels`, in the sessions' namespace unless
    `control_plane_namespace` names another; a session pod never carries those labels (make_pod sets only
    byoi's session labels)."""
    cp = dict(control_plane_labels or DEFAULT_CONTROL_PLANE_LABELS)
    peer: dict[str, Any] = {"podSelector": {"matchLabels": cp}}
    if control_plane_namespace is not None:
        peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": control_plane_namespace}}
    labels, _ = labels_and_annotations({MANAGED_BY: "byoi", INSTALLATION: installation})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": network_policy_name(installation), "namespace": namespace, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": selector_labels({MANAGED: "true", INSTALLATION: installation})},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [peer], "ports": [{"protocol": "TCP", "port": port}]}],
        },
    }
