"""Control-plane cost per session launch, Kubernetes runtime against Docker runtime, at 1, 10 and 100 concurrent
launches: CPU time of the byoi side and requests to the API server (Kubernetes) or to the Engine (Docker) per
launch, split by kind, so the cost per session is seen to stay flat as launches grow. Prints one JSON document.

    .venv/bin/python bench/kubernetes_launch.py [--levels 1,10,100] [--docker-levels 1,10,100] [--skip-docker]
                                                [--min-launches 10] [--request-timeout 60] [--start-timeout 300]

What runs: the runtimes themselves (`byoi.runtime.kubernetes.KubernetesRuntime`, `byoi.runtime.docker.
DockerRuntime`), driven by this process through the steps services/app_launch.py takes for one launch
(ensure_image, read_image_file (once per pinned image, as the launcher caches it), create with the files, start,
state, endpoint, then HTTP probes until the session answers, doubling from 10 ms to 100 ms). The server's own
work around a launch (records, progress rows, signing) is the same for both backends and is not in these
figures; `launches` run at once, as `asyncio.gather` of that many launch tasks (the server's worker pool
would run as many at once as BYOI_WORKER_CONCURRENCY allows). Before each level one launch is made and
removed uncounted (warm-up): it writes the pull Secret and the installation's NetworkPolicy, which one process
writes once, and reads the image's Renviron.site, which the launcher reads once per image, so the figures are
the steady-state cost of one more session. A level with fewer than --min-launches (10) launches runs in
sequential rounds of that many at once until it has made 10, so one launch's figures are an average of 10.
Removal of the launched sessions is reported separately.

Waiting is split out: byoi's CPU per launch grows with how long the sessions take to answer, because the
launcher probes every 100 ms and reads the container's state every second while it waits. After the last
round the benchmark measures, alone, the CPU of one probe that finds nothing listening and of one state
read, and reports `byoi_cpu_ms_per_launch_waiting_estimate` (failed probes and state checks at those costs)
and `byoi_cpu_ms_per_launch_steps_estimate` (the rest: the launch's own requests). Those costs are measured
alone, not under the level's load, so the split is an estimate (None when the waiting estimate exceeds the
total, as it can at 100 Docker launches, where the CPU per probe varies with the load). The request counts
are exact: `..._requests_per_launch_excluding_waiting` leaves out the one request of each state check. On the
emulated cluster the stand-in behind the Service answers as soon as the kubelet says the pod runs, so
waiting there is nil; on a real cluster rserver's start-up would add probes at the same rate as on Docker.

Kubernetes: the API server is kmock's `KubernetesEmulator`, a TEST DOUBLE (no Kubernetes API server can be
installed on this machine), served over real HTTP on 127.0.0.1 by a process of its own (this file with
`--role emulator`); its CPU is read from /proc/<pid>/stat and reported apart from byoi's. A third process
(`--role kubelet`) plays the scheduler, the kubelet and the Service IP allocator, the way
tests/test_kubernetes_runtime.py does: it watches the namespace's pods, and for each new pod points the
session's Service at 127.0.0.1 and a tiny HTTP server of its own (the stand-in for rserver behind the
Service, so `answers` makes its real request), posts the `Pulling` and `Pulled` events and patches the pod's
status to Running with its container ready. Its requests (sent with `X-Bench-Role: kubelet`) and its CPU are
reported apart from byoi's too. "byoi" CPU is this process's (getrusage), which runs only the runtime and
the launch loop.

What was changed to make 100 concurrent launches work on kmock (an earlier prototype timed out there):
kmock keeps every request it has served and matches each new one against its reactions by scanning that
whole history (`request in view`), so each request cost time in proportion to all before it; the emulator
here (`LeanEmulator`) forgets a request once it is answered and counts requests itself, which took the
emulator from about 1.9 s to 0.07 s of CPU per launch at 20 launches. Also, a fresh emulator (and kubelet)
serves each level, so no objects are left from other levels (kmock scans every object on each read); the
kubelet watches pods instead of polling each one; and the runtime's per-request timeout is raised from its
default 10 s to --request-timeout (60 s) as a margin on this 2-core machine. The emulator's CPU is reported
on its own. Nothing is split into waves: all of a level's launches start at once.

Docker: the real Docker Engine, with the STAND-IN image the tests build (tests/images/rstudio-standin,
`byoi-test/rstudio-standin:latest`, a TEST DOUBLE for the RStudio IDE binary only: R, the container and the
Engine are real), each session on its own Unix socket as byoi runs them. Engine requests are counted with an
aiohttp TraceConfig on the runtime's own client session (method and path, ids replaced by {id}); the probes
of the session's socket are counted apart ("probes"). dockerd's and containerd's CPU (from /proc) is
reported as the engine's, apart from byoi's; the containers' own CPU (R starting) is in neither, but it shares
the 2 cores, so wall times grow with the level. `--docker-levels` picks the Docker levels (default the same
as --levels; 100 stand-in containers starting at once keep this 2-core machine busy for about 2.5 minutes,
during which byoi's probing dominates its CPU: use e.g. `--docker-levels 1,10,30` for a quicker run); every
container is labelled `byoi.bench=<run id>` and removed at the end (the JSON's `clean_up` says what is left).
The sessions join byoi's own `byoi-sessions` network, as a server's do; it is removed at the end only if this
run made it. (A network made per run could not always be removed: after 100 containers were removed at once,
dockerd kept a stale endpoint on it and refused with "has active endpoints".) All traffic is to 127.0.0.1
or Unix sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from byoi.services.app_launch import STATE_CHECK, probe_delay  # noqa: E402  (how the launcher probes a session)

NAMESPACE = "byoi-sessions"
IMAGE_K8S = "registry.test:5000/team/rstudio@sha256:" + "cd" * 32
KUBELET_ROLE = "kubelet"
APP_ARN = "arn:aws:sagemaker:us-east-1:000000000000:app"
NETWORK = "byoi-sessions"  # byoi's own sessions network (runtime/settings.py's default), as a server uses it
RENVIRON = "/usr/lib/R/etc/Renviron.site"
FILES = {
    RENVIRON: b"AWS_REGION='us-east-1'\nBYOI_APP_ARN='arn:aws:sagemaker:us-east-1:000000000000:app/x'\n",
    "/etc/byoi/database.conf": b"provider=sqlite\ndirectory=/run/byoi/db\n",
    "/etc/rstudio/file-locks": b"lock-type=advisory\n",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc/<pid>/stat); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def pids_named(*names: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
    return found


# -- the emulator's process (a TEST DOUBLE of the API server) ------------------------------------------


def emulator_role(port: int) -> None:
    import kmock
    from tests.support.kube import CORE

    def kind_of(r: Any) -> str:
        if r.headers.get("X-Bench-Role") == KUBELET_ROLE:
            prefix = "kubelet "
        else:
            prefix = ""
        method = getattr(r.method, "value", r.method)
        what = r.resource.plural if r.resource else r.url.path
        if r.subresource:
            what += "/" + r.subresource
        elif r.name:
            what += "/{name}"
        watch = " watch" if r.params.get("watch") in ("true", "1") else ""
        return f"{prefix}{str(method).upper()} {what}{watch}"

    counts: collections.Counter[str] = collections.Counter()

    class LeanEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
        """kmock's emulator, forgetting each request once it is answered: kmock matches every request
        against its reactions by scanning every request it has kept (`request in view`), which made each
        request cost time in proportion to all the requests before it (quadratic: kmock timed out at 100
        concurrent launches). Only the requests in flight are kept; this process counts them itself."""

        async def _handle(self, request: Any) -> Any:
            counts[kind_of(request)] += 1
            try:
                return await super()._handle(request)
            finally:
                kept = self._requests
                for i in range(len(kept) - 1, -1, -1):
                    if kept[i] is request:
                        del kept[i]
                        break

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with LeanEmulator() as emu, kmock.Server(emu, host="127.0.0.1", port=port):
            for plural, kind in CORE.items():
                emu.resources[f"v1/{plural}"] = kmock.ResourceInfo(namespaced=True, kind=kind)
            emu.resources["networking.k8s.io/v1/networkpolicies"] = kmock.ResourceInfo(
                namespaced=True, kind="NetworkPolicy"
            )

            async def stats() -> dict[str, Any]:
                return {
                    "requests": dict(counts),
                    "objects": sum(1 for o in emu.objects.values() if not o.deleted),
                }

            done = asyncio.Event()

            def commands() -> None:  # the parent's commands on stdin; EOF (the parent gone) ends the emulator
                for line in sys.stdin:
                    if line.strip() == "stats":
                        answer = asyncio.run_coroutine_threadsafe(stats(), loop).result()
                        print(json.dumps(answer), flush=True)
                loop.call_soon_threadsafe(done.set)

            threading.Thread(target=commands, daemon=True).start()
            print("ready", flush=True)
            await done.wait()

    asyncio.run(main())


# -- the kubelet's process (scheduler, kubelet, Service IPs, and rserver's stand-in behind the Service) ------


def kubelet_role(url: str) -> None:
    import aiohttp

    from byoi.runtime.kubernetes_spec import PORT_NAME

    headers = {"X-Bench-Role": KUBELET_ROLE}
    merge = {**headers, "Content-Type": "application/merge-patch+json"}
    base = f"/api/v1/namespaces/{NAMESPACE}"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 302 Found\r\nLocation: /auth-sign-in\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        writer.close()

    async def bring_up(http: aiohttp.ClientSession, pod: str, service: str, port: int) -> None:
        ports = [{"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "protocol": "TCP"}]
        async with http.patch(
            f"{base}/services/{service}", json={"spec": {"clusterIP": "127.0.0.1", "ports": ports}}, headers=merge
        ) as r:  # noqa: E501
            await r.read()
        for n, (reason, message) in enumerate(
            [
                ("Pulling", f'Pulling image "{IMAGE_K8S}"'),
                ("Pulled", f'Successfully pulled image "{IMAGE_K8S}" in 1s. Image size: 734003200 bytes.'),
            ]
        ):
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{pod}.{n:04d}", "namespace": NAMESPACE},
                "involvedObject": {"kind": "Pod", "name": pod, "namespace": NAMESPACE},
                "reason": reason,
                "message": message,
                "type": "Normal",
                "count": 1,
            }
            async with http.post(f"{base}/events", json=body, headers=headers) as r:
                await r.read()
        status = {
            "phase": "Running",
            "podIP": "10.1.2.3",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "rstudio",
                    "ready": True,
                    "restartCount": 0,
                    "image": IMAGE_K8S,
                    "imageID": IMAGE_K8S,
                    "state": {"running": {"startedAt": "2026-12-01T18:00:00Z"}},
                }
            ],
        }
        async with http.patch(f"{base}/pods/{pod}/status", json={"status": status}, headers=merge) as r:
            await r.read()

    async def main() -> None:
        stand_in = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
        port = int(stand_in.sockets[0].getsockname()[1])
        seen: set[str] = set()
        tasks: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with aiohttp.ClientSession(base_url=url, timeout=timeout) as http:
            async with http.get(f"{base}/pods", params={"watch": "true"}, headers=headers) as watch:
                print("ready", flush=True)
                async for line in watch.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    pod = event.get("object") or {}
                    meta = pod.get("metadata") or {}
                    name = str(meta.get("name"))
                    if event.get("type") != "ADDED" or name in seen:
                        continue
                    seen.add(name)
                    task = asyncio.create_task(bring_up(http, name, name, port))  # the Service has the pod's name
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

    asyncio.run(main())


# -- the launches, as services/app_launch.py makes them ------------------------------------------------------


class Launcher:
    """One launch's steps on a runtime, with the launcher's once-per-image read of Renviron.site."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.image_files: dict[str, bytes | None] = {}
        self.probes = 0
        self.state_checks = 0

    async def launch(self, spec: Any) -> None:
        async def report(_progress: Any) -> None:
            return None

        await self.rt.ensure_image(spec.image, {"username": "bench", "password": "bench-password"}, report)
        if spec.home_host_path.startswith("/") and self.rt.name == "docker":
            await asyncio.to_thread(make_home, Path(spec.home_host_path), spec.uid, spec.gid)
        if spec.image not in self.image_files:
            self.image_files[spec.image] = await self.rt.read_image_file(spec.image, RENVIRON)
        await self.rt.create(dataclasses.replace(spec, files=FILES))
        await self.rt.start(spec.name)
        if (await self.rt.state(spec.name)).gone:
            raise RuntimeError(f"{spec.name} disappeared right after it started")
        endpoint = await self.rt.endpoint(spec.name)
        if endpoint is None:
            raise RuntimeError(f"{spec.name} has no endpoint")
        delay, started = 0.0, time.monotonic()
        next_check = started + STATE_CHECK
        while True:
            self.probes += 1
            if await self.rt.answers(spec.name, spec.root_path, endpoint=endpoint):
                return
            now = time.monotonic()
            if now >= next_check:
                next_check = now + STATE_CHECK
                self.state_checks += 1
                state = await self.rt.state(spec.name)
                if not state.running:
                    raise RuntimeError(f"{spec.name} stopped: {state} {await self.rt.logs_tail(spec.name, 20)}")
            if now - started > 300:
                raise RuntimeError(f"{spec.name} did not answer within 300 s")
            delay = probe_delay(now - started, delay)
            await asyncio.sleep(delay)


def make_home(path: Path, uid: int, gid: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)


def session_spec(
    run: str, index: int, image: str, home_root: str, network: str = "byoi-sessions", listen_socket: bool = True
) -> Any:
    from byoi.runtime.spec import SessionSpec

    session_id = f"{run[:8]}{index:08x}"
    return SessionSpec(
        name=f"byoi-{run}-{session_id}-1",
        image=image,
        uid=1000,
        gid=100,
        user_name="rstudio",
        home_host_path=f"{home_root}/d-bench/user{index:04d}-200001",
        home_mount_path="/home/sagemaker-user",
        root_path=f"/sessions/{session_id}/",
        nano_cpus=1_000_000_000,
        memory_bytes=1 << 30,
        network=network,
        env={"AWS_REGION": "us-east-1"},
        labels={
            "byoi.managed": "true",
            "byoi.installation": run,
            "byoi.bench": run,
            "byoi.app-arn": f"{APP_ARN}/d-bench/user{index:04d}/RSessionGateway/default",
            "byoi.session-id": session_id,
            "byoi.generation": "1",
            "byoi.domain-id": "d-bench",
            "byoi.user-profile": f"user{index:04d}",
        },
        listen_socket=listen_socket,
    )


def per(value: float, n: int, digits: int = 2) -> float:
    return round(value / max(n, 1), digits)


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


# -- Kubernetes ----------------------------------------------------------------------------------------------


class Child:
    """A process running this file in another role; its stdin closing (this process gone) ends it."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise RuntimeError(f"{args[:2]} did not start: {line!r}")

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


def split_requests(counts: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    byoi = {k: v for k, v in counts.items() if not k.startswith("kubelet ")}
    kubelet = {k.removeprefix("kubelet "): v for k, v in counts.items() if k.startswith("kubelet ")}
    return byoi, kubelet


async def measure(
    launcher: Launcher,
    specs_of_round: Any,
    rounds: int,
    stop_timeout: int,
    counts: Any,
    cpus: dict[str, Any],
    failing: Any,
) -> dict[str, Any]:
    """`rounds` rounds of launching a round's specs all at once, then removing them all at once. `counts()`
    gives the requests so far by kind; `cpus` name -> a function giving that process's CPU seconds so far."""
    rt = launcher.rt
    launched = removed = 0
    failed: list[str] = []
    launch_cpu = dict.fromkeys(cpus, 0.0)
    remove_cpu = dict.fromkeys(cpus, 0.0)
    launch_counts: collections.Counter[str] = collections.Counter()
    remove_counts: collections.Counter[str] = collections.Counter()
    wall = remove_wall = 0.0
    probes = checks = 0
    calibration: dict[str, float] = {}
    for r in range(rounds):
        specs = specs_of_round(r)
        c0, k0, p0, s0 = {k: f() for k, f in cpus.items()}, await counts(), launcher.probes, launcher.state_checks
        t0 = time.perf_counter()
        results = await asyncio.gather(*(launcher.launch(s) for s in specs), return_exceptions=True)
        wall += time.perf_counter() - t0
        c1, k1, p1 = {k: f() for k, f in cpus.items()}, await counts(), launcher.probes
        cb, kb = c1, k1  # the removal's baseline
        if r == rounds - 1:
            calibration = await calibrate(launcher, specs[0].name, failing)
            cb, kb = {k: f() for k, f in cpus.items()}, await counts()
        t1 = time.perf_counter()
        await asyncio.gather(*(rt.remove(s.name, stop_timeout) for s in specs), return_exceptions=True)
        remove_wall += time.perf_counter() - t1
        c2, k2 = {k: f() for k, f in cpus.items()}, await counts()
        failed += [repr(x) for x in results if isinstance(x, BaseException)]
        launched += len(specs)
        removed += len(specs)
        probes += p1 - p0
        checks += launcher.state_checks - s0
        for k in cpus:
            launch_cpu[k] += c1[k] - c0[k]
            remove_cpu[k] += c2[k] - cb[k]
        launch_counts.update(diff_counts(k1, k0))
        remove_counts.update(diff_counts(k2, kb))
    ok = launched - len(failed)
    return {
        "ok": ok,
        "removed": removed,
        "failed": failed,
        "wall": wall,
        "remove_wall": remove_wall,
        "probes": probes,
        "state_checks": checks,
        "calibration": calibration,
        "launch_cpu": launch_cpu,
        "remove_cpu": remove_cpu,
        "launch_counts": dict(sorted(launch_counts.items())),
        "remove_counts": dict(sorted(remove_counts.items())),
    }


async def calibrate(launcher: Launcher, live: str, failing: Any, n: int = 100) -> dict[str, float]:
    """byoi CPU of one probe that finds nothing listening yet and of one state read of a live session,
    each measured alone: what waiting for RStudio costs per probe and per state check."""
    rt = launcher.rt
    c0 = self_cpu()
    for _ in range(n):
        await rt.answers(live, "/sessions/x/", endpoint=failing)
    c1 = self_cpu()
    for _ in range(n):
        await rt.state(live)
    c2 = self_cpu()
    return {"probe_ms": (c1 - c0) * 1000 / n, "state_check_ms": (c2 - c1) * 1000 / n}


def rounds_for(n: int, args: argparse.Namespace) -> int:
    return max(1, -(-args.min_launches // n))


def level_head(n: int, rounds: int, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "launches": n,
        "rounds": rounds,
        "failed": len(m["failed"]),
        **({"failures": m["failed"][:3]} if m["failed"] else {}),
        "wall_s_per_round": round(m["wall"] / rounds, 2),
        "byoi_cpu_ms_per_launch": per(m["launch_cpu"]["byoi"] * 1000, m["ok"], 1),
        **waiting_split(m),
    }


def waiting_split(m: dict[str, Any]) -> dict[str, Any]:
    """byoi's CPU per launch split into the launch's steps and its waiting for RStudio to answer (probes and
    state checks, at their calibrated cost), since the waiting grows with how long the sessions take to start."""
    cal, ok = m["calibration"], max(m["ok"], 1)
    total = m["launch_cpu"]["byoi"] * 1000 / ok
    failed_probes = max(m["probes"] - m["ok"], 0)  # each launch's last probe is the one that is answered
    waiting = (failed_probes * cal["probe_ms"] + m["state_checks"] * cal["state_check_ms"]) / ok
    return {
        # None when the estimate exceeds the total: the calibration (made alone) does not fit that level's load
        "byoi_cpu_ms_per_launch_steps_estimate": round(total - waiting, 1) if waiting <= total else None,
        "byoi_cpu_ms_per_launch_waiting_estimate": round(waiting, 1),
        "probes_per_launch": per(m["probes"], ok),
        "state_checks_per_launch": per(m["state_checks"], ok),
        "calibrated_cpu_ms": {k: round(v, 3) for k, v in cal.items()},
    }


async def kube_level(n: int, args: argparse.Namespace) -> dict[str, Any]:
    from lightkube import KubeConfig
    from lightkube.config.models import Cluster, User

    from byoi.runtime.base import Endpoint
    from byoi.runtime.kubernetes import KubernetesRuntime

    port = free_port()
    emulator = Child("--role", "emulator", "--port", str(port))
    kubelet = None
    rt = None
    rounds = rounds_for(n, args)
    try:
        url = f"http://127.0.0.1:{port}"
        kubelet = Child("--role", "kubelet", "--url", url)
        config = KubeConfig.from_one(cluster=Cluster(server=url), user=User(), namespace=NAMESPACE)
        rt = KubernetesRuntime(
            NAMESPACE,
            config,
            trust_env=False,
            start_timeout=args.start_timeout,
            request_timeout=args.request_timeout,
        )
        launcher = Launcher(rt)
        run = uuid.uuid4().hex[:16]
        homes = "/var/lib/byoi/homes"
        warm = session_spec(run, 0xFFFF, IMAGE_K8S, homes)
        await launcher.launch(warm)  # warm-up, uncounted
        await rt.remove(warm.name, 0)

        async def counts() -> dict[str, int]:
            return dict((await asyncio.to_thread(emulator.ask, "stats"))["requests"])

        def specs_of_round(r: int) -> list[Any]:
            return [session_spec(run, r * n + i, IMAGE_K8S, homes) for i in range(n)]

        async def objects() -> int:
            return int((await asyncio.to_thread(emulator.ask, "stats"))["objects"])

        cpus = {"byoi": self_cpu, "emulator": emulator.cpu, "kubelet": kubelet.cpu}
        refused = Endpoint(host="127.0.0.1", port=free_port())  # nothing listens there: a probe too early
        m = await measure(launcher, specs_of_round, rounds, 0, counts, cpus, refused)
        peak = await objects()
    finally:
        if rt is not None:
            await rt.close()
        if kubelet is not None:
            kubelet.stop()
        emulator.stop()

    ok, removed = m["ok"], m["removed"]
    byoi_reqs, kubelet_reqs = split_requests(m["launch_counts"])
    remove_reqs, _ = split_requests(m["remove_counts"])
    return {
        **level_head(n, rounds, m),
        "api_requests_per_launch": per(sum(byoi_reqs.values()), ok),
        # a state check of a live session is one GET of its pod
        "api_requests_per_launch_excluding_waiting": per(sum(byoi_reqs.values()) - m["state_checks"], ok),
        "api_requests_per_launch_by_kind": {k: per(v, ok) for k, v in byoi_reqs.items()},
        "emulator_cpu_ms_per_launch": per(m["launch_cpu"]["emulator"] * 1000, ok, 1),
        "kubelet_cpu_ms_per_launch": per(m["launch_cpu"]["kubelet"] * 1000, ok, 1),
        "kubelet_requests_per_launch_by_kind": {k: per(v, ok) for k, v in kubelet_reqs.items()},
        "emulator_objects_after": peak,
        "removal": {
            "wall_s_per_round": round(m["remove_wall"] / rounds, 2),
            "byoi_cpu_ms_per_session": per(m["remove_cpu"]["byoi"] * 1000, removed, 1),
            "api_requests_per_session": per(sum(remove_reqs.values()), removed),
            "api_requests_per_session_by_kind": {k: per(v, removed) for k, v in remove_reqs.items()},
            "emulator_cpu_ms_per_session": per(m["remove_cpu"]["emulator"] * 1000, removed, 1),
        },
    }


# -- Docker --------------------------------------------------------------------------------------------------

_ID = re.compile(r"^[0-9a-f]{12,64}$|^byoi-|^sha256:")


def engine_kind(method: str, path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if parts and re.fullmatch(r"v\d+\.\d+", parts[0]):
        parts = parts[1:]
    if len(parts) >= 2 and parts[0] in ("containers", "networks", "images") and parts[1] not in ("create", "json"):
        # images are named by a reference with slashes: everything up to the last part is the name
        tail = parts[-1] if parts[0] == "images" else "/".join(parts[2:])
        parts = [parts[0], "{id}", *([tail] if tail and (parts[0] != "images" or len(parts) > 2) else [])]
    return f"{method} /{'/'.join(parts)}"


class EngineCounter:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def trace_config(self) -> Any:
        import aiohttp

        async def on_start(_session: Any, _ctx: Any, params: Any) -> None:
            self.counts[engine_kind(params.method, params.url.path)] += 1

        tc = aiohttp.TraceConfig()
        tc.on_request_start.append(on_start)
        tc.freeze()
        return tc


async def docker_level(n: int, run: str, image: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from byoi.runtime.base import Endpoint
    from byoi.runtime.docker import DockerRuntime

    rt = DockerRuntime(socket_root=work / "s")
    counter = EngineCounter()
    rt.docker.session._trace_configs.append(counter.trace_config())  # count every request the runtime sends
    network = NETWORK
    engine = pids_named("dockerd", "containerd")
    launcher = Launcher(rt)
    homes = str(work / "homes")
    level = f"{run[:8]}{n:04x}"
    rounds = rounds_for(n, args)

    async def counts() -> dict[str, int]:
        return dict(counter.counts)

    def specs_of_round(r: int) -> list[Any]:
        return [session_spec(level, r * n + i, image, homes, network) for i in range(n)]

    def engine_cpu() -> float:
        return sum(proc_cpu(p) for p in engine)

    warm = session_spec(level, 0xFFFF, image, homes, network)
    try:
        await launcher.launch(warm)  # warm-up, uncounted
        await rt.remove(warm.name, args.stop_timeout)
        cpus = {"byoi": self_cpu, "engine": engine_cpu}
        no_socket = Endpoint(socket=str(work / "s" / "none" / "rserver.sock"))  # rserver not listening yet
        m = await measure(launcher, specs_of_round, rounds, args.stop_timeout, counts, cpus, no_socket)
    finally:
        await rt.close()
    ok, removed = m["ok"], m["removed"]
    return {
        **level_head(n, rounds, m),
        "engine_requests_per_launch": per(sum(m["launch_counts"].values()), ok),
        # a state check is one inspect (GET /containers/{id}/json)
        "engine_requests_per_launch_excluding_waiting": per(sum(m["launch_counts"].values()) - m["state_checks"], ok),
        "engine_requests_per_launch_by_kind": {k: per(v, ok) for k, v in m["launch_counts"].items()},
        "engine_cpu_ms_per_launch": per(m["launch_cpu"]["engine"] * 1000, ok, 1),
        "removal": {
            "wall_s_per_round": round(m["remove_wall"] / rounds, 2),
            "byoi_cpu_ms_per_session": per(m["remove_cpu"]["byoi"] * 1000, removed, 1),
            "engine_requests_per_session": per(sum(m["remove_counts"].values()), removed),
            "engine_requests_per_session_by_kind": {k: per(v, removed) for k, v in m["remove_counts"].items()},
            "engine_cpu_ms_per_session": per(m["remove_cpu"]["engine"] * 1000, removed, 1),
        },
    }


def network_exists(name: str) -> bool:
    return subprocess.run(["docker", "network", "inspect", name], capture_output=True).returncode == 0


def docker_cleanup(run: str, made_network: bool) -> dict[str, Any]:
    """Remove every container of this run (by its label), and the sessions network if this run made it."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=byoi.bench={run}"], capture_output=True, text=True
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    removed = not made_network
    for _ in range(5 if made_network else 0):
        if subprocess.run(["docker", "network", "rm", NETWORK], capture_output=True).returncode == 0:
            removed = True
            break
        time.sleep(1)
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=byoi.bench={run}"], capture_output=True, text=True
    ).stdout.split()
    network = removed if made_network else None  # None: byoi's network was there before; left as found
    return {"containers_left": len(left), "network_made_by_this_run": made_network, "network_removed": network}


def flatness(levels: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Each figure at the top level divided by the same figure at the lowest level (1.0: flat)."""
    low, high = levels[0], levels[-1]
    out: dict[str, Any] = {"from_launches": low["launches"], "to_launches": high["launches"]}
    for key in keys:
        if low.get(key):
            out[key] = round(high[key] / low[key], 2)
    return out


def parse_levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["main", "emulator", "kubelet"], default="main", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--levels", default="1,10,100", help="concurrent launches on Kubernetes (emulated)")
    parser.add_argument("--docker-levels", default=None, help="concurrent launches on Docker (default: --levels)")
    parser.add_argument("--skip-docker", action="store_true")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="the Kubernetes runtime's, per request")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument(
        "--min-launches", type=int, default=10, help="a level with fewer launches runs this many in rounds"
    )
    parser.add_argument("--stop-timeout", type=int, default=2, help="seconds a Docker session has to stop")
    args = parser.parse_args()
    if args.role == "emulator":
        emulator_role(args.port)
        return
    if args.role == "kubelet":
        kubelet_role(args.url)
        return

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the clean-up below runs
    report: dict[str, Any] = {
        "benchmark": "kubernetes_launch",
        "machine": {"cpus": os.cpu_count()},
        "kubernetes": {
            "api_server": "kmock KubernetesEmulator (TEST DOUBLE of the API server), own process, HTTP on 127.0.0.1",
            "kubelet": "this benchmark's kubelet process (TEST DOUBLE): watch pods, Service to 127.0.0.1, "
            "Pulling/Pulled events, status Running+Ready",
            "request_timeout_s": args.request_timeout,
            "levels": [],
        },
    }
    for n in parse_levels(args.levels):
        report["kubernetes"]["levels"].append(asyncio.run(kube_level(n, args)))
        print(f"kubernetes {n}: done", file=sys.stderr, flush=True)
    keys = (
        "byoi_cpu_ms_per_launch",
        "byoi_cpu_ms_per_launch_steps_estimate",
        "api_requests_per_launch",
        "api_requests_per_launch_excluding_waiting",
        "emulator_cpu_ms_per_launch",
    )
    report["kubernetes"]["top_over_lowest"] = flatness(report["kubernetes"]["levels"], keys)

    if not args.skip_docker:
        from tests.support.docker_images import build_test_image

        image = build_test_image("rstudio-standin")
        run = uuid.uuid4().hex[:12]
        work = Path(tempfile.mkdtemp(prefix="bk-", dir="/tmp"))  # short: session socket paths must fit 107 bytes
        report["docker"] = {
            "engine": "Docker Engine (real), requests counted by an aiohttp TraceConfig on the runtime's client",
            "image": f"{image} (tests/images/rstudio-standin: STAND-IN, a TEST DOUBLE for the RStudio IDE binary only)",
            "levels": [],
        }
        made_network = not network_exists(NETWORK)
        try:
            for n in parse_levels(args.docker_levels or args.levels):
                report["docker"]["levels"].append(asyncio.run(docker_level(n, run, image, work, args)))
                print(f"docker {n}: done", file=sys.stderr, flush=True)
        finally:
            report["docker"]["clean_up"] = docker_cleanup(run, made_network)
            shutil.rmtree(work, ignore_errors=True)
        keys = (
            "byoi_cpu_ms_per_launch",
            "byoi_cpu_ms_per_launch_steps_estimate",
            "engine_requests_per_launch",
            "engine_requests_per_launch_excluding_waiting",
            "engine_cpu_ms_per_launch",
        )
        report["docker"]["top_over_lowest"] = flatness(report["docker"]["levels"], keys)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
