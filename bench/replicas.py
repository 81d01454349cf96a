"""Catalog throughput of one `byoi server` against two replicas on the same PostgreSQL, in the same run, with
the CPU of every party (the load generator, each server, PostgreSQL, the rest of the machine) so that it is
clear whether the control plane or the client is the limit on this machine. Prints one JSON document.

    .venv/bin/python bench/replicas.py [--images 1000] [--versions-per-image 5] [--seconds 8] [--repeats 2]
                                       [--clients 8] [--client raw|boto3] [--workloads describe,list,mixed]
                                       [--postgres-url postgresql://...]

Setup: a fresh database on the PostgreSQL server (--postgres-url, else BYOI_TEST_POSTGRES_URL), filled straight
into the store with `--images` images of `--versions-per-image` CREATED versions each (as bench/catalog.py
fills it), a loopback registry (CNCF Distribution) holding one tiny single-layer image for CreateImageVersion,
and two real `byoi server` replicas, A and B, on that database, each with its own data dir, the same
BYOI_MASTER_KEY and the same homes root and builds directory (as tests/test_replicas.py starts two; the
installation id is in the store, and the run checks that both report the same). A "one replica" phase sends
every request to A (B runs idle: its CPU is reported, a few ms a second for its reconciler); a "two replicas"
phase has every client alternate its requests between A and B. The phases are interleaved (one, two, per
workload, `--repeats` times) so that anything else the machine does at the time lands on both alike; the
ratios are of the means.

Workloads, each phase `--seconds` long: `describe` (DescribeImageVersion of a random image and version), `list`
(ListImages, MaxResults 50) and `mixed` (90% describe, 8% list, 2% CreateImageVersion of the tiny image into
one of 20 write images; each create also starts the replicas' background resolve and inspection, which is
part of what the control plane does). After `mixed` the run waits until no version is CREATING before the
next phase, so one phase's background work does not land in another's.

Load generator: `--clients` processes (not threads: one Python process signing requests is bound by its GIL),
each with one request in flight at a time on keep-alive HTTP/1.1 connections. `raw` (default) signs each
request with botocore's own SigV4 signer (`SigV4Auth`, what boto3 uses) and sends the awsJson1.1 body itself
over `http.client`; `boto3` uses full boto3 clients (about three times the client CPU per request). The
processes start, import and connect first; counting starts at one instant for all of them and ends at
another. CPU is read from the kernel for the window: the clients' getrusage, each server's and every
`postgres` process's /proc/<pid>/stat (PostgreSQL is shared with whatever else uses that server), and the
machine's /proc/stat busy time; `other` is the machine's busy time that none of these account for (another
job on the machine shows up there). CPU figures are in cores (CPU seconds per second of wall time; this
machine has os.cpu_count() of them) and in ms per request.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CLK_TCK = os.sysconf("SC_CLK_TCK")
WRITE_IMAGES = 20
MIXES = {
    "describe": {"describe": 1.0},
    "list": {"list": 1.0},
    "mixed": {"describe": 0.90, "list": 0.08, "create": 0.02},
}


# -- CPU accounting ----------------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_cpu() -> float:
    """CPU seconds of every process named postgres (the server and its backends) alive now; backends that
    exit during a window take their time with them, so the figure is a lower bound."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += proc_cpu(int(entry.name))
            except OSError:
                continue
    return total


def all_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds) of every process alive now."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = ((entry / "comm").read_text().strip(), proc_cpu(int(entry.name)))
            except OSError:
                continue
    return found


def top_others(before: dict, after: dict, exclude: set[int], wall: float) -> dict[str, float]:
    """The processes outside the benchmark that used the most CPU in the window, by name, in cores."""
    used: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        if pid in exclude or name == "postgres":
            continue
        delta = cpu - before.get(pid, (name, 0.0))[1]
        if delta > 0:
            used[name] = used.get(name, 0.0) + delta
    top = sorted(used.items(), key=lambda kv: -kv[1])[:4]
    return {name: round(cpu / wall, 2) for name, cpu in top if cpu / wall >= 0.01}


def machine_busy() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


# -- the load generator's processes ------------------------------------------------------------------------


class RawClient:
    """SageMaker's awsJson1.1 wire protocol, signed with botocore's SigV4 signer, over one keep-alive
    connection per endpoint."""

    def __init__(self, endpoint: str, key: str, secret: str) -> None:
        from botocore.auth import SigV4Auth
        from botocore.credentials import Credentials

        self.endpoint = endpoint
        self.host = endpoint.split("//", 1)[1]
        self.signer = SigV4Auth(Credentials(key, secret), "sagemaker", "us-east-1")
        self.conn = http.client.HTTPConnection(self.host, timeout=60)

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        from botocore.awsrequest import AWSRequest

        body = json.dumps(params).encode()
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"SageMaker.{operation}",
            "Host": self.host,
        }
        request = AWSRequest(method="POST", url=self.endpoint + "/", data=body, headers=headers)
        self.signer.add_auth(request)
        for attempt in (0, 1):
            try:
                self.conn.request("POST", "/", body=body, headers=dict(request.headers.items()))
                answer = self.conn.getresponse()
                data = answer.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, timeout=60)
                if attempt:
                    raise
        if answer.status != 200:
            raise RuntimeError(f"{operation}: {answer.status} {data[:200]!r}")
        return json.loads(data or b"{}")


class Boto3Client:
    def __init__(self, endpoint: str, key: str, secret: str) -> None:
        import boto3
        from botocore.config import Config

        self.sm = boto3.client(
            "sagemaker",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": 1}, max_pool_connections=2),
        )

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        name = "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")
        return getattr(self.sm, name)(**params)


def worker(job: dict[str, Any], out: Any) -> None:
    """One client process: connect, wait for the common start, send requests until the common end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    make = RawClient if job["client"] == "raw" else Boto3Client
    clients = [make(e, job["key"], job["secret"]) for e in job["endpoints"]]
    rng = random.Random(job["seed"])
    kinds, weights = zip(*MIXES[job["mix"]].items(), strict=True)
    base_image = job["base_image"]

    def request(kind: str) -> tuple[str, dict[str, Any]]:
        if kind == "describe":
            image = f"bench-{rng.randrange(job['images']):05d}"
            return "DescribeImageVersion", {"ImageName": image, "Version": rng.randint(1, job["versions"])}
        if kind == "list":
            return "ListImages", {"MaxResults": 50}
        image = f"bench-w-{rng.randrange(WRITE_IMAGES):02d}"
        return "CreateImageVersion", {"ImageName": image, "BaseImage": base_image, "ClientToken": str(uuid.uuid4())}

    for c in clients:  # connect (and for boto3, load the service model) before the window
        c.call("ListImages", {"MaxResults": 1})
    time.sleep(max(0.0, job["start"] - time.time()))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    latencies: dict[str, list[float]] = {k: [] for k in kinds}
    errors: list[str] = []
    i = 0
    while time.time() < job["end"]:
        kind = rng.choices(kinds, weights)[0]
        operation, params = request(kind)
        t0 = time.perf_counter()
        try:
            clients[i % len(clients)].call(operation, params)
            latencies[kind].append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{operation}: {exc}"[:300])
        i += 1
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    out.put({"latencies": latencies, "errors": errors, "cpu": cpu})


def run_phase(
    label: str, mix: str, endpoints: list[str], servers: dict[str, int], args: argparse.Namespace, env: dict
) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    warmup = 3.0 if args.client == "boto3" else 1.5
    start = time.time() + warmup
    end = start + args.seconds
    procs = []
    for n in range(args.clients):
        job = {
            **env,
            "mix": mix,
            "client": args.client,
            "seed": hash((label, mix, n)) & 0xFFFFFFFF,
            "start": start,
            # each client begins on another replica, so both see the same load from the first request on
            "endpoints": endpoints[n % len(endpoints) :] + endpoints[: n % len(endpoints)],
            "end": end,
        }
        p = ctx.Process(target=worker, args=(job, out), daemon=True)
        p.start()
        procs.append(p)
    time.sleep(max(0.0, start - time.time()))
    s0 = {name: proc_cpu(pid) for name, pid in servers.items()}
    pg0, busy0, t0, every0 = postgres_cpu(), machine_busy(), time.perf_counter(), all_cpu()
    time.sleep(max(0.0, end - time.time()))
    s1 = {name: proc_cpu(pid) for name, pid in servers.items()}
    pg1, busy1, wall, every1 = postgres_cpu(), machine_busy(), time.perf_counter() - t0, all_cpu()
    ours = {os.getpid(), *servers.values(), *(p.pid for p in procs if p.pid)}
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    latencies: dict[str, list[float]] = {}
    for r in results:
        for kind, lat in r["latencies"].items():
            latencies.setdefault(kind, []).extend(lat)
    errors = [e for r in results for e in r["errors"]]
    done = sum(len(v) for v in latencies.values())
    client_cpu = sum(r["cpu"] for r in results)
    server_cpu = {name: s1[name] - s0[name] for name in servers}
    pg = pg1 - pg0
    busy = busy1 - busy0
    other = busy - client_cpu - sum(server_cpu.values()) - pg
    cores = os.cpu_count() or 1

    def c(x: float) -> float:
        return round(x / wall, 2)

    def ms(x: float) -> float:
        return round(x * 1000 / max(done, 1), 3)

    by_kind = {}
    for kind, lat in sorted(latencies.items()):
        lat.sort()
        if lat:
            by_kind[kind] = {
                "requests": len(lat),
                "p50_ms": round(lat[len(lat) // 2] * 1000, 2),
                "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)] * 1000, 2),
            }
    shares = {"client": client_cpu, "servers": sum(server_cpu.values()), "postgres": pg, "other": max(other, 0.0)}
    biggest = max(shares, key=lambda k: shares[k])
    saturated = busy / wall >= 0.9 * cores
    verdict = (
        f"CPU-bound: the machine's {cores} cores are {busy / wall / cores:.0%} busy; "
        f"the largest share is the {biggest} ({shares[biggest] / wall:.2f} cores)"
        if saturated
        else f"not CPU-bound ({busy / wall / cores:.0%} of {cores} cores busy): "
        f"{args.clients} requests in flight do not keep the control plane busy"
    )
    return {
        "replicas": len(endpoints),
        "workload": mix,
        "seconds": round(wall, 2),
        "requests": done,
        "errors": len(errors),
        **({"first_errors": errors[:3]} if errors else {}),
        "throughput_per_s": round(done / wall, 1),
        "by_kind": by_kind,
        "cpu_cores": {
            "client": c(client_cpu),
            **{f"server_{k}": c(v) for k, v in server_cpu.items()},
            "postgres": c(pg),
            "other": c(other),
            "machine_busy": c(busy),
        },
        "other_processes_cores": top_others(every0, every1, ours, wall),
        "cpu_ms_per_request": {
            "client": ms(client_cpu),
            "servers": ms(sum(server_cpu.values())),
            "postgres": ms(pg),
        },
        "client_cpu_share_of_machine": round(client_cpu / busy, 3) if busy else None,
        "verdict": verdict,
    }


# -- setup -------------------------------------------------------------------------------------------------


def tiny_image(registry: str, work: Path) -> str:
    """A single-layer image of one small file, pushed to the loopback registry; its local tag is removed."""
    tag = f"{registry}/bench/tiny:v1"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"byoi replicas benchmark\n"
        info = tarfile.TarInfo("etc/bench-tiny")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run(["docker", "import", "-", tag], input=buf.getvalue(), check=True, capture_output=True)
    try:
        subprocess.run(["docker", "push", tag], check=True, capture_output=True)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    return tag


def creating(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute("SELECT count(*) FROM image_versions WHERE status = 'CREATING'").fetchone()
    return int(row[0]) if row else 0


def settle(database_url: str, timeout: float = 120.0) -> float:
    started = time.monotonic()
    while creating(database_url) and time.monotonic() - started < timeout:
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)


def write_check(database_url: str) -> dict[str, Any]:
    """The versions CreateImageVersion made across the replicas: numbered 1..n per image with no gap or
    duplicate, and how they ended."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT i.name, v.version, v.status FROM image_versions v JOIN images i ON i.id = v.image_id"
            " WHERE i.name LIKE 'bench-w-%' ORDER BY i.name, v.version"
        ).fetchall()
    by_image: dict[str, list[int]] = {}
    statuses: dict[str, int] = {}
    for name, version, status in rows:
        by_image.setdefault(name, []).append(int(version))
        statuses[status] = statuses.get(status, 0) + 1
    gapless = all(v == list(range(1, len(v) + 1)) for v in by_image.values())
    return {"versions_created": len(rows), "numbered_1_to_n_per_image": gapless, "statuses": statuses}


def drop_database(base_url: str, database_url: str) -> None:
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def access_key(credentials: Path) -> tuple[str, str]:
    import configparser

    cp = configparser.ConfigParser()
    cp.read(credentials)
    return cp["byoi"]["aws_access_key_id"], cp["byoi"]["aws_secret_access_key"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--versions-per-image", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="per workload and topology")
    parser.add_argument("--clients", type=int, default=8, help="load-generator processes, one request in flight each")
    parser.add_argument("--client", choices=["raw", "boto3"], default="raw")
    parser.add_argument("--workloads", default="describe,list,mixed")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of one/two phases, interleaved")
    parser.add_argument("--postgres-url", default=os.environ.get("BYOI_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    if not args.postgres_url:
        parser.error("--postgres-url (or BYOI_TEST_POSTGRES_URL) is required")

    from catalog import fill
    from cryptography.fernet import Fernet
    from tests.conftest import fresh_postgres_database
    from tests.support.processes import ByoiServer, free_port, start_registry

    from byoi.cli.client import extension_client

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the clean-up below runs
    work = Path(tempfile.mkdtemp(prefix="byoi-bench-replicas-"))
    database_url = fresh_postgres_database(args.postgres_url)
    port = free_port()
    registry_proc = start_registry(work / "registry", port)
    registry = f"127.0.0.1:{port}"
    servers: list[ByoiServer] = []
    report: dict[str, Any] = {
        "benchmark": "replicas",
        "machine": {"cpus": os.cpu_count()},
        "images": args.images,
        "versions": args.images * args.versions_per_image,
        "clients": args.clients,
        "client": args.client,
        "seconds_per_phase": args.seconds,
    }
    try:
        base_image = tiny_image(registry, work)
        t0 = time.perf_counter()
        asyncio.run(fill(database_url, args.images, args.versions_per_image))
        report["fill_seconds"] = round(time.perf_counter() - t0, 1)
        env = {
            "BYOI_LOG_LEVEL": "WARNING",
            "BYOI_MASTER_KEY": Fernet.generate_key().decode(),
            "BYOI_SESSION_HOMES_ROOT": str(work / "shared" / "homes"),
            "BYOI_BUILD_DIR": str(work / "shared" / "builds"),
        }

        def replica(name: str) -> ByoiServer:
            srv = ByoiServer(
                data_dir=work / name, registries=[f"http://{registry}"], database_url=database_url, env=env
            )
            servers.append(srv)
            return srv.start()

        a = replica("a")
        key, secret = access_key(a.credentials_file)
        sm = a.client()
        for i in range(WRITE_IMAGES):
            sm.create_image(ImageName=f"bench-w-{i:02d}", RoleArn="arn:aws:iam::000000000000:role/bench")
        job = {
            "key": key,
            "secret": secret,
            "images": args.images,
            "versions": args.versions_per_image,
            "base_image": base_image,
        }
        workloads = [w for w in args.workloads.split(",") if w]
        b = replica("b")
        assert a.proc is not None and b.proc is not None
        a.session()  # AWS_SHARED_CREDENTIALS_FILE for the extension client
        ids = {extension_client(srv.endpoint, "byoi").get_server_info()["InstallationId"] for srv in (a, b)}
        report["one_installation"] = len(ids) == 1
        pids = {"a": a.proc.pid, "b": b.proc.pid}
        phases: list[dict[str, Any]] = []
        for rep in range(args.repeats):
            for mix in workloads:
                for label, endpoints in (("one", [a.endpoint]), ("two", [a.endpoint, b.endpoint])):
                    phase = run_phase(f"{label}{rep}", mix, endpoints, pids, args, job)
                    phase["settled_after_s"] = settle(database_url)
                    phases.append(phase)
                    print(f"{label}, {mix}: {phase['throughput_per_s']}/s", file=sys.stderr, flush=True)
        report["phases"] = phases

        def mean(values: list[float]) -> float:
            return sum(values) / max(len(values), 1)

        ratios = {}
        for mix in workloads:
            one = [p for p in phases if p["replicas"] == 1 and p["workload"] == mix]
            two = [p for p in phases if p["replicas"] == 2 and p["workload"] == mix]
            t1, t2 = mean([p["throughput_per_s"] for p in one]), mean([p["throughput_per_s"] for p in two])
            ratios[mix] = {
                "throughput_per_s_one": round(t1, 1),
                "throughput_per_s_two": round(t2, 1),
                "throughput_two_over_one": round(t2 / t1, 3),
                "server_cpu_ms_per_request_one": round(mean([p["cpu_ms_per_request"]["servers"] for p in one]), 3),
                "server_cpu_ms_per_request_two": round(mean([p["cpu_ms_per_request"]["servers"] for p in two]), 3),
                "client_cores_one": round(mean([p["cpu_cores"]["client"] for p in one]), 2),
                "client_cores_two": round(mean([p["cpu_cores"]["client"] for p in two]), 2),
                "other_cores_one": round(mean([p["cpu_cores"]["other"] for p in one]), 2),
                "other_cores_two": round(mean([p["cpu_cores"]["other"] for p in two]), 2),
            }
        report["ratios"] = ratios
        report["write_check"] = write_check(database_url)
    finally:
        for srv in servers:
            srv.stop()
        registry_proc.terminate()
        registry_proc.wait(10)
        drop_database(args.postgres_url, database_url)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
