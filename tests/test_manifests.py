"""deploy/kubernetes: the manifests byoi's control plane runs on Kubernetes with (docs/kubernetes.md).

No Kubernetes API server can run here, so what a cluster would refuse is checked without one:

- every document, as written and as kustomize renders it, against the Kubernetes OpenAPI schemas of the
  versions byoi supports (`kubernetes_validate`, strict: an unknown or misspelt field fails);
- the kustomizations list every file and only existing ones (the example Secret is deliberately in none);
- the Role grants nothing beyond the allow-list below, and nothing is cluster-wide (no ClusterRole);
- the Deployment's arguments and environment are settings `byoi server` really reads: the server command is
  run in this process (its start replaced by a recorder) with and without each variable, and the settings
  readers of the composition root are called the same way, so a misspelt or retired name fails here;
- the containers run as non-root, without privilege escalation, on a read-only root file system.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography.fernet import Fernet

from tests.support.processes import byoi_cli

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "kubernetes"
BASE = DEPLOY / "base"
EXAMPLE_SECRET = DEPLOY / "secret.example.yaml"
# Listed in no kustomization, on purpose: `kubectl apply -k` must never overwrite the real Secret with placeholders.
NOT_APPLIED = {EXAMPLE_SECRET}

# The oldest Kubernetes release docs/kubernetes.md supports and the newest whose schemas kubernetes-validate
# (pinned in pyproject.toml) ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")

# Everything byoi's Role may grant: (API group, resource) -> verbs. Widening byoi's rights means changing
# deploy/kubernetes/base/role.yaml AND this table, in one reviewed change.
ALLOWED_RBAC: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset({"get", "list", "watch", "create", "delete"}),
    ("", "pods/log"): frozenset({"get"}),
    ("", "services"): frozenset({"get", "list", "create", "patch", "delete"}),
    ("", "persistentvolumeclaims"): frozenset({"get", "list", "create", "delete"}),
    ("", "secrets"): frozenset({"get", "create", "patch", "delete"}),  # never list or watch every Secret
    ("", "events"): frozenset({"get", "list", "watch"}),
    ("networking.k8s.io", "networkpolicies"): frozenset({"get", "create"}),
    ("batch", "jobs"): frozenset({"get", "list", "watch", "create", "delete"}),
}

# Everything byoi's Role in the builds' namespace may grant (deploy/kubernetes/builds-namespace/role.yaml).
BUILDS_RBAC: dict[tuple[str, str], frozenset[str]] = {
    ("batch", "jobs"): frozenset({"get", "list", "watch", "create", "delete"}),
    ("", "pods"): frozenset({"get", "list", "watch"}),  # the Job controller makes the pod, not byoi
    ("", "pods/log"): frozenset({"get"}),
    ("", "secrets"): frozenset({"get", "create", "patch", "delete"}),
    ("", "events"): frozenset({"list"}),  # a Job's FailedCreate, for the build's failure reason
}
BUILDS_OVERLAY = DEPLOY / "builds-namespace"

CONTROL_PLANE_LABELS = {"app.kubernetes.io/name": "byoi", "app.kubernetes.io/component": "control-plane"}

# Settings the Deployment sets before `byoi server` has them: excused only while the server has no such option
# (none now: `--runtime` and `--builder` are there). Once an option exists, its
# variable must be one the server reads, like every other.
PENDING: dict[str, str] = {}


def yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def is_kustomization(path: Path) -> bool:
    return path.name == "kustomization.yaml"


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if doc is not None]


@functools.cache
def _documents(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(load_all(path.read_text()))


def documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file, parsed once per run (tests read them, never change them)."""
    return list(_documents(path))


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """(file, document) for every Kubernetes object written under deploy/kubernetes."""
    return [(p, doc) for p in yaml_files() if not is_kustomization(p) for doc in documents(p)]


def applied() -> list[dict[str, Any]]:
    """The objects `kubectl apply -k deploy/kubernetes` sends (the base), as written."""
    return [doc for p, doc in manifests() if p.parent == BASE]


def one(kind: str) -> dict[str, Any]:
    found = [doc for doc in applied() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {BASE}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    return one("Deployment")["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert [c["name"] for c in containers] == ["byoi"]
    return containers[0]


def example_secret() -> dict[str, str]:
    (doc,) = documents(EXAMPLE_SECRET)
    return doc["stringData"]


def validate(doc: dict[str, Any], where: str) -> None:
    """Fail naming the file, the object, the Kubernetes version and the field (not the whole schema)."""
    for version in K8S_VERSIONS:
        problem = None
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            field = ".".join(str(p) for p in exc.path) or "(top)"
            problem = f"{field}: {exc.message}"
        except kubernetes_validate.SchemaNotFoundError as exc:
            problem = exc.message
        if problem:
            pytest.fail(f"{where}: {doc['kind']} {doc['metadata']['name']}, Kubernetes {version}: {problem}")


# -- the schemas -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [p for p in yaml_files() if not is_kustomization(p)], ids=lambda p: p.name)
def test_each_manifest_is_valid_for_the_supported_kubernetes_versions(path):
    docs = documents(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        validate(doc, str(path.relative_to(REPO)))


def test_the_strict_schema_refuses_an_unknown_field():
    """The check above is worth something: a misspelt field (`replica` for `replicas`) fails it."""
    deployment = one("Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


# -- the kustomizations ------------------------------------------------------------------------------------


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in yaml_files() if is_kustomization(p))


def test_the_kustomizations_list_every_file_and_only_files_that_exist():
    listed: set[Path] = set()
    for directory in kustomization_dirs():
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        assert kustomization["kind"] == "Kustomization"
        assert set(kustomization) <= {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}, (
            f"{directory}: a new kustomize feature: extend this test to read it"
        )
        for patch in kustomization.get("patches", []):
            assert set(patch) == {"target", "patch"}, f"{directory}: only inline patches with a target are read here"
        for entry in kustomization.get("resources", []):
            target = (directory / entry).resolve()
            assert target.is_relative_to(DEPLOY), f"{directory}/kustomization.yaml: {entry} is outside deploy/"
            if target.is_dir():
                assert (target / "kustomization.yaml").is_file(), f"{directory}: {entry} is no kustomization"
            else:
                assert target.is_file(), f"{directory}/kustomization.yaml lists {entry}, which does not exist"
                listed.add(target)
    written = {p for p in yaml_files() if not is_kustomization(p)}
    assert written - listed == NOT_APPLIED, "a manifest no kustomization applies (or the example Secret is listed)"
    assert DEPLOY in kustomization_dirs(), (
        "`kubectl apply -k deploy/kubernetes` needs deploy/kubernetes/kustomization.yaml"
    )


def kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the rendering by kustomize is not checked (the files are)")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed: {done.stderr}"
    return load_all(done.stdout)


def names(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(doc["kind"], doc["metadata"]["name"]) for doc in docs}


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_kustomize_renders_each_kustomization_into_valid_objects(directory):
    rendered = kubectl_kustomize(directory)
    for doc in rendered:
        validate(doc, f"kubectl kustomize {directory.relative_to(REPO)}")
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "byoi", f"{doc['kind']} {doc['metadata']['name']} unlabelled"
    expected = names(applied())
    if directory == BUILDS_OVERLAY:
        expected |= {("Namespace", "byoi")} | names(overlay_objects())
    if directory == DEPLOY / "namespace":
        expected |= {("Namespace", "byoi")}
        namespaced = [doc for doc in rendered if doc["kind"] != "Namespace"]
        assert {doc["metadata"].get("namespace") for doc in namespaced} == {"byoi"}
        binding = next(doc for doc in rendered if doc["kind"] == "RoleBinding")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "byoi", "namespace": "byoi"}]
    assert names(rendered) == expected
    (deployment,) = [doc for doc in rendered if doc["kind"] == "Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    if directory == BASE:
        assert image == "byoi", "the base leaves the image to the kustomization applied (or a site's overlay)"
    else:
        assert image.startswith("registry.example.org/"), f"{directory}: `images:` does not name byoi's image"


def overlay_objects() -> list[dict[str, Any]]:
    return [doc for p, doc in manifests() if p.parent == BUILDS_OVERLAY]


def granted(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    rights: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rights.setdefault((group, resource), set()).update(rule["verbs"])
    assert all("*" not in key and "*" not in verbs for key, verbs in rights.items()), "a wildcard in a Role"
    return rights


def test_the_builds_namespace_overlay_runs_builds_apart_from_sessions_with_rights_only_there():
    rendered = kubectl_kustomize(BUILDS_OVERLAY)
    by_name = {(doc["kind"], doc["metadata"]["name"]): doc for doc in rendered}
    # Pod Security: enforced `restricted` where byoi and the sessions run, `privileged` only for the builds.
    assert by_name[("Namespace", "byoi")]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    builds = by_name[("Namespace", "byoi-builds")]["metadata"]["labels"]
    assert builds["pod-security.kubernetes.io/enforce"] == "privileged"
    # byoi builds there; everything of its own stays in `byoi`.
    env = by_name[("Deployment", "byoi")]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "BYOI_BUILD_KUBE_NAMESPACE", "value": "byoi-builds"} in env
    overlay = names(overlay_objects()) - {("Namespace", "byoi-builds")}
    for key, doc in by_name.items():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == ("byoi-builds" if key in overlay else "byoi"), key
    # The Role in `byoi` lost its Jobs rule and nothing else; the one in `byoi-builds` is within its allow-list.
    sessions = granted(by_name[("Role", "byoi")])
    assert set(sessions) == set(granted(one("Role"))) - {("batch", "jobs")}
    assert all(sessions[key] == set(ALLOWED_RBAC[key]) for key in sessions)
    rights = granted(by_name[("Role", "byoi-builds")])
    assert rights == {key: set(verbs) for key, verbs in BUILDS_RBAC.items()}
    binding = by_name[("RoleBinding", "byoi-builds")]
    assert binding["roleRef"]["name"] == "byoi-builds"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "byoi", "namespace": "byoi"}]
    # Nothing reaches a build's pod.
    policy = by_name[("NetworkPolicy", "byoi-builds-no-ingress")]["spec"]
    assert policy["podSelector"] == {} and policy["policyTypes"] == ["Ingress"] and "ingress" not in policy


# -- RBAC --------------------------------------------------------------------------------------------------


def test_the_role_grants_nothing_beyond_the_allow_list():
    beyond = {
        key: sorted(verbs - ALLOWED_RBAC.get(key, frozenset()))
        for key, verbs in granted(one("Role")).items()
        if not verbs <= ALLOWED_RBAC.get(key, frozenset())
    }
    assert beyond == {}, "the Role grants more than ALLOWED_RBAC: widening it is a reviewed change to both"


def test_nothing_is_cluster_wide_and_the_role_is_bound_to_byois_service_account_only():
    kinds = {doc["kind"] for _, doc in manifests()}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    binding = one("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": one("Role")["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": one("ServiceAccount")["metadata"]["name"]}]
    assert pod_spec()["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]


# -- the Deployment --------------------------------------------------------------------------------------


def test_the_containers_run_as_non_root_without_privilege_escalation_on_a_read_only_root():
    pod = pod_spec()
    pod_context = pod.get("securityContext", {})
    assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True and pod.get("hostIPC") is not True
    for c in pod.get("initContainers", []) + pod["containers"]:
        context = {**pod_context, **c.get("securityContext", {})}
        assert context.get("runAsNonRoot") is True, c["name"]
        assert context.get("runAsUser", 1) != 0 and context.get("runAsGroup", 1) != 0, c["name"]
        assert context.get("allowPrivilegeEscalation") is False, c["name"]
        assert context.get("privileged") is not True, c["name"]
        assert context.get("readOnlyRootFilesystem") is True, c["name"]
        assert context.get("capabilities", {}).get("drop") == ["ALL"], c["name"]
        assert not context.get("capabilities", {}).get("add"), c["name"]
    assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}


def test_the_image_runs_byoi_as_the_pods_user():
    """deploy/Dockerfile (not built here: its base is not pullable on this machine) makes the user the pod runs
    as, and `byoi` the entrypoint the Deployment's arguments go to."""
    lines = (REPO / "deploy" / "Dockerfile").read_text().splitlines()
    context = pod_spec()["securityContext"]
    assert [line.split()[1] for line in lines if line.startswith("USER ")] == [
        f"{context['runAsUser']}:{context['runAsGroup']}"
    ]
    assert [line for line in lines if line.startswith("ENTRYPOINT ")] == ['ENTRYPOINT ["byoi"]']
    assert container()["args"][0] == "server"


def test_two_replicas_spread_over_nodes_kept_by_a_disruption_budget_and_selected_by_the_service():
    deployment = one("Deployment")
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert template_labels.items() >= CONTROL_PLANE_LABELS.items()  # the session NetworkPolicy admits these pods
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"] == CONTROL_PLANE_LABELS
    terms = pod_spec()["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [t["podAffinityTerm"]["topologyKey"] for t in terms] == ["kubernetes.io/hostname"]
    assert terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == CONTROL_PLANE_LABELS
    budget = one("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"] == CONTROL_PLANE_LABELS and budget["minAvailable"] == 1
    assert one("Service")["spec"]["selector"] == CONTROL_PLANE_LABELS
    assert one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == CONTROL_PLANE_LABELS
    port = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert one("Service")["spec"]["ports"][0]["targetPort"] in port
    assert [r["ports"] for r in one("NetworkPolicy")["spec"]["ingress"]] == [
        [{"protocol": "TCP", "port": port["http"]}]
    ]


def test_probes_resources_and_the_writable_directories():
    c = container()
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"]["path"] != "/healthz", "a registry outage must not restart byoi"
    assert {"requests", "limits"} <= set(c["resources"]) and "memory" in c["resources"]["limits"]
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    env = {e["name"]: e for e in c["env"]}
    data_dir = env["BYOI_DATA_DIR"]["value"]
    assert "emptyDir" in volumes[mounts[data_dir]["name"]], "the data dir is an emptyDir (the root is read-only)"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # noqa: S108 - the pod's /tmp, not this machine's
    # Build contexts and logs are shared by the replicas (docs/operations.md, "Several replicas").
    claim = volumes[mounts[env["BYOI_BUILD_DIR"]["value"]]["name"]]["persistentVolumeClaim"]["claimName"]
    (pvc,) = [doc for doc in applied() if doc["kind"] == "PersistentVolumeClaim" and doc["metadata"]["name"] == claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_control_plane_reaches_the_session_pods_the_runtime_makes_and_they_admit_it():
    """Both ends of the proxy's connection: this egress rule selects the pods byoi's Kubernetes runtime labels,
    on RStudio's port, and the runtime's session NetworkPolicy admits pods labelled as the Deployment's are."""
    spec = pytest.importorskip("byoi.runtime.kubernetes_spec")
    from byoi.runtime.spec import SESSION_PORT

    rules = one("NetworkPolicy")["spec"]["egress"]
    to_sessions = [r for r in rules if any("podSelector" in peer and len(peer) == 1 for peer in r.get("to", []))]
    assert len(to_sessions) == 1
    (peer,) = to_sessions[0]["to"]
    session_pod_labels = {spec.MANAGED_BY: "byoi", spec.MANAGED: "true"}  # what make_pod and its policy select by
    assert peer["podSelector"]["matchLabels"].items() <= session_pod_labels.items()
    assert to_sessions[0]["ports"] == [{"protocol": "TCP", "port": SESSION_PORT}]
    session_policy = spec.make_network_policy("byoi", "0123456789abcdef")
    (admitted,) = session_policy["spec"]["ingress"][0]["from"]
    template = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert admitted["podSelector"]["matchLabels"].items() <= template.items()


def test_the_secrets_the_deployment_reads_are_keys_of_the_example_secret_which_holds_no_real_one():
    keys = example_secret()
    refs = [e["valueFrom"]["secretKeyRef"] for e in container()["env"] if "valueFrom" in e]
    items = [
        (v["secret"]["secretName"], i["key"])
        for v in pod_spec()["volumes"]
        if "secret" in v
        for i in v["secret"]["items"]
    ]
    for name, key in [(r["name"], r["key"]) for r in refs] + items:
        assert name == "byoi" and key in keys, f"the Deployment reads {name}/{key}, which secret.example.yaml lacks"
    with pytest.raises(ValueError):
        Fernet(keys["master-key"])  # a placeholder, not a key: applied by mistake, byoi would not start on it
    assert all("CHANGE-ME" in value for value in (keys["database-url"], keys["master-key"], keys["registries.toml"]))


# -- the settings the Deployment passes are settings `byoi server` reads -------------------------------------


def server_readers() -> dict[str, Callable[[dict[str, str]], Any]]:
    """What the composition root reads from the environment besides `byoi server`'s own options."""
    from byoi.auth.browser import BrowserSettings
    from byoi.auth.oidc import OidcSettings
    from byoi.build.settings import BuildSettings
    from byoi.runtime.settings import RuntimeSettings

    return {
        "sessions": RuntimeSettings.from_env,
        "builds": BuildSettings.from_env,
        "browser": BrowserSettings.from_env,
        "oidc": OidcSettings.from_env,
    }


@pytest.fixture
def as_in_the_pod(tmp_path) -> Iterator[Callable[[str], str]]:
    """A value of the Deployment's with the pod's mounts moved under tmp_path: the example Secret's items where
    the Secret is mounted, an empty directory where an emptyDir is."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container()["volumeMounts"]}
    for mount_path, volume in mounts.items():
        directory = tmp_path / mount_path.lstrip("/")
        directory.mkdir(parents=True)
        for item in volume.get("secret", {}).get("items", []):
            (directory / item["path"]).write_text(example_secret()[item["key"]])

    def local(value: str) -> str:
        for mount_path in mounts:
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(tmp_path / value.lstrip("/"))
        return value

    yield local


def deployment_env(local: Callable[[str], str]) -> dict[str, str]:
    values = {}
    for e in container()["env"]:
        if "valueFrom" in e:
            values[e["name"]] = example_secret()[e["valueFrom"]["secretKeyRef"]["key"]]
        else:
            values[e["name"]] = local(e["value"])
    return values


def server_start(args: list[str], env: dict[str, str], monkeypatch) -> tuple[tuple[Any, ...] | None, str]:
    """(what `byoi ARGS` would start the server with, None if it refused; its stderr), run in this process with
    the server's start replaced by a recorder."""
    import byoi.cli.server

    started: list[tuple[Any, ...]] = []
    monkeypatch.setattr(byoi.cli.server, "run_server", lambda *a: started.append(a))
    done = byoi_cli(args, env)
    if done.returncode != 0:
        return None, done.stderr
    (call,) = started
    return call, done.stderr


def run_server(args: list[str], env: dict[str, str], monkeypatch) -> tuple[Any, ...]:
    call, stderr = server_start(args, env, monkeypatch)
    assert call is not None, f"byoi {' '.join(args)} refused the Deployment's settings: {stderr}"
    return call


def read_by_the_server(name: str, value: str, args: list[str], base: dict[str, str], monkeypatch) -> bool:
    """Whether setting `name` changes what `byoi server` starts with or what a settings reader returns, or makes
    either refuse naming it."""
    call, stderr = server_start(args, {**base, name: value}, monkeypatch)
    if call is None:
        return name in stderr
    if call != started_with(tuple(args), base, monkeypatch):
        return True
    for read in server_readers().values():
        try:
            if read({name: value}) != read({}):
                return True
        except ValueError as exc:
            if name in str(exc):
                return True
    return False


_STARTED: dict[tuple[str, ...], tuple[Any, ...]] = {}


def started_with(args: tuple[str, ...], base: dict[str, str], monkeypatch) -> tuple[Any, ...]:
    """run_server(args, base), once per arguments in a run (`base` is always this process's, less byoi's)."""
    if args not in _STARTED:
        _STARTED[args] = run_server(list(args), base, monkeypatch)
    return _STARTED[args]


def server_options() -> set[str]:
    import typer.main

    from byoi.cli.main import app

    command = typer.main.get_command(app).commands["server"]  # type: ignore[attr-defined]
    return {opt for param in command.params for opt in param.opts}


def test_the_deployments_arguments_and_environment_are_settings_byoi_server_reads(as_in_the_pod, monkeypatch):
    args = container()["args"]  # to `byoi`, the image's entrypoint
    base = byoi_env_free()
    env = deployment_env(as_in_the_pod)
    settings, _level, log_format = run_server(args, {**base, **env}, monkeypatch)
    assert (settings.host, settings.port) == ("0.0.0.0", container()["ports"][0]["containerPort"])  # noqa: S104
    assert settings.database_url == example_secret()["database-url"]
    assert settings.master_key == example_secret()["master-key"]
    assert [r.url for r in settings.registries] == ["https://registry.example.org"]  # from the mounted file
    assert str(settings.data_dir) == as_in_the_pod(env_value("BYOI_DATA_DIR"))
    assert log_format == "json"
    options = server_options()
    unread = []
    for name, value in env.items():
        if name in PENDING and PENDING[name] not in options:
            continue  # not in byoi yet (see PENDING)
        if not read_by_the_server(name, value, args, base, monkeypatch):
            unread.append(name)
    assert unread == [], "the Deployment sets variables `byoi server` does not read (misspelt, or retired?)"


def test_the_probe_finds_a_misspelt_setting(monkeypatch):
    """The check above is worth something: BYOI_DATABASE_URI (for _URL) is caught, BYOI_LEASE_SECONDS is not."""
    base = byoi_env_free()
    assert not read_by_the_server("BYOI_DATABASE_URI", "postgresql://x@db/byoi", ["server"], base, monkeypatch)
    assert read_by_the_server("BYOI_LEASE_SECONDS", "12", ["server"], base, monkeypatch)
    assert read_by_the_server("BYOI_SESSION_UID", "2000", ["server"], base, monkeypatch)
    assert read_by_the_server("BYOI_LEASE_SECONDS", "soon", ["server"], base, monkeypatch)  # refused, named


def byoi_env_free() -> dict[str, str]:
    """This process's environment without byoi's settings (nor Docker's), as a pod's would start."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith("BYOI_") and k not in ("DOCKER_HOST", "DOCKER_CONFIG")
    }


def env_value(name: str) -> str:
    return next(e["value"] for e in container()["env"] if e["name"] == name)
