"""Two `byoi server` replicas on one PostgreSQL, each with its own data dir, requests alternated between them:
they are one installation (one id in the store, adopted from the first replica's old data dir), each one's
sign-in cookies and presigned URLs work on the other, a session launched by one stays InService through the
other's reconciler passes and is reached through the other's proxy, the same user gets the same home on both,
and a replica killed with SIGKILL in the middle of a build and a launch leaves both to the other: finished once,
nothing run twice.

The replicas share what the docs (docs/operations.md, "Several replicas") say they must: the database, the
master key (BYOI_MASTER_KEY), the homes root (BYOI_SESSION_HOMES_ROOT; session sockets sit beside it) and the
builds directory (BYOI_BUILD_DIR). RStudio Server is the STAND-IN image (tests/images/rstudio-standin), a TEST
DOUBLE for the IDE binary only; PostgreSQL, Docker Engine, the registry, the containers, the proxy and R are real.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from cryptography.fernet import Fernet

from tests.conftest import fresh_postgres_database
from tests.support import sessions as s
from tests.support.docker_images import (
    BASE_IMAGE,
    containers,
    docker_available,
    docker_client,
    ensure_base_image,
    push_test_image,
)
from tests.support.processes import ByoiServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.docker,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)"),
]
RECONCILE_SECONDS = 1.0  # s.SESSION_ENV: each replica compares records with containers every second


class Pair:
    def __init__(
        self, a: ByoiServer, b: ByoiServer, database_url: str, installation: str, root: Path, image: str
    ) -> None:
        self.a, self.b, self.database_url, self.installation, self.root = a, b, database_url, installation, root
        self.image = image  # the stand-in, pushed to the registry as sessions/<image>:v1
        self.sm_a, self.sm_b = a.client(), b.client()
        self.ext_a, self.ext_b = s.extension(a), s.extension(b)

    def row(self, sql: str, *args: Any) -> Any:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, args).fetchone()


@pytest.fixture(scope="module")
def pair(postgres_url: str, registry: str, shared_inspection: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("replicas")
    database_url = fresh_postgres_database(postgres_url)
    installation = uuid.uuid4().hex[:16]
    (root / "a").mkdir()
    (root / "a" / "installation-id").write_text(installation + "\n")  # replica A was a single server before
    env = {
        **s.SESSION_ENV,
        "BYOI_MASTER_KEY": Fernet.generate_key().decode(),
        "BYOI_SESSION_HOMES_ROOT": str(root / "shared" / "homes"),
        "BYOI_BUILD_DIR": str(root / "shared" / "builds"),
    }

    def replica(name: str) -> ByoiServer:
        return ByoiServer(
            data_dir=root / name,
            registries=[f"http://{registry}"],
            database_url=database_url,
            env=env,
            inspection_config=shared_inspection,
        )

    # The stand-in is pushed while the replicas start (A first: it adopts its old id before B makes one).
    image = s.unique("standin")
    a, b = replica("a"), replica("b")
    try:
        with ThreadPoolExecutor(1) as pool:
            pushed = pool.submit(push_test_image, "rstudio-standin", registry, f"sessions/{image}", "v1")
            a.start()
            b.start()
            pushed.result()
        yield Pair(a, b, database_url, installation, root, image)
    finally:
        for srv in (a, b):
            if srv.proc and srv.proc.poll() is None:
                os.kill(srv.proc.pid, signal.SIGCONT)  # in case a test stopped it
            srv.stop()
        s.remove_sessions_of(root / "a", database_url=database_url)


@pytest.fixture(scope="module")
def world(pair: Pair, registry: str) -> dict[str, Any]:
    """The stand-in registered and a domain with two signed-in users, each step on the other replica."""
    image = pair.image
    pair.sm_a.create_image(ImageName=image, RoleArn=s.ROLE)
    pair.sm_b.create_image_version(ImageName=image, BaseImage=f"{registry}/sessions/{image}:v1")
    pair.sm_a.get_waiter("image_version_created").wait(
        ImageName=image, Version=1, WaiterConfig={"Delay": 0.2, "MaxAttempts": 600}
    )
    s.ensure_config(pair.sm_b)
    domain = s.rstudio_domain(pair.sm_a, [{"ImageName": image, "AppImageConfigName": s.CONFIG}])
    for user, sm, ext in (("alice", pair.sm_b, pair.ext_a), ("bob", pair.sm_a, pair.ext_b)):
        sm.create_user_profile(DomainId=domain, UserProfileName=user)
        ext.create_principal(Name=f"{domain}-{user}", Role="user", DomainId=domain, UserProfileName=user)
    return {"image": image, "image_arn": pair.sm_b.describe_image(ImageName=image)["ImageArn"], "domain": domain}


def create_app(sm: Any, world: dict[str, Any], user: str, name: str) -> None:
    sm.create_app(
        DomainId=world["domain"],
        UserProfileName=user,
        AppType="RSessionGateway",
        AppName=name,
        ResourceSpec={"SageMakerImageArn": world["image_arn"]},
    )


def sign_in(presigned_url: str, on: ByoiServer) -> str:
    """Follow a presigned URL (made by whichever replica) on replica `on`; the session cookie it sets."""
    path = presigned_url.split("/auth/", 1)[1]
    answer = httpx.get(f"{on.endpoint}/auth/{path}", follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return str(answer.cookies["byoi_session"])


def session_url(server: ByoiServer, session_path_url: str) -> str:
    """A session's URL (as DescribeAppProgress gives it, on some replica's base) on replica `server`."""
    return server.endpoint + "/sessions/" + session_path_url.split("/sessions/", 1)[1]


def test_replicas_are_one_installation_and_honour_each_others_sign_ins(pair: Pair, world: dict[str, Any]) -> None:
    ids = {pair.ext_a.get_server_info()["InstallationId"], pair.ext_b.get_server_info()["InstallationId"]}
    assert ids == {pair.installation}  # the id of A's old data dir, adopted by the store, read by B
    assert not (pair.root / "b" / "installation-id").exists()  # B's data dir holds no identity of its own

    # A presigned URL made by A signs a browser in on B, once: the token is single-use on every replica.
    url = pair.sm_a.create_presigned_domain_url(DomainId=world["domain"], UserProfileName="bob")["AuthorizedUrl"]
    cookie = sign_in(url, pair.b)
    again = httpx.get(pair.a.endpoint + "/auth/" + url.split("/auth/", 1)[1], follow_redirects=False)
    assert again.status_code != 303 and "byoi_session" not in again.cookies
    # B's cookie is a session on A too (the launcher page of the domain, for signed-in users only).
    for srv in (pair.a, pair.b):
        page = httpx.get(f"{srv.endpoint}/rstudio/default/", cookies={"byoi_session": cookie}, follow_redirects=False)
        assert page.status_code == 200, (srv.endpoint, page.status_code, page.text[:300])

    # A third replica started with another master key would fail every signed request: it refuses to start.
    stray = ByoiServer(
        data_dir=pair.root / "c",
        registries=pair.a.registries,
        database_url=pair.database_url,
        env={**pair.a.env, "BYOI_MASTER_KEY": Fernet.generate_key().decode()},
    )
    try:
        with pytest.raises(RuntimeError, match="master key does not open the secrets in its store") as refused:
            stray.start()
        # Said in one line, not inside uvicorn's traceback of the start-up; the server exits with status 3.
        assert "byoi server refuses to start: this server's master key" in str(refused.value)
        assert "Traceback" not in str(refused.value)
        assert stray.proc is not None and stray.proc.wait(10) == 3
    finally:
        stray.stop()


def test_a_session_launched_by_one_replica_lives_on_and_is_served_by_the_other(
    pair: Pair, world: dict[str, Any]
) -> None:
    domain = world["domain"]
    create_app(pair.sm_a, world, "alice", "rs-a")
    described = s.wait_app(pair.sm_b, domain, "alice", "rs-a", ("InService", "Failed"), timeout=90)
    assert described["Status"] == "InService", described
    # More than one pass of B's reconciler (and A's): the session is B's installation's as much as A's.
    time.sleep(3.5 * RECONCILE_SECONDS)
    for sm in (pair.sm_b, pair.sm_a):
        assert s.app_status(sm, domain, "alice", "rs-a")["Status"] == "InService"
    session_id = pair.row("SELECT session_id FROM apps WHERE app_name = %s", "rs-a")[0]
    running = [c for c in s.containers_of(pair.installation) if c.labels.get("byoi.session-id") == session_id]
    assert [c.status for c in running] == ["running"]
    assert "container is gone" not in (pair.b.data_dir / "server.log").read_text()  # B never took it for lost

    # B's proxy reaches the session A launched, with the cookie of a sign-in made by A on A.
    url = pair.sm_a.create_presigned_domain_url(DomainId=domain, UserProfileName="alice")["AuthorizedUrl"]
    cookie_a = sign_in(url, pair.a)
    progress = s.progress(pair.ext_b, domain, "alice", "rs-a")
    headers = {"Cookie": f"byoi_session={cookie_a}"}
    code = "writeLines('written through B', '~/replica.txt'); 40 + 2"
    assert s.evaluate(session_url(pair.b, progress["Url"]), code, headers=headers) == 42
    with httpx.Client(cookies={"byoi_session": cookie_a}, follow_redirects=True, timeout=30) as browser:
        page = browser.get(session_url(pair.b, progress["Url"]))  # rserver's sign-in cookie dance, then the IDE
    assert page.status_code == 200 and f"/sessions/{session_id}/" in str(page.url), (page.url, page.text[:300])

    # The same user's second session, asked of B, has the same home (one homes root for both replicas).
    create_app(pair.sm_b, world, "alice", "rs-b")
    second = s.wait_app(pair.sm_a, domain, "alice", "rs-b", ("InService", "Failed"), timeout=90)
    assert second["Status"] == "InService", second
    url_b = s.progress(pair.ext_a, domain, "alice", "rs-b")["Url"]
    assert s.evaluate(session_url(pair.a, url_b), "readLines('~/replica.txt')", headers=headers) == "written through B"
    homes = list((pair.root / "shared" / "homes" / domain).iterdir())
    assert [h.name.split("-")[0] for h in homes] == ["alice"]
    assert not (pair.a.data_dir / "homes").exists() and not (pair.b.data_dir / "homes").exists()


class Watch:
    """Samples Docker Engine every 0.2 s in a thread: the build step's containers (by a marker in their command)
    and the containers of one session, so "never two at once" is seen, not just the end state."""

    def __init__(self, marker: str) -> None:
        self.marker, self.session_id = marker, ""
        self.steps: set[str] = set()
        self.most_steps = self.most_sessions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        api = docker_client().api
        while not self._stop.is_set():
            live = api.containers()  # running ones, as listed (no inspect of each)
            steps = [c["Id"] for c in live if self.marker in (c.get("Command") or "")]
            self.steps |= set(steps)
            self.most_steps = max(self.most_steps, len(steps))
            if self.session_id:
                mine = [c for c in live if (c.get("Labels") or {}).get("byoi.session-id") == self.session_id]
                self.most_sessions = max(self.most_sessions, len(mine))
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_sigkill_during_a_build_and_a_launch_leaves_both_to_the_other_replica(
    pair: Pair, world: dict[str, Any], registry: str, tmp_path: Path
) -> None:
    from byoi.cli.builds import Signed, upload_context

    ensure_base_image()
    domain, repo = world["domain"], s.unique("replica-build")
    marker = f"sleep 5 # {repo}"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f'FROM {BASE_IMAGE}\nRUN echo be""gun {repo} && {marker}\n')
    pair.sm_a.create_image(ImageName=repo, RoleArn=s.ROLE)
    watch = Watch(marker)
    b_pid = pair.b.proc.pid
    try:
        # A takes both: B is paused (SIGSTOP) while A is asked, until A holds each lease, so the kill below hits
        # work A was running. The context goes to A; B will find it in the shared builds directory.
        pair.a.session()
        context_id, dockerfile = upload_context(Signed(pair.a.endpoint, "byoi"), ctx, None)
        os.kill(b_pid, signal.SIGSTOP)
        try:
            build_id = pair.ext_a.start_image_build(
                ContextId=context_id, Dockerfile=dockerfile, Repository=repo, ImageName=repo
            )["BuildId"]
            wait_for(lambda: pair.row("SELECT lease_owner FROM image_builds WHERE build_id = %s", build_id)[0])
        finally:
            os.kill(b_pid, signal.SIGCONT)
        wait_for(lambda: watch.steps, timeout=60)  # the RUN step runs, on A's build
        os.kill(b_pid, signal.SIGSTOP)
        try:
            create_app(pair.sm_a, world, "bob", "rs-kill")
            watch.session_id = wait_for(
                lambda: pair.row(
                    "SELECT session_id FROM apps WHERE app_name = %s AND lease_owner IS NOT NULL", "rs-kill"
                )
            )[0]
        finally:
            os.kill(b_pid, signal.SIGCONT)
        # A launch in progress: its container made, RStudio perhaps not answering yet.
        wait_for(lambda: [c for c in containers() if c.labels.get("byoi.session-id") == watch.session_id], timeout=60)
        assert pair.ext_b.describe_image_build(BuildId=build_id)["BuildStatus"] == "BUILDING"
        killed_at = time.monotonic()
        pair.a.kill()

        # B finishes both once A's leases run out.
        described = s.wait_app(pair.sm_b, domain, "bob", "rs-kill", ("InService", "Failed"), timeout=90)
        assert described["Status"] == "InService", described
        build = wait_for(
            lambda: (
                (d := pair.ext_b.describe_image_build(BuildId=build_id))["BuildStatus"]
                in ("SUCCEEDED", "FAILED", "STOPPED")
                and d
            ),
            timeout=120,
        )
        took = time.monotonic() - killed_at
    finally:
        watch.stop()
    assert build["BuildStatus"] == "SUCCEEDED", build.get("FailureReason")

    # Each was claimed twice (A, then B) and done once.
    assert pair.row("SELECT attempts FROM apps WHERE session_id = %s", watch.session_id)[0] == 2
    log = httpx.get(
        pair.b.endpoint + f"/byoi/builds/{build_id}/log",
        headers=Signed(pair.b.endpoint, "byoi").headers("GET", f"/byoi/builds/{build_id}/log"),
    )
    assert log.status_code == 200 and log.text.count("restarted after the server stopped") == 1, log.text[-2000:]
    assert len(watch.steps) == 2 and watch.most_steps == 1, (watch.steps, watch.most_steps)  # A's, then B's
    versions = pair.sm_b.list_image_versions(ImageName=repo)["ImageVersions"]
    assert [v["Version"] for v in versions] == [1]  # registered once
    mine = [c for c in s.containers_of(pair.installation) if c.labels.get("byoi.session-id") == watch.session_id]
    assert [c.status for c in mine] == ["running"] and watch.most_sessions == 1

    # Every resource is terminal or resumable, as the survivor sees it.
    apps = pair.sm_b.list_apps(DomainIdEquals=domain)["Apps"]
    assert {a["Status"] for a in apps} <= {"InService", "Failed", "Deleted"}, apps
    builds = pair.ext_b.list_image_builds()["ImageBuilds"]
    assert {b["BuildStatus"] for b in builds} <= {"SUCCEEDED", "FAILED", "STOPPED"}, builds
    print(f"after the SIGKILL, B finished the launch and the build in {took:.1f} s")


def wait_for(probe: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _time_it() -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"\n{time.monotonic() - started:.1f} s")
