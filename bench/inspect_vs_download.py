"""byoi's image inspection against simply downloading and decompressing the same blobs, same run.

A real image of at least 500 MB (the Debian base image plus R, tidyverse, data.table, shiny and LaTeX
from Debian, built by Docker) is pushed to a local Distribution registry. Then, alternating, several
times each, in fresh child processes so peak memory is measured per phase:

  baseline  download every layer blob with byoi's RegistryClient and decompress it (ISA-L gzip, the
            same decompressor, same concurrency, decompression in a thread one chunk behind the
            download), discarding the output: the floor any inspection has to pay;
  inspect   byoi's Inspector with an empty layer cache: download, verify, decompress, parse tar
            headers, index, capture the files the rules read, apply the layers, run the rules;
  cached    the same inspection again with its per-layer cache warm (a version whose layers are known).

Prints JSON: seconds (median) and peak RSS per phase, and inspect/baseline (the goal is close to 1).

    .venv/bin/python bench/inspect_vs_download.py [--runs 3] [--image byoi-bench/r-big:latest]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

DOCKERFILE = """FROM byoi-test/debian:bookworm
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      r-base-core r-recommended r-cran-tidyverse r-cran-data.table r-cran-shiny texlive-latex-base \\
 && rm -rf /var/lib/apt/lists/*
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_image(tag: str) -> None:
    import docker

    client = docker.from_env(timeout=1800)
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(tag)
        return
    subprocess.run(["bash", str(REPO / "scripts" / "make-base-image.sh")], check=True, stdout=sys.stderr)
    print(f"building {tag} (apt-get from Debian's archive; a few minutes) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as ctx:
        (Path(ctx) / "Dockerfile").write_text(DOCKERFILE)
        for chunk in client.api.build(path=ctx, tag=tag, rm=True, decode=True):
            if "error" in chunk:
                raise SystemExit(f"build failed: {chunk['error']}")


def start_registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    for _ in range(100):
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                return proc, f"127.0.0.1:{port}"
        time.sleep(0.1)
    raise SystemExit("docker-registry did not start")


def push(tag: str, host: str, repo: str) -> None:
    import docker

    client = docker.from_env(timeout=1800)
    client.images.get(tag).tag(f"{host}/{repo}", tag="v1")
    for chunk in client.api.push(f"{host}/{repo}", tag="v1", stream=True, decode=True):
        if "error" in chunk:
            raise SystemExit(f"push failed: {chunk['error']}")


# -- the phases, each run in a fresh child process ------------------------------------------------------


async def _resolve(host: str, repo: str) -> tuple[Any, Any]:
    from byoi.config import RegistryConfig
    from byoi.registry.client import RegistryClient
    from byoi.registry.reference import parse

    client = RegistryClient([RegistryConfig(f"http://{host}")])
    return client, await client.resolve(parse(f"{host}/{repo}:v1"))


async def _baseline(host: str, repo: str, concurrency: int) -> dict[str, Any]:
    from isal import isal_zlib

    client, resolved = await _resolve(host, repo)
    slots = asyncio.Semaphore(concurrency)
    totals = {"compressed": 0, "uncompressed": 0}

    def feed(d: Any, chunk: bytes) -> int:
        out, data = 0, chunk
        while True:
            piece = d.decompress(data, 4 << 20)
            out += len(piece)
            data = d.unconsumed_tail
            if not data and len(piece) < 4 << 20:
                return out

    async def one(digest: str) -> None:
        async with slots:
            d = isal_zlib.decompressobj(31)
            pending = None
            async for chunk in client.stream_blob(host, repo, digest):
                totals["compressed"] += len(chunk)
                if pending is not None:
                    totals["uncompressed"] += await pending
                pending = asyncio.ensure_future(asyncio.to_thread(feed, d, chunk))
            if pending is not None:
                totals["uncompressed"] += await pending

    started = time.perf_counter()
    await asyncio.gather(*(one(layer["digest"]) for layer in resolved.manifest["layers"]))
    seconds = time.perf_counter() - started
    await client.close()
    return {"seconds": seconds, **totals}


async def _inspect(host: str, repo: str, cache_dir: str, concurrency: int) -> dict[str, Any]:
    from byoi.inspect.config import InspectionConfig
    from byoi.inspect.inspector import Inspector

    client, resolved = await _resolve(host, repo)
    inspector = Inspector(InspectionConfig(concurrency=concurrency), Path(cache_dir))

    def stream(digest: str) -> Any:
        return client.stream_blob(host, repo, digest)

    started = time.perf_counter()
    report = await inspector.inspect(resolved.manifest, stream)
    seconds = time.perf_counter() - started
    await client.close()
    return {
        "seconds": seconds,
        "compressed": report["CompressedSize"],
        "uncompressed": report["UncompressedSize"],
        "files": report["FileCount"],
        "layers": report["LayerCount"],
        "layers_from_cache": report["LayersFromCache"],
        "r_packages": len(report["RPackages"]),
        "r_version": (report["RInstallations"] or [{}])[0].get("Version"),
        "compatible": report["Compatible"],
    }


def _child(phase: str, args: tuple[Any, ...], queue: Any) -> None:
    result = asyncio.run(_baseline(*args) if phase == "baseline" else _inspect(*args))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    queue.put(result)


def run_phase(phase: str, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(phase, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image", default="byoi-bench/r-big:latest")
    parser.add_argument("--concurrency", type=int, default=2)
    opts = parser.parse_args()
    ensure_image(opts.image)
    work = Path(tempfile.mkdtemp(prefix="byoi-bench-inspect-"))
    registry, host = start_registry(work)
    try:
        push(opts.image, host, "bench/r-big")
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "inspect": [], "cached": []}
        for i in range(opts.runs):
            cache = work / f"cache-{i}"
            runs["baseline"].append(run_phase("baseline", host, "bench/r-big", opts.concurrency))
            runs["inspect"].append(run_phase("inspect", host, "bench/r-big", str(cache), opts.concurrency))
            runs["cached"].append(run_phase("inspect", host, "bench/r-big", str(cache), opts.concurrency))
        median = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
        first = runs["inspect"][0]
        out = {
            "image": opts.image,
            "layers": first["layers"],
            "compressed_bytes": first["compressed"],
            "uncompressed_bytes": first["uncompressed"],
            "files": first["files"],
            "r_version": first["r_version"],
            "r_packages": first["r_packages"],
            "runs": opts.runs,
            "concurrency": opts.concurrency,
            "seconds_median": {k: round(v, 3) for k, v in median.items()},
            "seconds_all": {k: [round(r["seconds"], 3) for r in v] for k, v in runs.items()},
            "peak_rss_mb": {k: max(r["peak_rss_mb"] for r in v) for k, v in runs.items()},
            "ratio_inspect_vs_baseline": round(median["inspect"] / median["baseline"], 3),
            "ratio_cached_vs_baseline": round(median["cached"] / median["baseline"], 3),
            "baseline_mb_per_s_uncompressed": round(first["uncompressed"] / median["baseline"] / 1e6, 1),
            "cached_layers_on_second_run": runs["cached"][0]["layers_from_cache"],
        }
        print(json.dumps(out, indent=2))
    finally:
        registry.terminate()
        registry.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
