"""Images through boto3: every operation, its errors, filters, sorting, paginators and waiters."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError, WaiterError

from tests.conftest import ROLE
from tests.support.errors import code
from tests.support.processes import ByoiServer


@pytest.fixture(scope="module")
def server(catalog_server: ByoiServer) -> ByoiServer:
    return catalog_server  # shared with the other catalog, CLI and build modules (tests/conftest.py)


def test_create_describe_update_image(sm, name):
    arn = sm.create_image(ImageName=name, RoleArn=ROLE, DisplayName="Team R", Description="R 4.2 with tidyverse")[
        "ImageArn"
    ]
    assert arn == f"arn:aws:sagemaker:us-east-1:000000000000:image/{name}"
    sm.get_waiter("image_created").wait(ImageName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    d = sm.describe_image(ImageName=name)
    assert (d["ImageName"], d["ImageStatus"], d["DisplayName"], d["Description"], d["RoleArn"]) == (
        name,
        "CREATED",
        "Team R",
        "R 4.2 with tidyverse",
        ROLE,
    )
    assert d["CreationTime"] <= d["LastModifiedTime"]

    time.sleep(0.01)
    sm.update_image(ImageName=name, DisplayName="Team R (new)", DeleteProperties=["Description"])
    sm.get_waiter("image_updated").wait(ImageName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    d2 = sm.describe_image(ImageName=name)
    assert d2["DisplayName"] == "Team R (new)"
    assert "Description" not in d2
    assert d2["RoleArn"] == ROLE
    assert d2["LastModifiedTime"] > d["LastModifiedTime"]


def test_duplicate_and_missing_images(sm, name):
    sm.create_image(ImageName=name, RoleArn=ROLE)
    with pytest.raises(ClientError) as e:
        sm.create_image(ImageName=name, RoleArn=ROLE)
    assert code(e) == "ResourceInUse"
    with pytest.raises(ClientError) as e:
        sm.create_image(ImageName=name.upper(), RoleArn=ROLE)
    assert code(e) == "ResourceInUse" and "ignoring case" in e.value.response["Error"]["Message"]
    for call in (sm.describe_image, sm.delete_image, lambda **kw: sm.update_image(DisplayName="x", **kw)):
        with pytest.raises(ClientError) as e:
            call(ImageName=name + "-missing")
        assert code(e) == "ResourceNotFound"
        assert f"No Image with the name {name}-missing" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        sm.update_image(ImageName=name, DisplayName="x", DeleteProperties=["DisplayName"])
    assert code(e) == "ValidationException"


def test_delete_image_goes_through_deleting_and_takes_versions(sm, name, pusher):
    pusher.image("catalog/delete", "v1")
    sm.create_image(ImageName=name, RoleArn=ROLE)
    sm.create_image_version(ImageName=name, BaseImage="catalog/delete:v1")
    sm.get_waiter("image_version_created").wait(
        ImageName=name, Version=1, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
    )
    sm.delete_image(ImageName=name)
    try:
        status = sm.describe_image(ImageName=name)["ImageStatus"]
        assert status == "DELETING"
    except ClientError as exc:  # already gone: the background work was quicker than this describe
        assert exc.response["Error"]["Code"] == "ResourceNotFound"
    sm.get_waiter("image_deleted").wait(ImageName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
    with pytest.raises(ClientError) as e:
        sm.describe_image_version(ImageName=name, Version=1)
    assert code(e) == "ResourceNotFound"
    # The name is free again, and a new image starts its versions at 1.
    sm.create_image(ImageName=name, RoleArn=ROLE)
    arn = sm.create_image_version(ImageName=name, BaseImage="catalog/delete:v1")["ImageVersionArn"]
    assert arn.endswith(f"/{name}/1")


def test_list_images_filters_sorting_and_paginator(sm):
    prefix = "lst" + str(int(time.time() * 1000))[-8:]
    names = [f"{prefix}-{i:02d}" for i in range(23)]
    before = time.time()
    for n in names:
        sm.create_image(ImageName=n, RoleArn=ROLE)
    pages = list(sm.get_paginator("list_images").paginate(NameContains=prefix, PaginationConfig={"PageSize": 5}))
    assert [len(p["Images"]) for p in pages] == [5, 5, 5, 5, 3]
    listed = [i["ImageName"] for p in pages for i in p["Images"]]
    assert listed == list(reversed(names))  # default: CREATION_TIME, DESCENDING

    asc = sm.list_images(NameContains=prefix, SortBy="IMAGE_NAME", SortOrder="ASCENDING", MaxResults=100)
    assert [i["ImageName"] for i in asc["Images"]] == sorted(names)
    assert "NextToken" not in asc

    # Default page size is 10, as the model documents.
    first = sm.list_images(NameContains=prefix)
    assert len(first["Images"]) == 10 and first["NextToken"]

    none = sm.list_images(NameContains=prefix, CreationTimeBefore=before - 60)
    assert none["Images"] == []
    some = sm.list_images(NameContains=prefix, CreationTimeAfter=before - 1, MaxResults=100)
    assert len(some["Images"]) == 23

    with pytest.raises(ClientError) as e:
        sm.list_images(NameContains=prefix, NextToken="not-a-token")
    assert code(e) == "ValidationException"
    with pytest.raises(ClientError) as e:  # a token from one query is refused for another
        sm.list_images(NameContains=prefix + "-0", NextToken=first["NextToken"])
    assert code(e) == "ValidationException"


def test_waiter_fails_on_missing_image(sm, name):
    with pytest.raises(WaiterError) as e:
        sm.get_waiter("image_created").wait(ImageName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 2})
    # DescribeImage answers ResourceNotFound, which no acceptor of the waiter expects: it stops at once.
    assert e.value.kwargs["reason"] == f"An error occurred (ResourceNotFound): No Image with the name {name} exists"
    assert e.value.last_response["Error"] == {
        "Code": "ResourceNotFound",
        "Message": f"No Image with the name {name} exists",
    }
    assert e.value.last_response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_tags_on_images_and_versions(sm, name, pusher):
    pusher.image("catalog/tags", "v1")
    arn = sm.create_image(ImageName=name, RoleArn=ROLE, Tags=[{"Key": "team", "Value": "bio"}])["ImageArn"]
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "bio"}]
    added = sm.add_tags(ResourceArn=arn, Tags=[{"Key": "team", "Value": "genomics"}, {"Key": "cost", "Value": "42"}])
    assert added["Tags"] == [{"Key": "team", "Value": "genomics"}, {"Key": "cost", "Value": "42"}]
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [
        {"Key": "team", "Value": "genomics"},
        {"Key": "cost", "Value": "42"},
    ]
    sm.delete_tags(ResourceArn=arn, TagKeys=["team"])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "cost", "Value": "42"}]

    many = [{"Key": f"k{i:02d}", "Value": str(i)} for i in range(49)]
    sm.add_tags(ResourceArn=arn, Tags=many)
    paged = [
        t
        for p in sm.get_paginator("list_tags").paginate(ResourceArn=arn, PaginationConfig={"PageSize": 50})
        for t in p["Tags"]
    ]
    assert len(paged) == 50
    with pytest.raises(ClientError) as e:
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "one-too-many", "Value": ""}])
    assert code(e) == "ResourceLimitExceeded"

    version_arn = sm.create_image_version(ImageName=name, BaseImage="catalog/tags:v1")["ImageVersionArn"]
    sm.add_tags(ResourceArn=version_arn, Tags=[{"Key": "stage", "Value": "prod"}])
    assert sm.list_tags(ResourceArn=version_arn)["Tags"] == [{"Key": "stage", "Value": "prod"}]

    for missing in (arn + "-nope", version_arn[:-1] + "99"):
        with pytest.raises(ClientError) as e:
            sm.list_tags(ResourceArn=missing)
        assert code(e) == "ResourceNotFound"
    with pytest.raises(ClientError) as e:
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "bad!key", "Value": "x"}])
    assert code(e) == "ValidationException" and "Tags.1.member.Key" in e.value.response["Error"]["Message"]
