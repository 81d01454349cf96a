"""Operators configure inspection with a TOML file (`byoi server --inspection-config`): rules turned off,
levels changed, limits lowered; a bad file stops the server with a message naming the problem."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from byoi.cli.client import extension_client
from tests.support.layers import Layer, base_files, compatible_layer, push_image, r_install
from tests.test_inspect_synthetic import outcomes, register

pytestmark = pytest.mark.slow


def server_with(server_factory, registry, tmp_path, toml: str):
    path = tmp_path / f"inspection-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(toml)
    srv = server_factory([f"http://{registry}"], env={"BYOI_INSPECTION_CONFIG": str(path)})
    srv.session()
    return srv, srv.client(), extension_client(srv.endpoint, "byoi")


def test_rules_can_be_turned_off_and_change_level(server_factory, registry, tmp_path, pusher):
    srv, sm, ext = server_with(
        server_factory,
        registry,
        tmp_path,
        '[rules]\nrstudio-server = "off"\nnon-root-user = "required"\nreticulate = "info"\n',
    )
    r = "cfg/" + uuid.uuid4().hex[:8]
    no_rserver = Layer().files(base_files([("analyst", 1000)]))
    no_rserver.files(r_install(), 0o755)
    push_image(pusher, r, "v1", [no_rserver])
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATED", d.get("FailureReason")  # RStudio Server is not checked
    rules = {x["Name"]: x for x in ext.describe_image_version_report(ImageName=name)["Report"]["Rules"]}
    assert rules["rstudio-server"]["Outcome"] == "SKIPPED" and rules["rstudio-server"]["Level"] == "off"
    assert rules["reticulate"]["Level"] == "info"
    root_only = Layer().files(base_files())
    root_only.files(r_install(), 0o755)
    push_image(pusher, r, "v2", [root_only])
    _, d = register(sm, f"{r}:v2")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert d["FailureReason"] == (
        "Not compatible with RStudio: no non-root user (uid 1000 to 65533) in /etc/passwd; "
        "sessions will run as a user byoi adds [non-root-user]"
    )


def test_limits_from_the_config_file(server_factory, registry, tmp_path, pusher):
    srv, sm, ext = server_with(
        server_factory, registry, tmp_path, "[limits]\nmax_total_bytes = 200_000\nsize_warning_bytes = 50_000\n"
    )
    r = "cfg/" + uuid.uuid4().hex[:8]
    push_image(pusher, r, "small", [compatible_layer().file("pad", b"p" * 60_000)])
    name, d = register(sm, f"{r}:small")
    assert d["ImageVersionStatus"] == "CREATED"
    rep = ext.describe_image_version_report(ImageName=name)["Report"]
    assert outcomes(rep)["image-size"] == "FAILED"  # a warning: over 50 kB
    push_image(pusher, r, "big", [compatible_layer(), Layer().file("big", b"\1" * 300_000)])
    _, d = register(sm, f"{r}:big")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    assert "the image's layers expand to more than 200000 bytes (the total limit)" in d["FailureReason"]


def test_inspection_can_be_disabled(server_factory, registry, tmp_path, pusher):
    _, sm, ext = server_with(server_factory, registry, tmp_path, "enabled = false\n")
    r = "cfg/" + uuid.uuid4().hex[:8]
    push_image(pusher, r, "v1", [Layer().file("hello.txt", "hi")])
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATED"
    with pytest.raises(ClientError, match="has no compatibility report") as e:
        ext.describe_image_version_report(ImageName=name)
    assert e.value.response["Error"]["Code"] == "ResourceNotFound"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[rules]\nr-present = "maybe"\n', "rule r-present has level 'maybe'"),
        ("[limits]\nmax_ratio = 'high'\n", "limit max_ratio must be a positive number"),
        ("this is = = not toml\n", "not valid TOML"),
        ("cache_dir = 5\n", "cache_dir must be a directory path (a string), not 5"),
        ("rules = 5\n", "rules must be a table ([rules]), not an integer"),
        ('[[rules]]\nreticulate = "off"\n', "rules must be a table ([rules]), not an array"),
        ("limits = [1, 2]\n", "limits must be a table ([limits]), not an array"),
        ("[limits]\nmax_total_bytes = inf\n", "limit max_total_bytes must be a positive integer, not inf"),
        ("concurrency = true\n", "concurrency must be an integer from 1 to 16, not True"),
    ],
)
def test_a_bad_config_file_stops_the_server_with_a_clear_message(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    assert message in " ".join(_stderr_of_server(tmp_path, path).replace("│", " ").split())


def test_a_config_file_that_is_not_utf8_stops_the_server_with_a_clear_message(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'cache_dir = "/tmp/caf\xe9"\n')
    assert "not valid TOML: the file is not UTF-8 text" in " ".join(
        _stderr_of_server(tmp_path, path).replace("│", " ").split()
    )


def _stderr_of_server(tmp_path, path) -> str:
    """`byoi server --inspection-config PATH` as a subprocess: it must stop at once, with no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "byoi", "server", "--data-dir", str(tmp_path / "d"), "--inspection-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def _report_rows(srv) -> int:
    import sqlite3

    with sqlite3.connect(srv.data_dir / "byoi.db") as db:
        return db.execute("SELECT count(*) FROM image_version_reports").fetchone()[0]


def test_reports_are_deleted_with_their_version(server_factory, registry, tmp_path, pusher):
    srv, sm, ext = server_with(server_factory, registry, tmp_path, "")
    r = "cfg/" + uuid.uuid4().hex[:8]
    push_image(pusher, r, "v1", [compatible_layer()])
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATED" and _report_rows(srv) == 1
    sm.delete_image_version(ImageName=name, Version=1)
    sm.get_waiter("image_version_deleted").wait(ImageName=name, Version=1, WaiterConfig={"Delay": 1, "MaxAttempts": 20})
    assert _report_rows(srv) == 0  # ON DELETE CASCADE from image_versions


@pytest.mark.postgres
def test_reports_on_postgresql(server_factory, registry, tmp_path, pusher, postgres_url):
    from tests.conftest import fresh_postgres_database

    path = tmp_path / "defaults.toml"
    path.write_text("")
    srv = server_factory(
        [f"http://{registry}"],
        database_url=fresh_postgres_database(postgres_url),
        env={"BYOI_INSPECTION_CONFIG": str(path)},
    )
    srv.session()
    sm, ext = srv.client(), extension_client(srv.endpoint, "byoi")
    r = "cfg/" + uuid.uuid4().hex[:8]
    push_image(pusher, r, "v1", [compatible_layer()])
    push_image(pusher, r, "v2", [Layer().files(base_files())])
    name, d1 = register(sm, f"{r}:v1")
    _, d2 = register(sm, f"{r}:v2", name)
    assert (d1["ImageVersionStatus"], d2["ImageVersionStatus"]) == ("CREATED", "CREATE_FAILED")
    assert ext.describe_image_version_report(ImageName=name, Version=1)["Report"]["Compatible"] is True
    diff = ext.diff_image_versions(ImageName=name, FromVersion=1, ToVersion=2)
    assert {p["Name"] for p in diff["PackagesRemoved"]} == {"base", "stats", "reticulate", "jsonlite"}
    sm.delete_image(ImageName=name)
    sm.get_waiter("image_deleted").wait(ImageName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})


def test_an_unexpected_error_ends_the_version_create_failed_after_bounded_retries(
    server_factory, registry, tmp_path, pusher
):
    """Defence in depth: an error that is neither an inspection nor a registry error (here, a cache
    directory that is a regular file, so writing a layer index raises NotADirectoryError) is retried
    BYOI_RESOLVE_ATTEMPTS times with back-off, then ends the version CREATE_FAILED with the error named,
    instead of leaving it CREATING with a traceback every 5 seconds for ever."""
    not_a_dir = tmp_path / "cache-is-a-file"
    not_a_dir.write_text("not a directory\n")
    srv, sm, _ = server_with(server_factory, registry, tmp_path, f'cache_dir = "{not_a_dir}"\n')
    r = "cfg/" + uuid.uuid4().hex[:8]
    push_image(pusher, r, "v1", [compatible_layer().file("etc/unique", uuid.uuid4().hex)])
    name, d = register(sm, f"{r}:v1")
    assert d["ImageVersionStatus"] == "CREATE_FAILED"
    reason = d["FailureReason"]
    assert reason.startswith(
        "Internal error while resolving or inspecting the BaseImage: NotADirectoryError: [Errno 20] Not a directory"
    )
    assert reason.endswith("(failed 2 times; see the server log)")  # the test servers' BYOI_RESOLVE_ATTEMPTS
    time.sleep(1.0)  # the version is settled: no further attempts
    log = (srv.data_dir / "server.log").read_text()
    assert (
        log.count("handler failed") == 2
        and "resolve-image-version 1: handler failed 2 times in a row; giving up" in log
    )
    assert sm.describe_image_version(ImageName=name, Version=1)["ImageVersionStatus"] == "CREATE_FAILED"
