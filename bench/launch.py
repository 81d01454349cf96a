"""Session launch benchmark: CreateApp -> InService against `docker run` of the same image and command until its
port answers, with the image already on the host (warm) and not (cold: pulled from the loopback registry),
and the control plane's memory (RSS) with N idle sessions. Prints JSON.

    .venv/bin/python bench/launch.py [--runs 3] [--idle 50] [--skip-cold]

RStudio Server is the STAND-IN image (tests/images/rstudio-standin), a TEST DOUBLE for the IDE binary only:
R, the container, the registry and Docker Engine are real. Both sides run the same pinned image with the same
rserver command, user, init and a 127.0.0.1 port; byoi adds its control-plane work (records, files written
into the container, the network, progress updates, polling). The cold image is a single-layer copy of the
stand-in with a random file (docker export | docker import), so none of its layers is on the host.

Both sides wait for the answer to the same request: `GET /` with `X-RStudio-Root-Path`, as byoi's readiness
probe and its proxy ask it. The baseline once asked for the root path itself, which rserver (the stand-in too)
answers with a quick 404, while `/` is the sign-in redirect: the stand-in's first one takes 0.1 to 0.15 s
(its first HMAC), which made byoi look that much slower (/tmp experiments, stop 20's note).

byoi's time is CreateApp's call to the moment the server recorded InService (DescribeAppProgress's UpdatedAt of
the "ready" phase, the same clock: this host), read after a slow poll. Polling DescribeApp every 20 ms instead,
as this benchmark first did, kept the 2-core machine busy verifying 50 signed requests a second and made the
launch it measured 0.3 s slower (2.35 s vs 2.00 s, medians of 4).
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
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx2 as httpx  # noqa: E402
from tests.support import sessions as s  # noqa: E402
from tests.support.docker_images import build_test_image, docker_client  # noqa: E402
from tests.support.processes import ByoiServer, free_port, start_registry  # noqa: E402

DOCKER = "/usr/bin/docker"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_status(sm: Any, domain: str, user: str, name: str, wanted: str, poll: float = 0.02) -> None:
    while True:
        status = s.app_status(sm, domain, user, name)["Status"]
        if status == wanted:
            return
        if status == "Failed":
            raise RuntimeError(f"{name} failed: {s.app_status(sm, domain, user, name).get('FailureReason')}")
        time.sleep(poll)


def byoi_launch(sm: Any, ext: Any, domain: str, version_arn: str, name: str) -> float:
    """Seconds from the CreateApp call to the server's record of InService (see the module's docstring)."""
    started = time.time()
    sm.create_app(
        DomainId=domain,
        UserProfileName="bench",
        AppType="RSessionGateway",
        AppName=name,
        ResourceSpec={"SageMakerImageVersionArn": version_arn},
    )
    wait_status(sm, domain, "bench", name, "InService", poll=0.25)
    ready = s.progress(ext, domain, "bench", name)["UpdatedAt"]
    return (ready.timestamp() if hasattr(ready, "timestamp") else float(ready)) - started


def byoi_delete(sm: Any, domain: str, name: str) -> None:
    sm.delete_app(DomainId=domain, UserProfileName="bench", AppType="RSessionGateway", AppName=name)
    wait_status(sm, domain, "bench", name, "Deleted", poll=0.1)


def docker_run(image: str) -> float:
    """`docker run` of the same image and rserver command (pulling when needed) until its port answers."""
    name = f"bench-baseline-{uuid.uuid4().hex[:8]}"
    root = "/sessions/baseline/"
    started = time.perf_counter()
    subprocess.run(
        [DOCKER, "run", "-d", "--init", "--name", name, "--user", "1000:100", "-p", "127.0.0.1::8787",
         "--entrypoint", "/usr/lib/rstudio-server/bin/rserver", image, "--server-daemonize=0",
         "--www-address=0.0.0.0", "--www-port=8787", "--auth-none=1", "--server-user=rstudio",
         f"--www-root-path={root}", "--server-data-dir=/tmp/rserver"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = subprocess.run([DOCKER, "port", name, "8787/tcp"], check=True, capture_output=True, text=True)
    url = f"http://{port.stdout.split()[0]}/"
    try:
        while True:
            try:
                httpx.get(url, headers={"X-RStudio-Root-Path": root.rstrip("/")}, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)


def cold_image(registry: str) -> tuple[str, int]:
    """A single-layer copy of the stand-in (plus a random file) pushed to the registry and absent locally."""
    client = docker_client()
    tag = f"bench/cold-{uuid.uuid4().hex[:8]}"
    c = client.containers.create(build_test_image("rstudio-standin"), ["true"])
    try:
        exported = subprocess.Popen([DOCKER, "export", c.id], stdout=subprocess.PIPE)
        subprocess.run(
            [DOCKER, "import", "--change", "USER rstudio", "-", f"{registry}/{tag}:v1"],
            stdin=exported.stdout, check=True, capture_output=True,
        )  # fmt: skip
        exported.wait()
    finally:
        c.remove(force=True)
    size = client.images.get(f"{registry}/{tag}:v1").attrs["Size"]
    for chunk in client.api.push(f"{registry}/{tag}", tag="v1", stream=True, decode=True):
        if "error" in chunk:
            raise RuntimeError(chunk["error"])
    client.images.remove(f"{registry}/{tag}:v1", force=True)
    return f"{registry}/{tag}:v1", int(size)


def forget(image: str) -> None:
    subprocess.run([DOCKER, "rmi", "-f", image], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=int, default=50)
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="byoi-bench-launch-"))
    port = free_port()
    registry_proc = start_registry(work / "registry", port)
    registry = f"127.0.0.1:{port}"
    env = {"BYOI_WORKER_CONCURRENCY": "8", "BYOI_SESSION_STOP_TIMEOUT": "2"}
    srv = ByoiServer(data_dir=work / "byoi", registries=[f"http://{registry}"], env=env).start()
    result: dict[str, Any] = {"stand_in": "tests/images/rstudio-standin (TEST DOUBLE for the RStudio IDE binary only)"}
    names: list[str] = []
    try:
        sm = srv.client()
        ext = s.extension(srv)
        image = "bench-standin"
        version = s.register(sm, registry, image, "rstudio-standin", "v1")
        version_arn = sm.describe_image_version(ImageName=image, Version=version)["ImageVersionArn"]
        pinned = sm.describe_image_version(ImageName=image, Version=version)["ContainerImage"]
        s.ensure_config(sm)
        entries = [{"ImageName": image, "AppImageConfigName": s.CONFIG}]
        domain = s.rstudio_domain(sm, entries)
        sm.create_user_profile(DomainId=domain, UserProfileName="bench")

        byoi_warm, docker_warm = [], []
        for i in range(args.runs):
            byoi_warm.append(byoi_launch(sm, ext, domain, version_arn, f"warm-{i}"))
            byoi_delete(sm, domain, f"warm-{i}")
            docker_warm.append(docker_run(pinned))
        result["warm"] = {
            "runs": args.runs,
            "byoi_create_to_inservice_s": round(statistics.median(byoi_warm), 3),
            "docker_run_to_port_answer_s": round(statistics.median(docker_warm), 3),
            "ratio": round(statistics.median(byoi_warm) / statistics.median(docker_warm), 2),
            "byoi_all_s": [round(x, 3) for x in byoi_warm],
            "docker_all_s": [round(x, 3) for x in docker_warm],
        }

        if not args.skip_cold:
            ref, size = cold_image(registry)
            cold_name = ref.split("/", 1)[1].split(":")[0].replace("bench/", "")
            sm.create_image(ImageName=cold_name, RoleArn=s.ROLE)
            arn = sm.create_image_version(ImageName=cold_name, BaseImage=ref)["ImageVersionArn"]
            sm.get_waiter("image_version_created").wait(
                ImageName=cold_name, Version=1, WaiterConfig={"Delay": 0.5, "MaxAttempts": 600}
            )
            cold_pinned = sm.describe_image_version(ImageName=cold_name, Version=1)["ContainerImage"]
            entries.append({"ImageName": cold_name, "AppImageConfigName": s.CONFIG})
            sm.update_domain(DomainId=domain, DefaultUserSettings={"RSessionAppSettings": {"CustomImages": entries}})
            byoi_cold = byoi_launch(sm, ext, domain, arn, "cold")
            byoi_delete(sm, domain, "cold")
            forget(cold_pinned)
            docker_cold = docker_run(cold_pinned)
            forget(cold_pinned)
            result["cold"] = {
                "image_bytes": size,
                "byoi_create_to_inservice_s": round(byoi_cold, 3),
                "docker_run_to_port_answer_s": round(docker_cold, 3),
                "ratio": round(byoi_cold / docker_cold, 2),
            }

        assert srv.proc is not None
        idle_before = rss_mib(srv.proc.pid)
        started = time.perf_counter()
        for i in range(args.idle):
            names.append(f"idle-{i}")
            sm.create_app(
                DomainId=domain,
                UserProfileName="bench",
                AppType="RSessionGateway",
                AppName=names[-1],
                ResourceSpec={"SageMakerImageVersionArn": version_arn},
            )
        for name in names:
            wait_status(sm, domain, "bench", name, "InService", poll=0.2)
        launched = time.perf_counter() - started
        time.sleep(15)  # a reconcile pass or two over all of them
        result["memory"] = {
            "sessions": args.idle,
            "instance_type": "ml.t3.medium (limits only: 2 vCPU, 4 GiB each; idle stand-ins use far less)",
            "control_plane_rss_mib_before": round(idle_before, 1),
            "control_plane_rss_mib_with_sessions": round(rss_mib(srv.proc.pid), 1),
            "rss_mib_per_session": round((rss_mib(srv.proc.pid) - idle_before) / max(args.idle, 1), 3),
            "launch_all_to_inservice_s": round(launched, 2),
        }
    finally:
        for name in names:
            try:
                sm.delete_app(DomainId=domain, UserProfileName="bench", AppType="RSessionGateway", AppName=name)
            except Exception as exc:  # noqa: BLE001 - best-effort clean-up
                print(f"cannot delete {name}: {exc}", file=sys.stderr)
        for name in names:
            try:
                wait_status(sm, domain, "bench", name, "Deleted", poll=0.3)
            except Exception as exc:  # noqa: BLE001
                print(f"{name} not deleted: {exc}", file=sys.stderr)
        srv.stop()
        registry_proc.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
