"""The Kubernetes objects of one image build: pure functions of one `KubernetesBuildSpec`, returning plain dicts.

A build is a batch/v1 Job whose one pod runs rootless BuildKit (`moby/buildkit:rootless`, configurable) as

    buildctl-daemonless.sh build --progress=plain --frontend dockerfile.v0
        --local context=/work/context --local dockerfile=/work/context --opt filename=<Dockerfile>
        [--opt build-arg:K=V]... [--opt target=T] [--opt platform=P] [--opt label:K=V]... [--no-cache]
        --output type=image,name=<repository>:<tag>,push=true[,registry.insecure=true]

`buildctl-daemonless.sh` starts buildkitd for the one build and stops it after; `--progress=plain` makes the
log the numbered lines (`#5 [2/3] RUN make`) the builder parses for steps and for the pushed digest.

Nothing from a request passes through a shell: `command` and `args` are an argv list, each build argument and
label one element, so spaces, quotes, `$(...)` and newlines reach buildctl as they were given. The one shell in
the pod is the fetch step's, whose script is a constant; the context URL reaches it as its positional
parameter `$1`, quoted, and is byoi's own. The kubelet's own expansion of `$(NAME)` in command and args
(from the container's environment: `$(DOCKER_CONFIG)` would become a path) is undone by doubling every `$`
(`kube_escape`), which the kubelet reduces back to one. Names that buildctl splits on (`=` in a build-arg or
label key, `,` in the `--output` value) are checked here, so a request cannot add an option.

The context: an initContainer fetches the checked, uncompressed context tar from a short-lived URL of byoi's and
unpacks it into an emptyDir that the build container mounts read-only. It runs the BuildKit image itself
(Alpine-based, so busybox `wget` and `tar` are there) rather than a separate busybox image: one image to pull
and to mirror for air-gapped clusters, already trusted to run the build, and run as the same rootless user
1000. `tar -o` does not restore owners (a non-root user cannot anyway); `wget` over HTTPS uses busybox's
ssl_client. `fetch_image` configures another image (any with `sh`, `wget` and `tar`). The tests run this very
command with busybox's sh, wget and tar against a real byoi server (tests/test_kubernetes_server.py): the
context arrives whole, PAX headers (paths over 100 bytes, UTF-8 names), modes and symlinks included.

Security, as BuildKit's rootless documentation (docs/rootless.md and examples/kubernetes/*.rootless.yaml)
requires, and why:

- runAsUser/runAsGroup 1000: the rootless image's `user`, whose /etc/subuid and /etc/subgid ranges
  rootlesskit maps into the build's user namespace (another UID needs another image).
- seccompProfile Unconfined and appArmorProfile Unconfined: the default profiles forbid `unshare(CLONE_NEWUSER)`
  and the mounts rootlesskit and the OCI worker make inside that user namespace.
- `BUILDKITD_FLAGS=--oci-worker-no-process-sandbox`: RUN steps then share the build container's PID namespace
  instead of getting their own, since mounting a fresh /proc for one needs `procMount: Unmasked`, which most
  clusters do not allow. A RUN step can then see (and signal) buildkitd: it is the user's own build, in a pod of
  its own, that ends with it.
- allowPrivilegeEscalation is left unset (true) and no capability is dropped: `newuidmap`/`newgidmap` gain their
  capabilities from file capabilities, which `no_new_privs` or an emptied bounding set would block. The pod is
  still not privileged, gets no service-account token and no service links, and its namespace should be one
  for builds only (its Pod Security level must be `privileged`, as Unconfined profiles are refused by
  `baseline`); sessions never run there.
- BuildKit's state goes to an emptyDir at ~/.local/share/buildkit (the image's VOLUME is mounted nosuid,nodev
  on some node images, which breaks rootless overlay mounts).

The push credentials are a `kubernetes.io/dockerconfigjson` Secret mounted as `~/.docker/config.json`
(DOCKER_CONFIG=/home/user/.docker), which buildctl reads to push; anonymous pushes get an empty `auths`. It is
written before the Job (so the pod never waits for its volume) and then given the Job as its owner
(`job_owner_reference`), so it cannot outlive the Job even when no server is left to delete it.

The Job: backoffLimit 0 (a failed build is reported, not retried behind the user's back), activeDeadlineSeconds
(a build that hangs is stopped), ttlSecondsAfterFinished (finished Jobs and their pods go by themselves), and
labels tying it and its pod to the build id and the installation. Both containers have
`terminationMessagePolicy: FallbackToLogsOnError`: when one fails, the kubelet puts its last log lines in the
pod's status, so the reason survives even when the log cannot be read (e.g. `wget: server returned error:
HTTP/1.1 403 Forbidden` from an expired context URL).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import regex

from byoi.build.base import BUILD_ID

DEFAULT_IMAGE = "moby/buildkit:rootless"
BUILD_CONTAINER = "buildkit"
FETCH_CONTAINER = "fetch-context"
CONTEXT_DIR = "/work/context"
HOME = "/home/user"  # the rootless image's user (uid 1000)
DOCKER_CONFIG = f"{HOME}/.docker"
STATE_DIR = f"{HOME}/.local/share/buildkit"
ROOTLESS_UID = 1000
MANAGED_BY = "app.kubernetes.io/managed-by"
COMPONENT = "app.kubernetes.io/component"
INSTALLATION_LABEL = "byoi.installation"
BUILD_LABEL = "byoi.build-id"
# A constant script: the URL comes in as "$1" and is never parsed as shell text.
FETCH_SCRIPT = 'set -o pipefail; wget -q -O - "$1" | tar -x -o -f - -C ' + CONTEXT_DIR

_DNS_LABEL = regex.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_INSTALLATION = regex.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_BUILD_ARG = regex.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_KEY = regex.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]*")  # OCI label keys; never `=`, `,` or space
_TARGET = regex.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PLATFORM = regex.compile(r"[a-z0-9_]+/[a-z0-9_]+(/[a-z0-9_.]+)?")
_REPOSITORY = regex.compile(
    r"[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+"
)  # host[:port]/path, as a Distribution reference has it
_TAG = regex.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IMAGE = regex.compile(r"[^\s,]+")
_QUANTITY = regex.compile(r"[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?")


def job_name(build_id: str) -> str:
    """`byoi-build-<16 hex>`: the Job's name (its pods get a suffix)."""
    return f"byoi-build-{build_id.removeprefix('b-')}"


def secret_name(build_id: str) -> str:
    return f"{job_name(build_id)}-push"


@dataclass(frozen=True)
class KubernetesBuildSpec:
    """What one build is on Kubernetes: the request's facts, where it pushes, and the cluster's settings."""

    build_id: str  # b-<16 hex>
    namespace: str
    installation: str
    context_url: str  # short-lived URL of byoi's serving the checked context tar
    repository: str  # host[:port]/path
    tag: str
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    platform: str | None = None
    no_cache: bool = False
    insecure: bool = False  # push over plain HTTP (a registry configured as http://)
    image: str = DEFAULT_IMAGE
    fetch_image: str | None = None  # None: the BuildKit image (see the module docstring)
    active_deadline: int = 3600  # seconds the Job may run
    ttl_after_finished: int = 600  # seconds a finished Job stays (its log can be read meanwhile)
    cpu: str = "2"
    memory: str = "4Gi"
    context_size: str = "4Gi"  # the context emptyDir's sizeLimit
    state_size: str = "20Gi"  # BuildKit's state emptyDir's sizeLimit (layers, cache)

    def __post_init__(self) -> None:
        if not BUILD_ID.fullmatch(self.build_id):
            raise ValueError(f"{self.build_id!r} is not a build id")
        if not _DNS_LABEL.fullmatch(self.namespace):
            raise ValueError(f"{self.namespace!r} is not a valid namespace name")
        if not _INSTALLATION.fullmatch(self.installation):
            raise ValueError(f"{self.installation!r} is not a valid installation id")
        if not self.context_url.startswith(("https://", "http://")) or regex.search(r"\s", self.context_url):
            raise ValueError("the context URL must be an http(s) URL without spaces")
        if not _REPOSITORY.fullmatch(self.repository):
            raise ValueError(f"{self.repository!r} is not a repository (host[:port]/path)")
        if not _TAG.fullmatch(self.tag):
            raise ValueError(f"{self.tag!r} is not a valid tag")
        parts = self.dockerfile.split("/")
        if (
            not self.dockerfile
            or self.dockerfile.startswith("/")
            or any(p in ("", ".", "..") for p in parts)
            or regex.search(r"[\x00-\x1f]", self.dockerfile)
        ):
            raise ValueError(f"{self.dockerfile!r} is not a relative path inside the context")
        for key, value in self.build_args.items():
            if not _BUILD_ARG.fullmatch(key):
                raise ValueError(f"{key!r} is not a valid build argument name")
            if "\x00" in value:
                raise ValueError(f"the build argument {key} holds a NUL byte")
        for key, value in self.labels.items():
            if not _LABEL_KEY.fullmatch(key):
                raise ValueError(f"{key!r} is not a valid image label key")
            if "\x00" in value:
                raise ValueError(f"the label {key} holds a NUL byte")
        if self.target is not None and not _TARGET.fullmatch(self.target):
            raise ValueError(f"{self.target!r} is not a valid build target")
        if self.platform is not None and not _PLATFORM.fullmatch(self.platform):
            raise ValueError(f"{self.platform!r} is not a platform such as linux/amd64")
        for image in (self.image, self.fetch_image or self.image):
            if not _IMAGE.fullmatch(image):
                raise ValueError(f"{image!r} is not an image reference")
        if self.active_deadline < 1 or self.ttl_after_finished < 0:
            raise ValueError("the active deadline must be >= 1 s and the TTL after finishing >= 0 s")
        for quantity in (self.cpu, self.memory, self.context_size, self.state_size):
            if not _QUANTITY.fullmatch(quantity):
                raise ValueError(f"{quantity!r} is not a Kubernetes quantity")

    @property
    def job_name(self) -> str:
        return job_name(self.build_id)

    @property
    def secret_name(self) -> str:
        return secret_name(self.build_id)

    @property
    def destination(self) -> str:
        return f"{self.repository}:{self.tag}"

    def object_labels(self) -> dict[str, str]:
        return {
            MANAGED_BY: "byoi",
            COMPONENT: "image-build",
            INSTALLATION_LABEL: self.installation,
            BUILD_LABEL: self.build_id,
        }

    def metadata(self, name: str) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace, "labels": self.object_labels()}


def buildctl_args(spec: KubernetesBuildSpec) -> list[str]:
    """The arguments of `buildctl-daemonless.sh`, one request value per element (never joined, never quoted)."""
    args = [
        "build",
        "--progress=plain",
        "--frontend",
        "dockerfile.v0",
        "--local",
        f"context={CONTEXT_DIR}",
        "--local",
        f"dockerfile={CONTEXT_DIR}",
        "--opt",
        f"filename={spec.dockerfile}",
    ]
    for key, value in spec.build_args.items():
        args += ["--opt", f"build-arg:{key}={value}"]
    if spec.target:
        args += ["--opt", f"target={spec.target}"]
    if spec.platform:
        args += ["--opt", f"platform={spec.platform}"]
    for key, value in spec.labels.items():
        args += ["--opt", f"label:{key}={value}"]
    if spec.no_cache:
        args.append("--no-cache")
    insecure = ",registry.insecure=true" if spec.insecure else ""
    args += ["--output", f"type=image,name={spec.destination},push=true{insecure}"]
    return args


def _config_entry(auth: Mapping[str, str] | None) -> dict[str, str] | None:
    if not auth:
        return None
    if auth.get("username") is not None:
        user, password = auth["username"], auth.get("password", "")
        return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    if auth.get("identitytoken"):
        return {"identitytoken": auth["identitytoken"]}
    return None


def docker_config(
    registry: str, auth: Mapping[str, str] | None, pull_auths: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, Any]:
    """A Docker config.json giving `auth` (username/password or an identity token) for `registry`, and
    `pull_auths` for the registries the build pulls from (the push registry's own `auth` wins)."""
    auths: dict[str, dict[str, str]] = {}
    for host, entry in [*(pull_auths or {}).items(), (registry, auth)]:
        value = _config_entry(entry)
        if value is not None:
            auths[host] = value
    return {"auths": auths}


def make_push_secret(
    spec: KubernetesBuildSpec,
    auth: Mapping[str, str] | None,
    pull_auths: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The build's registry credentials (to push, and to pull its base images), as a
    `kubernetes.io/dockerconfigjson` Secret."""
    registry = spec.repository.split("/", 1)[0]
    config = json.dumps(docker_config(registry, auth, pull_auths), sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": spec.metadata(spec.secret_name),
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    }


def job_owner_reference(spec: KubernetesBuildSpec, job_uid: str) -> dict[str, Any]:
    """The merge patch that makes the build's Job the owner of its push Secret: when the Job goes (deleted, or
    by its ttlSecondsAfterFinished), the cluster's garbage collector deletes the Secret with it, even when the
    server that made both is gone before it could delete the Secret itself."""
    if not job_uid:
        raise ValueError("the Job's uid is needed to own the Secret")
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": spec.job_name, "uid": job_uid}
    return {"metadata": {"ownerReferences": [owner]}}


def kube_escape(arg: str) -> str:
    """`arg` as a container's command/args element: the kubelet expands `$(NAME)` there from the container's
    environment and reduces `$$` to `$`, so every `$` is doubled and the process receives `arg` unchanged."""
    return arg.replace("$", "$$")


def _rootless_security() -> dict[str, Any]:
    return {
        "runAsUser": ROOTLESS_UID,
        "runAsGroup": ROOTLESS_UID,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "Unconfined"},
        "appArmorProfile": {"type": "Unconfined"},
    }


def make_build_job(spec: KubernetesBuildSpec) -> dict[str, Any]:
    """The build's Job (see the module docstring for each choice)."""
    fetch = {
        "name": FETCH_CONTAINER,
        "image": spec.fetch_image or spec.image,
        "command": [kube_escape(a) for a in ("sh", "-c", FETCH_SCRIPT, FETCH_CONTAINER, spec.context_url)],
        "securityContext": {
            "runAsUser": ROOTLESS_UID,
            "runAsGroup": ROOTLESS_UID,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "context", "mountPath": CONTEXT_DIR}],
    }
    build = {
        "name": BUILD_CONTAINER,
        "image": spec.image,
        "command": ["buildctl-daemonless.sh"],
        "args": [kube_escape(a) for a in buildctl_args(spec)],
        "env": [
            {"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"},
            {"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG},
        ],
        "securityContext": _rootless_security(),
        "resources": {
            "requests": {"cpu": spec.cpu, "memory": spec.memory},
            "limits": {"memory": spec.memory},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "context", "mountPath": CONTEXT_DIR, "readOnly": True},
            {"name": "buildkitd", "mountPath": STATE_DIR},
            {"name": "docker-config", "mountPath": DOCKER_CONFIG, "readOnly": True},
        ],
    }
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"fsGroup": ROOTLESS_UID},
        "initContainers": [fetch],
        "containers": [build],
        "volumes": [
            {"name": "context", "emptyDir": {"sizeLimit": spec.context_size}},
            {"name": "buildkitd", "emptyDir": {"sizeLimit": spec.state_size}},
            {
                "name": "docker-config",
                "secret": {
                    "secretName": spec.secret_name,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                    "defaultMode": 0o440,  # root:fsGroup 1000, readable by the build user
                },
            },
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": spec.metadata(spec.job_name),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": spec.active_deadline,
            "ttlSecondsAfterFinished": spec.ttl_after_finished,
            "template": {"metadata": {"labels": spec.object_labels()}, "spec": pod_spec},
        },
    }
