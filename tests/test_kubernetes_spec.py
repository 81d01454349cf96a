"""The Kubernetes objects of a session (runtime/kubernetes_spec.py), compared as whole dicts, and every one of
them loaded through lightkube's models and validated against the Kubernetes 1.37 OpenAPI schema (strict: an
unknown field, i.e. a typo, fails). Also the instance-type table's Kubernetes placement keys."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from lightkube import codecs

from byoi.runtime.instance_types import InstanceTypes, Placement
from byoi.runtime.kubernetes_spec import (
    KubernetesSessionSpec,
    file_key,
    from_session_spec,
    labels_and_annotations,
    make_files_secret,
    make_home_pvc,
    make_network_policy,
    make_pod,
    make_pull_secret,
    make_service,
    object_name,
)
from byoi.runtime.settings import SessionConfigError
from byoi.runtime.spec import SessionSpec

K8S_VERSION = "1.37.0"
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.test:5000/team/rstudio@{DIGEST}"
ARN = "arn:aws:sagemaker:us-east-1:000000000000:app/d-abc123/alice/RSessionGateway/default"
NAME = "byoi-0123456789abcdef-fedcba9876543210-1"
GiB = 1 << 30

SESSION_LABELS = {
    "byoi.managed": "true",
    "byoi.installation": "0123456789abcdef",
    "byoi.app-arn": ARN,
    "byoi.session-id": "fedcba9876543210",
    "byoi.generation": "1",
    "byoi.domain-id": "d-abc123",
    "byoi.user-profile": "alice",
}


def session_spec(**over: Any) -> SessionSpec:
    """A SessionSpec as services/app_launch.py builds it."""
    values: dict[str, Any] = {
        "name": NAME,
        "image": IMAGE,
        "uid": 1000,
        "gid": 100,
        "user_name": "rstudio",
        "home_host_path": "/var/lib/byoi/homes/d-abc123/alice-200001",
        "home_mount_path": "/home/sagemaker-user",
        "root_path": "/sessions/fedcba9876543210/",
        "nano_cpus": 2_000_000_000,
        "memory_bytes": 4 * GiB,
        "network": "byoi-sessions",
        "env": {"AWS_REGION": "us-east-1", "BYOI_APP_ARN": ARN},
        "labels": dict(SESSION_LABELS),
    }
    values.update(over)
    return SessionSpec(**values)


def kube_spec(placement: Placement = Placement(), **over: Any) -> KubernetesSessionSpec:
    spec = from_session_spec(
        session_spec(),
        namespace="byoi-sessions",
        pvc_name="byoi-home-3f1d2c",
        placement=placement,
        pull_secrets=("byoi-pull-registry",),
        home_labels={
            "byoi.installation": "0123456789abcdef",
            "byoi.domain-id": "d-abc123",
            "byoi.user-profile": "alice",
        },
        home_key="d-abc123/alice-200001",
        created_at=1700000000.0,
    )
    return replace(spec, **over)


def checked(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` must load through lightkube's models unchanged (a field the model lacks is dropped, so a typo
    shows as a difference) and validate against the Kubernetes OpenAPI schema with no unknown property."""
    loaded = codecs.from_dict(obj)
    assert loaded.to_dict() == obj
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return obj


def arn_hash() -> str:
    return labels_and_annotations({"byoi.app-arn": ARN})[0]["byoi.app-arn"]


def expected_labels() -> dict[str, str]:
    return {
        **SESSION_LABELS,
        "byoi.app-arn": arn_hash(),
        "app.kubernetes.io/managed-by": "byoi",
        "byoi.session": NAME,
    }


def expected_annotations() -> dict[str, str]:
    return {"byoi.app-arn": ARN, "byoi.created-at": "1700000000.000", "byoi.session-name": NAME}


RSERVER_ARGS = [
    "--server-daemonize=0",
    "--www-address=0.0.0.0",
    "--www-port=8787",
    "--auth-none=1",
    "--server-user=rstudio",
    "--www-root-path=/sessions/fedcba9876543210/",
    "--www-frame-origin=same",
    "--www-verify-user-agent=0",
    "--server-data-dir=/run/byoi/rserver",
    "--database-config-file=/etc/byoi/database.conf",
    "--secure-cookie-key-file=/run/byoi/secure-cookie-key",
]

FILES = ("/usr/lib/R/etc/Renviron.site", "/etc/byoi/database.conf")


def expected_pod() -> dict[str, Any]:
    restricted = {"seccompProfile": {"type": "RuntimeDefault"}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": NAME,
            "namespace": "byoi-sessions",
            "labels": expected_labels(),
            "annotations": expected_annotations(),
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 10,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 100,
                "fsGroup": 100,
                "fsGroupChangePolicy": "OnRootMismatch",
                **restricted,
            },
            "imagePullSecrets": [{"name": "byoi-pull-registry"}],
            "containers": [
                {
                    "name": "rstudio",
                    "image": IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/usr/lib/rstudio-server/bin/rserver"],
                    "args": RSERVER_ARGS,
                    "workingDir": "/home/sagemaker-user",
                    "env": [
                        {"name": "AWS_REGION", "value": "us-east-1"},
                        {"name": "BYOI_APP_ARN", "value": ARN},
                        {"name": "HOME", "value": "/home/sagemaker-user"},
                        {"name": "USER", "value": "rstudio"},
                    ],
                    "ports": [{"name": "http", "containerPort": 8787, "protocol": "TCP"}],
                    "readinessProbe": {
                        "tcpSocket": {"port": "http"},
                        "initialDelaySeconds": 1,
                        "periodSeconds": 2,
                        "timeoutSeconds": 2,
                        "failureThreshold": 3,
                    },
                    "resources": {
                        "requests": {"cpu": "2", "memory": "4Gi"},
                        "limits": {"cpu": "2", "memory": "4Gi"},
                    },
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "runAsGroup": 100,
                        "allowPrivilegeEscalation": False,
                        "privileged": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": False,
                        **restricted,
                    },
                    "volumeMounts": [
                        {"name": "home", "mountPath": "/home/sagemaker-user"},
                        {"name": "run", "mountPath": "/run/byoi"},
                        {
                            "name": "byoi-files",
                            "mountPath": "/etc/byoi/database.conf",
                            "subPath": file_key("/etc/byoi/database.conf"),
                            "readOnly": True,
                        },
                        {
                            "name": "byoi-files",
                            "mountPath": "/usr/lib/R/etc/Renviron.site",
                            "subPath": file_key("/usr/lib/R/etc/Renviron.site"),
                            "readOnly": True,
                        },
                    ],
                }
            ],
            "volumes": [
                {"name": "home", "persistentVolumeClaim": {"claimName": "byoi-home-3f1d2c"}},
                {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
                {"name": "byoi-files", "secret": {"secretName": f"{NAME}-files", "defaultMode": 0o444}},
            ],
        },
    }


def test_a_typical_pod_is_exactly_this() -> None:
    pod = checked(make_pod(kube_spec(files=FILES)))
    assert pod == expected_pod()


def test_the_pods_security_settings_one_by_one() -> None:
    """The settings that make a session safe, named one by one (a failure says which went missing)."""
    pod = make_pod(kube_spec())
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    ctx = container["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True and ctx["runAsNonRoot"] is True
    assert ctx["allowPrivilegeEscalation"] is False and ctx["privileged"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]} and "add" not in ctx["capabilities"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["fsGroup"]) == (1000, 100)
    # TCP, not a socket: the proxy in another pod cannot reach a Unix socket inside this one.
    assert "--www-address=0.0.0.0" in container["args"] and "--www-port=8787" in container["args"]
    assert not any(a.startswith("--www-socket") for a in container["args"])
    assert container["readinessProbe"]["tcpSocket"] == {"port": "http"}


def test_a_pod_without_files_mounts_no_secret_and_without_a_pull_secret_has_none() -> None:
    pod = checked(make_pod(kube_spec(pull_secrets=())))
    want = expected_pod()
    del want["spec"]["imagePullSecrets"]
    want["spec"]["volumes"] = want["spec"]["volumes"][:2]
    want["spec"]["containers"][0]["volumeMounts"] = want["spec"]["containers"][0]["volumeMounts"][:2]
    assert pod == want


def test_a_gpu_type_gets_its_gpu_limit_node_selector_and_toleration() -> None:
    placement = Placement(
        node_selector={"node.kubernetes.io/instance-type": "g4dn.xlarge"},
        tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        gpus=1,
    )
    pod = checked(make_pod(kube_spec(placement, cpu=4.0, memory_bytes=16 * GiB, files=FILES)))
    want = expected_pod()
    want["spec"]["nodeSelector"] = {"node.kubernetes.io/instance-type": "g4dn.xlarge"}
    want["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    want["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
    }
    assert pod == want


def test_fractional_cpus_are_millicores() -> None:
    pod = checked(make_pod(kube_spec(cpu=0.5, memory_bytes=1536 * (1 << 20))))
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "500m", "memory": "1536Mi"}


def test_the_service_selects_the_pod_on_port_8787() -> None:
    svc = checked(make_service(kube_spec()))
    assert svc == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": NAME,
            "namespace": "byoi-sessions",
            "labels": expected_labels(),
            "annotations": expected_annotations(),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"byoi.session": NAME},
            "ports": [{"name": "http", "port": 8787, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    assert set(svc["spec"]["selector"].items()) <= set(make_pod(kube_spec())["metadata"]["labels"].items())


def expected_pvc(mode: str, storage_class: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": [mode],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": "10Gi"}},
    }
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "byoi-home-3f1d2c",
            "namespace": "byoi-sessions",
            "labels": {
                "byoi.installation": "0123456789abcdef",
                "byoi.domain-id": "d-abc123",
                "byoi.user-profile": "alice",
                "app.kubernetes.io/managed-by": "byoi",
            },
            "annotations": {"byoi.home": "d-abc123/alice-200001"},
        },
        "spec": spec,
    }


def test_the_home_claim_is_read_write_once_on_the_default_class() -> None:
    assert checked(make_home_pvc(kube_spec())) == expected_pvc("ReadWriteOnce", None)


def test_the_home_claim_read_write_many_on_a_named_class() -> None:
    pvc = checked(make_home_pvc(kube_spec(access_mode="ReadWriteMany", storage_class="nfs-client")))
    assert pvc == expected_pvc("ReadWriteMany", "nfs-client")


def test_the_network_policy_admits_only_the_control_plane() -> None:
    policy = checked(make_network_policy("byoi-sessions", "0123456789abcdef"))
    assert policy == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "byoi-sessions-0123456789abcdef",
            "namespace": "byoi-sessions",
            "labels": {"app.kubernetes.io/managed-by": "byoi", "byoi.installation": "0123456789abcdef"},
        },
        "spec": {
            "podSelector": {"matchLabels": {"byoi.managed": "true", "byoi.installation": "0123456789abcdef"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchLabels": {
                                    "app.kubernetes.io/name": "byoi",
                                    "app.kubernetes.io/component": "control-plane",
                                }
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 8787}],
                }
            ],
        },
    }
    # It selects every session pod (so sessions cannot reach each other) and no control-plane pod.
    pod_labels = make_pod(kube_spec())["metadata"]["labels"]
    assert set(policy["spec"]["podSelector"]["matchLabels"].items()) <= set(pod_labels.items())
    assert "app.kubernetes.io/component" not in pod_labels


def test_the_network_policy_with_a_control_plane_elsewhere() -> None:
    policy = checked(make_network_policy("sessions", "abc", {"app": "byoi-server"}, control_plane_namespace="byoi"))
    assert policy["spec"]["ingress"][0]["from"] == [
        {
            "podSelector": {"matchLabels": {"app": "byoi-server"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "byoi"}},
        }
    ]


def test_the_files_secret_holds_each_file_under_a_key_the_pod_mounts() -> None:
    files = {p: f"content of {p}\n".encode() for p in FILES}
    secret = checked(make_files_secret(kube_spec(), files))
    assert secret["metadata"]["name"] == f"{NAME}-files" and secret["type"] == "Opaque"
    assert json.loads(secret["metadata"]["annotations"]["byoi.files"]) == sorted(FILES)
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {file_key(p): files[p] for p in FILES}
    mounts = make_pod(kube_spec(files=FILES))["spec"]["containers"][0]["volumeMounts"]
    assert {m["subPath"] for m in mounts if m["name"] == "byoi-files"} == set(secret["data"])


def test_the_pull_secret_is_a_docker_config() -> None:
    secret = checked(make_pull_secret("byoi-sessions", "registry.test:5000", {"username": "u", "password": "p"}))
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    assert config == {"auths": {"registry.test:5000": {"username": "u", "password": "p", "auth": "dTpw"}}}


def test_labels_that_are_not_label_values_are_hashed_and_kept_in_annotations() -> None:
    labels, annotations = labels_and_annotations({"byoi.app-arn": ARN, "byoi.user-profile": "alice"})
    assert labels["byoi.user-profile"] == "alice" and annotations == {"byoi.app-arn": ARN}
    assert len(labels["byoi.app-arn"]) <= 63 and labels["byoi.app-arn"].isalnum()
    with pytest.raises(ValueError, match="not a valid Kubernetes label key"):
        labels_and_annotations({"bad key": "x"})


def test_a_long_or_odd_name_becomes_a_valid_object_name() -> None:
    assert object_name(NAME) == NAME
    odd = object_name("Byoi_" + "x" * 80)
    assert odd.startswith("byoi-") and len(odd) <= 63
    assert make_pod(kube_spec(name="Byoi_" + "x" * 80))["metadata"]["annotations"]["byoi.session-name"].startswith(
        "Byoi_"
    )


@pytest.mark.parametrize(
    ("over", "wanted"),
    [
        ({"image": "registry.test:5000/team/rstudio:latest"}, "pinned by digest"),
        ({"access_mode": "ReadOnlyMany"}, "access mode"),
        ({"uid": 0}, "never run as root"),
        ({"home_size": "ten gigs"}, "quantity"),
        ({"namespace": "Bad_NS"}, "namespace"),
    ],
)
def test_a_bad_kubernetes_spec_is_refused(over: dict[str, Any], wanted: str) -> None:
    with pytest.raises(ValueError, match=wanted):
        kube_spec(**over)


# -- the instance-type table's Kubernetes placement -------------------------------------------------


def test_instance_types_carry_kubernetes_placement(tmp_path: Path) -> None:
    path = tmp_path / "types.toml"
    path.write_text(
        '[types."ml.g4dn.xlarge"]\nvcpu = 4\nmemory_gib = 16\ngpus = 1\n'
        'node_selector = { "node.kubernetes.io/instance-type" = "g4dn.xlarge" }\n'
        'tolerations = [ { key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" } ]\n'
        '[types."ml.t3.medium"]\nvcpu = 1\nmemory_gib = 2\n'
    )
    types = InstanceTypes.load(path)
    gpu = types.placement_of("ml.g4dn.xlarge")
    assert gpu == Placement(
        {"node.kubernetes.io/instance-type": "g4dn.xlarge"},
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        1,
    )
    assert types.placement_of("ml.t3.medium") == Placement() and types.placement_of("ml.m5.large") == Placement()
    assert types.table["ml.g4dn.xlarge"] == (4.0, 16.0)  # the Docker side reads the same (vcpu, memory) pairs


@pytest.mark.parametrize(
    ("extra", "wanted"),
    [
        ("gpus = -1", "gpus must be a whole number >= 0, not -1"),
        ("gpus = 1.5", "gpus must be a whole number >= 0, not 1.5"),
        ("gpus = true", "gpus must be a whole number >= 0, not True"),
        ('node_selector = "gpu"', "node_selector must be a table of label = value, not 'gpu'"),
        ('node_selector = { "bad key" = "x" }', "node_selector: 'bad key' is not a valid Kubernetes label key"),
        ('node_selector = { "pool" = 3 }', "node_selector.'pool' must be a Kubernetes label value"),
        ('node_selector = { "pool" = "a b" }', "not 'a b'"),
        ('tolerations = "gpu"', "tolerations must be a list of tables, not 'gpu'"),
        ("tolerations = [ 3 ]", "tolerations[0] must be a table"),
        (
            'tolerations = [ { key = "k", operator = "In" } ]',
            "tolerations[0] operator must be Exists or Equal, not 'In'",
        ),
        ('tolerations = [ { key = "k", effect = "Never" } ]', "tolerations[0] effect must be one of"),
        ('tolerations = [ { key = "k", colour = "x" } ]', "tolerations[0]: unknown key 'colour'"),
        ('tolerations = [ { key = "k", operator = "Exists", value = "v" } ]', "operator Exists takes no value"),
        ('tolerations = [ { operator = "Equal", value = "v" } ]', 'without a key needs operator = "Exists"'),
        (
            'tolerations = [ { key = "k", effect = "NoSchedule", tolerationSeconds = 5 } ]',
            "tolerationSeconds applies to effect NoExecute only",
        ),
        (
            'tolerations = [ { key = "k", effect = "NoExecute", tolerationSeconds = -5 } ]',
            "tolerationSeconds must be a whole number >= 0, not -5",
        ),
        ("zones = 2", "unknown key 'zones' (only vcpu and memory_gib); Kubernetes placement adds node_selector"),
    ],
)
def test_bad_placement_names_the_file_key_and_value(tmp_path: Path, extra: str, wanted: str) -> None:
    path = tmp_path / "types.toml"
    path.write_text(f'[types."ml.g4dn.xlarge"]\nvcpu = 4\nmemory_gib = 16\n{extra}\n')
    with pytest.raises(SessionConfigError) as err:
        InstanceTypes.load(path)
    assert f"BYOI_INSTANCE_TYPES={path}: [types.'ml.g4dn.xlarge']" in str(err.value) and wanted in str(err.value)
