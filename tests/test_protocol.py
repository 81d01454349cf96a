"""The awsJson1_1 wire protocol: targets, body errors, model validation, request ids, never a 500."""

from __future__ import annotations

import base64
import json
import random

import pytest
from botocore.exceptions import ClientError

from byoi.sagemaker_model import SERVED_OPERATIONS
from tests.conftest import ROLE
from tests.support.signing import admin_credentials, send, signed


@pytest.fixture(scope="module")
def creds(server):
    return admin_credentials(server.credentials_file)


def call(server, creds, target, body) -> tuple[int, dict, str | None]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = send(signed(server.endpoint, target, raw, creds))
    return response.status_code, response.json() if response.content else {}, response.headers.get("x-amzn-requestid")


def test_unknown_and_unsupported_operations(server, creds):
    status, body, rid = call(server, creds, "SageMaker.NoSuchThing", {})
    assert (status, body["__type"]) == (400, "UnknownOperationException") and rid
    status, body, _ = call(server, creds, "SageMaker.CreateTrainingJob", {})
    assert body["__type"] == "UnknownOperationException" and "not supported by byoi" in body["Message"]
    status, body, _ = call(server, creds, None, {})
    assert body["__type"] == "UnknownOperationException"
    status, body, _ = call(server, creds, "Nope.ListImages", {})
    assert body["__type"] == "UnknownOperationException"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b'"a string"', b"null"])
def test_malformed_bodies_are_serialization_errors(server, creds, raw):
    status, body, rid = call(server, creds, "SageMaker.ListImages", raw)
    assert (status, body["__type"]) == (400, "SerializationException") and rid


CONSTRAINTS = [
    # (operation, body, member path in the message, constraint words)
    (
        "CreateImage",
        {"ImageName": "bad name", "RoleArn": "arn:aws:iam::000000000000:role/r"},
        "ImageName",
        "regular expression pattern",
    ),
    (
        "CreateImage",
        {"ImageName": "a" * 64, "RoleArn": "arn:aws:iam::000000000000:role/r"},
        "ImageName",
        "length less than or equal to 63",
    ),
    (
        "CreateImage",
        {"ImageName": "ok", "RoleArn": "arn:aws:iam::000000000000:role/r", "Description": ""},
        "Description",
        "length greater than or equal to 1",
    ),
    ("CreateImage", {"ImageName": "ok", "RoleArn": "not-an-arn"}, "RoleArn", "length greater than or equal to 20"),
    ("CreateImage", {"ImageName": "ok"}, "RoleArn", "not be null"),
    (
        "CreateImage",
        {"ImageName": "ok", "RoleArn": "arn:aws:iam::000000000000:role/r", "Tags": [{"Value": "v"}]},
        "Tags.1.member.Key",
        "not be null",
    ),
    ("ListImages", {"SortBy": "SIZE"}, "SortBy", "enum value set: [CREATION_TIME, LAST_MODIFIED_TIME, IMAGE_NAME]"),
    ("ListImages", {"MaxResults": 0}, "MaxResults", "value greater than or equal to 1"),
    ("ListImages", {"MaxResults": 101}, "MaxResults", "value less than or equal to 100"),
    ("ListImages", {"MaxResults": "10"}, "MaxResults", "be an integer"),
    ("ListImages", {"CreationTimeAfter": "yesterday"}, "CreationTimeAfter", "be a timestamp"),
    ("ListImages", {"Surprise": 1}, "Surprise", "be a member of ListImagesRequest"),
    (
        "CreateImageVersion",
        {"ImageName": "ok", "BaseImage": "x", "ClientToken": "t" * 37},
        "ClientToken",
        "length less than or equal to 36",
    ),
    (
        "CreateImageVersion",
        {"ImageName": "ok", "BaseImage": "x", "ClientToken": "has space"},
        "ClientToken",
        "regular expression pattern: [a-zA-Z0-9-]+",
    ),
    (
        "CreateImageVersion",
        {"ImageName": "ok", "BaseImage": "x", "ClientToken": "t", "JobType": "GAMING"},
        "JobType",
        "enum value set",
    ),
    (
        "CreateImageVersion",
        {"ImageName": "ok", "BaseImage": "x", "ClientToken": "t", "Horovod": "true"},
        "Horovod",
        "be a boolean",
    ),
    (
        "CreateImageVersion",
        {"ImageName": "ok", "BaseImage": "x", "ClientToken": "t", "MLFramework": "pytorch"},
        "MLFramework",
        "regular expression pattern",
    ),
    ("DescribeImageVersion", {"ImageName": "ok", "Version": -1}, "Version", "value greater than or equal to 0"),
    (
        "UpdateImage",
        {"ImageName": "ok", "DeleteProperties": ["RoleArn"]},
        "DeleteProperties.1.member",
        "regular expression pattern",
    ),
    (
        "AddTags",
        {"ResourceArn": "arn:aws:sagemaker:us-east-1:000000000000:image/x", "Tags": [{"Key": "k", "Value": "<>"}]},
        "Tags.1.member.Value",
        "regular expression pattern",
    ),
]


@pytest.mark.parametrize(("op", "body", "member", "words"), CONSTRAINTS, ids=[f"{c[0]}-{c[2]}" for c in CONSTRAINTS])
def test_model_constraints_name_member_and_constraint(server, creds, op, body, member, words):
    status, reply, _ = call(server, creds, f"SageMaker.{op}", body)
    assert (status, reply["__type"]) == (400, "ValidationException")
    assert f"at '{member}'" in reply["Message"] and words in reply["Message"], reply["Message"]


def test_every_violation_is_reported(server, creds):
    _, reply, _ = call(server, creds, "SageMaker.ListImages", {"MaxResults": 0, "SortBy": "X", "SortOrder": "UP"})
    assert reply["Message"].startswith("3 validation errors detected")


def test_boto3_parses_errors_and_request_id(sm):
    with pytest.raises(ClientError) as e:
        sm.describe_image(ImageName="does-not-exist")
    assert e.value.response["Error"]["Code"] == "ResourceNotFound"
    assert e.value.response["ResponseMetadata"]["RequestId"]
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    ok = sm.list_images()
    assert len(ok["ResponseMetadata"]["RequestId"]) == 36


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "bool", "null", "list", "dict", "big"]
    kind = rng.choice(kinds if depth < 3 else kinds[:5])
    if kind == "str":
        return "".join(rng.choice('aZ09-_.:/ \u00e9\u4e2d\x00"\\') for _ in range(rng.randint(0, 80)))
    if kind == "int":
        return rng.randint(-(2**70), 2**70)
    if kind == "float":
        return rng.choice([rng.random() * 1e12, float("1e308"), -0.0])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "big":
        return "x" * rng.randint(256, 9000)
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        rng.choice(["ImageName", "Version", "Tags", "Key", "Value", "NextToken", "X"]): _random_value(rng, depth + 1)
        for _ in range(rng.randint(0, 4))
    }


def test_fuzzed_requests_never_produce_a_server_error(server, creds):
    """A bounded, seeded fuzz over every served operation: every answer is a 200 or a 4xx error."""
    rng = random.Random(20261127)
    operations = sorted(SERVED_OPERATIONS)  # every SageMaker operation byoi serves, and only those
    members = [
        "ImageName",
        "RoleArn",
        "BaseImage",
        "ClientToken",
        "Version",
        "Alias",
        "Tags",
        "TagKeys",
        "ResourceArn",
        "NextToken",
        "MaxResults",
        "SortBy",
        "AliasesToAdd",
        "DeleteProperties",
        "Description",
        "DomainId",
        "DomainName",
        "UserProfileName",
        "AppName",
        "AppType",
        "AppImageConfigName",
        "ResourceSpec",
        "DefaultUserSettings",
        "UserSettings",
        "AuthMode",
        "RetentionPolicy",
        "ExpiresInSeconds",
    ]
    seen = set()
    for _ in range(300):
        body = {rng.choice(members): _random_value(rng) for _ in range(rng.randint(0, 5))}
        status, reply, _ = call(server, creds, f"SageMaker.{rng.choice(operations)}", body)
        assert status < 500, reply
        if status >= 400:
            assert reply["__type"] and reply["Message"]
        seen.add(status)
    assert 400 in seen


def test_out_of_range_and_forged_values_are_client_errors(server, creds, sm, pusher):
    """Values the model's patterns let through but a store cannot hold (numbers beyond 64 bits, NUL characters,
    forged page tokens) are refused as client errors, never a 500."""
    from tests.support.attach import created_version, new_domain, unique

    image = unique("range")
    created_version(sm, pusher, image)
    sm.create_image(ImageName=image + "-b", RoleArn=ROLE)
    huge = 2**70
    version_arn = f"arn:aws:sagemaker:us-east-1:000000000000:image-version/{image}/{huge}"

    def expect(op: str, body: dict, code: str, words: str) -> None:
        status, reply, _ = call(server, creds, f"SageMaker.{op}", body)
        assert (status, reply.get("__type")) == (400, code), (op, reply)
        assert words in reply["Message"], (op, reply["Message"])

    expect("DescribeImageVersion", {"ImageName": image, "Version": 2**31}, "ValidationException", "32-bit integer")
    expect("ListAliases", {"ImageName": image, "Version": huge}, "ValidationException", "at 'Version'")
    expect("AddTags", {"ResourceArn": version_arn, "Tags": [{"Key": "k", "Value": "v"}]}, "ResourceNotFound", image)
    expect("ListTags", {"ResourceArn": version_arn}, "ResourceNotFound", image)
    expect("ListTags", {"ResourceArn": f"arn:aws:sagemaker:us-east-1:000000000000:image/{image}", "NextToken": "²"},
           "ValidationException", "NextToken is not valid")  # fmt: skip
    expect("CreateImage", {"ImageName": unique("nul"), "RoleArn": ROLE, "Description": "a\x00b"},
           "ValidationException", "NUL character")  # fmt: skip
    domain = new_domain(sm)
    settings = {"RSessionAppSettings": {"DefaultResourceSpec": {"SageMakerImageVersionArn": version_arn}}}
    expect("UpdateDomain", {"DomainId": domain, "DefaultUserSettings": settings},
           "ValidationException", "SageMakerImageVersionArn")  # fmt: skip

    # A NextToken is base64 JSON: forged values of the wrong type or size are refused, not sent to the store.
    token = sm.list_images(NameContains=image, MaxResults=1)["NextToken"]
    real = json.loads(base64.urlsafe_b64decode(token))
    for forged in ({"k": {"x": 1}}, {"k": huge}, {"k": "not a time"}, {"i": huge}, {"i": "1"}, {"k": float("inf")}):
        bad = base64.urlsafe_b64encode(json.dumps({**real, **forged}).encode()).decode()
        expect("ListImages", {"NameContains": image, "MaxResults": 1, "NextToken": bad}, "ValidationException",
               "NextToken is not valid")  # fmt: skip
    assert sm.list_images(NameContains=image, MaxResults=1, NextToken=token)["Images"]  # the real one still works
