"""The authorization matrix (issue 10), through boto3 against a real byoi server, on SQLite and PostgreSQL.

One administrator and three users: alice and bob in domain A (different profiles), carol in domain B. Domain A's
default settings attach two images, bob's profile attaches one more, domain B attaches one, and one image is
attached to nothing. Every operation the server serves is called as each user, on their own resources and on
others': the expected answer comes from `USER_ACCESS` below (written out here, not read from the product's
table), and an operation the server serves that is in neither `USER_ACCESS` nor `ADMIN_ONLY` fails the test,
so none can be added without being covered. Refusals are AccessDeniedException, HTTP 400, naming the operation
and the resource's ARN, and each is in the audit log; lists show only what the caller may see, across pages.

Sessions need not run here: the server's Docker host is a closed loopback port, so CreateApp writes the app's
record (which the lists and the app operations need) and its launch then fails.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx2 as httpx
import pytest
from botocore import xform_name
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from byoi.api.model import all_operation_names, extension_data_path, sagemaker_model
from byoi.app import Services, build_context
from byoi.cli.client import extension_client
from byoi.config import Settings
from tests.support.attach import created_version, entry, rsession
from tests.support.processes import ByoiServer, free_port
from tests.support.signing import admin_credentials

ACCOUNT = "000000000000"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/byoi-test"
SM = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}"
CONFIG = "access-config"
SHARED = {"UserProfileName": "domain-shared", "AppType": "RStudioServerPro", "AppName": "default"}
RSTUDIO = {
    "RStudioServerProDomainSettings": {
        "DomainExecutionRoleArn": ROLE,
        "RStudioConnectUrl": "https://connect.example.test/team",
        "RStudioPackageManagerUrl": "https://packages.example.test/cran/latest",
    }
}

# -- what the test expects ------------------------------------------------------------------------------

ANYONE = "anyone"
SCOPED = "scoped list"
ATTACHED = "image attached to the user's domain or profile"
OWN_DOMAIN = "the user's domain (and, when named, their own profile)"
OWN_PROFILE = "the user's own profile"
OWN_OR_SHARED = "the user's own profile, or their domain's shared RStudioServerPro app (read only)"

USER_ACCESS = {
    "GetServerInfo": ANYONE,
    "GetCallerIdentity": ANYONE,
    "ListImages": SCOPED,
    "ListDomains": SCOPED,
    "ListUserProfiles": SCOPED,
    "ListApps": SCOPED,
    "DescribeImage": ATTACHED,
    "DescribeImageVersion": ATTACHED,
    "ListImageVersions": ATTACHED,
    "ListAliases": ATTACHED,
    "DescribeImageVersionReport": ATTACHED,
    "DiffImageVersions": ATTACHED,
    "DescribeDomain": OWN_DOMAIN,
    "DescribeAttachedImages": OWN_DOMAIN,
    "ListEffectiveImages": OWN_DOMAIN,
    "ListInstanceTypes": OWN_DOMAIN,
    "DescribeUserProfile": OWN_PROFILE,
    "CreateApp": OWN_PROFILE,
    "DescribeApp": OWN_OR_SHARED,
    "DeleteApp": OWN_PROFILE,
    "DescribeAppProgress": OWN_PROFILE,
    "GetAppLogs": OWN_PROFILE,
    "CreatePresignedDomainUrl": OWN_PROFILE,
}

ADMIN_ONLY = {
    # the catalog
    "CreateImage",
    "UpdateImage",
    "DeleteImage",
    "CreateImageVersion",
    "UpdateImageVersion",
    "DeleteImageVersion",
    "DescribeImageReference",
    "StartImageBuild",
    "DescribeImageBuild",
    "ListImageBuilds",
    "StopImageBuild",
    # domains, profiles and what is attached to them (even the user's own)
    "CreateDomain",
    "UpdateDomain",
    "DeleteDomain",
    "CreateUserProfile",
    "UpdateUserProfile",
    "DeleteUserProfile",
    "UpdateAttachedImages",
    "CreateAppImageConfig",
    "DescribeAppImageConfig",
    "ListAppImageConfigs",
    "UpdateAppImageConfig",
    "DeleteAppImageConfig",
    "AddTags",
    "DeleteTags",
    "ListTags",
    # principals, keys, the audit log (even the user's own)
    "CreatePrincipal",
    "DescribePrincipal",
    "ListPrincipals",
    "DeletePrincipal",
    "SetPrincipalPassword",
    "RevokePrincipalSessions",
    "CreateAccessKey",
    "ListAccessKeys",
    "UpdateAccessKey",
    "DeleteAccessKey",
    "ListAuditEvents",
}


@dataclass(frozen=True)
class Target:
    """The resources one request names."""

    domain: str
    profile: str | None
    image: str = "ghost-image"
    app: str = "ghost-app"
    principal: str = "ghost-principal"
    key: str = "AKIAGHOST00000000000"
    config: str = "ghost-config"
    app_type: str = "RSessionGateway"

    @property
    def profile_arn(self) -> str:
        if self.profile is None:
            return f"{SM}:domain/{self.domain}"
        return f"{SM}:user-profile/{self.domain}/{self.profile}"

    def arn(self, kind: str | None) -> str | None:
        return {
            None: None,
            "image": f"{SM}:image/{self.image}",
            "domain": f"{SM}:domain/{self.domain}",
            "profile": self.profile_arn,
            "app": f"{SM}:app/{self.domain}/{self.profile}/{self.app_type}/{self.app}",
            "config": f"{SM}:app-image-config/{self.config}",
            "principal": f"arn:aws:iam::{ACCOUNT}:user/byoi/{self.principal}",
            "key": f"arn:aws:iam::{ACCOUNT}:access-key/{self.key}",
            "tagged": self.profile_arn,
            "new-profile": f"{SM}:user-profile/{self.domain}/ghost-profile",
        }[kind]


def _profile(t: Target) -> dict[str, str]:
    return {"DomainId": t.domain, **({"UserProfileName": t.profile} if t.profile else {})}


def _app(t: Target) -> dict[str, str]:
    return {**_profile(t), "AppType": t.app_type, "AppName": t.app}


# Per operation: a minimal well-formed request for a target, and which of the target's resources it names.
REQUESTS: dict[str, tuple[Callable[[Target], dict[str, Any]], str | None]] = {
    "GetServerInfo": (lambda t: {}, None),
    "GetCallerIdentity": (lambda t: {}, None),
    "ListImages": (lambda t: {}, None),
    "ListDomains": (lambda t: {}, None),
    "ListUserProfiles": (lambda t: {}, None),
    "ListApps": (lambda t: {}, None),
    "DescribeImage": (lambda t: {"ImageName": t.image}, "image"),
    "DescribeImageVersion": (lambda t: {"ImageName": t.image, "Version": 1}, "image"),
    "ListImageVersions": (lambda t: {"ImageName": t.image}, "image"),
    "ListAliases": (lambda t: {"ImageName": t.image}, "image"),
    "DescribeImageVersionReport": (lambda t: {"ImageName": t.image, "Version": 1}, "image"),
    "DiffImageVersions": (lambda t: {"ImageName": t.image, "FromVersion": 1, "ToVersion": 1}, "image"),
    "DescribeDomain": (lambda t: {"DomainId": t.domain}, "domain"),
    "DescribeAttachedImages": (_profile, "profile"),
    "ListEffectiveImages": (_profile, "profile"),
    "ListInstanceTypes": (_profile, "profile"),
    "DescribeUserProfile": (_profile, "profile"),
    # The image is attached to nobody, so the user's own CreateApp passes the policy and fails in the service.
    "CreateApp": (lambda t: {**_app(t), "ResourceSpec": {"SageMakerImageArn": f"{SM}:image/{LOOSE}"}}, "app"),
    "DescribeApp": (_app, "app"),
    "DeleteApp": (_app, "app"),
    "DescribeAppProgress": (_app, "app"),
    "GetAppLogs": (_app, "app"),
    "CreatePresignedDomainUrl": (_profile, "profile"),
    "CreateImage": (lambda t: {"ImageName": t.image, "RoleArn": ROLE}, "image"),
    "UpdateImage": (lambda t: {"ImageName": t.image, "Description": "changed"}, "image"),
    "DeleteImage": (lambda t: {"ImageName": t.image}, "image"),
    "CreateImageVersion": (lambda t: {"ImageName": t.image, "BaseImage": "access/nothing:v9"}, "image"),
    "UpdateImageVersion": (lambda t: {"ImageName": t.image, "Version": 1, "AliasesToAdd": ["stolen"]}, "image"),
    "DeleteImageVersion": (lambda t: {"ImageName": t.image, "Version": 1}, "image"),
    "DescribeImageReference": (lambda t: {"ImageReference": "access/nothing:v9"}, None),
    "StartImageBuild": (lambda t: {"ContextId": "ctx-" + "0" * 32, "Repository": "access/built"}, None),
    "DescribeImageBuild": (lambda t: {"BuildId": "b-" + "0" * 16}, None),
    "ListImageBuilds": (lambda t: {}, None),
    "StopImageBuild": (lambda t: {"BuildId": "b-" + "0" * 16}, None),
    "CreateDomain": (
        lambda t: {"DomainName": "ghost-domain", "AuthMode": "IAM", "DefaultUserSettings": {"ExecutionRole": ROLE}},
        None,
    ),
    "UpdateDomain": (lambda t: {"DomainId": t.domain, "DefaultUserSettings": {"ExecutionRole": ROLE}}, "domain"),
    "DeleteDomain": (lambda t: {"DomainId": t.domain}, "domain"),
    "CreateUserProfile": (lambda t: {"DomainId": t.domain, "UserProfileName": "ghost-profile"}, "new-profile"),
    "UpdateUserProfile": (lambda t: {**_profile(t), "UserSettings": {"ExecutionRole": ROLE}}, "profile"),
    "DeleteUserProfile": (_profile, "profile"),
    "UpdateAttachedImages": (lambda t: {**_profile(t), "CustomImages": [], "ExpectedRevision": 1}, "profile"),
    "CreateAppImageConfig": (lambda t: {"AppImageConfigName": t.config}, "config"),
    "DescribeAppImageConfig": (lambda t: {"AppImageConfigName": t.config}, "config"),
    "ListAppImageConfigs": (lambda t: {}, None),
    "UpdateAppImageConfig": (lambda t: {"AppImageConfigName": t.config}, "config"),
    "DeleteAppImageConfig": (lambda t: {"AppImageConfigName": t.config}, "config"),
    "AddTags": (lambda t: {"ResourceArn": t.profile_arn, "Tags": [{"Key": "k", "Value": "v"}]}, "tagged"),
    "DeleteTags": (lambda t: {"ResourceArn": t.profile_arn, "TagKeys": ["k"]}, "tagged"),
    "ListTags": (lambda t: {"ResourceArn": t.profile_arn}, "tagged"),
    "CreatePrincipal": (lambda t: {"Name": t.principal, "Role": "admin"}, "principal"),
    "DescribePrincipal": (lambda t: {"Name": t.principal}, "principal"),
    "ListPrincipals": (lambda t: {}, None),
    "DeletePrincipal": (lambda t: {"Name": t.principal}, "principal"),
    "SetPrincipalPassword": (lambda t: {"Name": t.principal, "Password": "correct horse battery 9"}, "principal"),
    "RevokePrincipalSessions": (lambda t: {"Name": t.principal}, "principal"),
    "CreateAccessKey": (lambda t: {"PrincipalName": t.principal}, "principal"),
    "ListAccessKeys": (lambda t: {"PrincipalName": t.principal}, "principal"),
    "UpdateAccessKey": (lambda t: {"AccessKeyId": t.key, "Status": "Active"}, "key"),
    "DeleteAccessKey": (lambda t: {"AccessKeyId": t.key}, "key"),
    "ListAuditEvents": (lambda t: {}, None),
}

LOOSE = "access-loose"  # attached to nothing
IMAGES = {"a1": "access-a1", "a2": "access-a2", "bob": "access-bob", "b": "access-b", "loose": LOOSE}
VISIBLE = {
    "alice": {IMAGES["a1"], IMAGES["a2"]},
    "bob": {IMAGES["a1"], IMAGES["a2"], IMAGES["bob"]},
    "carol": {IMAGES["b"]},
}


def served_operations(tmp: Path) -> set[str]:
    """The operations the server implements, found the way the server finds them."""
    implemented = set(Services(build_context(Settings(data_dir=tmp))).operations())
    return {name for name in all_operation_names() if xform_name(name) in implemented}


# -- the world -------------------------------------------------------------------------------------------


@dataclass
class User:
    name: str
    domain: str
    profile: str
    key_id: str
    secret: str
    sm: Any
    ext: Any
    app: str = ""


@dataclass
class World:
    srv: ByoiServer
    sm: Any
    ext: Any
    domain_a: str
    domain_b: str
    users: dict[str, User] = field(default_factory=dict)
    served: set[str] = field(default_factory=set)

    def client(self, op: str, user: User | None) -> Any:
        sagemaker = op in sagemaker_model().operation_names
        if user is None:
            return self.sm if sagemaker else self.ext
        return user.sm if sagemaker else user.ext


def user_clients(endpoint: str, key_id: str, secret: str) -> tuple[Any, Any]:
    session = boto3.Session(aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1")
    loader = session._session.get_component("data_loader")
    if extension_data_path() not in loader.search_paths:
        loader.search_paths.append(extension_data_path())
    config = Config(retries={"max_attempts": 1})
    return (
        session.client("sagemaker", endpoint_url=endpoint, config=config),
        session.client("byoi", endpoint_url=endpoint, config=config),
    )


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: Any, registry: str, pusher: Any, tmp_path_factory: Any) -> Iterator[World]:
    url = None
    if request.param == "postgres":
        base = os.environ.get("BYOI_TEST_POSTGRES_URL")
        if not base:
            pytest.skip("BYOI_TEST_POSTGRES_URL is not set (scripts/services.sh starts PostgreSQL)")
        from tests.conftest import fresh_postgres_database

        url = fresh_postgres_database(base)
    srv = ByoiServer(
        data_dir=tmp_path_factory.mktemp("byoi-access"),
        registries=[f"http://{registry}"],
        database_url=url,
        # No Docker Engine answers there: CreateApp records the app, its launch fails (nothing runs).
        env={"BYOI_SESSION_DOCKER_HOST": f"tcp://127.0.0.1:{free_port()}"},
    ).start()
    try:
        yield build_world(srv, pusher, tmp_path_factory.mktemp("services"))
    finally:
        srv.stop()


def build_world(srv: ByoiServer, pusher: Any, tmp: Path) -> World:
    sm = srv.client()
    srv.session()  # points AWS_SHARED_CREDENTIALS_FILE at the administrator's key
    ext = extension_client(srv.endpoint, "byoi")
    sm.create_app_image_config(AppImageConfigName=CONFIG)
    for name in IMAGES.values():
        created_version(sm, pusher, name)
    a_images = rsession(entry(IMAGES["a1"], CONFIG), entry(IMAGES["a2"], CONFIG))
    domain_a = sm.create_domain(
        DomainName="access-a",
        AuthMode="IAM",
        DefaultUserSettings={"ExecutionRole": ROLE, **a_images},
        DomainSettings=RSTUDIO,
    )["DomainId"]
    domain_b = sm.create_domain(
        DomainName="access-b",
        AuthMode="IAM",
        DefaultUserSettings={"ExecutionRole": ROLE, **rsession(entry(IMAGES["b"], CONFIG))},
    )["DomainId"]
    w = World(srv, sm, ext, domain_a, domain_b, served=served_operations(tmp))
    profiles = {
        "alice": (domain_a, {}),
        "bob": (domain_a, rsession(entry(IMAGES["bob"], CONFIG))),
        "carol": (domain_b, {}),
    }
    for name, (domain, settings) in profiles.items():
        sm.create_user_profile(DomainId=domain, UserProfileName=name, UserSettings=settings)
        ext.create_principal(Name=name, Role="user", DomainId=domain, UserProfileName=name)
        key = ext.create_access_key(PrincipalName=name)["AccessKey"]
        user_sm, user_ext = user_clients(srv.endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        w.users[name] = User(name, domain, name, key["AccessKeyId"], key["SecretAccessKey"], user_sm, user_ext)
    # A profile in domain B with alice's name and no principal: a rule comparing only the profile name would
    # hand it to alice.
    sm.create_user_profile(DomainId=domain_b, UserProfileName="alice")
    # Each of alice and bob launches a session on their own profile (allowed; it then fails to start).
    for name, image in (("alice", IMAGES["a1"]), ("bob", IMAGES["bob"])):
        u = w.users[name]
        u.app = f"{name}-app"
        arn = u.sm.create_app(
            DomainId=u.domain,
            UserProfileName=u.profile,
            AppType="RSessionGateway",
            AppName=u.app,
            ResourceSpec={"SageMakerImageArn": f"{SM}:image/{image}"},
        )["AppArn"]
        assert arn == f"{SM}:app/{u.domain}/{u.profile}/RSessionGateway/{u.app}"
    # Domain A has RStudio settings, so it has its shared RStudioServerPro app (made with the domain): its users
    # may read it, never change it; domain B has none.
    assert sm.describe_app(DomainId=domain_a, **SHARED)["Status"] == "InService"
    return w


# -- calling ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: str | None
    message: str = ""
    status: int = 200
    answer: dict[str, Any] = field(default_factory=dict)


def call(w: World, user: User | None, op: str, params: dict[str, Any]) -> Outcome:
    client = w.client(op, user)
    try:
        answer = getattr(client, xform_name(op))(**params)
    except ClientError as exc:
        err = exc.response["Error"]
        return Outcome(err["Code"], err.get("Message", ""), exc.response["ResponseMetadata"]["HTTPStatusCode"])
    return Outcome(None, answer=answer)


def refusal_problems(out: Outcome, op: str, arn: str | None) -> list[str]:
    """What is wrong with `out` as a refusal of `op` on `arn` (nothing when it is a proper refusal)."""
    if out.code != "AccessDeniedException":
        return [f"answered {out.code or 'success'}, not AccessDeniedException"]
    problems = []
    if out.status != 400:
        problems.append(f"HTTP {out.status}, not 400")
    if not re.search(rf"\b{op}\b", out.message):
        problems.append(f"the message does not name the operation: {out.message!r}")
    if arn is not None and arn not in out.message:
        problems.append(f"the message does not name {arn}: {out.message!r}")
    return problems


def own_target(w: World, u: User, image: str | None = None) -> Target:
    return Target(u.domain, u.profile, image or sorted(VISIBLE[u.name])[0], u.app or "no-app", u.name, u.key_id, CONFIG)


def cases(w: World, u: User, op: str) -> list[tuple[Target, bool]]:
    """(target, whether `u` may call `op` on it) for each target worth trying."""
    rule = USER_ACCESS.get(op)
    own = own_target(w, u)
    others = [v for v in w.users.values() if v is not u]
    if rule in (ANYONE, SCOPED):
        return [(own, True)]
    if rule == ATTACHED:
        return [(own_target(w, u, image), image in VISIBLE[u.name]) for image in IMAGES.values()]
    foreign_profiles = [own_target(w, v) for v in others]
    if u.domain != w.domain_b:  # the profile with alice's name in domain B
        foreign_profiles.append(Target(w.domain_b, u.profile, app=own.app))
    other_domain = w.domain_b if u.domain == w.domain_a else w.domain_a
    # The shared RStudioServerPro app (of `domain-shared`): the user's own domain's is readable by DescribeApp only.
    shared = Target(u.domain, "domain-shared", app="default", app_type="RStudioServerPro")
    foreign_profiles.append(Target(other_domain, "domain-shared", app="default", app_type="RStudioServerPro"))
    if rule == OWN_OR_SHARED:
        return [(own, True), (shared, True)] + [(t, False) for t in foreign_profiles]
    foreign_profiles.append(shared)
    if rule == OWN_DOMAIN:
        domains = [(Target(u.domain, None), True), (Target(other_domain, None), False)]
        if op == "DescribeDomain":
            return domains
        return [(own, True), *domains] + [(t, False) for t in foreign_profiles]
    if rule == OWN_PROFILE:
        return [(own, True)] + [(t, False) for t in foreign_profiles]
    return [(own, False)]  # admin-only: refused even on the user's own domain, profile, principal and key


# -- the matrix ------------------------------------------------------------------------------------------


def test_every_served_operation_is_in_the_matrix(world: World):
    served = world.served
    unlisted = served - set(USER_ACCESS) - ADMIN_ONLY
    assert not unlisted, f"operations served but not in USER_ACCESS or ADMIN_ONLY: {sorted(unlisted)}"
    assert not set(USER_ACCESS) & ADMIN_ONLY
    assert not (set(USER_ACCESS) | ADMIN_ONLY) - set(REQUESTS), "an operation without a request to try"
    assert {"ListImages", "CreateApp", "CreateImage", "DescribeImage", "ListAuditEvents"} <= served
    # What the table lists and the server does not serve yet answers UnknownOperationException to everyone.
    for op in (set(USER_ACCESS) | ADMIN_ONLY) - served:
        build, _ = REQUESTS[op]
        for user in [None, *world.users.values()]:
            target = own_target(world, user) if user else Target(world.domain_a, "alice")
            assert call(world, user, op, build(target)).code == "UnknownOperationException", (op, user)


def test_users_get_exactly_what_the_matrix_allows(world: World):
    start = time.time()
    wrong: list[str] = []
    refused: Counter[tuple[str, str, str | None]] = Counter()
    for op in sorted(world.served):
        build, kind = REQUESTS[op]
        for u in world.users.values():
            for target, allowed in cases(world, u, op):
                out = call(world, u, op, build(target))
                where = f"{u.name} {op} {build(target)}"
                if allowed and out.code == "AccessDeniedException":
                    wrong.append(f"{where}: refused, should be allowed ({out.message})")
                elif not allowed:
                    wrong += [f"{where}: {p}" for p in refusal_problems(out, op, target.arn(kind))]
                    refused[(u.name, op, target.arn(kind))] += 1
                elif USER_ACCESS[op] == ATTACHED and out.code is not None:
                    wrong.append(f"{where}: allowed but failed with {out.code}: {out.message}")
    assert not wrong, "\n".join(wrong)
    assert len(refused) > 60
    assert_audited(world, refused, start)


def test_what_a_user_may_call_succeeds_with_the_right_answer(world: World):
    alice, bob, carol = (world.users[n] for n in ("alice", "bob", "carol"))
    me = alice.ext.get_caller_identity()
    assert (me["PrincipalName"], me["DomainId"], me["UserProfileName"]) == ("alice", world.domain_a, "alice")
    assert alice.sm.describe_domain(DomainId=world.domain_a)["DomainId"] == world.domain_a
    assert carol.sm.describe_user_profile(DomainId=world.domain_b, UserProfileName="carol")["UserProfileName"] == (
        "carol"
    )
    app = alice.sm.describe_app(
        DomainId=world.domain_a, UserProfileName="alice", AppType="RSessionGateway", AppName=alice.app
    )
    assert app["AppName"] == alice.app
    assert bob.sm.describe_app(DomainId=world.domain_a, **SHARED)["Status"] == "InService"
    types = alice.ext.list_instance_types(DomainId=world.domain_a, UserProfileName="alice")
    assert types["DefaultInstanceType"] == "ml.t3.medium" and "ml.t3.medium" in {
        t["InstanceType"] for t in types["InstanceTypes"]
    }
    attached = bob.ext.describe_attached_images(DomainId=world.domain_a, UserProfileName="bob")["CustomImages"]
    assert [e["ImageName"] for e in attached] == [IMAGES["bob"]]
    effective = alice.ext.list_effective_images(DomainId=world.domain_a, UserProfileName="alice")
    assert sorted(e["ImageName"] for e in effective["EffectiveImages"]) == sorted(VISIBLE["alice"])
    # bob sees his profile's image, alice does not; carol sees only domain B's.
    assert bob.sm.describe_image(ImageName=IMAGES["bob"])["ImageName"] == IMAGES["bob"]
    for user, image in ((alice, IMAGES["bob"]), (carol, IMAGES["a1"]), (bob, IMAGES["b"]), (bob, LOOSE)):
        with pytest.raises(ClientError) as e:
            user.sm.describe_image(ImageName=image)
        assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    # A missing image is refused like an invisible one: a user cannot probe what exists.
    with pytest.raises(ClientError) as e:
        carol.sm.describe_image(ImageName="access-no-such-image")
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"


def test_the_administrator_is_never_refused(world: World):
    """Every operation as the administrator, on nothing and on the users' resources; each change (and only
    changes) is in the audit log with its outcome."""
    start = time.time()
    me = world.ext.get_caller_identity()["PrincipalName"]
    wrong = []
    changes: Counter[tuple[str, str]] = Counter()
    ghost = Target("d-ghost0000000", "ghost")
    for op in sorted(world.served):
        build, _ = REQUESTS[op]
        targets = [ghost]
        if not is_change(op):  # reads may name the real resources too
            targets += [own_target(world, u) for u in world.users.values()]
        for target in targets:
            out = call(world, None, op, build(target))
            if out.code == "AccessDeniedException":
                wrong.append(f"admin {op} {build(target)}: {out.message}")
            if is_change(op):
                changes[(op, out.code or "ok")] += 1
    assert not wrong, "\n".join(wrong)
    events = audit_events(world, start)
    assert Counter((e["Operation"], e["Outcome"]) for e in events if e["PrincipalName"] == me) == changes
    assert ("CreateImage", "ok") in changes and ("DeleteDomain", "ResourceNotFound") in changes


def is_change(op: str) -> bool:
    return not op.startswith(("Describe", "List", "Get", "Diff"))


def test_build_routes_refuse_users(world: World):
    """The build routes outside `POST /` go through the same table: admin-only."""
    alice = world.users["alice"]
    for creds, expected in (
        (Credentials(alice.key_id, alice.secret), "AccessDeniedException"),
        (admin_credentials(world.srv.credentials_file), "ResourceNotFound"),  # the administrator: no such build
    ):
        request = AWSRequest(method="GET", url=f"{world.srv.endpoint}/byoi/builds/b-{'0' * 16}/log")
        SigV4Auth(creds, "sagemaker", "us-east-1").add_auth(request)
        prepared = request.prepare()
        answer = httpx.get(prepared.url, headers=dict(prepared.headers), timeout=10)
        body = answer.json()
        assert (answer.status_code, body["__type"]) == (400, expected), body
    assert "DescribeImageBuild" in body["Message"] or expected == "ResourceNotFound"


# -- lists -----------------------------------------------------------------------------------------------


def page_all(method: Callable[..., dict[str, Any]], key: str, **params: Any) -> list[dict[str, Any]]:
    items, token = [], None
    while True:
        page = method(MaxResults=1, **params, **({"NextToken": token} if token else {}))
        assert len(page[key]) <= 1
        items += page[key]
        token = page.get("NextToken")
        if not token:
            return items


def test_lists_show_only_what_the_caller_may_see_across_pages(world: World):
    everything = {i["ImageName"] for i in page_all(world.sm.list_images, "Images")}
    assert set(IMAGES.values()) <= everything
    for u in world.users.values():
        names = [i["ImageName"] for i in page_all(u.sm.list_images, "Images")]
        assert sorted(names) == sorted(VISIBLE[u.name]), u.name  # each visible image once, nothing else
        assert [i["ImageName"] for i in u.sm.list_images(NameContains="access-")["Images"]] == sorted(
            VISIBLE[u.name], key=names.index
        )
        assert [d["DomainId"] for d in page_all(u.sm.list_domains, "Domains")] == [u.domain]
        profiles = page_all(u.sm.list_user_profiles, "UserProfiles")
        assert [(p["DomainId"], p["UserProfileName"]) for p in profiles] == [(u.domain, u.profile)]
        assert (
            u.sm.list_user_profiles(DomainIdEquals=world.domain_b if u.name != "carol" else world.domain_a)[
                "UserProfiles"
            ]
            == []
        )
        # Their own apps, and their domain's shared RStudioServerPro app (made first, with the domain).
        shared = [(u.domain, "domain-shared", "default")] if u.domain == world.domain_a else []
        apps = page_all(u.sm.list_apps, "Apps")
        assert [(a["DomainId"], a["UserProfileName"], a["AppName"]) for a in apps] == shared + (
            [(u.domain, u.profile, u.app)] if u.app else []
        )
        listed = u.sm.list_apps(UserProfileNameEquals="domain-shared")["Apps"]
        assert [(a["DomainId"], a["UserProfileName"], a["AppName"]) for a in listed] == shared
    admin_apps = {(a["UserProfileName"], a["AppName"]) for a in page_all(world.sm.list_apps, "Apps")}
    assert {("alice", "alice-app"), ("bob", "bob-app"), ("domain-shared", "default")} <= admin_apps
    assert len(page_all(world.sm.list_user_profiles, "UserProfiles")) >= 4


@pytest.mark.parametrize(
    ("method", "key", "ident"),
    [
        ("list_images", "Images", "ImageName"),
        ("list_domains", "Domains", "DomainId"),
        ("list_user_profiles", "UserProfiles", "UserProfileName"),
        ("list_apps", "Apps", "AppName"),
    ],
)
def test_an_administrators_next_token_gives_a_user_nothing_more(world: World, method: str, key: str, ident: str):
    admin_items = page_all(getattr(world.sm, method), key)
    assert len(admin_items) >= 3
    for u in world.users.values():
        mine = {i[ident] for i in getattr(u.sm, method)()[key]}
        # A token from each position of the administrator's listing.
        token = None
        for _ in admin_items[:-1]:
            page = getattr(world.sm, method)(MaxResults=1, **({"NextToken": token} if token else {}))
            token = page["NextToken"]
            try:
                shown = {i[ident] for i in getattr(u.sm, method)(NextToken=token)[key]}
            except ClientError as exc:
                assert exc.response["Error"]["Code"] in ("ValidationException", "AccessDeniedException")
                continue
            assert shown <= mine, (u.name, shown - mine)


# -- audit -----------------------------------------------------------------------------------------------


def assert_audited(w: World, refused: Counter[tuple[str, str, str | None]], since: float) -> None:
    events = audit_events(w, since)
    denied = Counter(
        (e["PrincipalName"], e["Operation"], e.get("ResourceArn"))
        for e in events
        if e["Outcome"] == "AccessDeniedException" and e["PrincipalName"] in w.users
    )
    assert denied == refused, {"not audited": refused - denied, "unexpected": denied - refused}
    keys = {(e["PrincipalName"], e["AccessKeyId"]) for e in events if e["Outcome"] == "AccessDeniedException"}
    assert keys <= {(u.name, u.key_id) for u in w.users.values()}


def audit_events(w: World, since: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    token = None
    start = dt.datetime.fromtimestamp(since, tz=dt.UTC)
    while True:
        page = w.ext.list_audit_events(StartTime=start, MaxResults=100, **({"NextToken": token} if token else {}))
        events += page["AuditEvents"]
        token = page.get("NextToken")
        if not token:
            break
    return events
