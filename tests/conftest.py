"""Shared fixtures: real Distribution registries (anonymous, Basic, token auth) and real byoi servers."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ci_guard
from tests.support.browser import chromium  # noqa: F401 - the one Chromium of the whole run
from tests.support.console import admin_page, console_admin, console_ext, console_server  # noqa: F401 - the console's
from tests.support.oci import Pusher
from tests.support.processes import (
    LENIENT_INSPECTION,
    STARTED_REGISTRY_PORTS,
    ByoiServer,
    free_port,
    start_registry,
)
from tests.support.token_server import TokenIssuer, serve

REGISTRY_USER, REGISTRY_PASSWORD = "alice", "s3cret-pw"

# pytest-timeout counts fixture setup, and a Docker test's setup may build the test images (debootstrap, apt)
# on a machine that has none cached yet: those tests get more than the suite's default 300 s.
DOCKER_TEST_TIMEOUT = 900


def pytest_configure(config: pytest.Config) -> None:
    ci_guard.pytest_configure(config)  # with CI=true, a skipped Docker or PostgreSQL test fails the run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Modules that drive Chromium run last, whole: Playwright's sync API keeps an event loop running on the main
    # thread while the session's browser is open, and asyncio.run() (the async tests, the inspector's units)
    # refuses to start inside it.
    browser_modules = {getattr(i, "module", None) for i in items if "chromium" in getattr(i, "fixturenames", ())}
    last = [i for i in items if getattr(i, "module", None) in browser_modules]
    items[:] = [i for i in items if getattr(i, "module", None) not in browser_modules] + last
    for item in items:
        # A test that takes the PostgreSQL fixture needs PostgreSQL, marked or not (the CI guard reads the mark).
        if "postgres_url" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.postgres)
        if item.get_closest_marker("docker") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(DOCKER_TEST_TIMEOUT))


@pytest.fixture(scope="session")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("docker-registry"):
        pytest.exit("docker-registry is not installed: run scripts/install.sh", returncode=2)
    return tmp_path_factory.mktemp("registries")


@pytest.fixture(scope="session")
def registry(registry_root: Path) -> Iterator[str]:
    """An anonymous registry: yields its host:port."""
    port = free_port()
    proc = start_registry(registry_root / "anon", port)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="session")
def basic_registry(registry_root: Path) -> Iterator[str]:
    """A registry that wants Basic credentials (htpasswd, bcrypt)."""
    port = free_port()
    htpasswd = registry_root / "htpasswd"
    line = subprocess.run(
        ["htpasswd", "-Bbn", REGISTRY_USER, REGISTRY_PASSWORD], check=True, capture_output=True, text=True
    ).stdout.strip()
    htpasswd.write_text(line + "\n")
    proc = start_registry(
        registry_root / "basic", port, f"auth:\n  htpasswd:\n    realm: byoi-test\n    path: {htpasswd}\n"
    )
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="session")
def token_registry(registry_root: Path) -> Iterator[tuple[str, TokenIssuer]]:
    """A registry using bearer tokens from a token server (Distribution's `auth.token`)."""
    issuer = TokenIssuer(service="byoi-test-registry", issuer="byoi-test-issuer")
    cert = registry_root / "token-cert.pem"
    issuer.write_cert(cert)
    token_port, port = free_port(), free_port()
    server = serve(issuer, token_port, {REGISTRY_USER: REGISTRY_PASSWORD})
    proc = start_registry(
        registry_root / "token",
        port,
        f"auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: byoi-test-registry\n"
        f"    issuer: byoi-test-issuer\n    rootcertbundle: {cert}\n",
    )
    yield f"127.0.0.1:{port}", issuer
    proc.terminate()
    proc.wait()
    server.shutdown()


@pytest.fixture(scope="session")
def pusher(registry: str) -> Pusher:
    return Pusher(f"http://{registry}")


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """Start extra byoi servers with their own data dir; all are stopped after the test."""
    started: list[ByoiServer] = []

    def make(registries: list[str], **kwargs) -> ByoiServer:
        data_dir = kwargs.pop("data_dir", tmp_path / f"byoi-{len(started)}")
        srv = ByoiServer(data_dir=data_dir, registries=registries, **kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def server(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ByoiServer]:
    """One byoi server (SQLite) per test module, using the anonymous registry as its default."""
    srv = ByoiServer(data_dir=tmp_path_factory.mktemp("byoi"), registries=[f"http://{registry}"]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def catalog_server(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ByoiServer]:
    """A `server` shared by the modules that take it as theirs (`server = catalog_server`): the catalog, CLI
    and build modules (test_images, test_versions, test_cli, test_domains_cli, test_builds), whose tests make
    their own uniquely named images, domains and builds and never count what they did not make. A server
    starts in 5-10 s (most of it importing byoi), once here instead of once per module."""
    srv = ByoiServer(data_dir=tmp_path_factory.mktemp("byoi-catalog"), registries=[f"http://{registry}"]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def shared_inspection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/support/inspection-lenient.toml plus one layer cache for the whole run (`cache_dir`), for the
    servers that register the 414 MB stand-in and test something else than inspection (`rstudio_server`, the
    restart tests' servers): its layers are read and indexed once, not once per server. Layers are
    content-addressed, so a shared cache changes no report but its LayersFromCache."""
    root = tmp_path_factory.mktemp("inspection")
    config = root / "inspection-lenient-shared-cache.toml"
    config.write_text(f'cache_dir = "{root / "cache"}"\n' + LENIENT_INSPECTION.read_text())
    return config


@pytest.fixture(scope="session")
def rstudio_server(
    registry: str, shared_inspection: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ByoiServer]:
    """One byoi server for the modules that run sessions and need no server of their own (test_sessions, the
    session proxy's, the launcher's, the console's, the AWS CLI's create-app steps): each makes its own
    domains, and they share the stand-in image registered once (`rstudio_image`), so its 414 MB are pushed and
    inspected once."""
    from tests.support import sessions

    srv = ByoiServer(
        data_dir=tmp_path_factory.mktemp("byoi-rstudio"),
        registries=[f"http://{registry}"],
        env=sessions.SESSION_ENV,
        inspection_config=shared_inspection,
    ).start()
    yield srv
    srv.stop()
    sessions.remove_sessions_of(srv.data_dir)


@pytest.fixture(scope="session")
def rstudio_image(rstudio_server: ByoiServer, registry: str) -> str:
    """The RStudio STAND-IN (a TEST DOUBLE for the rserver binary only) registered on `rstudio_server`, version 1,
    with the app image config `sessions.CONFIG`; its image name."""
    from tests.support import sessions

    sm = rstudio_server.client()
    image = sessions.unique("standin")
    sessions.register(sm, registry, image, "rstudio-standin", "v1")
    sessions.ensure_config(sm)
    return image


@pytest.fixture(scope="session")
def strict(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ByoiServer]:
    """A byoi server with the RStudio contract's default rule levels (an empty inspection config), unlike
    `server`, whose lenient rules let tests register tiny synthetic images. One for the whole run (the
    inspection modules and test_sessions take it): their tests make uniquely named images and layers."""
    data_dir = tmp_path_factory.mktemp("byoi-strict")
    config = data_dir.parent / f"{data_dir.name}-defaults.toml"
    config.write_text("# the contract's default levels\n")
    srv = ByoiServer(
        data_dir=data_dir, registries=[f"http://{registry}"], env={"BYOI_INSPECTION_CONFIG": str(config)}
    ).start()
    yield srv
    srv.stop()


@pytest.fixture
def sm(server: ByoiServer):
    """A boto3 SageMaker client signed with the server's administrator key."""
    return server.client()


@pytest.fixture
def name() -> str:
    """A fresh, valid image name, so tests sharing a server never collide."""
    return "img-" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("BYOI_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("BYOI_TEST_POSTGRES_URL is not set (scripts/services.sh starts PostgreSQL)")
    return url


def fresh_postgres_database(base_url: str) -> str:
    """Create an empty database on the test PostgreSQL server and return its URL."""
    import psycopg

    db = "byoi_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    return base_url.rsplit("/", 1)[0] + "/" + db


ROLE = "arn:aws:iam::000000000000:role/byoi-test"


@pytest.fixture(scope="session", autouse=True)
def _remove_test_registry_tags() -> Iterator[None]:
    """Builds and session tests leave `127.0.0.1:<port>/…` tags of the throwaway test registries in Docker
    Engine; untag those (and only those: the ports this run's registries used) so repeated runs do not fill
    the disk. The cached `byoi-test/*` images are kept: they make the next run fast."""
    yield
    hosts = tuple(f"127.0.0.1:{port}/" for port in STARTED_REGISTRY_PORTS)
    if not hosts or not os.environ.get("BYOI_TEST_DOCKER"):
        return
    try:
        import docker

        client = docker.from_env()
        for image in client.images.list():
            # Tags pushed by builds, and `repo@digest` references left by pulls of pinned versions.
            refs = [*image.tags, *(image.attrs.get("RepoDigests") or [])]
            for ref in [r for r in refs if r.startswith(hosts)]:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(ref)
    except Exception as exc:  # noqa: BLE001 - cleanup must never fail the run
        print(f"note: could not remove test image tags: {exc}")
