"""Identity and access through real doors: principals, access keys, passwords and the audit log, over boto3
(the Byoi.* extension client) and the `byoi admin …` / `byoi whoami` CLI, against a real `byoi server`.

Nothing here is a double: the server is a real process on loopback with its SQLite store, keys are checked by
SigV4 as any client would be, and the CLI runs as a subprocess (once under a real pseudo-terminal, for the
password prompt).
"""

from __future__ import annotations

import configparser
import fcntl
import json
import os
import pty
import select
import sqlite3
import stat
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from byoi.api.model import extension_data_path
from tests.support.processes import ByoiServer

BYOI = str(Path(sys.executable).parent / "byoi")
ROLE = "arn:aws:iam::000000000000:role/byoi"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@lru_cache(maxsize=1)
def _model_path() -> str:
    return extension_data_path()


def ext_client(server: ByoiServer, key_id: str, secret: str, validate: bool = True) -> Any:
    """The Byoi.* botocore client signed with this key pair; `validate=False` sends what botocore would refuse,
    so the server's own validation answers."""
    session = boto3.Session(aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1")
    loader = session._session.get_component("data_loader")
    if _model_path() not in loader.search_paths:
        loader.search_paths.append(_model_path())
    config = Config(retries={"max_attempts": 1}, parameter_validation=validate)
    return session.client("byoi", endpoint_url=server.endpoint, config=config)


def admin_pair(server: ByoiServer) -> tuple[str, str]:
    creds = configparser.RawConfigParser()
    creds.read(server.credentials_file)
    return creds.get("byoi", "aws_access_key_id"), creds.get("byoi", "aws_secret_access_key")


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def rid(response_or_error: Any) -> str:
    response = response_or_error.response if isinstance(response_or_error, ClientError) else response_or_error
    return str(response["ResponseMetadata"]["RequestId"])


def all_events(admin: Any, **filters: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    token = None
    for _ in range(1000):
        page = admin.list_audit_events(MaxResults=100, **filters, **({"NextToken": token} if token else {}))
        events += page["AuditEvents"]
        token = page.get("NextToken")
        if not token:
            return events
    raise AssertionError("ListAuditEvents never stopped paging")


def event_with(admin: Any, request_id: str) -> dict[str, Any]:
    found = [e for e in all_events(admin) if e.get("RequestId") == request_id]
    assert len(found) == 1, f"{len(found)} audit events for request {request_id}"
    return found[0]


def byoi(
    server: ByoiServer, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**server.aws_env(), "COLUMNS": "250", **(env or {})}
    stdin = subprocess.DEVNULL if input is None else None  # never the test runner's terminal
    return subprocess.run(
        [BYOI, *args], env=full_env, capture_output=True, text=True, timeout=120, input=input, stdin=stdin
    )


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ByoiServer]:
    srv = ByoiServer(data_dir=tmp_path_factory.mktemp("identity"), registries=[f"http://{registry}"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin(server: ByoiServer) -> Any:
    return ext_client(server, *admin_pair(server))


@pytest.fixture(scope="module")
def sm(server: ByoiServer) -> Any:
    return server.client()


@pytest.fixture(scope="module")
def domain(sm: Any) -> dict[str, str]:
    name = unique("team")
    domain_id = sm.create_domain(DomainName=name, AuthMode="IAM", DefaultUserSettings={"ExecutionRole": ROLE})[
        "DomainId"
    ]
    return {"id": domain_id, "name": name}


def new_user(sm: Any, admin: Any, domain: dict[str, str], **create: Any) -> str:
    """A user profile in `domain` and a user principal of the same name bound to it."""
    name = unique("u")
    sm.create_user_profile(DomainId=domain["id"], UserProfileName=name)
    admin.create_principal(Name=name, Role="user", DomainId=domain["id"], UserProfileName=name, **create)
    return name


def new_key(server: ByoiServer, admin: Any, principal: str) -> tuple[str, str, Any]:
    key = admin.create_access_key(PrincipalName=principal)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"], ext_client(server, key["AccessKeyId"], key["SecretAccessKey"])


# -- principals ----------------------------------------------------------------------------------


def test_principals_create_describe_delete(sm, admin, domain):
    ops = unique("ops")
    created = admin.create_principal(Name=ops, Role="admin")["Principal"]
    assert (created["Name"], created["Role"], created["HasPassword"]) == (ops, "admin", False)
    assert "DomainId" not in created and created["PrincipalArn"].endswith(f":user/byoi/{ops}")

    user = new_user(sm, admin, domain)
    described = admin.describe_principal(Name=user)
    p = described["Principal"]
    assert (p["Role"], p["DomainId"], p["UserProfileName"]) == ("user", domain["id"], user)
    assert described["AccessKeys"] == []

    with pytest.raises(ClientError) as exc:  # a second principal for the same profile
        admin.create_principal(Name=unique("again"), Role="user", DomainId=domain["id"], UserProfileName=user)
    assert code(exc) == "ResourceInUse"
    with pytest.raises(ClientError) as exc:  # the same name twice
        admin.create_principal(Name=ops, Role="admin")
    assert code(exc) == "ResourceInUse"
    with pytest.raises(ClientError) as exc:
        admin.create_principal(Name=unique("x"), Role="user", DomainId=domain["id"], UserProfileName="nobody-here")
    assert code(exc) == "ResourceNotFound"
    with pytest.raises(ClientError) as exc:
        admin.create_principal(Name=unique("x"), Role="user", DomainId="d-doesnotexist1", UserProfileName=user)
    assert code(exc) == "ResourceNotFound"
    with pytest.raises(ClientError) as exc:  # a user must be bound to a profile
        admin.create_principal(Name=unique("x"), Role="user")
    assert code(exc) == "ValidationException"
    with pytest.raises(ClientError) as exc:  # an administrator must not be
        admin.create_principal(Name=unique("x"), Role="admin", DomainId=domain["id"], UserProfileName=user)
    assert code(exc) == "ValidationException"

    admin.delete_principal(Name=user)
    for call in (lambda: admin.describe_principal(Name=user), lambda: admin.delete_principal(Name=user)):
        with pytest.raises(ClientError) as exc:
            call()
        assert code(exc) == "ResourceNotFound"
    # The profile is free again once its principal is gone.
    admin.create_principal(Name=unique("next"), Role="user", DomainId=domain["id"], UserProfileName=user)


def test_a_deleted_profile_takes_its_principal_keys_and_sessions_with_it(server, sm, admin, domain):
    """Re-creating a profile under the same name must not give the old principal (perhaps another person) the new
    profile's access: deleting the profile deletes its principal, its keys and its sessions."""
    user = new_user(sm, admin, domain)
    _, _, as_user = new_key(server, admin, user)
    assert as_user.get_caller_identity()["UserProfileName"] == user
    sm.delete_user_profile(DomainId=domain["id"], UserProfileName=user)
    deadline = time.monotonic() + 30
    while True:
        try:
            sm.describe_user_profile(DomainId=domain["id"], UserProfileName=user)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ResourceNotFound"
            break
        assert time.monotonic() < deadline, "the user profile was not deleted within 30 s"
        time.sleep(0.2)
    sm.create_user_profile(DomainId=domain["id"], UserProfileName=user)  # the same name again
    with pytest.raises(ClientError) as exc:
        admin.describe_principal(Name=user)
    assert code(exc) == "ResourceNotFound"
    with pytest.raises(ClientError) as exc:
        as_user.get_caller_identity()
    assert code(exc) == "UnrecognizedClientException"
    assert admin.list_access_keys()["AccessKeys"] == [
        k for k in admin.list_access_keys()["AccessKeys"] if k["PrincipalName"] != user
    ]


def test_bad_names_and_passwords_refused_without_echoing_the_password(server, admin):
    raw = ext_client(server, *admin_pair(server), validate=False)  # botocore's own checks off: the server answers
    good_password, short, short2 = "Pw-" + uuid.uuid4().hex, "Qz9#k", "Hq4$w"
    cases = [
        ("Name", lambda: raw.create_principal(Name="bad name!", Role="admin", Password=good_password), good_password),
        ("Password", lambda: raw.create_principal(Name=unique("p"), Role="admin", Password=short), short),
        ("Password", lambda: raw.create_principal(Name=unique("p"), Role="admin", Password="L0ng" * 300), "L0ng" * 3),
        ("Password", lambda: raw.set_principal_password(Name="admin", Password=short2), short2),
    ]
    for member, call, secret in cases:
        with pytest.raises(ClientError) as exc:
            call()
        assert code(exc) == "ValidationException"
        message = exc.value.response["Error"]["Message"]
        assert f"at '{member}'" in message, message
        assert secret not in message, message
    assert admin.describe_principal(Name="admin")["Principal"]["HasPassword"] is False


def test_list_principals_pages_each_exactly_once(admin):
    prefix = unique("pg")
    made = {f"{prefix}-{i}" for i in range(7)}
    for name in made:
        admin.create_principal(Name=name, Role="admin")
    seen: list[str] = []
    token, pages = None, 0
    while True:
        page = admin.list_principals(MaxResults=2, **({"NextToken": token} if token else {}))
        assert len(page["Principals"]) <= 2
        seen += [p["Name"] for p in page["Principals"]]
        pages += 1
        token = page.get("NextToken")
        if not token or pages > 100:
            break
    assert len(seen) == len(set(seen)), "a principal was listed twice"
    assert made <= set(seen)
    assert seen == sorted(seen)
    assert set(seen) == {p["Name"] for p in admin.list_principals(MaxResults=100)["Principals"]}
    assert pages >= 4


# -- access keys ---------------------------------------------------------------------------------


def test_keys_secret_shown_once_and_sealed_at_rest(server, sm, admin, domain):
    user = new_user(sm, admin, domain)
    keys = [admin.create_access_key(PrincipalName=user)["AccessKey"] for _ in range(3)]
    secrets = [k["SecretAccessKey"] for k in keys]
    assert len(set(secrets)) == 3 and all(len(s) >= 30 for s in secrets)
    for k in keys:
        assert (k["PrincipalName"], k["Status"]) == (user, "Active")
    listed = admin.list_access_keys(PrincipalName=user)
    described = admin.describe_principal(Name=user)
    assert [k["AccessKeyId"] for k in listed["AccessKeys"]] == [k["AccessKeyId"] for k in keys]
    assert [k["AccessKeyId"] for k in described["AccessKeys"]] == [k["AccessKeyId"] for k in keys]
    for answer in (listed, described, admin.list_access_keys()):
        text = json.dumps(answer, default=str)
        assert "SecretAccessKey" not in text
        assert not any(s in text for s in secrets)
    # At rest: the key ids are in the database, the secrets are not (sealed with the master key).
    stored = b"".join(p.read_bytes() for p in server.data_dir.iterdir() if p.name.startswith("byoi.db") and p.is_file())
    assert all(k["AccessKeyId"].encode() in stored for k in keys)
    assert not any(s.encode() in stored for s in secrets)
    with sqlite3.connect(server.data_dir / "byoi.db") as db:
        rows = db.execute("SELECT secret_ciphertext FROM access_keys WHERE principal = ?", (user,)).fetchall()
    assert len(rows) == 3 and not any(s in str(r) for r in rows for s in secrets)
    # Every key signs requests as the user.
    for k in keys:
        me = ext_client(server, k["AccessKeyId"], k["SecretAccessKey"]).get_caller_identity()
        assert (me["PrincipalName"], me["AccessKeyId"]) == (user, k["AccessKeyId"])
    # Five keys at most per principal.
    admin.create_access_key(PrincipalName=user)
    admin.create_access_key(PrincipalName=user)
    with pytest.raises(ClientError) as exc:
        admin.create_access_key(PrincipalName=user)
    assert code(exc) == "ResourceLimitExceeded"


def test_deactivated_and_deleted_keys_refused_on_the_next_request(server, sm, admin, domain):
    user = new_user(sm, admin, domain)
    (k1, _, c1), (k2, _, c2) = new_key(server, admin, user), new_key(server, admin, user)
    assert c1.get_caller_identity()["AccessKeyId"] == k1  # used once: any cache has it now
    admin.update_access_key(AccessKeyId=k1, Status="Inactive")
    with pytest.raises(ClientError) as exc:
        c1.get_caller_identity()
    assert code(exc) == "UnrecognizedClientException"
    assert c2.get_caller_identity()["AccessKeyId"] == k2  # the user's other key still works
    statuses = {k["AccessKeyId"]: k["Status"] for k in admin.list_access_keys(PrincipalName=user)["AccessKeys"]}
    assert statuses == {k1: "Inactive", k2: "Active"}
    admin.update_access_key(AccessKeyId=k1, Status="Active")
    assert c1.get_caller_identity()["AccessKeyId"] == k1
    admin.delete_access_key(AccessKeyId=k1)
    with pytest.raises(ClientError) as exc:
        c1.get_caller_identity()
    assert code(exc) == "UnrecognizedClientException"
    for call in (
        lambda: admin.delete_access_key(AccessKeyId=k1),
        lambda: admin.update_access_key(AccessKeyId=k1, Status="Active"),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert code(exc) == "ResourceNotFound"
    # Deleting the principal stops its remaining keys at once.
    assert c2.get_caller_identity()["AccessKeyId"] == k2
    admin.delete_principal(Name=user)
    with pytest.raises(ClientError) as exc:
        c2.get_caller_identity()
    assert code(exc) == "UnrecognizedClientException"
    assert admin.list_access_keys(PrincipalName="admin")["AccessKeys"]  # the admin is unaffected


def test_get_caller_identity(server, sm, admin, domain):
    admin_key, _ = admin_pair(server)
    me = admin.get_caller_identity()
    assert (me["PrincipalName"], me["Role"], me["AccessKeyId"]) == ("admin", "admin", admin_key)
    assert "DomainId" not in me and "UserProfileName" not in me
    user = new_user(sm, admin, domain)
    key_id, _, client = new_key(server, admin, user)
    them = client.get_caller_identity()
    assert them["PrincipalName"] == user and them["Role"] == "user" and them["AccessKeyId"] == key_id
    assert (them["DomainId"], them["UserProfileName"]) == (domain["id"], user)


def test_last_admin_key_and_self_deletion_refused(registry, tmp_path):
    srv = ByoiServer(data_dir=tmp_path / "byoi", registries=[f"http://{registry}"]).start()
    try:
        first_key, first_secret = admin_pair(srv)
        first = ext_client(srv, first_key, first_secret)
        for call in (
            lambda: first.update_access_key(AccessKeyId=first_key, Status="Inactive"),
            lambda: first.delete_access_key(AccessKeyId=first_key),
            lambda: first.delete_principal(Name="admin"),
        ):
            with pytest.raises(ClientError) as exc:
                call()
            assert code(exc) == "ResourceInUse"
        assert first.get_caller_identity()["AccessKeyId"] == first_key  # still active
        first.create_principal(Name="second", Role="admin")
        second_key, _, second = new_key(srv, first, "second")
        with pytest.raises(ClientError) as exc:  # not the last administrator now, but still itself
            first.delete_principal(Name="admin")
        assert code(exc) == "ResourceInUse" and "itself" in exc.value.response["Error"]["Message"]
        second.update_access_key(AccessKeyId=first_key, Status="Inactive")  # another admin key is left now
        for call in (
            lambda: second.update_access_key(AccessKeyId=second_key, Status="Inactive"),
            lambda: second.delete_access_key(AccessKeyId=second_key),
            lambda: second.delete_principal(Name="second"),
        ):
            with pytest.raises(ClientError) as exc:
                call()
            assert code(exc) == "ResourceInUse"
        second.delete_principal(Name="admin")  # not the last administrator: allowed
        with pytest.raises(ClientError) as exc:
            first.get_caller_identity()
        assert code(exc) == "UnrecognizedClientException"
        assert [p["Name"] for p in second.list_principals()["Principals"]] == ["second"]
    finally:
        srv.stop()


# -- audit ---------------------------------------------------------------------------------------


def test_audit_records_changes_and_refusals_not_reads(server, sm, admin, domain):
    admin_key, _ = admin_pair(server)
    name = unique("aud")
    created = admin.create_principal(Name=name, Role="admin")
    with pytest.raises(ClientError) as failed:  # a failed change is audited with its error code
        admin.create_principal(Name=name, Role="admin")
    key = admin.create_access_key(PrincipalName=name)
    deactivated = admin.update_access_key(AccessKeyId=key["AccessKey"]["AccessKeyId"], Status="Inactive")
    reads = [
        admin.describe_principal(Name=name),
        admin.list_principals(),
        admin.list_access_keys(PrincipalName=name),
        admin.get_caller_identity(),
        admin.list_audit_events(MaxResults=1),
    ]
    user = new_user(sm, admin, domain)
    user_key, _, as_user = new_key(server, admin, user)
    with pytest.raises(ClientError) as refused:  # a refused read is audited too
        as_user.describe_principal(Name="admin")
    assert code(refused) == "AccessDeniedException"
    with pytest.raises(ClientError) as refused_change:
        as_user.delete_principal(Name=name)
    assert code(refused_change) == "AccessDeniedException"

    arn = created["Principal"]["PrincipalArn"]
    expected = [
        (created, "admin", admin_key, "CreatePrincipal", arn, "ok"),
        (failed.value, "admin", admin_key, "CreatePrincipal", arn, "ResourceInUse"),
        (key, "admin", admin_key, "CreateAccessKey", arn, "ok"),
        (
            deactivated,
            "admin",
            admin_key,
            "UpdateAccessKey",
            f"arn:aws:iam::000000000000:access-key/{key['AccessKey']['AccessKeyId']}",
            "ok",
        ),
        (refused.value, user, user_key, "DescribePrincipal", arn.replace(name, "admin"), "AccessDeniedException"),
        (refused_change.value, user, user_key, "DeletePrincipal", arn, "AccessDeniedException"),
    ]
    events = {e["RequestId"]: e for e in all_events(admin)}
    for answer, principal, key_id, operation, resource, outcome in expected:
        e = events[rid(answer)]
        assert (e["PrincipalName"], e["AccessKeyId"], e["Operation"]) == (principal, key_id, operation)
        assert (e["ResourceArn"], e["Outcome"]) == (resource, outcome)
        assert (e["SourceAddress"], e["Door"]) == ("127.0.0.1", "api")
    assert not [rid(r) for r in reads if rid(r) in events], "a read was audited"
    # The CLI shows the same records.
    out = byoi(server, "admin", "audit", "--principal", user, "-o", "json", "--all")
    assert out.returncode == 0, out.stderr
    cli_events = json.loads(out.stdout)["AuditEvents"]
    assert {e["RequestId"] for e in cli_events} >= {rid(refused.value), rid(refused_change.value)}
    assert all(e["PrincipalName"] == user for e in cli_events)


def test_audit_filters_and_paging(server, admin):
    name = unique("flt")
    admin.create_principal(Name=name, Role="admin")
    first = admin.create_access_key(PrincipalName=name)["AccessKey"]["AccessKeyId"]
    admin.update_access_key(AccessKeyId=first, Status="Inactive")
    admin.update_access_key(AccessKeyId=first, Status="Active")
    time.sleep(0.05)
    middle = datetime.now(UTC)
    time.sleep(0.05)
    later = [admin.create_access_key(PrincipalName=name)["AccessKey"]["AccessKeyId"] for _ in range(3)]
    for k in later:
        admin.update_access_key(AccessKeyId=k, Status="Inactive")
        admin.update_access_key(AccessKeyId=k, Status="Active")
    for k in later[1:]:
        admin.delete_access_key(AccessKeyId=k)
    for i in range(105):  # failed changes are audited too: enough events for the CLI to page (100 a page)
        with pytest.raises(ClientError):
            admin.delete_access_key(AccessKeyId=f"BYOINOSUCHKEY{i:07d}")

    def resources(events: list[dict[str, Any]]) -> list[str]:
        return [e["ResourceArn"].rsplit("/", 1)[1] for e in events]

    updates = all_events(admin, Operation="UpdateAccessKey", StartTime=middle)
    assert all(e["Operation"] == "UpdateAccessKey" for e in updates)
    mine = [e for e in updates if e["ResourceArn"].rsplit("/", 1)[1] in later]
    assert len(mine) == 6
    since = all_events(admin, StartTime=middle)
    assert all(e["Time"] >= middle for e in since)
    assert first not in resources([e for e in since if e["Operation"] == "UpdateAccessKey"])
    everything = all_events(admin)
    assert resources([e for e in everything if e["Operation"] == "UpdateAccessKey"]).count(first) == 2
    times = [e["Time"] for e in everything]
    assert times == sorted(times, reverse=True), "not newest first"
    # Paging: each event exactly once, in the same order as one big page.
    paged: list[str] = []
    token = None
    for _ in range(200):
        page = admin.list_audit_events(MaxResults=3, **({"NextToken": token} if token else {}))
        assert len(page["AuditEvents"]) <= 3
        paged += [e["EventId"] for e in page["AuditEvents"]]
        token = page.get("NextToken")
        if not token:
            break
    assert len(paged) == len(set(paged)) == len(everything)
    assert paged == [e["EventId"] for e in everything]
    # A NextToken is bound to its filters.
    token = admin.list_audit_events(MaxResults=1, Operation="UpdateAccessKey")["NextToken"]
    with pytest.raises(ClientError) as exc:
        admin.list_audit_events(MaxResults=1, Operation="DeleteAccessKey", NextToken=token)
    assert code(exc) == "ValidationException"

    # The CLI: --operation, --since (an ISO time and a duration), --limit and --all.
    def cli(*args: str) -> list[dict[str, Any]]:
        out = byoi(server, "admin", "audit", "-o", "json", *args)
        assert out.returncode == 0, out.stderr
        return list(json.loads(out.stdout)["AuditEvents"])

    by_cli = cli("--operation", "UpdateAccessKey", "--since", middle.isoformat(), "--all")
    assert [e["EventId"] for e in by_cli] == [e["EventId"] for e in updates]
    assert [e["EventId"] for e in cli("--since", middle.isoformat(), "--all")] == [e["EventId"] for e in since]
    assert len(cli("--since", "1h", "--all")) == len(all_events(admin))
    assert len(everything) > 110
    assert [e["EventId"] for e in cli("--all", "--limit", "3")] == [e["EventId"] for e in everything]
    for args, count in ((["--limit", "2"], 2), ([], 50)):  # the 50 newest unless told
        limited = byoi(server, "admin", "audit", "-o", "json", *args)
        assert limited.returncode == 0
        assert [e["EventId"] for e in json.loads(limited.stdout)["AuditEvents"]] == paged[:count]
        assert "--all" in limited.stderr
    table = byoi(server, "admin", "audit", "--operation", "DeleteAccessKey", "--principal", "admin", "--all")
    assert table.returncode == 0
    assert all(k in table.stdout for k in later[1:]) and "DeleteAccessKey" in table.stdout
    bad = byoi(server, "admin", "audit", "--since", "last tuesday")
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr


def test_no_secret_or_password_in_audit_or_server_log(server, sm, admin, domain):
    password, other = "Pw-" + uuid.uuid4().hex, "Pw2-" + uuid.uuid4().hex
    user = new_user(sm, admin, domain, Password=password)
    key = admin.create_access_key(PrincipalName=user)["AccessKey"]
    admin.set_principal_password(Name=user, Password=other)
    out = byoi(server, "admin", "keys", "create", user, "-o", "json")
    assert out.returncode == 0, out.stderr
    cli_secret = json.loads(out.stdout)["AccessKey"]["SecretAccessKey"]
    out = byoi(server, "admin", "password", "set", user, "--password-stdin", input=password + "x\n")
    assert out.returncode == 0, out.stderr
    assert admin.describe_principal(Name=user)["Principal"]["HasPassword"] is True
    assert [e for e in all_events(admin, PrincipalName="admin") if e.get("ResourceArn", "").endswith(f"/{user}")]
    audit = json.dumps(all_events(admin), default=str)
    log = (server.data_dir / "server.log").read_text()
    for secret in (password, other, password + "x", key["SecretAccessKey"], cli_secret):
        assert secret not in audit
        assert secret not in log


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_users(server, sm, domain):
    profile = unique("cli")
    sm.create_user_profile(DomainId=domain["id"], UserProfileName=profile)
    out = byoi(server, "admin", "users", "create", profile, "--domain", domain["name"], "--user-profile", profile)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"arn:aws:iam::000000000000:user/byoi/{profile}"
    described = byoi(server, "admin", "users", "describe", profile, "-o", "json")
    assert described.returncode == 0
    p = json.loads(described.stdout)["Principal"]
    assert (p["Role"], p["DomainId"], p["UserProfileName"]) == ("user", domain["id"], profile)
    table = byoi(server, "admin", "users", "describe", profile)
    assert domain["id"] in table.stdout and "has no access keys" in table.stdout
    listed = byoi(server, "admin", "users", "list", "-o", "json")
    assert profile in [q["Name"] for q in json.loads(listed.stdout)["Principals"]]
    assert profile in byoi(server, "admin", "users", "list").stdout
    # By domain id too, as an administrator; a second principal for the profile is refused.
    again = byoi(server, "admin", "users", "create", unique("x"), "-d", domain["id"], "-u", profile)
    assert again.returncode == 1 and "ResourceInUse" in again.stderr
    admin_name = unique("boss")
    assert byoi(server, "admin", "users", "create", admin_name, "--admin").returncode == 0

    failures = [
        (["admin", "users", "create", unique("x")], 2, "--domain"),  # neither a user nor --admin
        (["admin", "users", "create", unique("x"), "--admin", "-d", domain["name"], "-u", profile], 2, "--admin"),
        (["admin", "users", "create", unique("x"), "-d", "no-such-domain", "-u", profile], 5, "no domain"),
        (["admin", "users", "create", unique("x"), "-d", domain["name"], "-u", "nobody"], 5, "ResourceNotFound"),
        (["admin", "users", "create", "bad name", "--admin"], 4, "ValidationException"),
        (["admin", "users", "describe", "nobody-by-this-name"], 5, "ResourceNotFound"),
        (["admin", "users", "delete", "nobody-by-this-name"], 5, "ResourceNotFound"),
        (["admin", "users", "delete", "admin"], 1, "ResourceInUse"),  # itself
    ]
    for args, status, text in failures:
        out = byoi(server, *args)
        assert (out.returncode, out.stdout) == (status, ""), (args, out.stdout, out.stderr)
        assert text in out.stderr and out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1, args
    out = byoi(server, "admin", "users", "delete", profile)
    assert (out.returncode, out.stdout.strip()) == (0, f"deleted {profile}")
    assert byoi(server, "admin", "users", "describe", profile).returncode == 5


def test_cli_keys_write_profile_deactivate_activate_delete(server, sm, admin, domain, tmp_path):
    user = new_user(sm, admin, domain)
    shown = byoi(server, "admin", "keys", "create", user)
    assert shown.returncode == 0, shown.stderr
    assert "SecretAccessKey" in shown.stdout and "only time the secret access key is shown" in shown.stdout
    creds = tmp_path / "aws" / "credentials"
    creds.parent.mkdir()
    creds.write_text("[keep]\naws_access_key_id = AKEEP\naws_secret_access_key = skeep\n")
    out = byoi(server, "admin", "keys", "create", user, "--write-profile", "dev", "--credentials-file", str(creds))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    written = configparser.RawConfigParser()
    written.read(creds)
    key_id, secret = written.get("dev", "aws_access_key_id"), written.get("dev", "aws_secret_access_key")
    assert written.get("keep", "aws_access_key_id") == "AKEEP"  # other profiles are kept
    assert key_id in out.stdout and secret not in out.stdout
    as_user = {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_PROFILE": "dev"}
    me = byoi(server, "whoami", "-o", "json", env=as_user)
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout) == {
        "PrincipalName": user,
        "Role": "user",
        "DomainId": domain["id"],
        "UserProfileName": user,
        "AccessKeyId": key_id,
    }
    assert user in byoi(server, "whoami", env=as_user).stdout
    listed = byoi(server, "admin", "keys", "list", user, "-o", "json")
    ids = [k["AccessKeyId"] for k in json.loads(listed.stdout)["AccessKeys"]]
    assert key_id in ids and len(ids) == 2 and secret not in listed.stdout
    assert key_id in byoi(server, "admin", "keys", "list").stdout

    assert byoi(server, "admin", "keys", "deactivate", key_id).stdout.strip() == f"deactivated {key_id}"
    refused = byoi(server, "whoami", env=as_user)
    assert refused.returncode == 6 and "UnrecognizedClientException" in refused.stderr
    assert "Inactive" in byoi(server, "admin", "keys", "list", user).stdout
    assert byoi(server, "admin", "keys", "activate", key_id).stdout.strip() == f"activated {key_id}"
    assert byoi(server, "whoami", env=as_user).returncode == 0
    # A user key running an administrator command: refused by the server, one line, status 1.
    denied = byoi(server, "admin", "users", "list", env=as_user)
    assert denied.returncode == 6 and "AccessDeniedException" in denied.stderr and denied.stdout == ""
    assert byoi(server, "admin", "keys", "delete", key_id).stdout.strip() == f"deleted {key_id}"
    assert byoi(server, "whoami", env=as_user).returncode == 6
    for args, status, text in [
        (["admin", "keys", "delete", key_id], 5, "ResourceNotFound"),
        (["admin", "keys", "activate", "BYOINOSUCHKEY0000000"], 5, "ResourceNotFound"),
        (["admin", "keys", "deactivate", "short"], 4, "invalid input"),  # botocore: too short to be a key id
        (["admin", "keys", "create", "nobody-by-this-name"], 5, "ResourceNotFound"),
        (["admin", "keys", "list", "nobody-by-this-name"], 5, "ResourceNotFound"),
        (["admin", "keys", "create", user, "--credentials-file", str(creds)], 2, "--write-profile"),
    ]:
        out = byoi(server, *args)
        assert out.returncode == status and text in out.stderr, (args, out.stderr)


def run_in_pty(args: list[str], env: dict[str, str], answers: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run `args` on a real pseudo-terminal, typing each answer at the next prompt; return (exit status, what
    the terminal showed)."""
    master, slave = pty.openpty()

    def controlling_terminal() -> None:  # in the child, a session leader: make the pty its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        args, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=controlling_terminal
    )
    os.close(slave)
    screen, pending, answered = b"", list(answers), 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
                # click prints "Password:", then getpass turns echo off and prints the " ": type only then.
                prompts = screen.count(b"Password:") + screen.count(b"confirmation:")
                if pending and prompts > answered and screen.endswith(b": "):
                    os.write(master, pending.pop(0).encode() + b"\r")
                    answered += 1
            elif proc.poll() is not None:
                break
        try:
            return proc.wait(timeout=10), screen.decode(errors="replace")
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{args} did not finish; the terminal showed: {screen!r}") from None
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_cli_password_and_sessions(server, sm, admin, domain):
    user = new_user(sm, admin, domain)
    password = "Pw-" + uuid.uuid4().hex
    env = {**server.aws_env(), "COLUMNS": "200"}
    status, screen = run_in_pty([BYOI, "admin", "password", "set", user], env, [password, password])
    assert status == 0, screen
    assert "Repeat for confirmation" in screen and f"password set for {user}" in screen
    assert password not in screen  # typed without echo
    assert admin.describe_principal(Name=user)["Principal"]["HasPassword"] is True
    # A confirmation that differs is refused and both are asked again.
    status, screen = run_in_pty(
        [BYOI, "admin", "password", "set", user], env, [password, password + "x", password, password]
    )
    assert status == 0 and "do not match" in screen and screen.count("Repeat for confirmation") == 2, screen
    assert password not in screen

    assert byoi(server, "admin", "password", "remove", user).returncode == 0
    assert admin.describe_principal(Name=user)["Principal"]["HasPassword"] is False
    out = byoi(server, "admin", "password", "set", user, "--password-stdin", input=password + "\n")
    assert out.returncode == 0 and admin.describe_principal(Name=user)["Principal"]["HasPassword"] is True
    for args, stdin, status, text in [
        (["admin", "password", "set", user], password + "\n", 2, "--password-stdin"),  # no terminal: no prompt
        (["admin", "password", "set", user, "--password-stdin"], "Qz9#k\n", 4, "at least 8"),
        (["admin", "password", "set", user, "--password-stdin"], "", 4, "no password"),
        (["admin", "password", "set", "nobody-by-this-name", "--password-stdin"], password, 5, "ResourceNotFound"),
    ]:
        out = byoi(server, *args, input=stdin)
        assert (out.returncode, out.stdout) == (status, ""), (args, out.stderr)
        assert text in out.stderr and "Qz9#k" not in out.stderr and password not in out.stderr, args

    out = byoi(server, "admin", "sessions", "revoke", user)
    assert out.returncode == 0 and f"signed {user} out" in out.stdout
    out = byoi(server, "admin", "sessions", "revoke", "nobody-by-this-name")
    assert out.returncode == 5 and "ResourceNotFound" in out.stderr
    revoked = [e for e in all_events(admin, Operation="RevokePrincipalSessions") if e["ResourceArn"].endswith(user)]
    assert [e["Outcome"] for e in revoked] == ["ok"]


def test_rotate_master_key_reseals_every_secret(registry, tmp_path):
    """`byoi rotate-master-key` (offline): afterwards every key still signs, the new master key opens the stored
    secrets and the old one (kept as master.key.old) no longer does."""
    from cryptography.fernet import Fernet, InvalidToken

    srv = ByoiServer(data_dir=tmp_path / "byoi", registries=[f"http://{registry}"]).start()
    try:
        admin = ext_client(srv, *admin_pair(srv))
        admin.create_principal(Name="ops", Role="admin")
        key = admin.create_access_key(PrincipalName="ops")["AccessKey"]
    finally:
        srv.stop()
    old_key = (srv.data_dir / "master.key").read_bytes()
    run = subprocess.run(
        [sys.executable, "-m", "byoi", "rotate-master-key", "--data-dir", str(srv.data_dir)],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "BYOI_MASTER_KEY"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Re-sealed 2 secrets" in run.stdout
    new_key = (srv.data_dir / "master.key").read_bytes()
    assert new_key != old_key and (srv.data_dir / "master.key.old").read_bytes() == old_key
    assert stat.S_IMODE((srv.data_dir / "master.key").stat().st_mode) == 0o600
    with sqlite3.connect(srv.data_dir / "byoi.db") as db:
        sealed = [r[0] for r in db.execute("SELECT secret_ciphertext FROM access_keys")]
    assert len(sealed) == 2
    for ciphertext in sealed:
        Fernet(new_key.strip()).decrypt(ciphertext.encode())
        with pytest.raises(InvalidToken):
            Fernet(old_key.strip()).decrypt(ciphertext.encode())
    srv.start()
    try:
        assert ext_client(srv, *admin_pair(srv)).get_caller_identity()["PrincipalName"] == "admin"
        ops = ext_client(srv, key["AccessKeyId"], key["SecretAccessKey"])
        assert ops.get_caller_identity()["PrincipalName"] == "ops"
    finally:
        srv.stop()
    # A second run with the wrong key in the file changes nothing and says why.
    (srv.data_dir / "master.key").write_bytes(Fernet.generate_key())
    env = {k: v for k, v in os.environ.items() if k != "BYOI_MASTER_KEY"} | {"COLUMNS": "300"}
    again = subprocess.run(
        [sys.executable, "-m", "byoi", "rotate-master-key", "--data-dir", str(srv.data_dir)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert again.returncode == 2 and "is not sealed with this master key: nothing was changed" in again.stderr
    assert not (srv.data_dir / "master.key.new").exists()
    with sqlite3.connect(srv.data_dir / "byoi.db") as db:
        assert [r[0] for r in db.execute("SELECT secret_ciphertext FROM access_keys")] == sealed
