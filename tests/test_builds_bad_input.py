"""Bad build input gets a clear error before anything is built, through the CLI, the API and the upload
route; nothing is written outside the build's own folder. (No Docker Engine needed: nothing builds.)"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from botocore.exceptions import ClientError

from byoi.cli.builds import Signed
from byoi.cli.client import extension_client
from tests.conftest import fresh_postgres_database

BYOI = str(Path(sys.executable).parent / "byoi")


@pytest.fixture
def ext(server):
    server.session()
    return extension_client(server.endpoint, "byoi")


def byoi(server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BYOI, *args], env=server.aws_env(), capture_output=True, text=True, timeout=60)


def tar_of(members: list[tarfile.TarInfo], content: bytes = b"FROM scratch\n") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info in members:
            if info.isfile():
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def upload(server, data: bytes, sha: str | None = "real", sign: bool = True) -> httpx.Response:
    server.session()
    s = Signed(server.endpoint, "byoi")
    extra = {"Content-Type": "application/x-tar"}
    if sha == "real":
        extra["X-Amz-Content-SHA256"] = hashlib.sha256(data).hexdigest()
    elif sha is not None:
        extra["X-Amz-Content-SHA256"] = sha
    headers = s.headers("POST", "/byoi/build-contexts", extra) if sign else extra
    return httpx.post(s.url("/byoi/build-contexts"), content=data, headers=headers)


def contexts_on_disk(server) -> list[Path]:
    folder = server.data_dir / "builds" / "contexts"
    return list(folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (member("/etc/cron.d/evil"), "absolute path"),
        (member("../escape.txt"), "contains '..'"),
        (member("link", tarfile.SYMTYPE, "/etc/shadow"), "points to the absolute path '/etc/shadow'"),
        (member("deep/link", tarfile.SYMTYPE, "../../../escape"), "outside the context"),
        (member("hard", tarfile.LNKTYPE, "../outside"), "contains '..'"),
    ],
)
def test_unsafe_context_tars_are_refused(server, bad, says):
    before = contexts_on_disk(server)
    response = upload(server, tar_of([member("Dockerfile"), bad]))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["__type"] == "ValidationException" and says in body["Message"]
    assert contexts_on_disk(server) == before  # the refused upload left nothing behind
    assert not (server.data_dir.parent / "escape.txt").exists()
    assert not (server.data_dir / "builds" / "escape.txt").exists()


def test_uploads_must_be_signed_with_the_body_hash(server):
    data = tar_of([member("Dockerfile")])
    unsigned = upload(server, data, sign=False)
    assert unsigned.status_code == 403 and unsigned.json()["__type"] == "MissingAuthenticationTokenException"
    no_hash = upload(server, data, sha=None)
    assert no_hash.status_code == 403 and "X-Amz-Content-SHA256" in no_hash.json()["Message"]
    wrong = upload(server, data, sha=hashlib.sha256(b"something else").hexdigest())
    assert wrong.status_code == 400 and "does not match" in wrong.json()["Message"]
    ok = upload(server, data)
    assert ok.status_code == 200 and ok.json()["ContextId"].startswith("ctx-")


def test_context_larger_than_the_limit(server_factory, registry, tmp_path):
    srv = server_factory([f"http://{registry}"], env={"BYOI_BUILD_CONTEXT_LIMIT": "4000"})
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "data.bin").write_bytes(b"x" * 10_000)
    result = byoi(srv, "build", str(root), "--image", "too-big")
    assert result.returncode == 4
    assert "larger than the limit" in result.stderr and "4000" in result.stderr
    srv.session()
    assert extension_client(srv.endpoint, "byoi").list_image_builds()["ImageBuilds"] == []


def test_a_large_context_refused_mid_upload_is_named_in_the_servers_words(server_factory, registry, tmp_path):
    """A context far over the limit (24 MB, more than the sockets' buffers hold, against 1 MiB): the CLI says the
    server's reason, not a broken pipe or a reset (tests/test_cli_http1.py has a server that stops reading)."""
    srv = server_factory([f"http://{registry}"], env={"BYOI_BUILD_CONTEXT_LIMIT": str(1 << 20)})
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "data.bin").write_bytes(os.urandom(24 << 20))
    result = byoi(srv, "build", str(root), "--image", "too-big")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "larger than the limit" in result.stderr and str(1 << 20) in result.stderr
    assert "Broken pipe" not in result.stderr


def test_cli_refuses_bad_names_and_build_args_before_uploading(server, tmp_path):
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text("FROM scratch\n")
    cases = [
        # A value the API would refuse is invalid input (4); a malformed command line is a usage error (2).
        (["--image", "Team/Bad_Name!"], 4, "not a valid repository name"),
        (["--image", "ok", "--tag", "bad tag"], 4, "not a valid tag"),
        (["--image", "ok", "--build-arg", "=value"], 2, "not in the form KEY=VALUE"),
        (["--image", "ok", "--build-arg", "9LIVES=1"], 2, "not in the form KEY=VALUE"),
        (["--image", "ok", "--build-arg", "UNSET_ANYWHERE_X"], 2, "has no value"),
        (["--image", "ok", "--label", "novalue"], 2, "not in the form KEY=VALUE"),
    ]
    before = contexts_on_disk(server)
    for args, status, says in cases:
        result = byoi(server, "build", str(root), *args)
        assert result.returncode == status, (args, result.stdout, result.stderr)
        assert says in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    missing = byoi(server, "build", str(tmp_path / "nope"), "--image", "ok")
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
    assert contexts_on_disk(server) == before


def test_api_refuses_bad_requests(server, ext):
    context_id = upload(server, tar_of([member("Dockerfile")])).json()["ContextId"]
    bad = [
        ({"Repository": "Team/Upper"}, "ValidationException", "not a valid repository name"),
        ({"Repository": "ok", "Tag": "bad tag!"}, "ValidationException", "not a valid tag"),
        ({"Repository": "ok", "BuildArgs": {"bad-name": "1"}}, "ValidationException", "BuildArgs name 'bad-name'"),
        ({"Repository": "ok", "Registry": "registry.example:5000"}, "ValidationException", "not one byoi is config"),
        ({"Repository": "ok", "Dockerfile": "../Dockerfile"}, "ValidationException", "contains '..'"),
        ({"Repository": "ok", "Dockerfile": "Missing.Dockerfile"}, "ValidationException", "is not in the build"),
        ({"Repository": "ok", "Platform": "amd64"}, "ValidationException", "os/arch"),
        ({"Repository": "ok", "ContextId": "ctx-" + "0" * 32}, "ResourceNotFound", "upload it first"),
    ]
    for extra, error, says in bad:
        request = {"ContextId": context_id, **extra}
        with pytest.raises(ClientError) as e:
            ext.start_image_build(**request)
        assert e.value.response["Error"]["Code"] == error, extra
        assert says in e.value.response["Error"]["Message"], (extra, e.value.response["Error"]["Message"])
    assert ext.list_image_builds()["ImageBuilds"] == []  # nothing was queued
    for build_id, error in (("b-0000000000000000", "ResourceNotFound"), ("not-a-build", "ValidationException")):
        with pytest.raises(ClientError) as e:
            ext.describe_image_build(BuildId=build_id)
        assert e.value.response["Error"]["Code"] == error
    s = Signed(server.endpoint, "byoi")
    path = "/byoi/builds/b-0000000000000000/events"
    response = httpx.get(s.url(path), headers=s.headers("GET", path))
    assert response.status_code == 400 and response.json()["__type"] == "ResourceNotFound"


def _at_once(clients: list[Any], fn) -> list[Any]:
    """Call `fn(client)` for each client on its own thread, all released together; return what each returned
    or the ClientError it raised."""
    barrier = threading.Barrier(len(clients))

    def run(client: Any) -> Any:
        barrier.wait()
        try:
            return fn(client)
        except ClientError as exc:
            return exc

    with ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(run, clients))


def test_one_context_starts_one_build_even_when_raced(server_factory, registry):
    srv = server_factory([f"http://{registry}"])
    srv.session()
    clients = [extension_client(srv.endpoint, "byoi") for _ in range(4)]
    started = []
    for attempt in range(5):
        context_id = upload(srv, tar_of([member("Dockerfile")])).json()["ContextId"]
        request = {"ContextId": context_id, "Repository": "race", "Tag": f"t{attempt}"}
        results = _at_once(clients, lambda c, r=request: str(c.start_image_build(**r)["BuildId"]))
        winners = [r for r in results if isinstance(r, str)]
        assert len(winners) == 1, results
        for lost in (r for r in results if not isinstance(r, str)):
            error = lost.response["Error"]
            assert error["Code"] == "ValidationException", error
            assert f"{context_id} was already used by build {winners[0]}" in error["Message"]
        started.append(winners[0])
        # Later attempts are told the same, and the context's folder now belongs to the build alone.
        with pytest.raises(ClientError) as e:
            clients[0].start_image_build(ContextId=context_id, Repository="race")
        assert f"already used by build {winners[0]}" in e.value.response["Error"]["Message"]
        assert not (srv.data_dir / "builds" / "contexts" / context_id).exists()
    assert sorted(b["BuildId"] for b in clients[0].list_image_builds(MaxResults=50)["ImageBuilds"]) == sorted(started)
    for build_id in started:
        clients[0].stop_image_build(BuildId=build_id)


def _events(server, build_id: str, query: str = "", headers: dict[str, str] | None = None) -> httpx.Response:
    s = Signed(server.endpoint, "byoi")
    path = f"/byoi/builds/{build_id}/events"
    signed_headers = s.headers("GET", path, headers, query=query)
    return httpx.get(s.url(path) + (f"?{query}" if query else ""), headers=signed_headers, timeout=30)


def _event_ids(response: httpx.Response) -> list[tuple[int | None, str]]:
    """(id, event name) of each event in an SSE body."""
    out, event_id = [], None
    for line in response.text.splitlines():
        if line.startswith("id:"):
            event_id = int(line[3:])
        elif line.startswith("event:"):
            out.append((event_id, line[6:].strip()))
            event_id = None
    return out


def test_log_offsets_and_build_ids_are_checked(server_factory, registry):
    srv = server_factory([f"http://{registry}"])
    srv.session()
    ext = extension_client(srv.endpoint, "byoi")
    context_id = upload(srv, tar_of([member("Dockerfile")])).json()["ContextId"]
    build_id = ext.start_image_build(ContextId=context_id, Repository="offsets")["BuildId"]
    ext.stop_image_build(BuildId=build_id)
    # The worker starts a build as soon as it is queued, so this empty Dockerfile may fail before the stop lands:
    # either way the build ends, and its log says how.
    for _ in range(100):
        final = ext.describe_image_build(BuildId=build_id)["BuildStatus"]
        if final in ("STOPPED", "FAILED"):
            break
        time.sleep(0.1)

    bad = [
        ("offset=99999999999999999999", None, "offset '99999999999999999999'"),  # 20 digits: past 64 bits
        ("offset=%C2%B2", None, "offset '²'"),  # a superscript two: str.isdigit() says yes, int() says no
        ("offset=", None, "offset ''"),
        ("offset=-5", None, "offset '-5'"),
        ("", {"Last-Event-ID": "12abc"}, "Last-Event-ID '12abc'"),
    ]
    for query, headers, says in bad:
        response = _events(srv, build_id, query, headers)
        assert response.status_code == 400, (query, headers, response.text)
        body = response.json()
        assert body["__type"] == "ValidationException" and says in body["Message"], body
        assert "is not a byte offset" in body["Message"]

    whole = _events(srv, build_id)
    assert whole.status_code == 200
    events = _event_ids(whole)
    assert events[-1] == (None, "end") and (f"--> {final}" in whole.text or f'"s": "{final}"' in whole.text)
    first_id = events[0][0]
    assert first_id is not None
    # Past the end: nothing but the end; inside a record: from the next whole record; Last-Event-ID as ?offset=.
    past = _events(srv, build_id, "offset=999999999999999999")
    assert past.status_code == 200 and _event_ids(past) == [(None, "end")]
    middle = _events(srv, build_id, f"offset={first_id - 3}")
    assert middle.status_code == 200 and _event_ids(middle) == events[1:]
    resumed = _events(srv, build_id, headers={"Last-Event-ID": str(first_id)})
    assert _event_ids(resumed) == events[1:]

    s = Signed(srv.endpoint, "byoi")
    for path in ("/byoi/builds/not-a-build/log", "/byoi/builds/b-00/events"):
        response = httpx.get(s.url(path), headers=s.headers("GET", path))
        assert response.status_code == 400 and response.json()["__type"] == "ValidationException", response.text
        assert "is not a build id ('b-' followed by 16 hex digits)" in response.json()["Message"]
    for args in (["logs", "../../healthz"], ["logs", "-f", "b-1"], ["describe", "x/y"], ["stop", "B-0"]):
        result = byoi(srv, "builds", *args)
        assert result.returncode == 4, (args, result.stdout, result.stderr)
        assert "is not a build id" in result.stderr and "None" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ([member("here", tarfile.SYMTYPE, "."), member("here/evil", tarfile.SYMTYPE, "../etc/passwd")],
         "tar member 'here/evil' lies under 'here', an earlier symbolic link"),
        ([member("sub", tarfile.DIRTYPE), member("sub/up", tarfile.SYMTYPE, ".."),
          member("sub/up/up2", tarfile.SYMTYPE, "..")], "tar member 'sub/up/up2' lies under 'sub/up'"),
        ([member("sub", tarfile.DIRTYPE), member("sub/root", tarfile.SYMTYPE, ".."),
          member("sub/m", tarfile.SYMTYPE, "root/..")], "symbolic link 'sub/m' points to 'root/..', outside"),
    ],
)  # fmt: skip
def test_links_through_earlier_links_are_refused_by_the_upload(server, members, says):
    before = contexts_on_disk(server)
    response = upload(server, tar_of([member("Dockerfile"), *members]))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["__type"] == "ValidationException", body
    assert body["Message"].startswith("build context rejected: ") and says in body["Message"], body
    assert contexts_on_disk(server) == before


DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _database_url(request, db: str) -> str | None:
    return fresh_postgres_database(request.getfixturevalue("postgres_url")) if db == "postgres" else None


@pytest.mark.parametrize("db", DATABASES)
def test_client_token_starts_one_build_when_raced(server_factory, registry, request, db):
    srv = server_factory([f"http://{registry}"], database_url=_database_url(request, db))
    srv.session()
    clients = [extension_client(srv.endpoint, "byoi") for _ in range(4)]
    started = []
    for attempt in range(5):
        context_id = upload(srv, tar_of([member("Dockerfile")])).json()["ContextId"]
        token = f"retry-{attempt}-{uuid.uuid4().hex[:8]}"
        same = {"ContextId": context_id, "Repository": "token", "Tag": f"t{attempt}", "ClientToken": token}
        results = _at_once(clients, lambda c, r=same: str(c.start_image_build(**r)["BuildId"]))
        assert all(isinstance(r, str) for r in results), results  # every caller is told about the one build
        assert len(set(results)) == 1, results
        started.append(results[0])
    listed = clients[0].list_image_builds(MaxResults=50)["ImageBuilds"]
    assert sorted(b["BuildId"] for b in listed) == sorted(started)

    # A later retry gets the same build; the same token with another request is refused, naming the difference.
    assert clients[0].start_image_build(**same)["BuildId"] == started[-1]
    with pytest.raises(ClientError) as e:
        clients[0].start_image_build(**{**same, "Tag": "other", "BuildArgs": {"A": "1"}})
    error = e.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert (
        f"ClientToken {token} was already used for build {started[-1]} with a different BuildArgs, Tag"
        in (error["Message"])
    )
    for build_id in started:
        clients[0].stop_image_build(BuildId=build_id)


@pytest.mark.parametrize("db", DATABASES)
def test_migration_keeps_a_token_on_its_oldest_build(request, tmp_path, db):
    """Tokens a database already holds twice (from before the unique index) stay on the oldest build only."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from byoi.store.db import MIGRATIONS, migrate, normalise_url, sync_url

    url = _database_url(request, db) or f"sqlite:///{tmp_path / 'old.db'}"
    url = sync_url(normalise_url(url))
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        row = {"status": "QUEUED", "registry": "r:5000", "repository": "x", "tag": "t", "spec": "{}",
               "created_at": 1.0, "modified_at": 1.0}  # fmt: skip
        insert = sa.text(
            "INSERT INTO image_builds (build_id, status, registry, repository, tag, spec, created_at, modified_at,"
            " client_token) VALUES (:build_id, :status, :registry, :repository, :tag, :spec, :created_at,"
            " :modified_at, :client_token)"
        )
        for build_id, token in (("b-1", "dup"), ("b-2", "dup"), ("b-3", None), ("b-4", None), ("b-5", "solo")):
            conn.execute(insert, {**row, "build_id": build_id, "client_token": token})
    migrate(url)
    with engine.begin() as conn:
        tokens = dict(conn.execute(sa.text("SELECT build_id, client_token FROM image_builds")).all())
        assert tokens == {"b-1": "dup", "b-2": None, "b-3": None, "b-4": None, "b-5": "solo"}
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(insert, {**row, "build_id": "b-6", "client_token": "solo"})
    engine.dispose()
