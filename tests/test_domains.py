"""Domains and user profiles through boto3: every operation, its errors, statuses, tags, filters and paginators."""

from __future__ import annotations

import json
import time

import pytest
from botocore.exceptions import ClientError

from tests.support.attach import (
    ROLE,
    gone,
    new_domain,
    server_on_each_store,  # noqa: F401 - `server` on SQLite and PostgreSQL
    unique,
    wait_for,
)
from tests.support.errors import code, message
from tests.support.signing import admin_credentials, send, signed


def in_service(sm, domain_id: str) -> bool:
    return sm.describe_domain(DomainId=domain_id)["Status"] == "InService"


FULL_DOMAIN = {
    "AuthMode": "IAM",
    "DefaultUserSettings": {
        "ExecutionRole": ROLE,
        "SecurityGroups": ["sg-0123456789abcdef0"],
        "SharingSettings": {"NotebookOutputOption": "Disabled"},
        "KernelGatewayAppSettings": {"DefaultResourceSpec": {"InstanceType": "ml.t3.medium"}},
        "RStudioServerProAppSettings": {"AccessStatus": "ENABLED", "UserGroup": "R_STUDIO_USER"},
        "RSessionAppSettings": {"DefaultResourceSpec": {"InstanceType": "ml.t3.medium"}, "CustomImages": []},
        "DefaultLandingUri": "studio::",
    },
    "DomainSettings": {
        "SecurityGroupIds": ["sg-0aa"],
        "RStudioServerProDomainSettings": {
            "DomainExecutionRoleArn": ROLE,
            "RStudioConnectUrl": "https://connect.example.org",
            "RStudioPackageManagerUrl": "https://packages.example.org",
            "DefaultResourceSpec": {
                # A built-in image owned by another account: kept and echoed, not checked.
                "SageMakerImageArn": "arn:aws:sagemaker:us-east-1:081325390199:image/rstudio-workbench-2025.05",
                "InstanceType": "system",
            },
        },
        "ExecutionRoleIdentityConfig": "DISABLED",
    },
    "SubnetIds": ["subnet-0a1", "subnet-0b2"],
    "VpcId": "vpc-0abc",
    "AppNetworkAccessType": "VpcOnly",
    "KmsKeyId": "arn:aws:kms:us-east-1:000000000000:key/abc",
    "AppSecurityGroupManagement": "Service",
    "HomeEfsFileSystemCreation": "Enabled",
    "TagPropagation": "ENABLED",
    "DefaultSpaceSettings": {"ExecutionRole": ROLE, "JupyterLabAppSettings": {"CustomImages": []}},
}


def test_create_describe_update_delete_domain(sm, server):
    name = unique("team")
    created = sm.create_domain(DomainName=name, Tags=[{"Key": "team", "Value": "bio"}], **FULL_DOMAIN)
    domain_id = created["DomainId"]
    assert len(domain_id) == 14 and domain_id.startswith("d-") and domain_id[2:].isalnum()
    assert domain_id[2:] == domain_id[2:].lower()
    assert created["DomainArn"] == f"arn:aws:sagemaker:us-east-1:000000000000:domain/{domain_id}"
    assert created["Url"] == f"{server.endpoint}/console/domains/{domain_id}"

    d = sm.describe_domain(DomainId=domain_id)
    assert d["Status"] in ("Pending", "InService")
    for member, value in FULL_DOMAIN.items():
        assert d[member] == value, member
    assert (d["DomainName"], d["DomainArn"], d["Url"]) == (name, created["DomainArn"], created["Url"])
    wait_for(lambda: in_service(sm, domain_id))
    assert sm.list_tags(ResourceArn=created["DomainArn"])["Tags"] == [{"Key": "team", "Value": "bio"}]

    # Partial update: members given replace, those absent are kept.
    time.sleep(0.01)
    sm.update_domain(
        DomainId=domain_id,
        DefaultUserSettings={"RSessionAppSettings": {"CustomImages": []}, "ExecutionRole": ROLE + "-2"},
        DomainSettingsForUpdate={
            "RStudioServerProDomainSettingsForUpdate": {
                "DomainExecutionRoleArn": ROLE,
                "DefaultResourceSpec": {"InstanceType": "ml.c5.4xlarge"},
            }
        },
        SubnetIds=["subnet-0c3"],
    )
    u = sm.describe_domain(DomainId=domain_id)
    assert u["Status"] in ("Updating", "InService")
    assert u["LastModifiedTime"] > d["LastModifiedTime"]
    dus = u["DefaultUserSettings"]
    assert dus["ExecutionRole"] == ROLE + "-2"
    assert dus["RSessionAppSettings"] == {"CustomImages": []}  # replaced as a whole: DefaultResourceSpec gone
    assert dus["KernelGatewayAppSettings"] == FULL_DOMAIN["DefaultUserSettings"]["KernelGatewayAppSettings"]
    assert dus["SharingSettings"] == {"NotebookOutputOption": "Disabled"}
    rs = u["DomainSettings"]["RStudioServerProDomainSettings"]
    assert rs["DefaultResourceSpec"] == {"InstanceType": "ml.c5.4xlarge"}
    assert rs["RStudioConnectUrl"] == "https://connect.example.org"  # kept: ForUpdate merges member-wise
    assert u["DomainSettings"]["SecurityGroupIds"] == ["sg-0aa"]
    assert u["SubnetIds"] == ["subnet-0c3"] and u["VpcId"] == "vpc-0abc"
    wait_for(lambda: in_service(sm, domain_id))

    sm.delete_domain(DomainId=domain_id, RetentionPolicy={"HomeEfsFileSystem": "Delete"})
    try:
        assert sm.describe_domain(DomainId=domain_id)["Status"] == "Deleting"
    except ClientError as exc:  # the background work was quicker
        assert exc.response["Error"]["Code"] == "ResourceNotFound"
    wait_for(lambda: gone(lambda: sm.describe_domain(DomainId=domain_id)))
    with pytest.raises(ClientError) as e:
        sm.list_tags(ResourceArn=created["DomainArn"])
    assert code(e) == "ResourceNotFound"
    # The name is free again once the domain is gone.
    assert new_domain(sm, name) != domain_id


def test_domain_errors(sm, server):
    missing = "d-zzzzzzzzzzzz"
    for call in (
        lambda: sm.describe_domain(DomainId=missing),
        lambda: sm.update_domain(DomainId=missing, VpcId="vpc-1"),
        lambda: sm.delete_domain(DomainId=missing),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert code(e) == "ResourceNotFound"
        assert missing in message(e)
    name = unique("dup")
    domain_id = new_domain(sm, name)
    with pytest.raises(ClientError) as e:
        new_domain(sm, name)
    assert code(e) == "ResourceInUse" and domain_id in message(e)
    with pytest.raises(ClientError) as e:
        sm.describe_domain(DomainId="not-a-domain")
    assert code(e) == "ValidationException" and "DomainId" in message(e)
    with pytest.raises(ClientError) as e:
        sm.create_domain(DomainName="bad name!", AuthMode="IAM", DefaultUserSettings={})
    assert code(e) == "ValidationException" and "DomainName" in message(e)
    # Hand-made requests, so that the server's own validation is what answers.
    creds = admin_credentials(server.credentials_file)
    for body, words in (
        ({"DomainName": "x1", "AuthMode": "IAM", "DefaultUserSettings": {"NoSuchMember": 1}}, ["NoSuchMember"]),
        ({"DomainName": "x1", "AuthMode": "NONE"}, ["AuthMode", "DefaultUserSettings"]),
    ):
        response = send(signed(server.endpoint, "SageMaker.CreateDomain", json.dumps(body).encode(), creds))
        assert response.status_code == 400
        assert response.json()["__type"] == "ValidationException"
        assert all(w in response.json()["Message"] for w in words)
    sm.delete_domain(DomainId=domain_id)
    with pytest.raises(ClientError) as e:  # while Deleting (or already gone)
        sm.update_domain(DomainId=domain_id, VpcId="vpc-1")
    assert code(e) in ("ResourceInUse", "ResourceNotFound")


def test_list_domains_paginator(sm):
    made = [new_domain(sm) for _ in range(7)]
    pages = list(sm.get_paginator("list_domains").paginate(PaginationConfig={"PageSize": 3}))
    assert all(len(p["Domains"]) <= 3 for p in pages)
    listed = [d["DomainId"] for p in pages for d in p["Domains"]]
    assert len(listed) == len(set(listed))
    assert [d for d in listed if d in made] == made  # oldest first, nothing skipped or repeated
    summary = next(d for p in pages for d in p["Domains"] if d["DomainId"] == made[0])
    assert set(summary) == {"DomainArn", "DomainId", "DomainName", "Status", "CreationTime", "LastModifiedTime", "Url"}
    with pytest.raises(ClientError) as e:
        sm.list_domains(NextToken="garbage")
    assert code(e) == "ValidationException"


def test_user_profiles(sm):
    domain_id = new_domain(sm)
    settings = {
        "ExecutionRole": ROLE,
        "RStudioServerProAppSettings": {"AccessStatus": "ENABLED", "UserGroup": "R_STUDIO_ADMIN"},
        "SecurityGroups": ["sg-1"],
    }
    arn = sm.create_user_profile(
        DomainId=domain_id, UserProfileName="Alice", UserSettings=settings, Tags=[{"Key": "k", "Value": "v"}]
    )["UserProfileArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:000000000000:user-profile/{domain_id}/Alice"
    sm.create_user_profile(DomainId=domain_id, UserProfileName="bob")
    a = sm.describe_user_profile(DomainId=domain_id, UserProfileName="alice")  # names ignore case
    assert (a["UserProfileName"], a["UserProfileArn"], a["DomainId"]) == ("Alice", arn, domain_id)
    assert a["UserSettings"] == settings and a["Status"] in ("Pending", "InService")
    b = sm.describe_user_profile(DomainId=domain_id, UserProfileName="bob")
    assert int(b["HomeEfsFileSystemUid"]) == int(a["HomeEfsFileSystemUid"]) + 1 >= 200002
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "k", "Value": "v"}]
    wait_for(lambda: sm.describe_user_profile(DomainId=domain_id, UserProfileName="Alice")["Status"] == "InService")

    with pytest.raises(ClientError) as e:
        sm.create_user_profile(DomainId=domain_id, UserProfileName="ALICE")
    assert code(e) == "ResourceInUse" and "ignore case" in message(e)
    with pytest.raises(ClientError) as e:
        sm.create_user_profile(DomainId=domain_id, UserProfileName="domain-shared")
    assert code(e) == "ValidationException" and "reserved" in message(e)
    with pytest.raises(ClientError) as e:
        sm.create_user_profile(DomainId="d-zzzzzzzzzzzz", UserProfileName="x")
    assert code(e) == "ResourceNotFound"
    with pytest.raises(ClientError) as e:
        sm.describe_user_profile(DomainId=domain_id, UserProfileName="carol")
    assert code(e) == "ResourceNotFound" and "carol" in message(e)
    with pytest.raises(ClientError) as e:  # SSO members on an IAM domain
        sm.create_user_profile(
            DomainId=domain_id, UserProfileName="sso", SingleSignOnUserIdentifier="UserName", SingleSignOnUserValue="s"
        )
    assert code(e) == "ValidationException" and "IAM" in message(e)

    # Partial update of UserSettings.
    sm.update_user_profile(
        DomainId=domain_id, UserProfileName="Alice", UserSettings={"SecurityGroups": ["sg-2", "sg-3"]}
    )
    u = sm.describe_user_profile(DomainId=domain_id, UserProfileName="Alice")
    assert u["UserSettings"] == {**settings, "SecurityGroups": ["sg-2", "sg-3"]}
    assert u["Status"] in ("Updating", "InService") and u["LastModifiedTime"] >= a["LastModifiedTime"]

    # A domain with profiles cannot be deleted; the message names them.
    with pytest.raises(ClientError) as e:
        sm.delete_domain(DomainId=domain_id)
    assert code(e) == "ResourceInUse" and "Alice" in message(e) and "bob" in message(e)

    sm.delete_user_profile(DomainId=domain_id, UserProfileName="alice")
    with pytest.raises(ClientError) as e:  # still there while Deleting: the domain waits for it
        sm.delete_domain(DomainId=domain_id)
    assert code(e) == "ResourceInUse"
    sm.delete_user_profile(DomainId=domain_id, UserProfileName="bob")
    wait_for(lambda: gone(lambda: sm.describe_user_profile(DomainId=domain_id, UserProfileName="Alice")))
    wait_for(lambda: gone(lambda: sm.describe_user_profile(DomainId=domain_id, UserProfileName="bob")))
    with pytest.raises(ClientError) as e:
        sm.list_tags(ResourceArn=arn)
    assert code(e) == "ResourceNotFound"
    sm.delete_domain(DomainId=domain_id)
    wait_for(lambda: gone(lambda: sm.describe_domain(DomainId=domain_id)))


def test_sso_domain_requires_sso_members(sm):
    domain_id = sm.create_domain(DomainName=unique("sso"), AuthMode="SSO", DefaultUserSettings={})["DomainId"]
    with pytest.raises(ClientError) as e:
        sm.create_user_profile(DomainId=domain_id, UserProfileName="u1")
    assert code(e) == "ValidationException" and "SSO" in message(e)
    sm.create_user_profile(
        DomainId=domain_id, UserProfileName="u1", SingleSignOnUserIdentifier="UserName", SingleSignOnUserValue="u1@x"
    )
    d = sm.describe_user_profile(DomainId=domain_id, UserProfileName="u1")
    assert (d["SingleSignOnUserIdentifier"], d["SingleSignOnUserValue"]) == ("UserName", "u1@x")


def test_list_user_profiles_filters_sorting_paginator(sm):
    d1, d2 = new_domain(sm), new_domain(sm)
    names = [f"p{i}" for i in range(6)]
    for n in names:
        sm.create_user_profile(DomainId=d1, UserProfileName=n)
    sm.create_user_profile(DomainId=d2, UserProfileName="other")
    time.sleep(0.01)
    sm.update_user_profile(DomainId=d1, UserProfileName="p0", UserSettings={"ExecutionRole": ROLE})

    pages = list(sm.get_paginator("list_user_profiles").paginate(DomainIdEquals=d1, PaginationConfig={"PageSize": 4}))
    assert [len(p["UserProfiles"]) for p in pages] == [4, 2]
    listed = [u["UserProfileName"] for p in pages for u in p["UserProfiles"]]
    assert listed == names  # default: CreationTime, Ascending
    assert all(u["DomainId"] == d1 for p in pages for u in p["UserProfiles"])

    desc = sm.list_user_profiles(DomainIdEquals=d1, SortOrder="Descending")["UserProfiles"]
    assert [u["UserProfileName"] for u in desc] == list(reversed(names))
    by_mod = sm.list_user_profiles(DomainIdEquals=d1, SortBy="LastModifiedTime", SortOrder="Descending")
    assert by_mod["UserProfiles"][0]["UserProfileName"] == "p0"
    assert [u["UserProfileName"] for u in sm.list_user_profiles(UserProfileNameContains="THER")["UserProfiles"]] == [
        "other"
    ]
    first = sm.list_user_profiles(DomainIdEquals=d1, MaxResults=2)
    with pytest.raises(ClientError) as e:  # a token is refused for other filters
        sm.list_user_profiles(DomainIdEquals=d2, NextToken=first["NextToken"])
    assert code(e) == "ValidationException"
