"""The Kubernetes objects of an image build (build/kubernetes_job.py), compared as whole dicts, loaded through
lightkube's models and validated against the Kubernetes 1.37 OpenAPI schema (strict: an unknown field fails);
and the argv buildctl receives: nothing from a request is interpreted by a shell or by the kubelet's `$(VAR)`
expansion, and names buildctl would split on are refused."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest
from lightkube import codecs

from byoi.build.kubernetes_job import (
    FETCH_SCRIPT,
    KubernetesBuildSpec,
    buildctl_args,
    kube_escape,
    make_build_job,
    make_push_secret,
)

K8S_VERSION = "1.37.0"
BUILD = "b-0123456789abcdef"
URL = "https://byoi.test/builds/b-0123456789abcdef/context.tar?expires=1700000600&sig=abc123"
LABELS = {
    "app.kubernetes.io/managed-by": "byoi",
    "app.kubernetes.io/component": "image-build",
    "byoi.installation": "0123456789abcdef",
    "byoi.build-id": BUILD,
}


def spec(**over: Any) -> KubernetesBuildSpec:
    values: dict[str, Any] = {
        "build_id": BUILD,
        "namespace": "byoi-builds",
        "installation": "0123456789abcdef",
        "context_url": URL,
        "repository": "registry.test:5000/team/rstudio",
        "tag": "v1",
    }
    values.update(over)
    return KubernetesBuildSpec(**values)


def checked(obj: dict[str, Any]) -> dict[str, Any]:
    loaded = codecs.from_dict(obj)
    assert loaded.to_dict() == obj  # a field lightkube's model lacks would be dropped: a typo shows here
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return obj


def kubelet_expand(arg: str, env: dict[str, str]) -> str:
    """What the kubelet does to a command/args element (k8s.io/kubernetes third_party/forked/golang/expansion):
    `$$` becomes `$`, `$(NAME)` of a defined variable its value, anything else stays."""
    out, i = [], 0
    while i < len(arg):
        if arg[i] == "$" and i + 1 < len(arg):
            nxt = arg[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = arg.find(")", i + 2)
                if end != -1 and arg[i + 2 : end] in env:
                    out.append(env[arg[i + 2 : end]])
                    i = end + 1
                    continue
        out.append(arg[i])
        i += 1
    return "".join(out)


def received(container: dict[str, Any]) -> list[str]:
    """The argv the container's process gets."""
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    return [kubelet_expand(a, env) for a in container.get("command", []) + container.get("args", [])]


BASE_ARGS = [
    "build",
    "--progress=plain",
    "--frontend",
    "dockerfile.v0",
    "--local",
    "context=/work/context",
    "--local",
    "dockerfile=/work/context",
    "--opt",
    "filename=Dockerfile",
]
OUTPUT = ["--output", "type=image,name=registry.test:5000/team/rstudio:v1,push=true"]


def expected_job() -> dict[str, Any]:
    rootless = {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "Unconfined"},
        "appArmorProfile": {"type": "Unconfined"},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "byoi-build-0123456789abcdef", "namespace": "byoi-builds", "labels": LABELS},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 3600,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"fsGroup": 1000},
                    "initContainers": [
                        {
                            "name": "fetch-context",
                            "image": "moby/buildkit:rootless",
                            "command": ["sh", "-c", FETCH_SCRIPT.replace("$", "$$"), "fetch-context", URL],
                            "securityContext": {
                                "runAsUser": 1000,
                                "runAsGroup": 1000,
                                "runAsNonRoot": True,
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [{"name": "context", "mountPath": "/work/context"}],
                        }
                    ],
                    "containers": [
                        {
                            "name": "buildkit",
                            "image": "moby/buildkit:rootless",
                            "command": ["buildctl-daemonless.sh"],
                            "args": BASE_ARGS + OUTPUT,
                            "env": [
                                {"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"},
                                {"name": "DOCKER_CONFIG", "value": "/home/user/.docker"},
                            ],
                            "securityContext": rootless,
                            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [
                                {"name": "context", "mountPath": "/work/context", "readOnly": True},
                                {"name": "buildkitd", "mountPath": "/home/user/.local/share/buildkit"},
                                {"name": "docker-config", "mountPath": "/home/user/.docker", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "context", "emptyDir": {"sizeLimit": "4Gi"}},
                        {"name": "buildkitd", "emptyDir": {"sizeLimit": "20Gi"}},
                        {
                            "name": "docker-config",
                            "secret": {
                                "secretName": "byoi-build-0123456789abcdef-push",
                                "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                                "defaultMode": 0o440,
                            },
                        },
                    ],
                },
            },
        },
    }


def test_a_typical_build_job_is_exactly_this() -> None:
    assert checked(make_build_job(spec())) == expected_job()


def test_the_fetch_step_gets_the_url_as_a_positional_parameter_of_a_constant_script() -> None:
    [fetch] = make_build_job(spec())["spec"]["template"]["spec"]["initContainers"]
    assert received(fetch) == ["sh", "-c", FETCH_SCRIPT, "fetch-context", URL]
    assert FETCH_SCRIPT == 'set -o pipefail; wget -q -O - "$1" | tar -x -o -f - -C /work/context'


def test_every_option_of_the_request_becomes_one_argument() -> None:
    job = checked(
        make_build_job(
            spec(
                dockerfile="docker/Dockerfile.r",
                build_args={"R_VERSION": "4.4.1", "EMPTY": ""},
                target="runtime",
                platform="linux/arm64/v8",
                labels={"org.opencontainers.image.source": "https://example.test/repo", "team": "data"},
                no_cache=True,
                image="mirror.test/moby/buildkit:v0.23.0-rootless",
                fetch_image="mirror.test/busybox:1.37",
                active_deadline=1800,
                ttl_after_finished=0,
                cpu="500m",
                memory="8Gi",
            )
        )
    )
    pod = job["spec"]["template"]["spec"]
    [build] = pod["containers"]
    assert build["args"] == [
        *BASE_ARGS[:-1],
        "filename=docker/Dockerfile.r",
        "--opt",
        "build-arg:R_VERSION=4.4.1",
        "--opt",
        "build-arg:EMPTY=",
        "--opt",
        "target=runtime",
        "--opt",
        "platform=linux/arm64/v8",
        "--opt",
        "label:org.opencontainers.image.source=https://example.test/repo",
        "--opt",
        "label:team=data",
        "--no-cache",
        *OUTPUT,
    ]
    assert build["image"] == "mirror.test/moby/buildkit:v0.23.0-rootless"
    assert pod["initContainers"][0]["image"] == "mirror.test/busybox:1.37"
    assert build["resources"] == {"requests": {"cpu": "500m", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    assert (job["spec"]["activeDeadlineSeconds"], job["spec"]["ttlSecondsAfterFinished"]) == (1800, 0)


HOSTILE = "a b 'c' \"d\" $(id -u) `uname` ${HOME} $HOME $(DOCKER_CONFIG) $$ ;& |\nsecond line\n"


def test_a_hostile_build_arg_reaches_buildctl_unchanged() -> None:
    s = spec(build_args={"X": HOSTILE}, labels={"note": HOSTILE})
    job = checked(make_build_job(s))
    [build] = job["spec"]["template"]["spec"]["containers"]
    argv = received(build)
    assert argv[0] == "buildctl-daemonless.sh"  # exec'd directly: no shell reads the arguments
    assert argv[1:] == buildctl_args(s)
    assert f"build-arg:X={HOSTILE}" in argv and f"label:note={HOSTILE}" in argv
    # Without the escaping the kubelet would have replaced $(DOCKER_CONFIG) by the directory:
    assert "/home/user/.docker $" in kubelet_expand(f"build-arg:X={HOSTILE}", {"DOCKER_CONFIG": "/home/user/.docker"})
    assert kube_escape("$(A)$$") == "$$(A)$$$$"


@pytest.mark.parametrize(
    ("over", "wanted"),
    [
        ({"build_args": {"A=B": "x"}}, "build argument name"),
        ({"build_args": {"A B": "x"}}, "build argument name"),
        ({"build_args": {"A": "x\x00y"}}, "NUL"),
        ({"labels": {"a=b": "x"}}, "image label key"),
        ({"labels": {"a,b": "x"}}, "image label key"),
        ({"tag": "v1,push=false"}, "valid tag"),
        ({"repository": "registry.test/team/x,type=local"}, "repository"),
        ({"repository": "registry.test/Team"}, "repository"),
        ({"dockerfile": "../Dockerfile"}, "relative path"),
        ({"dockerfile": "/etc/passwd"}, "relative path"),
        ({"dockerfile": "Docker\nfile"}, "relative path"),
        ({"target": "x --no-cache"}, "build target"),
        ({"platform": "linux/amd64,linux/arm64"}, "platform"),
        ({"build_id": "b-xyz"}, "build id"),
        ({"namespace": "Builds"}, "namespace"),
        ({"context_url": "file:///etc/passwd"}, "http"),
        ({"context_url": "https://x.test/a b"}, "http"),
        ({"image": "moby/buildkit:rootless,evil"}, "image reference"),
        ({"memory": "lots"}, "quantity"),
        ({"active_deadline": 0}, "deadline"),
    ],
)
def test_a_bad_build_spec_is_refused(over: dict[str, Any], wanted: str) -> None:
    with pytest.raises(ValueError, match=wanted):
        spec(**over)


def test_the_push_secret_is_a_docker_config_for_the_registry() -> None:
    s = spec()
    secret = checked(make_push_secret(s, {"username": "alice", "password": "p:w"}))
    config = json.loads(base64.b64decode(secret.pop("data")[".dockerconfigjson"]))
    assert secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": "byoi-build-0123456789abcdef-push", "namespace": "byoi-builds", "labels": LABELS},
    }
    assert config == {"auths": {"registry.test:5000": {"auth": base64.b64encode(b"alice:p:w").decode()}}}
    token = make_push_secret(s, {"identitytoken": "tok"})["data"][".dockerconfigjson"]
    assert json.loads(base64.b64decode(token)) == {"auths": {"registry.test:5000": {"identitytoken": "tok"}}}
    anonymous = make_push_secret(s, None)["data"][".dockerconfigjson"]
    assert json.loads(base64.b64decode(anonymous)) == {"auths": {}}


def test_the_secret_also_carries_the_credentials_for_base_images() -> None:
    pulls = {"private.test": {"username": "bob", "password": "pw"}, "registry.test:5000": {"identitytoken": "old"}}
    data = make_push_secret(spec(), {"identitytoken": "push"}, pulls)["data"][".dockerconfigjson"]
    assert json.loads(base64.b64decode(data)) == {
        "auths": {
            "private.test": {"auth": base64.b64encode(b"bob:pw").decode()},
            "registry.test:5000": {"identitytoken": "push"},  # the push registry's own credentials win
        }
    }


def test_the_job_mounts_the_secret_it_is_given() -> None:
    s = replace(spec(), build_id="b-fedcba9876543210")
    volumes = make_build_job(s)["spec"]["template"]["spec"]["volumes"]
    assert volumes[2]["secret"]["secretName"] == make_push_secret(s, None)["metadata"]["name"]


def test_a_context_url_is_good_for_its_build_and_its_time_only() -> None:
    from urllib.parse import parse_qs, urlsplit

    from byoi.build import context_url

    key, build = b"k" * 32, "b-" + "1" * 16
    url = context_url.sign("https://byoi.example.test/", key, build, now=1000.0)
    assert url.startswith(f"https://byoi.example.test/byoi/builds/{build}/context.tar?expires=1900&sig=")
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert context_url.check(key, build, q["expires"], q["sig"], now=1000.0) is None
    assert context_url.check(key, build, q["expires"], q["sig"], now=1901.0) == "the URL has expired"
    assert context_url.check(b"x" * 32, build, q["expires"], q["sig"], now=1000.0) == "the signature does not match"
    assert context_url.check(key, "b-" + "2" * 16, q["expires"], q["sig"], now=1000.0) == "the signature does not match"
    assert context_url.check(key, "../x", q["expires"], q["sig"], now=1000.0) == "not a build id"
    for expires in ("", "19e2", "²", "1" * 13):
        assert context_url.check(key, build, expires, q["sig"], now=1000.0) == "expires is not a time"
    longer = context_url.sign("https://byoi.example.test", key, build, now=1000.0, ttl=86400)
    q2 = {k: v[0] for k, v in parse_qs(urlsplit(longer).query).items()}
    assert "longer than byoi makes them" in str(context_url.check(key, build, q2["expires"], q2["sig"], now=1000.0))


def test_a_registry_served_over_plain_http_is_pushed_to_as_insecure() -> None:
    [secure] = make_build_job(spec())["spec"]["template"]["spec"]["containers"]
    [plain] = make_build_job(spec(insecure=True))["spec"]["template"]["spec"]["containers"]
    assert secure["args"][-1].endswith(",push=true")
    assert plain["args"][-1] == secure["args"][-1] + ",registry.insecure=true"
    assert plain["args"][:-1] == secure["args"][:-1]
