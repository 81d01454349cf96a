"""Where a cold `byoi build`'s time goes, phase by phase, on the CLI's side and the server's, against the same
build run directly (`docker build` + `docker push`).

For each run: a fresh random context; the CLI is started as the console script is, with its calls timed
(packing, each HTTP request, the event stream), the server's side is read from the build's own log (every
record carries its time), and the Engine's build and push are timed the same way directly. Times are
milliseconds since the CLI process was started (its fork, as the shell sees it).

    PYTHONPATH=. .venv/bin/python bench/build_timeline.py [--runs 3] [--mb 16]

Prints one JSON object: the median of each phase, and each run's phases.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.build_overhead import direct, make_context
from tests.support.docker_images import ensure_base_image
from tests.support.processes import ByoiServer, free_port, start_registry

# Runs in the CLI's process: times the calls a build makes, then runs the console script's main. Lines of
# "phase <name> <start> <end>" (wall clock) go to the file named by the first argument.
_TRACED_CLI = r"""
import sys, time
T = [time.time()]
out = open(sys.argv.pop(1), "w")
def mark(name, start, end):
    out.write(f"phase {name} {start!r} {end!r}\n"); out.flush()
def traced(owner, attr, name_of):
    real = getattr(owner, attr)
    def wrapper(*a, **kw):
        start = time.time()
        try:
            return real(*a, **kw)
        finally:
            mark(name_of(a, kw), start, time.time())
    setattr(owner, attr, wrapper)
from byoi.cli import entry
mark("imports(entry)", T[0], time.time())
T0 = time.time()
from byoi.cli import build_run, wire
import byoi.build.context as context
mark("imports(build)", T0, time.time())
traced(context, "pack_directory", lambda a, kw: "pack+hash")
traced(wire.Client, "request", lambda a, kw: "request " + a[2].split("/")[-1][:12])
traced(wire.Client, "extension", lambda a, kw: "call " + a[1])
traced(build_run, "follow_with_stop", lambda a, kw: "follow events")
traced(build_run, "report", lambda a, kw: "report")
sys.argv[0] = "byoi"
try:
    entry.main()
finally:
    mark("exit", time.time(), time.time())
"""


def byoi_run(server: ByoiServer, ctx: Path, repo: str, tag: str, trace: Path) -> dict[str, object]:
    started = time.time()
    args = [sys.executable, "-c", _TRACED_CLI, str(trace), "build", str(ctx), "--image", repo, "--tag", tag, "-q"]
    result = subprocess.run(args, env=server.aws_env(), capture_output=True, text=True)
    ended = time.time()
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-2000:])
    phases: dict[str, list[float]] = {}
    for line in trace.read_text().splitlines():
        parts = line.split(" ")
        name, (a, b) = " ".join(parts[1:-2]), parts[-2:]
        phases[name] = [round((float(a) - started) * 1000), round((float(b) - started) * 1000)]
    build_id = result.stdout.split("Build ", 1)[1].split(" ", 1)[0] if "Build " in result.stdout else None
    server_side: dict[str, int] = {}
    if build_id:
        for raw in (server.data_dir / "builds" / build_id / "log.jsonl").read_text().splitlines():
            record = json.loads(raw)
            label = record["k"] + ":" + str(record.get("s") or record.get("m", ""))[:40]
            if record["k"] in ("status", "note", "step"):
                server_side.setdefault(label, round((record["t"] - started) * 1000))
    return {"total_ms": round((ended - started) * 1000), "cli": phases, "server": server_side}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=16)
    opts = parser.parse_args()
    ensure_base_image()
    work = Path(tempfile.mkdtemp(prefix="byoi-bench-timeline-"))
    port = free_port()
    registry = start_registry(work / "registry", port)
    server = ByoiServer(data_dir=work / "byoi", registries=[f"http://127.0.0.1:{port}"]).start()
    runs: list[dict[str, object]] = []
    directs: list[float] = []
    try:
        warmup = make_context(work / "warmup", 1)
        direct(warmup, f"127.0.0.1:{port}/bench/direct:warmup")
        byoi_run(server, warmup, "bench/byoi", "warmup", work / "trace-warmup")
        for i in range(opts.runs):
            ctx = make_context(work / f"d{i}", opts.mb)
            directs.append(round(direct(ctx, f"127.0.0.1:{port}/bench/direct:c{i}") * 1000))
            ctx = make_context(work / f"b{i}", opts.mb)
            runs.append(byoi_run(server, ctx, "bench/byoi", f"c{i}", work / f"trace{i}"))
    finally:
        server.stop()
        registry.terminate()
        registry.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"benchmark": "build_timeline", "context_mb": opts.mb,
                      "direct_ms_median": statistics.median(directs), "direct_ms": directs,
                      "byoi_ms_median": statistics.median(r["total_ms"] for r in runs),  # type: ignore[misc]
                      "runs": runs}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
