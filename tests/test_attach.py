"""App image configs, attaching images to domains and profiles (each validation rule), delete rules,
effective images and the compare-and-swap extension operations, through boto3 and byoi's extension client."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from byoi.cli.client import extension_client
from tests.support.attach import (
    created_version,
    entry,
    failed_version,
    gone,
    new_domain,
    rsession,
    server_on_each_store,  # noqa: F401 - the module's `server`, on SQLite and PostgreSQL
    unique,
    wait_for,
)
from tests.support.errors import code, message


@pytest.fixture
def ext(server):
    server.session()  # points AWS_SHARED_CREDENTIALS_FILE at the server's key
    return extension_client(server.endpoint, "byoi")


@pytest.fixture
def config(sm) -> str:
    name = unique("cfg")
    sm.create_app_image_config(AppImageConfigName=name)
    return name


# -- app image configs ---------------------------------------------------------------------------


def test_app_image_config_operations(sm):
    name = unique("aic")
    kg = {
        "KernelSpecs": [{"Name": "python3", "DisplayName": "Python 3 (ipykernel)"}],
        "FileSystemConfig": {"MountPath": "/home/sagemaker-user", "DefaultUid": 1000, "DefaultGid": 100},
    }
    arn = sm.create_app_image_config(
        AppImageConfigName=name, KernelGatewayImageConfig=kg, Tags=[{"Key": "a", "Value": "1"}]
    )["AppImageConfigArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:000000000000:app-image-config/{name}"
    d = sm.describe_app_image_config(AppImageConfigName=name)
    assert (d["AppImageConfigName"], d["AppImageConfigArn"], d["KernelGatewayImageConfig"]) == (name, arn, kg)
    assert "JupyterLabAppImageConfig" not in d
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "a", "Value": "1"}]
    with pytest.raises(ClientError) as e:
        sm.create_app_image_config(AppImageConfigName=name)
    assert code(e) == "ResourceInUse"

    time.sleep(0.01)
    jl = {"ContainerConfig": {"ContainerArguments": ["--x"], "ContainerEnvironmentVariables": {"A": "b"}}}
    sm.update_app_image_config(AppImageConfigName=name, JupyterLabAppImageConfig=jl)
    u = sm.describe_app_image_config(AppImageConfigName=name)
    assert u["JupyterLabAppImageConfig"] == jl and u["KernelGatewayImageConfig"] == kg
    assert u["LastModifiedTime"] > d["LastModifiedTime"]

    sm.delete_app_image_config(AppImageConfigName=name)
    for call in (
        lambda: sm.describe_app_image_config(AppImageConfigName=name),
        lambda: sm.delete_app_image_config(AppImageConfigName=name),
        lambda: sm.update_app_image_config(AppImageConfigName=name, KernelGatewayImageConfig=kg),
        lambda: sm.list_tags(ResourceArn=arn),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert code(e) == "ResourceNotFound"


def test_list_app_image_configs_filters_sorting_paginator(sm):
    prefix = unique("lac")
    names = [f"{prefix}-{i}" for i in range(5)]
    before = time.time()
    for n in names:
        sm.create_app_image_config(AppImageConfigName=n)
    # boto3 sends timestamps in whole seconds: a mark more than a second away from both sides splits them.
    time.sleep(1.1)
    mark = time.time()
    time.sleep(1.1)
    sm.update_app_image_config(AppImageConfigName=names[2], KernelGatewayImageConfig={"KernelSpecs": [{"Name": "k"}]})

    pages = list(
        sm.get_paginator("list_app_image_configs").paginate(NameContains=prefix, PaginationConfig={"PageSize": 2})
    )
    assert [len(p["AppImageConfigs"]) for p in pages] == [2, 2, 1]
    listed = [c["AppImageConfigName"] for p in pages for c in p["AppImageConfigs"]]
    assert listed == list(reversed(names))  # default: CreationTime, Descending
    by_name = sm.list_app_image_configs(NameContains=prefix.upper(), SortBy="Name", SortOrder="Ascending")
    assert [c["AppImageConfigName"] for c in by_name["AppImageConfigs"]] == names
    modified = sm.list_app_image_configs(NameContains=prefix, SortBy="LastModifiedTime", MaxResults=1)
    assert modified["AppImageConfigs"][0]["AppImageConfigName"] == names[2]
    assert modified["AppImageConfigs"][0]["KernelGatewayImageConfig"] == {"KernelSpecs": [{"Name": "k"}]}
    assert sm.list_app_image_configs(NameContains=prefix, CreationTimeBefore=before - 60)["AppImageConfigs"] == []

    def listed_names(**filters: float) -> list[str]:
        found = sm.list_app_image_configs(NameContains=prefix, SortBy="Name", SortOrder="Ascending", **filters)
        return [c["AppImageConfigName"] for c in found["AppImageConfigs"]]

    assert listed_names(ModifiedTimeAfter=mark) == [names[2]]
    assert listed_names(ModifiedTimeBefore=mark) == [n for n in names if n != names[2]]
    assert listed_names(CreationTimeAfter=mark) == []
    assert listed_names(CreationTimeBefore=mark) == names
    with pytest.raises(ClientError) as e:
        sm.list_app_image_configs(NameContains=prefix, SortBy="Name", NextToken=pages[0]["NextToken"])
    assert code(e) == "ValidationException"


# -- attach validation ---------------------------------------------------------------------------


def test_attach_validation_names_the_entry(sm, pusher, config):
    image = unique("val")
    v1 = created_version(sm, pusher, image)
    bad = failed_version(sm, image)
    domain_id = new_domain(sm)

    def update(*entries):
        sm.update_domain(DomainId=domain_id, DefaultUserSettings=rsession(*entries))

    cases = [
        ([entry(image, config), entry("nope-" + image, config)], "ResourceNotFound", [f"[2] (nope-{image})", "Image"]),
        ([entry(image, config, 99)], "ResourceNotFound", [f"[1] ({image}:99)", "version 99"]),
        ([entry(image, config, bad)], "ValidationException", [f"({image}:{bad})", "CREATE_FAILED", "CREATED"]),
        ([entry(image, "no-such-config")], "ResourceNotFound", ["AppImageConfig", "no-such-config"]),
        ([entry(image, config, v1), entry(image, config, v1)], "ValidationException", ["[2]", "duplicates entry 1"]),
        ([entry(image, config), entry(image, config)], "ValidationException", ["duplicates"]),
    ]
    for entries, error, words in cases:
        with pytest.raises(ClientError) as e:
            update(*entries)
        assert code(e) == error, entries
        assert "DefaultUserSettings.RSessionAppSettings.CustomImages" in message(e)
        assert all(w in message(e) for w in words), message(e)
    # The same rules on CreateDomain, CreateUserProfile and UpdateUserProfile.
    with pytest.raises(ClientError) as e:
        new_domain(sm, DefaultUserSettings=rsession(entry("nope-" + image, config)))
    assert code(e) == "ResourceNotFound"
    with pytest.raises(ClientError) as e:
        sm.create_user_profile(DomainId=domain_id, UserProfileName="u", UserSettings=rsession(entry(image, config, 99)))
    assert code(e) == "ResourceNotFound" and "UserSettings.RSessionAppSettings.CustomImages[1]" in message(e)
    sm.create_user_profile(DomainId=domain_id, UserProfileName="u")
    with pytest.raises(ClientError) as e:
        sm.update_user_profile(DomainId=domain_id, UserProfileName="u", UserSettings=rsession(entry(image, "zz")))
    assert code(e) == "ResourceNotFound"
    # More than 200 entries is refused by the model's limit.
    with pytest.raises(ClientError) as e:
        update(*[entry(image, config, n) for n in range(201)])
    assert code(e) == "ValidationException" and "200" in message(e)
    # KernelGateway lists are checked the same way.
    with pytest.raises(ClientError) as e:
        sm.update_domain(
            DomainId=domain_id,
            DefaultUserSettings={"KernelGatewayAppSettings": {"CustomImages": [entry("zz", config)]}},
        )
    assert code(e) == "ResourceNotFound" and "KernelGatewayAppSettings.CustomImages[1]" in message(e)
    # DefaultResourceSpec ARNs in this byoi must name real images; other accounts' are echoed unchecked.
    own = f"arn:aws:sagemaker:us-east-1:000000000000:image-version/{image.lower()}/99"
    with pytest.raises(ClientError) as e:
        sm.update_domain(
            DomainId=domain_id,
            DefaultUserSettings={"RSessionAppSettings": {"DefaultResourceSpec": {"SageMakerImageVersionArn": own}}},
        )
    assert code(e) == "ResourceNotFound" and "SageMakerImageVersionArn" in message(e)

    # Nothing above changed the domain; a valid list is accepted and echoed as given.
    assert sm.describe_domain(DomainId=domain_id)["DefaultUserSettings"].get("RSessionAppSettings") is None
    good = [entry(image, config), entry(image, config, v1)]
    update(*good)
    assert sm.describe_domain(DomainId=domain_id)["DefaultUserSettings"]["RSessionAppSettings"]["CustomImages"] == good


# -- delete rules --------------------------------------------------------------------------------


def test_referenced_resources_cannot_be_deleted(sm, pusher, config):
    image, other = unique("ref"), unique("ref2")
    v1 = created_version(sm, pusher, image)
    v2 = created_version(sm, pusher, image, tag="v2", create_image=False)
    created_version(sm, pusher, other)
    domain_id = new_domain(sm, DefaultUserSettings=rsession(entry(image, config, v1)))
    sm.create_user_profile(DomainId=domain_id, UserProfileName="ann", UserSettings=rsession(entry(other, config)))

    with pytest.raises(ClientError) as e:
        sm.delete_image(ImageName=image)
    assert code(e) == "ResourceInUse"
    assert f"domain {domain_id} (DefaultUserSettings.RSessionAppSettings.CustomImages)" in message(e)
    with pytest.raises(ClientError) as e:
        sm.delete_image_version(ImageName=image, Version=v1)
    assert code(e) == "ResourceInUse" and domain_id in message(e)
    with pytest.raises(ClientError) as e:
        sm.delete_image(ImageName=other)
    assert code(e) == "ResourceInUse" and f"user profile ann in domain {domain_id}" in message(e)
    with pytest.raises(ClientError) as e:
        sm.delete_app_image_config(AppImageConfigName=config)
    assert code(e) == "ResourceInUse" and domain_id in message(e) and "user profile ann" in message(e)
    # A version nobody names explicitly may go (entries without a version follow the newest).
    sm.delete_image_version(ImageName=image, Version=v2)
    wait_for(lambda: gone(lambda: sm.describe_image_version(ImageName=image, Version=v2)))

    # Detach (the documented clean-up), then everything can be deleted.
    sm.update_domain(DomainId=domain_id, DefaultUserSettings={"RSessionAppSettings": {"CustomImages": []}})
    with pytest.raises(ClientError) as e:
        sm.delete_app_image_config(AppImageConfigName=config)  # the profile still uses it
    assert code(e) == "ResourceInUse" and domain_id not in message(e).split("user profile")[0]
    sm.delete_image(ImageName=image)
    sm.delete_user_profile(DomainId=domain_id, UserProfileName="ann")
    wait_for(lambda: gone(lambda: sm.describe_user_profile(DomainId=domain_id, UserProfileName="ann")))
    sm.delete_image(ImageName=other)
    sm.delete_app_image_config(AppImageConfigName=config)
    sm.get_waiter("image_deleted").wait(ImageName=other, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})


def test_deleted_domain_releases_its_references(sm, pusher, config):
    image = unique("rel")
    created_version(sm, pusher, image)
    domain_id = new_domain(sm, DefaultUserSettings=rsession(entry(image, config)))
    sm.delete_domain(DomainId=domain_id)
    wait_for(lambda: gone(lambda: sm.describe_domain(DomainId=domain_id)))
    # Nothing refers to the image or the config any more: both deletions are accepted and carried out.
    sm.delete_image(ImageName=image)
    sm.delete_app_image_config(AppImageConfigName=config)
    wait_for(lambda: gone(lambda: sm.describe_image(ImageName=image)))
    assert gone(lambda: sm.describe_app_image_config(AppImageConfigName=config))
    assert [i["ImageName"] for i in sm.list_images(NameContains=image)["Images"]] == []


# -- effective images and compare-and-swap -------------------------------------------------------


def test_effective_images(sm, ext, pusher, config):
    image, pinned = unique("eff"), unique("pin")
    created_version(sm, pusher, image)
    p1 = created_version(sm, pusher, pinned)
    domain_id = new_domain(sm, DefaultUserSettings=rsession(entry(image, config)))
    sm.create_user_profile(DomainId=domain_id, UserProfileName="dom-user")
    sm.create_user_profile(DomainId=domain_id, UserProfileName="own", UserSettings=rsession(entry(pinned, config, p1)))

    eff = ext.list_effective_images(DomainId=domain_id, UserProfileName="dom-user")
    assert eff["Source"] == "Domain" and len(eff["EffectiveImages"]) == 1
    first = eff["EffectiveImages"][0]
    assert (first["ImageName"], first["ResolvedVersionNumber"], first["ImageVersionStatus"]) == (image, 1, "CREATED")
    assert "ImageVersionNumber" not in first and "@sha256:" in first["ContainerImage"]
    # "No version" means the newest CREATED version now: a new version changes the answer.
    created_version(sm, pusher, image, tag="v2", create_image=False)
    failed_version(sm, image)  # a newer failed version is skipped
    again = ext.list_effective_images(DomainId=domain_id, UserProfileName="dom-user")["EffectiveImages"][0]
    assert again["ResolvedVersionNumber"] == 2
    assert again["ImageVersionArn"].endswith(f"image-version/{image.lower()}/2")

    own = ext.list_effective_images(DomainId=domain_id, UserProfileName="own")
    assert own["Source"] == "UserProfile"
    assert [(e["ImageName"], e["ImageVersionNumber"], e["ResolvedVersionNumber"]) for e in own["EffectiveImages"]] == [
        (pinned, p1, p1)
    ]
    assert ext.list_effective_images(DomainId=domain_id)["Source"] == "Domain"
    # An image without any CREATED version is listed with the problem.
    empty = unique("empty")
    sm.create_image(ImageName=empty, RoleArn="arn:aws:iam::000000000000:role/r")
    sm.update_domain(DomainId=domain_id, DefaultUserSettings=rsession(entry(image, config), entry(empty, config)))
    listed = ext.list_effective_images(DomainId=domain_id)["EffectiveImages"]
    assert "no CREATED version" in listed[1]["Problem"] and "Problem" not in listed[0]
    with pytest.raises(ClientError) as e:
        ext.list_effective_images(DomainId=domain_id, UserProfileName="nobody")
    assert code(e) == "ResourceNotFound"


def test_compare_and_swap(sm, ext, pusher, config):
    a, b = unique("casa"), unique("casb")
    created_version(sm, pusher, a)
    created_version(sm, pusher, b)
    domain_id = new_domain(sm)
    start = ext.describe_attached_images(DomainId=domain_id)
    assert start["CustomImages"] == [] and isinstance(start["Revision"], int)

    rev = ext.update_attached_images(
        DomainId=domain_id, CustomImages=[entry(a, config)], ExpectedRevision=start["Revision"]
    )["Revision"]
    assert rev == start["Revision"] + 1
    # A writer still holding the old revision is refused, and nothing is lost.
    with pytest.raises(ClientError) as e:
        ext.update_attached_images(
            DomainId=domain_id, CustomImages=[entry(b, config)], ExpectedRevision=start["Revision"]
        )
    assert code(e) == "ConcurrentModification" and e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    # A plain UpdateDomain also moves the revision on, so it cannot be overwritten unseen either.
    sm.update_domain(DomainId=domain_id, VpcId="vpc-1")
    with pytest.raises(ClientError) as e:
        ext.update_attached_images(DomainId=domain_id, CustomImages=[], ExpectedRevision=rev)
    assert code(e) == "ConcurrentModification"
    now = ext.describe_attached_images(DomainId=domain_id)
    assert now["CustomImages"] == [entry(a, config)] and now["Revision"] == rev + 1
    # The CAS write keeps the rest of RSessionAppSettings and validates entries like UpdateDomain.
    sm.update_domain(
        DomainId=domain_id,
        DefaultUserSettings={
            "RSessionAppSettings": {
                "CustomImages": [entry(a, config)],
                "DefaultResourceSpec": {"InstanceType": "ml.t3.large"},
            }
        },
    )
    cur = ext.describe_attached_images(DomainId=domain_id)
    with pytest.raises(ClientError) as e:
        ext.update_attached_images(
            DomainId=domain_id, CustomImages=[entry("zz" + a, config)], ExpectedRevision=cur["Revision"]
        )
    assert code(e) == "ResourceNotFound" and "CustomImages[1]" in message(e)
    ext.update_attached_images(
        DomainId=domain_id, CustomImages=[entry(a, config), entry(b, config)], ExpectedRevision=cur["Revision"]
    )
    rs = sm.describe_domain(DomainId=domain_id)["DefaultUserSettings"]["RSessionAppSettings"]
    assert rs == {
        "CustomImages": [entry(a, config), entry(b, config)],
        "DefaultResourceSpec": {"InstanceType": "ml.t3.large"},
    }

    # Per user profile.
    sm.create_user_profile(DomainId=domain_id, UserProfileName="u1")
    p = ext.describe_attached_images(DomainId=domain_id, UserProfileName="u1")
    assert p["CustomImages"] == [] and p["UserProfileName"] == "u1"
    ext.update_attached_images(
        DomainId=domain_id, UserProfileName="u1", CustomImages=[entry(b, config)], ExpectedRevision=p["Revision"]
    )
    settings = sm.describe_user_profile(DomainId=domain_id, UserProfileName="u1")["UserSettings"]
    assert settings["RSessionAppSettings"]["CustomImages"] == [entry(b, config)]
