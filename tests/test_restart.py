"""Durable background work: a server killed with SIGKILL while versions are CREATING finishes them on restart."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.conftest import ROLE
from tests.support.gate import Gate

pytestmark = pytest.mark.slow


def test_sigkill_while_creating_then_restart_finishes(server_factory, registry, pusher):
    pushed = pusher.image("catalog/restart", "v1")
    gate = Gate(int(registry.rsplit(":", 1)[1]))
    try:
        # Generous timeouts so the held requests are still in flight when the server is killed; a worker per
        # version, so all five are claimed and waiting on the registry at once.
        env = {"BYOI_REGISTRY_TIMEOUT": "60", "BYOI_WORKER_CONCURRENCY": "5"}
        srv = server_factory([f"http://127.0.0.1:{gate.port}"], env=env)
        sm = srv.client()
        sm.create_image(ImageName="crash", RoleArn=ROLE)
        gate.pause()
        for _ in range(5):
            sm.create_image_version(ImageName="crash", BaseImage="catalog/restart:v1")
        # Work in flight: each version's registry request is held at the gate, and each row is leased.
        gate.wait_held(5)
        with sqlite3.connect(srv.data_dir / "byoi.db") as db:
            rows = db.execute("SELECT version, status, lease_owner, lease_until FROM image_versions").fetchall()
        assert [r[:2] for r in sorted(rows)] == [(v, "CREATING") for v in range(1, 6)], rows
        # One server holds all five leases (a released row has neither owner nor expiry). Not compared with the
        # clock: a loaded machine may renew a 3 s lease late.
        assert len({r[2] for r in rows}) == 1 and None not in {r[2] for r in rows}, rows
        assert None not in {r[3] for r in rows}, rows
        statuses = {v["ImageVersionStatus"] for v in sm.list_image_versions(ImageName="crash")["ImageVersions"]}
        assert statuses == {"CREATING"}

        srv.kill()  # SIGKILL: no chance to clean up, leases stay taken until they expire
        gate.resume()
        srv.start()
        sm = srv.client()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            versions = sm.list_image_versions(ImageName="crash", MaxResults=100)["ImageVersions"]
            if all(v["ImageVersionStatus"] != "CREATING" for v in versions):
                break
            time.sleep(0.5)
        assert [v["ImageVersionStatus"] for v in versions] == ["CREATED"] * 5
        for v in range(1, 6):
            d = sm.describe_image_version(ImageName="crash", Version=v)
            assert d["ContainerImage"] == f"127.0.0.1:{gate.port}/catalog/restart@{pushed.digest}"
    finally:
        gate.close()


def test_restart_keeps_everything(server_factory, registry, pusher):
    """A clean restart changes nothing: same key, same images, versions and tags (migrations are idempotent)."""
    pusher.image("catalog/keep", "v1")
    srv = server_factory([f"http://{registry}"])
    sm = srv.client()
    arn = sm.create_image(ImageName="keep", RoleArn=ROLE, Tags=[{"Key": "k", "Value": "v"}])["ImageArn"]
    sm.create_image_version(ImageName="keep", BaseImage="catalog/keep:v1", Aliases=["a"])
    sm.get_waiter("image_version_created").wait(
        ImageName="keep", Version=1, WaiterConfig={"Delay": 0.2, "MaxAttempts": 500}
    )
    before = sm.describe_image_version(ImageName="keep", Alias="a")
    key = srv.credentials_file.read_text()
    srv.stop()
    srv.start()
    assert srv.credentials_file.read_text() == key
    sm = srv.client()
    after = sm.describe_image_version(ImageName="keep", Alias="a")
    for k in ("ContainerImage", "ImageVersionArn", "CreationTime", "ImageVersionStatus"):
        assert after[k] == before[k]
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "k", "Value": "v"}]
