"""The same store behaviour on SQLite and PostgreSQL, through the API: migrations, uniqueness, counters,
keyset paging, cascades and concurrency."""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ROLE, fresh_postgres_database
from tests.support.processes import ByoiServer


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_server(request, registry, tmp_path_factory):
    database_url = None
    if request.param == "postgres":
        base = request.getfixturevalue("postgres_url")
        database_url = fresh_postgres_database(base)
    srv = ByoiServer(
        data_dir=tmp_path_factory.mktemp(f"store-{request.param}"),
        registries=[f"http://{registry}"],
        database_url=database_url,
    ).start()
    yield srv
    srv.stop()


def test_backend_is_the_one_asked_for(store_server):
    on_sqlite = (store_server.data_dir / "byoi.db").exists()
    assert on_sqlite == (store_server.database_url is None)


def test_unique_names_counters_and_cascade(store_server, pusher):
    pusher.image("store/x", "v1")
    sm = store_server.client()
    sm.create_image(ImageName="Store-One", RoleArn=ROLE, Tags=[{"Key": "a", "Value": "1"}])
    with pytest.raises(ClientError) as e:
        sm.create_image(ImageName="store-one", RoleArn=ROLE)
    assert e.value.response["Error"]["Code"] == "ResourceInUse"

    barrier = threading.Barrier(10)
    arns: list[str] = []

    def create() -> None:
        client = store_server.client()
        barrier.wait()
        arns.append(client.create_image_version(ImageName="Store-One", BaseImage="store/x:v1")["ImageVersionArn"])

    threads = [threading.Thread(target=create) for _ in range(10)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(int(a.rsplit("/", 1)[1]) for a in arns) == list(range(1, 11))
    assert all("/store-one/" in a for a in arns)  # image-version ARNs are lower-case

    sm.update_image_version(ImageName="Store-One", Version=3, AliasesToAdd=["three"])
    sm.add_tags(ResourceArn=arns[0], Tags=[{"Key": "v", "Value": "x"}])
    sm.delete_image(ImageName="Store-One")
    sm.get_waiter("image_deleted").wait(ImageName="Store-One", WaiterConfig={"Delay": 1, "MaxAttempts": 20})
    # Everything under the image went with it; a new image of the same name starts clean.
    sm.create_image(ImageName="Store-One", RoleArn=ROLE)
    image_arn = sm.describe_image(ImageName="Store-One")["ImageArn"]
    assert sm.list_tags(ResourceArn=image_arn)["Tags"] == []
    assert sm.list_aliases(ImageName="Store-One")["SageMakerImageVersionAliases"] == []
    assert sm.list_image_versions(ImageName="Store-One")["ImageVersions"] == []


def test_keyset_paging_is_stable_under_inserts(store_server):
    sm = store_server.client()
    for i in range(15):
        sm.create_image(ImageName=f"page-{i:02d}", RoleArn=ROLE)
    first = sm.list_images(NameContains="page-", SortBy="IMAGE_NAME", SortOrder="ASCENDING", MaxResults=5)
    sm.create_image(ImageName="page-00a", RoleArn=ROLE)  # sorts before the token's position: not seen again
    sm.create_image(ImageName="page-99", RoleArn=ROLE)  # sorts after: shows up on a later page
    seen = [i["ImageName"] for i in first["Images"]]
    token = first["NextToken"]
    while token:
        page = sm.list_images(
            NameContains="page-", SortBy="IMAGE_NAME", SortOrder="ASCENDING", MaxResults=5, NextToken=token
        )
        seen += [i["ImageName"] for i in page["Images"]]
        token = page.get("NextToken")
    assert seen == [f"page-{i:02d}" for i in range(15)] + ["page-99"]


def test_data_survives_restart(store_server):
    sm = store_server.client()
    sm.create_image(ImageName="survivor", RoleArn=ROLE, Description="kept")
    store_server.stop()
    store_server.start()
    assert store_server.client().describe_image(ImageName="survivor")["Description"] == "kept"
