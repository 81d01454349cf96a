"""The fixed costs of builds and launches, and of the idle server: what makes them smaller must keep behaving.

- new work is claimed at the wake that recorded it (not at the worker's next poll), its table looked at first;
- a finished build makes the builds queued behind it due at once;
- a follower of a build log in the writing process gets each record when it is written, not at its next poll;
- a context without `.dockerignore` reaches the builder as the checked upload itself (no copy);
- a launch probes RStudio at the endpoint it already has, with no TLS set-up per probe;
- a second launch of a pinned image does not read the image's Renviron.site from its container again, and R
  still sees the session's environment through it;
- the SageMaker model is only what byoi serves (checked against the services both ways), with every shape it
  reaches exactly as botocore has it;
- `byoi server` migrates in a forked child, so the idle server holds neither alembic (nor mako) nor, until a
  page is served, jinja2; the heads it compares the store with are alembic's own.

Speed and memory themselves are measured by bench/build_overhead.py, bench/launch.py and bench/memory.py.
The launch test uses the RStudio STAND-IN (tests/images/rstudio-standin), a TEST DOUBLE for the IDE binary
only: the registry, Docker Engine, the containers and R are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import inspect
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from botocore.loaders import Loader
from botocore.model import ListShape, MapShape, Shape, StructureShape
from botocore.session import get_session

from byoi.api.dispatch import snake
from byoi.build import logstore
from byoi.build.context import check_upload, filter_context
from byoi.build.logstore import BuildLog
from byoi.errors import StartupRefused
from byoi.jobs.worker import Claim, Task, Worker
from byoi.runtime import docker as docker_runtime
from byoi.runtime.base import Endpoint
from byoi.runtime.docker import DockerRuntime
from byoi.runtime.instance_types import model_instance_types
from byoi.sagemaker_model import SERVED_OPERATIONS, load_service_document, sagemaker_model
from byoi.services.build_runner import BuildRunner
from byoi.store.db import MIGRATIONS, Database, migrate_in_child, schema_heads, schema_is_current
from byoi.store.schema import _lease_columns
from byoi.store.schema_builds import image_builds
from tests.support import sessions as s
from tests.support.docker_images import docker_available, docker_client
from tests.support.processes import ByoiServer

# -- the worker: new work starts at the wake --------------------------------------------------------------

meta = sa.MetaData()


def jobs_table(name: str) -> sa.Table:
    columns = [sa.Column("id", sa.Integer, primary_key=True), sa.Column("status", sa.String(8)), *_lease_columns()]
    return sa.Table(name, meta, *columns)


first_t, second_t = jobs_table("first_jobs"), jobs_table("second_jobs")
NEVER = 3600.0  # a poll interval no test waits out: what runs, runs because of a wake


async def jobs_db(tmp_path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(meta.create_all)
    return db


async def add_job(db: Database, table: sa.Table, row_id: int) -> None:
    async with db.transaction() as conn:
        await conn.execute(sa.insert(table).values(id=row_id, status="TODO"))


def recording_task(db: Database, table: sa.Table, started: list[str], done: asyncio.Event) -> Task:
    async def handle(claim: Claim) -> None:
        started.append(table.name)
        async with db.transaction() as conn:
            await conn.execute(sa.update(table).where(claim.owns()).values(status="DONE"))
        done.set()

    return Task(table.name, table, ("TODO",), handle)


async def idle_worker(db: Database, *tasks: Task) -> Worker:
    """A started worker that has made its first pass (over nothing) and now waits for a wake or NEVER."""
    worker = Worker(db, lease_seconds=30, poll_seconds=NEVER)
    for task in tasks:
        worker.register(task)
    worker.start()
    for _ in range(200):
        if len(worker.waiting) == len(tasks):
            return worker
        await asyncio.sleep(0.01)
    raise AssertionError("the worker's first pass did not end")


async def test_new_work_starts_at_the_wake_not_at_the_next_poll(tmp_path: Path) -> None:
    db = await jobs_db(tmp_path)
    started: list[str] = []
    done = asyncio.Event()
    worker = await idle_worker(db, recording_task(db, first_t, started, done))
    try:
        await add_job(db, first_t, 1)
        worker.wake(first_t)
        await asyncio.wait_for(done.wait(), 30)  # a poll would come after an hour
        assert started == ["first_jobs"]
    finally:
        await worker.stop()
        await db.close()


async def test_the_woken_table_is_looked_at_first(tmp_path: Path) -> None:
    db = await jobs_db(tmp_path)
    started: list[str] = []
    first_done, second_done = asyncio.Event(), asyncio.Event()
    worker = await idle_worker(
        db, recording_task(db, first_t, started, first_done), recording_task(db, second_t, started, second_done)
    )
    try:
        await add_job(db, first_t, 1)
        await add_job(db, second_t, 1)
        worker.wake(second_t)  # registered second, claimed first
        await asyncio.wait_for(asyncio.gather(first_done.wait(), second_done.wait()), 30)
        assert started == ["second_jobs", "first_jobs"]
    finally:
        await worker.stop()
        await db.close()


# -- builds: the queue hand-off, and no copy of a context that excludes nothing ---------------------------


class WakeRecorder:
    def __init__(self) -> None:
        self.tables: list[str | None] = []

    def wake(self, table: sa.Table | None = None) -> None:
        self.tables.append(None if table is None else table.name)


async def test_a_finished_build_makes_the_queued_builds_due_at_once(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'builds.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda sync: image_builds.create(sync))
    now = time.time()
    common = {"registry": "127.0.0.1:5000", "repository": "r", "tag": "t", "spec": {}, "created_at": now}
    building = {"id": 1, "build_id": "b-1", "status": "PUSHING", "lease_owner": "me", "next_attempt_at": None}
    # waiting for the slot, told to come back after QUEUE_POLL (here: much later)
    queued = {"id": 2, "build_id": "b-2", "status": "QUEUED", "lease_owner": None, "next_attempt_at": now + 600}
    async with db.transaction() as conn:
        await conn.execute(
            sa.insert(image_builds), [{**common, **row, "modified_at": now} for row in (building, queued)]
        )
    worker = WakeRecorder()
    runner = BuildRunner(SimpleNamespace(db=db, worker=worker), None, None, None, None, tmp_path)  # type: ignore[arg-type]
    blog = BuildLog(tmp_path / "b-1" / "log.jsonl", 1 << 20)
    try:
        await runner._settle(Claim(image_builds, 1, "me", 1), blog, "SUCCEEDED", digest="sha256:" + "0" * 64)
        async with db.read() as conn:
            rows = {r.build_id: r for r in await conn.execute(sa.select(image_builds))}
        assert rows["b-1"].status == "SUCCEEDED"
        assert rows["b-2"].status == "QUEUED" and rows["b-2"].next_attempt_at is None
        assert worker.tables == ["image_builds"]
    finally:
        blog.close()
        await db.close()


def uploaded(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A context as check_upload leaves it (raw.tar), from a tar.gz of `files`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    check_upload(buf, tmp_path / "raw.tar", 1 << 30)
    return tmp_path / "raw.tar"


async def test_a_log_follower_is_woken_by_the_next_record_written_here(tmp_path: Path) -> None:
    """From the event loop or from a worker thread (the builders write from both): the waiter completes at the
    write, long before its timeout, and leaves nothing registered behind; with no write it times out."""
    path = tmp_path / "b" / "log.jsonl"
    blog = BuildLog(path, 1 << 20)
    for write in (
        lambda: blog.write("log", m="on the loop"),
        lambda: asyncio.to_thread(blog.write, "log", m="in a thread"),
    ):
        started = time.monotonic()
        waiting = asyncio.create_task(logstore.wait_appended(path, 30))
        await asyncio.sleep(0.05)  # the follower is waiting
        result = write()
        if inspect.isawaitable(result):
            await result
        assert await waiting is True
        assert time.monotonic() - started < 10  # woken by the write, not by the 30 s timeout
    assert await logstore.wait_appended(path, 0.05) is False  # nothing written: the poll bounds the wait
    assert path not in logstore._waiting
    blog.close()
    records, _ = logstore.read_records(path)
    assert [r["m"] for _, r in records] == ["on the loop", "in a thread"]


def test_a_context_without_dockerignore_is_built_from_the_upload_itself(tmp_path: Path) -> None:
    raw = uploaded(tmp_path, {"Dockerfile": b"FROM scratch\n", "data/blob.bin": b"x" * 5000})
    summary = filter_context(raw, tmp_path / "context.tar", "Dockerfile")
    assert (summary.files, summary.size, summary.excluded) == (2, 5013, 0)
    assert (tmp_path / "context.tar").stat().st_ino == raw.stat().st_ino  # a link, not a copy
    with tarfile.open(tmp_path / "context.tar") as tar:
        assert sorted(tar.getnames()) == ["Dockerfile", "data/blob.bin"]


def test_a_context_with_dockerignore_is_still_filtered(tmp_path: Path) -> None:
    raw = uploaded(tmp_path, {"Dockerfile": b"FROM scratch\n", ".dockerignore": b"*.log\n", "a.log": b"1", "b": b"2"})
    summary = filter_context(raw, tmp_path / "context.tar", "Dockerfile")
    assert (summary.files, summary.excluded) == (3, 1)
    assert (tmp_path / "context.tar").stat().st_ino != raw.stat().st_ino
    with tarfile.open(tmp_path / "context.tar") as tar:
        assert sorted(tar.getnames()) == [".dockerignore", "Dockerfile", "b"]


# -- launches: readiness probes, and the image's Renviron.site read once ---------------------------------


async def test_a_probe_asks_the_endpoint_it_is_given_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No container of that name exists and no Engine is asked: the probe is one request on the socket."""
    sock = tmp_path / "rserver.sock"
    runtime = DockerRuntime("unix:///nonexistent/docker.sock", tmp_path)
    endpoint = Endpoint(socket=str(sock))
    transports: list[Any] = []
    real_transport = docker_runtime.httpx.AsyncHTTPTransport

    def counted(*args: Any, **kwargs: Any) -> Any:
        transports.append(kwargs)
        return real_transport(*args, **kwargs)

    monkeypatch.setattr(docker_runtime.httpx, "AsyncHTTPTransport", counted)
    assert await runtime.answers("no-such-container", "/s/", endpoint=endpoint) is False  # no socket yet
    assert transports == []  # seen with a stat: no client, no connection attempt
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /s/auth-sign-in\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(answer, path=str(sock))
    try:
        assert await runtime.answers("no-such-container", "/s/", endpoint=endpoint) is True  # any answer counts
    finally:
        server.close()
        await server.wait_closed()
        await runtime.close()
    assert b"x-rstudio-root-path: /s" in seen[0].lower()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)")
def test_a_pinned_image_file_is_read_from_its_first_session_only(
    rstudio_server: ByoiServer, registry: str, rstudio_image: str
) -> None:
    sm = rstudio_server.client()
    image = s.unique("renviron")  # a repository of its own: no session of this server ran it before
    s.register(sm, registry, image, "rstudio-standin", "v1")
    s.ensure_config(sm)
    domain = s.rstudio_domain(sm, [{"ImageName": image, "AppImageConfigName": s.CONFIG}])
    ext = s.extension(rstudio_server)
    since = int(time.time()) - 1
    endpoints: list[str] = []
    reads: list[int] = []  # the image's file reads after each launch
    try:
        for user in ("first", "second"):
            sm.create_user_profile(DomainId=domain, UserProfileName=user)
            sm.create_app(
                DomainId=domain,
                UserProfileName=user,
                AppType="RSessionGateway",
                AppName="main",
                ResourceSpec={"SageMakerImageArn": sm.describe_image(ImageName=image)["ImageArn"]},
            )
            described = s.wait_app(sm, domain, user, "main", ("InService", "Failed"))
            assert described["Status"] == "InService", described
            endpoints.append(s.progress(ext, domain, user, "main")["Endpoint"])
            reads.append(_image_file_reads(image, since))
        assert reads[0] > 0 and reads[1] == reads[0], reads  # the first: once per link followed (Debian's R links it)
        # Nothing is read from or written into a session's own container: its files are read-only bind mounts.
        assert _session_archive_events(domain, since) == {"first": 0, "second": 0}
        # The second session's Renviron.site was composed from the remembered file: the image's own lines kept,
        # the session's environment added, as R started without the container's environment sees it.
        clean = s.evaluate(
            endpoints[1],
            "system2('env', c('-i', file.path(R.home('bin'), 'Rscript'), '-e', "
            'shQuote(\'cat(Sys.getenv(c("BYOI_USER_PROFILE_NAME", "R_LIBS_SITE")), sep = "|")\')), stdout = TRUE)',
        )
        user, libs = str(clean).split("|")
        assert user == "second" and "site-library" in libs
        # The files are read-only to the session, and byoi's: the session user can neither change nor replace one.
        denied = s.evaluate(
            endpoints[1],
            "tryCatch({cat('x', file = '/etc/byoi/database.conf'); 'written'}, "
            "warning = function(w) conditionMessage(w), error = function(e) conditionMessage(e))",
        )
        assert "written" not in str(denied) and "Read-only file system" in str(denied), denied
        assert not docker_client().containers.list(all=True, filters={"label": "byoi.purpose=read-image-file"})
    finally:
        s.remove_sessions_of(rstudio_server.data_dir, [domain])


@pytest.mark.docker
@pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)")
def test_read_containers_left_by_a_stopped_byoi_are_removed_and_a_young_one_is_kept(monkeypatch):
    """A byoi that stopped while reading an image's file left a created container labelled for it: the next
    process's first read removes it, but not one young enough to be another replica's read in progress."""
    from tests.support.docker_images import ensure_base_image

    image = ensure_base_image()
    client = docker_client()
    old = client.containers.create(image, ["true"], labels=docker_runtime.READ_PURPOSE)
    young = None
    try:
        time.sleep(2.1)  # `Created` is in whole seconds: the cut-off goes 1.5 s before the young one's
        young = client.containers.create(image, ["true"], labels=docker_runtime.READ_PURPOSE)
        made = time.time()

        async def read() -> bytes | None:
            monkeypatch.setattr(docker_runtime, "READ_LEFTOVER_AGE", time.time() - made + 1.5)
            runtime = DockerRuntime()
            try:
                return await runtime.read_image_file(image, "/etc/os-release")
            finally:
                await runtime.close()

        assert b"bookworm" in (asyncio.run(read()) or b"")
        left = {c.id for c in client.containers.list(all=True, filters={"label": "byoi.purpose=read-image-file"})}
        assert old.id not in left and young.id in left, left  # and the read's own container is gone too
        assert left == {young.id}
    finally:
        for c in (old, young):
            if c is not None:
                with contextlib.suppress(Exception):
                    c.remove(force=True)


def _image_file_reads(repository: str, since: int) -> int:
    """How many files the Engine read from containers byoi made to read an image's files (`archive-path`)."""
    events = docker_client().events(
        since=since,
        until=int(time.time()) + 1,
        decode=True,
        filters={"event": "archive-path", "label": "byoi.purpose=read-image-file"},
    )
    return sum(1 for e in events if repository in str((e.get("Actor") or {}).get("Attributes", {}).get("image")))


def _session_archive_events(domain: str, since: int) -> dict[str, int]:
    """Reads (`archive-path`) and writes (`extract-to-dir`) of a file of each profile's session container."""
    client = docker_client()
    counts: dict[str, int] = {}
    for c in client.containers.list(all=True, filters={"label": f"byoi.domain-id={domain}"}):
        events = client.events(
            since=since,
            until=int(time.time()) + 1,
            decode=True,
            filters={"container": c.id, "event": ["archive-path", "extract-to-dir"]},
        )
        counts[c.labels.get("byoi.user-profile", "?")] = sum(1 for _ in events)
    return counts


# -- the SageMaker model: what byoi serves, exactly as botocore has it -----------------------------------


def full_model() -> Any:
    return get_session().get_service_model("sagemaker")


def implemented_sagemaker_operations(tmp_path: Path) -> set[str]:
    """The SageMaker operations (of botocore's whole model) some service of a real server has a method for."""
    from byoi.app import Services, build_context
    from byoi.config import Settings

    services = Services(build_context(Settings(data_dir=tmp_path)))
    methods = {name for svc in services.all for name, _ in inspect.getmembers(svc, inspect.iscoroutinefunction)}
    return {op for op in full_model().operation_names if snake(op) in methods}


def test_served_operations_are_exactly_those_the_services_implement(tmp_path: Path) -> None:
    implemented = implemented_sagemaker_operations(tmp_path)
    missing, extra = implemented - SERVED_OPERATIONS, SERVED_OPERATIONS - implemented
    assert not missing, f"implemented but not in byoi.sagemaker_model.SERVED_OPERATIONS: {sorted(missing)}"
    assert not extra, f"in SERVED_OPERATIONS but no service implements them: {sorted(extra)}"
    assert set(sagemaker_model().operation_names) == SERVED_OPERATIONS


def _tree(shape: Shape, seen: dict[str, Any]) -> Any:
    """Everything validation and shaping read of a shape and the shapes it reaches (documentation aside)."""
    if shape.name in seen:
        return shape.name
    seen[shape.name] = None
    node: dict[str, Any] = {"type": shape.type_name, "metadata": shape.metadata, "serialization": shape.serialization}
    if isinstance(shape, StructureShape):
        node["required"] = shape.required_members
        node["members"] = {name: _tree(member, seen) for name, member in shape.members.items()}
    elif isinstance(shape, ListShape):
        node["member"] = _tree(shape.member, seen)
    elif isinstance(shape, MapShape):
        node["key"], node["value"] = _tree(shape.key, seen), _tree(shape.value, seen)
    seen[shape.name] = node
    return shape.name


def test_every_served_shape_is_exactly_botocores(tmp_path: Path) -> None:
    full, served = full_model(), sagemaker_model()
    for name in sorted(SERVED_OPERATIONS):
        ours, theirs = served.operation_model(name), full.operation_model(name)
        for part in ("input_shape", "output_shape"):
            mine_seen: dict[str, Any] = {}
            their_seen: dict[str, Any] = {}
            if getattr(theirs, part) is None:
                assert getattr(ours, part) is None, (name, part)
                continue
            _tree(getattr(ours, part), mine_seen)
            _tree(getattr(theirs, part), their_seen)
            assert mine_seen == their_seen, (name, part)
        assert [e.name for e in ours.error_shapes] == [e.name for e in theirs.error_shapes], name
        assert ours.metadata == theirs.metadata and ours.http == theirs.http
    assert model_instance_types() == frozenset(full.shape_for("AppInstanceType").enum)
    assert served.operation_model("CreateApp").documentation == ""  # the prose is not kept in memory


def test_the_model_is_found_where_botocore_finds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_DATA_PATH comes first, as for botocore; the file may be gzipped."""
    original = Loader().load_service_model("sagemaker", "service-2")
    version = original["metadata"]["apiVersion"]
    original["metadata"]["serviceFullName"] = "SageMaker from AWS_DATA_PATH"
    folder = tmp_path / "sagemaker" / version
    folder.mkdir(parents=True)
    (folder / "service-2.json.gz").write_bytes(gzip.compress(json.dumps(original).encode()))
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    document = load_service_document()
    assert document["metadata"]["serviceFullName"] == "SageMaker from AWS_DATA_PATH"
    assert "documentation" not in document["operations"]["CreateApp"]


def test_the_cli_builds_no_tls_context_for_a_plain_http_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the CA bundle took 50 to 130 ms a request: a build's upload and log stream to an http:// byoi skip
    it; an https:// one is verified, with AWS_CA_BUNDLE when set, as botocore verifies it."""
    import ssl

    from byoi.cli.builds import Signed

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "BYOIEXAMPLE000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    assert Signed("http://127.0.0.1:8080", None).verify is False
    assert Signed("https://byoi.example.test", None).verify is True
    monkeypatch.setenv("AWS_CA_BUNDLE", ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    assert isinstance(Signed("https://byoi.example.test", None).verify, ssl.SSLContext)


# -- the idle server's modules ------------------------------------------------------------------------------

IDLE_PROBE = """
import asyncio, json, sys
from pathlib import Path
import byoi.cli.main  # as `python -m byoi server` does
from byoi.app import create_app
from byoi.config import RegistryConfig, Settings
from byoi.store.db import migrate, migrate_in_child, normalise_url

data = Path(sys.argv[1])
data.mkdir(parents=True)
settings = Settings(data_dir=data, port=0, registries=(RegistryConfig("http://127.0.0.1:9"),))
if sys.argv[2] == "child":
    migrate_in_child(normalise_url(settings.effective_database_url))
else:
    migrate(normalise_url(settings.effective_database_url))
app = create_app(settings)

async def started():
    async with app.router.lifespan_context(app):
        return sorted({m.split(".")[0] for m in sys.modules} & {"alembic", "mako", "jinja2"})

print(json.dumps(asyncio.run(started())))
"""


def idle_modules(tmp_path: Path, how: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", IDLE_PROBE, str(tmp_path / how), how],
        capture_output=True, text=True, timeout=120, env={**os.environ, "BYOI_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_server_started_as_byoi_server_holds_no_migration_code_and_no_templates(tmp_path: Path) -> None:
    assert idle_modules(tmp_path, "child") == []
    # The same start migrating in its own process keeps alembic (and mako) for as long as it runs.
    assert idle_modules(tmp_path, "in-process") == ["alembic", "mako"]


def test_the_schema_heads_read_from_the_files_are_alembics(tmp_path: Path) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert schema_heads() == frozenset(ScriptDirectory.from_config(cfg).get_heads())
    url = f"sqlite+aiosqlite:///{tmp_path / 'byoi.db'}"
    db = Database(url)
    try:
        assert asyncio.run(schema_is_current(db)) is False  # an empty store
        migrate_in_child(url)
        assert asyncio.run(schema_is_current(db)) is True
    finally:
        asyncio.run(db.close())


def test_a_store_the_migration_child_cannot_open_is_a_refusal_naming_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'byoi.db'}"
    with pytest.raises(
        StartupRefused, match=r"the store at sqlite\+aiosqlite:///.*no-such-dir/byoi.db is not reachable"
    ):
        migrate_in_child(url)
