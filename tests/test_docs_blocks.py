"""The command blocks README.md, docs/*.md and examples/README.md mark `<!-- runnable -->` run as a reader would
type them, against a real byoi server, the real registry and Docker Engine, so the docs cannot drift from the
code. The convention and what the test substitutes are in docs/testing.md ("Runnable command blocks").

Each page gets its own working directory and HOME; its blocks run in order, sharing exported variables. Pages
whose blocks cannot collide run one after another on one server (SHARED_SERVERS), the others on their own.
Where the docs need an RStudio image, the RStudio Server STAND-IN (tests/images/rstudio-standin, a TEST DOUBLE
for the IDE binary only) takes its place: `rstudio.tar` in the working directory is an OCI archive of it, on
which the README's journey opens a session. `my-image/`, a build context the docs only build and register, is
FROM a tiny image that has what the RStudio image contract asks for. Blocks tagged `online` need a public
registry: tests/test_rocker_journey.py runs them with the real rocker/rstudio image.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support import docblocks
from tests.support import sessions as s
from tests.support.docblocks import DOC_REGISTRY, REPO, BlockFailed, DocBlockError, PageRun
from tests.support.docker_images import build_test_image, docker_available, docker_client
from tests.support.layers import compatible_layer, push_image
from tests.support.oci import Pusher
from tests.support.processes import ByoiServer
from tests.test_rocker_journey import check_socket_and_report

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "examples" / "README.md"]

# The stand-in ignores SIGTERM (tests/images/rstudio-standin/README.md): stopping a session waits this long.
SERVER_ENV = {"BYOI_SESSION_STOP_TIMEOUT": "1"}


def blocks_of(page: Path) -> list[docblocks.Block]:
    return docblocks.collect(REPO, [page])


def has_blocks(page: Path) -> bool:
    try:
        return bool(blocks_of(page))
    except DocBlockError:
        return True  # its test fails, saying what is wrong and where


MARKED = [p for p in PAGES if has_blocks(p)]


# -- the markup (no server) --------------------------------------------------------------------------------


def parse(text: str) -> list[docblocks.Block]:
    return docblocks.parse(textwrap.dedent(text), Path("page.md"), "page.md")


def test_a_marked_block_is_found_with_its_line_tags_and_expected_output():
    blocks = parse(
        """\
        # Page

        ```bash
        echo "an unmarked block is left alone"
        ```

        <!-- runnable: online -->
        ```bash
        byoi versions create rstudio 127.0.0.1:5000/rstudio:4.4.2
        #> CREATED: 127.0.0.1:5000/rstudio@sha256:…
        ```

        1. In a list:

           <!-- runnable -->
           ```python
           if True:
               print("indented")
           #> indented
           ```
        """
    )
    assert [(b.where, b.lang, b.tags) for b in blocks] == [
        ("page.md:8", "bash", frozenset({"online"})),
        ("page.md:16", "python", frozenset()),
    ]
    assert blocks[0].expected == (docblocks.Expected(10, "CREATED: 127.0.0.1:5000/rstudio@sha256:…"),)
    assert blocks[1].code == 'if True:\n    print("indented")\n#> indented\n'  # the list's indent is removed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- runnable -->\ntext\n", "page.md:1: <!-- runnable --> must be right before a fenced code block"),
        ("<!-- runnable: offline -->\n```bash\ntrue\n```\n", "page.md:1: unknown tag offline"),
        ("<!-- runnable -->\n```ruby\nputs 1\n```\n", "page.md:2: a runnable block must be bash, sh or python"),
        ("<!-- runable -->\n```bash\ntrue\n```\n", "page.md:1: '<!-- runable -->' is not a runnable marker"),
        ("<!-- runnable -->\n```bash\ntrue\n", "page.md:2: the fenced block opened here is never closed"),
    ],
)
def test_bad_markup_is_an_error_naming_the_page_and_line(text, message):
    with pytest.raises(DocBlockError) as caught:
        parse(text)
    assert str(caught.value).startswith(message)


def test_a_marker_shown_inside_an_unmarked_block_is_only_an_example():
    assert parse("````markdown\n<!-- runnable -->\n```bash\nfalse\n```\n````\n") == []


@pytest.mark.parametrize(
    ("shown", "printed", "matches"),
    [
        ("CREATED: 127.0.0.1:5000/rstudio@sha256:…", "CREATED: 127.0.0.1:5000/rstudio@sha256:1b2f", True),
        ('"Images": []', '    "Images": []', True),  # indentation is not compared
        ("CREATED: …", "CREATE_FAILED: no such tag", False),
        ("analysis: Deleted", "analysis: Deleted (after 12 s)", False),  # a whole line, not a prefix
    ],
)
def test_a_shown_line_matches_a_printed_line_with_the_ellipsis_as_any_text(shown, printed, matches):
    assert docblocks.Expected(1, shown).matches(printed) is matches


def page_run(tmp_path: Path, **substitutions: str) -> PageRun:
    return PageRun(tmp_path, docblocks.environment(tmp_path, {}), substitutions, timeout=20)


def test_a_failing_command_is_named_by_its_page_line(tmp_path):
    (ok, failing) = parse(
        "<!-- runnable -->\n```bash\nexport GREETING=hello\n```\n\n<!-- runnable -->\n```bash\n"
        'echo "$GREETING"\nfalse\necho never\n```\n'
    )
    run = page_run(tmp_path)
    docblocks.run_block(ok, run)
    with pytest.raises(BlockFailed) as caught:
        docblocks.run_block(failing, run)
    message = str(caught.value)
    assert message.startswith("page.md:9: `false` exited 1 (the bash block at page.md:7)"), message
    assert "hello" in message and "never" not in message.split("--- its output ---")[1]


def test_output_the_page_shows_but_the_block_does_not_print_fails_naming_the_shown_line(tmp_path):
    (block,) = parse("<!-- runnable -->\n```bash\necho 'CREATE_FAILED: nope'\n#> CREATED: 127.0.0.1:5000/…\n```\n")
    with pytest.raises(BlockFailed) as caught:
        docblocks.run_block(block, page_run(tmp_path, **{DOC_REGISTRY: "127.0.0.1:41234"}))
    assert str(caught.value).startswith(
        "page.md:4: the page shows the output line 'CREATED: 127.0.0.1:41234/…', which the bash block at page.md:2 "
        "did not print"
    )


def test_a_python_traceback_names_the_page_line(tmp_path):
    (block,) = parse("# Page\n\n<!-- runnable -->\n```python\nx = 1\nraise SystemExit(f'bad {x}')\n```\n")
    with pytest.raises(BlockFailed) as caught:
        docblocks.run_block(block, page_run(tmp_path))
    assert "bad 1" in str(caught.value)
    (plain,) = parse("<!-- runnable -->\n```python\n\n1 / 0\n```\n")
    with pytest.raises(BlockFailed) as caught:
        docblocks.run_block(plain, page_run(tmp_path))
    assert re.search(r'File ".*page\.md\.py", line 4', str(caught.value)), str(caught.value)


def test_the_pages_mark_the_journey():
    """A marker that stopped parsing would make a page's blocks silently stop running: the journey's are here."""
    readme = blocks_of(REPO / "README.md")
    use_it = REPO.joinpath("README.md").read_text().split("## Use it", 1)[1].split("\n## ", 1)[0]
    assert len(readme) >= 8 and all(b.code.splitlines()[0] in use_it for b in readme)
    commands = "".join(b.code for b in readme)
    for step in ("skopeo copy", "byoi versions create", "byoi attach", "byoi launch", "byoi sessions url"):
        assert step in commands
    assert {b.lang for b in readme} == {"bash", "python"}
    assert [b.tags for b in readme if b.tags] == [frozenset({"online"}), frozenset({"air-gapped"})]
    assert {p.relative_to(REPO).as_posix() for p in MARKED} >= {"README.md", "examples/README.md", "docs/build.md"}


def test_the_pages_that_share_a_server_run_on_it_in_order():
    """A page named in SHARED_SERVERS that is no longer marked, or named twice, or out of the order its tests run
    in (the first page of a server is the one that sees its catalog empty), would share a server by mistake."""
    named = [page for group in SHARED_SERVERS for page in group]
    marked = [name_of(p) for p in MARKED]
    assert len(named) == len(set(named)) and set(named) <= set(marked), (named, marked)
    for group in SHARED_SERVERS:
        assert [p for p in marked if p in group] == list(group), group


# -- the pages, against a real server ----------------------------------------------------------------------

# Pages that run on one byoi server, one after another in this order; a marked page not named here gets a server
# of its own. A page that shows the whole catalog comes first on its server (README.md: `"Images": []`,
# docs/cli.md: `['cli-demo']`), and two pages that create the same image do not share one (README.md and
# examples/README.md make `rstudio`, docs/build.md and docs/compatibility.md `team-r`). Starting a server takes
# seconds of imports: the next one is started in the background while a page runs.
SHARED_SERVERS = (("README.md", "docs/build.md"), ("docs/cli.md", "docs/compatibility.md", "examples/README.md"))


def name_of(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def server_group(page: Path) -> tuple[str, ...]:
    return next((group for group in SHARED_SERVERS if name_of(page) in group), (name_of(page),))


class PageServers:
    """The byoi servers the module's pages run on, each started once, as `byoi up` runs one (no inspection
    config: the contract's default rules), and stopped at the end of the module."""

    def __init__(self, root: Path, registry: str, pages: list[Path]) -> None:
        self.root, self.registry = root, registry
        self.groups = list(dict.fromkeys(server_group(p) for p in pages))  # in the order their pages run
        self.starting: dict[tuple[str, ...], Future[ByoiServer]] = {}
        self.ran: dict[tuple[str, ...], list[str]] = {}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="docs-server")

    def _start(self, group: tuple[str, ...]) -> Future[ByoiServer]:
        if group not in self.starting:
            data_dir = self.root / f"server-{len(self.starting) + 1}" / "byoi"
            srv = ByoiServer(
                data_dir=data_dir, registries=[f"http://{self.registry}"], inspection_config=None, env=SERVER_ENV
            )
            self.starting[group] = self.pool.submit(srv.start)
        return self.starting[group]

    def for_page(self, page: Path) -> tuple[ByoiServer, list[str]]:
        """The page's server, and the pages that ran on it before this one."""
        group = server_group(page)
        srv = self._start(group).result()
        later = self.groups[self.groups.index(group) + 1 :] if group in self.groups else []
        if later:
            self._start(later[0])  # in the background, while this page runs
        before = list(self.ran.setdefault(group, []))
        self.ran[group].append(name_of(page))
        return srv, before

    def stop(self) -> None:
        self.pool.shutdown(wait=True)
        for started in self.starting.values():
            if started.exception() is None:
                srv = started.result()
                srv.stop()
                s.remove_sessions_of(srv.data_dir)


@pytest.fixture(scope="module")
def page_servers(registry: str, tmp_path_factory: pytest.TempPathFactory, request) -> Iterator[PageServers]:
    selected = [
        item.callspec.params["page"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "page" in item.callspec.params
    ]
    servers = PageServers(tmp_path_factory.mktemp("docs-servers"), registry, selected)
    yield servers
    servers.stop()


def oci_archive(name: str) -> Path:
    """An OCI archive of a test image, made as the air-gapped steps make one of rocker's image
    (`skopeo copy … oci-archive:`). Compressing hundreds of MB takes half a minute, so it is kept in
    ~/.cache/byoi-tests/ under the image's id, like the test images Docker Engine keeps."""
    tag = build_test_image(name)
    image_id = docker_client().images.get(tag).id.removeprefix("sha256:")[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "byoi-tests"
    archive = cache / f"{name}-{image_id}.oci.tar"
    if not archive.exists():
        cache.mkdir(parents=True, exist_ok=True)
        for stale in cache.glob(f"{name}-{'?' * 16}.oci.tar"):
            stale.unlink(missing_ok=True)
        partial = archive.with_name(f"{archive.name}.{os.getpid()}.partial")  # another run may be making it too
        subprocess.run(
            ["skopeo", "copy", "--quiet", f"docker-daemon:{tag}", f"oci-archive:{partial}"],
            check=True,
            capture_output=True,
            timeout=600,
        )
        partial.rename(archive)
    return archive


@pytest.fixture(scope="module")
def standin_archive() -> Path:
    """The RStudio Server STAND-IN as `rstudio.tar`: the README's journey opens a session on it."""
    return oci_archive("rstudio-standin")


@pytest.fixture(scope="module")
def contract_image(registry: str) -> str:
    """A tiny image that has everything the RStudio image contract asks for (tests/support/layers.py: a real
    image of synthetic files), pushed to the registry over its HTTP API in a second. Where a page only needs
    an image byoi can build and register, a build FROM it takes a second, where one FROM the 414 MB stand-in
    takes a minute or two of Docker recompressing and pushing the stand-in's layers."""
    push_image(Pusher(f"http://{registry}"), "docs/rstudio-contract", "v1", [compatible_layer()])
    return f"{registry}/docs/rstudio-contract:v1"


def push_archive(archive: Path, target: str) -> None:
    """Push an OCI archive as it is (its compressed layers unchanged) to the (loopback, plain HTTP) registry."""
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci-archive:{archive}", f"docker://{target}"],
        check=True,
        capture_output=True,
        timeout=600,
    )


def prepare(page: Path, workdir: Path, registry: str, request: pytest.FixtureRequest) -> None:
    """What the page's blocks take as given, made from the test images when a block names it."""
    code = "".join(b.code for b in blocks_of(page))
    (workdir / "examples").symlink_to(REPO / "examples")  # blocks run as from the root of a clone
    if "rstudio.tar" in code:
        (workdir / "rstudio.tar").symlink_to(request.getfixturevalue("standin_archive"))
    if "./my-image" in code:  # a build context of the user's: an RStudio image plus what the page passes to it
        (workdir / "my-image").mkdir()
        (workdir / "my-image" / "Dockerfile").write_text(
            f"FROM {request.getfixturevalue('contract_image')}\nARG R_PACKAGES\nLABEL org.byoi.r-packages=$R_PACKAGES\n"
        )
    if f"{DOC_REGISTRY}/team/plain-r:v1" in code:  # an image with R but no RStudio Server
        push_archive(oci_archive("plain-r"), f"{registry}/team/plain-r:v1")


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)")
@pytest.mark.parametrize("page", MARKED, ids=[name_of(p) for p in MARKED])
def test_the_marked_blocks_of_the_page_run(page, page_servers, registry, tmp_path, request):
    """The page's blocks run in order in their own working directory and HOME, whose `~/.local/share/byoi` is
    the data dir of the page's server."""
    docker_client()
    srv, before = page_servers.for_page(page)
    home, workdir = tmp_path / "home", tmp_path / "work"
    (home / ".local" / "share").mkdir(parents=True)
    (home / ".local" / "share" / "byoi").symlink_to(srv.data_dir)
    workdir.mkdir()
    prepare(page, workdir, registry, request)
    run = docblocks.against_server(workdir, home, srv.endpoint, srv.credentials_file, registry)
    landed = False
    for block in blocks_of(page):
        if "online" in block.tags:
            continue
        try:
            output = docblocks.run_block(block, run).output
        except BlockFailed as failed:
            if before:  # what ran on that server first may be what this page trips on (SHARED_SERVERS)
                raise BlockFailed(f"{failed}\n(its server ran {', '.join(before)} before this page)") from None
            raise
        for link in docblocks.presigned_links(output):  # the journey ends in RStudio: the link lands on it
            answer = httpx.get(link, follow_redirects=True, timeout=30)
            assert answer.status_code == 200 and "/sessions/" in str(answer.url), (block.where, answer.url)
            assert "RStudio Server (byoi test stand-in)" in answer.text, block.where
            check_socket_and_report(srv)  # as the rocker journey checks it on the real image
            landed = True
    assert landed or page != REPO / "README.md", "the README's journey printed no sign-in link to a session"
