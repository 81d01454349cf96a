"""Idle memory of a real `byoi server`: its resident set (VmRSS) once /healthz answers and it has settled, before
any session, and where that memory goes. Prints JSON.

    .venv/bin/python bench/memory.py [--settle 5] [--compare SRC_DIR] [--where]

The server runs as users run it (`python -m byoi server`, SQLite in a fresh temporary data dir, a real local
registry), with its logs at warning level. `--compare SRC_DIR` measures a second server started from another
source tree (a copy of `src/` from before a change: PYTHONPATH=SRC_DIR) in the same run, and prints the ratio.

`--where` adds where the memory goes (slow: a few minutes): the Python memory of the same start-up in a child
process under tracemalloc (the imports of `byoi server`, then its app's start-up against a fresh data dir), by
top-level package: each allocation counts for the innermost caller outside the standard library (a module's
code, or what a package builds, such as byoi's service models); the rest of VmRSS is native libraries and the
allocator's free memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def status_mib(pid: int | str, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def child_env(src: Path | None) -> dict[str, str]:
    env = {**os.environ, "BYOI_LOG_LEVEL": "WARNING"}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), str(ROOT)])
    return env


def idle_server(work: Path, registry: str, src: Path | None, settle: float) -> dict[str, Any]:
    """VmRSS of a `byoi server` that has answered /healthz and then idled for `settle` seconds."""
    from tests.support.processes import ByoiServer

    env = {"BYOI_LOG_LEVEL": "WARNING"}
    if src is not None:
        env["PYTHONPATH"] = child_env(src)["PYTHONPATH"]
    server = ByoiServer(data_dir=work, registries=[registry], env=env)
    started = time.perf_counter()
    server.start()
    ready = time.perf_counter() - started
    try:
        assert server.proc is not None
        time.sleep(settle)  # the reconcilers' first passes
        return {
            "rss_mib": status_mib(server.proc.pid, "VmRSS"),
            "peak_rss_mib": status_mib(server.proc.pid, "VmHWM"),
            "start_to_healthz_s": round(ready, 2),
        }
    finally:
        server.stop()


def where(work: Path, registry: str, src: Path | None) -> dict[str, Any]:
    """The breakdown, from a child process (tracemalloc makes its own resident size meaningless)."""
    child = subprocess.run(
        [sys.executable, __file__, "--child-where", str(work), registry],
        env=child_env(src),
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise RuntimeError(f"the start-up breakdown failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def child_where(work: Path, registry: str) -> None:
    """In this process, traced from the start: what `byoi server` imports and its app's start-up; print JSON."""
    import tracemalloc

    tracemalloc.start(12)  # enough frames to get out of importlib and the standard library
    import byoi.cli.main  # noqa: F401 - `python -m byoi server` imports the CLI first
    from byoi.app import create_app
    from byoi.config import RegistryConfig, Settings

    settings = Settings(data_dir=work, port=0, registries=(RegistryConfig(registry),))
    app = create_app(settings)

    async def started() -> Any:
        async with app.router.lifespan_context(app):
            await asyncio.sleep(1)
            return tracemalloc.take_snapshot()

    snapshot = asyncio.run(started())
    packages: dict[str, int] = {}
    for stat in snapshot.statistics("traceback"):
        name = _owner(stat.traceback)
        packages[name] = packages.get(name, 0) + stat.size
    largest = sorted(packages.items(), key=lambda kv: -kv[1])[:15]
    print(
        json.dumps(
            {
                "modules": len(sys.modules),
                "python_mib": round(sum(packages.values()) / 2**20, 1),
                "python_mib_by_package": {k: round(v / 2**20, 2) for k, v in largest},
            }
        )
    )


def _owner(traceback: Any) -> str:
    """The top-level package of the innermost frame outside the standard library and importlib."""
    stdlib = os.path.dirname(os.__file__)
    for frame in reversed(traceback):  # tracemalloc lists the oldest frame first
        path = frame.filename
        if "site-packages" in path:
            return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
        if "/byoi/" in path and not path.startswith(stdlib):
            return "byoi"
    innermost = traceback[-1].filename
    return "(imports, deeper)" if innermost.startswith("<frozen") else f"stdlib {_stdlib_module(innermost, stdlib)}"


def _stdlib_module(path: str, stdlib: str) -> str:
    return path.removeprefix(stdlib + "/").split("/", 1)[0].removesuffix(".py")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle after /healthz before reading")
    parser.add_argument("--compare", type=Path, help="another source tree (a src/ directory) to measure too")
    parser.add_argument("--where", action="store_true", help="also break the memory down by package (slow)")
    parser.add_argument("--child-where", nargs=2, metavar=("DATA_DIR", "REGISTRY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_where:
        child_where(Path(args.child_where[0]), args.child_where[1])
        return
    from tests.support.processes import free_port, start_registry

    work = Path(tempfile.mkdtemp(prefix="byoi-bench-memory-"))
    port = free_port()
    registry_proc = start_registry(work / "registry", port)
    registry = f"http://127.0.0.1:{port}"
    trees: dict[str, Path | None] = {"this": None}
    if args.compare:
        trees["compared"] = args.compare.resolve()
    result: dict[str, Any] = {"benchmark": "memory", "settle_s": args.settle}
    try:
        for label, src in trees.items():
            result[label] = {
                "src": str(src or ROOT / "src"),
                **idle_server(work / f"{label}-server", registry, src, args.settle),
            }
            if args.where:
                result[label]["where"] = where(work / f"{label}-startup", registry, src)
    finally:
        registry_proc.terminate()
        registry_proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    if args.compare:
        result["rss_ratio_this_over_compared"] = round(result["this"]["rss_mib"] / result["compared"]["rss_mib"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
