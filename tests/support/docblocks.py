"""Runnable command blocks in the documentation: find them, run them, and compare what they print.

A fenced block is runnable when the line right before its opening fence is the HTML comment
`<!-- runnable -->`, which rendered Markdown does not show. A tag after a colon says where it can run:

    <!-- runnable -->               anywhere byoi runs: tests/test_docs_blocks.py runs it here
    <!-- runnable: online -->       needs a public registry: only tests/test_rocker_journey.py runs it
    <!-- runnable: air-gapped -->   the way in without one (an image carried as a file): the docs test runs it

Blocks are `bash`/`sh` (run with `bash -euo pipefail`) or `python` (the project's Python). In a block, a line
`#> text` is output the page shows: the block's output (stdout and stderr together) must have lines matching
each of them, in order, with `…` standing for any text. The blocks of one page run one after another in one
working directory, with one server: exported variables and the working directory carry over to the next block.
A block that fails, or does not print what its page shows, raises BlockFailed naming the page and the line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TAGS = frozenset({"online", "air-gapped"})
LANGUAGES = {"bash": "bash", "sh": "bash", "python": "python"}
MARKER = re.compile(r"^\s*<!--\s*runnable\s*(?::\s*(?P<tags>[^>]*?))?\s*-->\s*$")
# A comment that looks like a marker but is not one is an error: a typo must not silently skip a block.
LOOKS_LIKE_MARKER = re.compile(r"^\s*<!--.*\brun+[a-z]*ble?\b", re.IGNORECASE | re.MULTILINE)
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
EXPECTED = re.compile(r"^\s*#>(?: (?P<text>.*)|$)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PRESIGNED = re.compile(r"https?://[\w.:-]+/auth/presigned\?token=[\w-]+")
# The addresses the pages name: `byoi up`'s registry and API. A run substitutes its own for them.
DOC_REGISTRY, DOC_ENDPOINT = "127.0.0.1:5000", "127.0.0.1:8080"
FAILED = re.compile(r"^##docblocks-failed line=(?P<line>\d+) rc=(?P<rc>\d+) cmd=(?P<cmd>.*)$", re.MULTILINE)


class DocBlockError(ValueError):
    """A page's markup is wrong: a marker with no block after it, an unknown tag or language."""


class BlockFailed(AssertionError):
    """A runnable block exited non-zero, timed out, or did not print a line its page shows."""


@dataclass(frozen=True)
class Expected:
    line: int  # its line in the page
    text: str

    def matches(self, output_line: str) -> bool:
        pattern = ".*".join(re.escape(part) for part in self.text.strip().split("…"))
        return re.fullmatch(pattern, output_line.strip()) is not None


@dataclass(frozen=True)
class Block:
    page: Path
    name: str  # the page's path as the failure messages name it (README.md, docs/build.md)
    line: int  # the line of the opening fence, 1-based
    lang: str
    code: str
    tags: frozenset[str]
    expected: tuple[Expected, ...]

    @property
    def where(self) -> str:
        return f"{self.name}:{self.line}"


def parse(text: str, page: Path, name: str) -> list[Block]:
    """The runnable blocks of one Markdown page, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:  # a block that is not marked: skip it whole, so examples of the markup inside are not markers
            i = _closing_fence(lines, i, fence, name) + 1
            continue
        marker = MARKER.match(lines[i])
        if marker is None:
            if LOOKS_LIKE_MARKER.search(lines[i]):
                raise DocBlockError(
                    f"{name}:{i + 1}: {lines[i].strip()!r} is not a runnable marker: write "
                    "<!-- runnable --> or <!-- runnable: TAG --> with TAG one of " + ", ".join(sorted(TAGS))
                )
            i += 1
            continue
        tags = frozenset((marker["tags"] or "").replace(",", " ").split())
        if tags - TAGS:
            raise DocBlockError(
                f"{name}:{i + 1}: unknown tag {', '.join(sorted(tags - TAGS))} in {lines[i].strip()}"
                f" (known: {', '.join(sorted(TAGS))})"
            )
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None:
            raise DocBlockError(f"{name}:{i + 1}: {lines[i].strip()} must be right before a fenced code block")
        words = fence["info"].split()
        lang = words[0] if words else ""
        if lang not in LANGUAGES:
            raise DocBlockError(f"{name}:{i + 2}: a runnable block must be bash, sh or python, not {lang or 'unnamed'}")
        end = _closing_fence(lines, i + 1, fence, name)
        indent = len(fence["indent"])
        body = [line[indent:] if not line[:indent].strip() else line.lstrip() for line in lines[i + 2 : end]]
        expected = tuple(
            Expected(i + 3 + n, m["text"] or "") for n, line in enumerate(body) if (m := EXPECTED.match(line))
        )
        blocks.append(Block(page, name, i + 2, LANGUAGES[lang], "\n".join(body) + "\n", tags, expected))
        i = end + 1
    return blocks


def _closing_fence(lines: list[str], start: int, fence: re.Match[str], name: str) -> int:
    char, size = fence["fence"][0], len(fence["fence"])
    for j in range(start + 1, len(lines)):
        close = FENCE.match(lines[j])
        if close and close["fence"][0] == char and len(close["fence"]) >= size and not close["info"].strip():
            return j
    raise DocBlockError(f"{name}:{start + 1}: the fenced block opened here is never closed")


def collect(root: Path, pages: Iterable[Path]) -> list[Block]:
    blocks: list[Block] = []
    for page in pages:
        blocks += parse(page.read_text(encoding="utf-8"), page, page.relative_to(root).as_posix())
    return blocks


def substitute(text: str, substitutions: Mapping[str, str]) -> str:
    for old in sorted(substitutions, key=len, reverse=True):
        text = text.replace(old, substitutions[old])
    return text


@dataclass
class PageRun:
    """Where a page's blocks run: one working directory, the environment, what the page's addresses become."""

    workdir: Path
    env: dict[str, str]
    substitutions: dict[str, str]
    timeout: float = 300.0

    @property
    def state(self) -> Path:
        return self.workdir / ".docblocks" / "env.sh"

    @property
    def cwd_file(self) -> Path:
        return self.workdir / ".docblocks" / "cwd"


@dataclass(frozen=True)
class BlockRun:
    block: Block
    output: str
    seconds: float


def run_block(block: Block, run: PageRun) -> BlockRun:
    """Run one block where the page's earlier blocks left off; BlockFailed when it fails or prints too little."""
    (run.workdir / ".docblocks").mkdir(parents=True, exist_ok=True)
    if not run.cwd_file.exists():
        run.cwd_file.write_text(str(run.workdir))
        run.state.write_text("")
    script = _script(block, run)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(script)],
        cwd=run.workdir,
        env=run.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a timeout stops everything it started
    )
    try:
        raw, _ = proc.communicate(timeout=run.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raw, _ = proc.communicate()
        raise BlockFailed(
            f"{block.where}: the {block.lang} block did not finish within {run.timeout:.0f} s\n"
            + _show(block, run, _clean(raw))
        ) from None
    output = _clean(raw)
    if proc.returncode != 0:
        failed = FAILED.search(output)
        where = f"{block.name}:{failed['line']}" if failed else block.where
        what = f"`{failed['cmd']}` exited {failed['rc']}" if failed else f"exited {proc.returncode}"
        raise BlockFailed(f"{where}: {what} (the {block.lang} block at {block.where})\n" + _show(block, run, output))
    _check_expected(block, run, output)
    return BlockRun(block, output, time.monotonic() - started)


def _script(block: Block, run: PageRun) -> Path:
    """A bash script whose line N is line N of the page, so `$LINENO` and tracebacks name the page's lines."""
    code = substitute(block.code, run.substitutions)
    pad = "\n" * (block.line - 1)  # line 1 is the prelude; the code starts on the page's line after the fence
    save = f'export -p > "{run.state}"; pwd > "{run.cwd_file}"'
    prelude = (
        f'set -euo pipefail; source "{run.state}"; cd "$(cat "{run.cwd_file}")"; '
        f"trap 'rc=$?; if [ $rc -eq 0 ]; then {save}; fi' EXIT; "
    )
    folder = run.workdir / ".docblocks"
    if block.lang == "python":
        program = folder / f"{block.name.replace('/', '_')}.py"
        program.write_text(pad + "\n" + code)  # line 1 empty, so the same padding lines the code up
        body = f'{prelude}python "{program}"\n'
    else:
        report = 'printf \'\\n##docblocks-failed line=%s rc=%s cmd=%s\\n\' "$2" "$1" "$3" >&2'
        failed = f'_docblocks_failed() {{ {report}; }}; trap \'_docblocks_failed $? "$LINENO" "$BASH_COMMAND"\' ERR'
        body = f"{prelude}{failed}\n{pad}{code}"
    script = folder / f"{block.name.replace('/', '_')}.{block.line}.sh"
    script.write_text(body)
    return script


def _clean(raw: bytes) -> str:
    text = ANSI.sub("", raw.decode("utf-8", "replace"))
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines())


def _check_expected(block: Block, run: PageRun, output: str) -> None:
    lines = output.splitlines()
    at = 0
    for expected in block.expected:
        wanted = Expected(expected.line, substitute(expected.text, run.substitutions))
        found = next((n for n in range(at, len(lines)) if wanted.matches(lines[n])), None)
        if found is None:
            after = f" after the line {lines[at - 1].strip()!r}" if at else ""
            raise BlockFailed(
                f"{block.name}:{expected.line}: the page shows the output line {wanted.text.strip()!r}, which the "
                f"{block.lang} block at {block.where} did not print{after}\n" + _show(block, run, output)
            )
        at = found + 1


def _show(block: Block, run: PageRun, output: str) -> str:
    code = substitute(block.code, run.substitutions)
    numbered = "\n".join(f"{block.line + 1 + n:5d}  {line}" for n, line in enumerate(code.splitlines()))
    shown = FAILED.sub("", output).rstrip()  # the runner's own line, already in the message
    return f"--- the block, as run ({block.name}) ---\n{numbered}\n--- its output ---\n{shown[-6000:]}"


def against_server(workdir: Path, home: Path, endpoint: str, credentials: Path, registry: str) -> PageRun:
    """A page run against a byoi server and its registry: the three variables `byoi up` prints are set (a page
    that exports them again changes nothing), and the addresses the pages name, `byoi up`'s defaults, become
    the server's and the registry's."""
    env = environment(
        home,
        {
            "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
            "AWS_PROFILE": "byoi",
            "AWS_ENDPOINT_URL_SAGEMAKER": endpoint,
        },
    )
    return PageRun(workdir, env, {DOC_REGISTRY: registry, DOC_ENDPOINT: endpoint.removeprefix("http://")})


def presigned_links(output: str) -> list[str]:
    return PRESIGNED.findall(output)


def environment(home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """What a new user's shell would have: the project's tools first on PATH, a HOME of its own, no AWS_* or
    BYOI_* variables from the test run, and wide, plain output (rich draws tables to COLUMNS)."""
    venv_bin = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin" / "byoi").exists() else Path(sys.executable).parent
    keep = {k: v for k, v in os.environ.items() if k in ("DOCKER_HOST", "TMPDIR", "LANG", "LC_ALL", "TZ")}
    return {
        **keep,
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "TERM": "dumb",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
