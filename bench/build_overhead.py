"""Overhead of a byoi build against running `docker build` + `docker push` directly, on the same context.

Both sides use the same Docker Engine and the same local registry, in the same run, alternating:
- direct: `/usr/bin/docker build` (classic builder, as byoi's Docker backend uses) then `docker push`;
- byoi:   `byoi build CTX --image REPO --tag TAG` (pack, signed upload, queue, build, push, log streaming).
"cold" builds get fresh random content (no layer cache, new blobs to push); "warm" rebuild the previous
context unchanged (every step cached, every layer already in the registry): byoi answers it from its build-result
cache (the earlier build's image, tagged again); "warm_other_repo" rebuilds it for another repository, where
byoi's cache does not apply and the Engine's layer cache does, as for `docker build` (the push mounts the layers
from the first repository on both sides).

    PYTHONPATH=. .venv/bin/python bench/build_overhead.py [--runs 3] [--mb 16] [--byoi "CMD"]

`--byoi` is the command timed for byoi (split as a shell would, no shell run), default the console script next
to this Python; an earlier tree's CLI, say, with `--byoi ".venv/bin/python -c 'from byoi.cli.main import app;
app()'"` and PYTHONPATH=<that tree>/src, for a before/after comparison in one session.

Prints JSON with median wall times and the ratio byoi/direct for each case: of the medians, and the median of
each run's own ratio (`ratio_paired`, direct and byoi timed back to back: steadier on a machine that drifts).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.docker_images import BASE_IMAGE, ensure_base_image
from tests.support.processes import ByoiServer, free_port, start_registry

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
BYOI = str(Path(sys.executable).parent / "byoi")


def make_context(root: Path, mb: int) -> Path:
    root.mkdir(parents=True)
    (root / "blob.bin").write_bytes(os.urandom(mb << 20))
    (root / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nCOPY blob.bin /data/blob.bin\nRUN sha256sum /data/blob.bin > /sum\n"
    )
    return root


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def direct(ctx: Path, ref: str) -> float:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    started = time.perf_counter()
    timed([DOCKER, "build", "-q", "-t", ref, str(ctx)], env)
    timed([DOCKER, "push", ref], env)
    return time.perf_counter() - started


def via_byoi(server: ByoiServer, ctx: Path, repo: str, tag: str, byoi: list[str]) -> float:
    return timed([*byoi, "build", str(ctx), "--image", repo, "--tag", tag, "--quiet"], server.aws_env())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=16, help="size of the random file in the context")
    parser.add_argument("--byoi", default=BYOI, help="the byoi command to time (default: the console script)")
    opts = parser.parse_args()
    byoi = shlex.split(opts.byoi)
    ensure_base_image()
    work = Path(tempfile.mkdtemp(prefix="byoi-bench-build-"))
    port = free_port()
    registry = start_registry(work / "registry", port)
    server = ByoiServer(data_dir=work / "byoi", registries=[f"http://127.0.0.1:{port}"]).start()
    cases = ("cold", "warm", "warm_other_repo")
    times: dict[str, dict[str, list[float]]] = {case: {"direct": [], "byoi": []} for case in cases}
    try:
        # One untimed build each first, so the base image's layers are in the registry for both sides.
        warmup = make_context(work / "warmup", 1)
        direct(warmup, f"127.0.0.1:{port}/bench/direct:warmup")
        via_byoi(server, warmup, "bench/byoi", "warmup", byoi)
        for i in range(opts.runs):
            for side in ("direct", "byoi"):
                ctx = make_context(work / f"{side}-{i}", opts.mb)
                repo = f"bench/{side}"
                for case in cases:  # warm: the same context again, right after
                    tag = f"{case}{i}"
                    if case == "warm_other_repo":
                        repo = f"bench/{side}-other"
                    if side == "direct":
                        times[case][side].append(direct(ctx, f"127.0.0.1:{port}/{repo}:{tag}"))
                    else:
                        times[case][side].append(via_byoi(server, ctx, repo, tag, byoi))
    finally:
        server.stop()
        registry.terminate()
        registry.wait()
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, object] = {"benchmark": "build_overhead", "runs": opts.runs, "context_mb": opts.mb}
    for case, sides in times.items():
        d, b = statistics.median(sides["direct"]), statistics.median(sides["byoi"])
        # Each run times direct then byoi back to back, so the ratio of each pair is taken under the same load:
        # this machine's Engine drifts by half between minutes, which the ratio of the medians does not cancel.
        paired = statistics.median(y / x for x, y in zip(sides["direct"], sides["byoi"], strict=True))
        result[case] = {"direct_s": round(d, 3), "byoi_s": round(b, 3), "ratio": round(b / d, 3),
                        "ratio_paired": round(paired, 3),
                        "direct_all": [round(x, 3) for x in sides["direct"]],
                        "byoi_all": [round(x, 3) for x in sides["byoi"]]}  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
