"""CreateDomain / DescribeDomain / ListDomains throughput: byoi against moto in server mode, same run.

Both servers run on loopback as separate processes and are driven by the same boto3 code: first one
client issuing calls back to back (latency-bound), then `--threads` clients at once (throughput-bound).
Prints JSON with operations per second for each, and byoi/moto ratios (above 1 means byoi is faster).

    .venv/bin/python bench/domains_vs_moto.py [--domains 200] [--describes 400] [--lists 200] [--threads 8]

moto keeps everything in memory and checks nothing; byoi validates each request against the model,
verifies its SigV4 signature against stored keys, and commits to SQLite (WAL) or PostgreSQL.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx2 as httpx
from botocore.config import Config

ROLE = "arn:aws:iam::000000000000:role/bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not start")


def start_byoi(workdir: Path, database_url: str | None) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    port = free_port()
    args = [sys.executable, "-m", "byoi", "server", "--port", str(port), "--data-dir", str(workdir)]
    args += ["--registry", "http://127.0.0.1:9", "--log-level", "WARNING"]
    if database_url:
        args += ["--database-url", database_url]
    proc = subprocess.Popen(args, stdout=(workdir / "byoi.log").open("wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    wait_up(endpoint + "/healthz", proc)
    creds = configparser.ConfigParser()
    creds.read(workdir / "credentials")
    keys = {"aws_access_key_id": creds["byoi"]["aws_access_key_id"]}
    keys["aws_secret_access_key"] = creds["byoi"]["aws_secret_access_key"]
    return proc, endpoint, keys


def start_moto(workdir: Path) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    port = free_port()
    moto = str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=(workdir / "moto.log").open("wb"), stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    wait_up(endpoint + "/moto-api/", proc)
    return proc, endpoint, {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def client(endpoint: str, keys: dict[str, str]) -> Any:
    return boto3.session.Session(region_name="us-east-1", **keys).client(
        "sagemaker", endpoint_url=endpoint, config=Config(retries={"max_attempts": 1})
    )


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def timed(n: int, threads: int, make_client: Callable[[], Any], op: Callable[[Any, int], Any]) -> float:
    """Operations per second for n calls of `op(client, i)` spread over `threads` clients."""
    clients = [make_client() for _ in range(threads)]
    op(clients[0], 0)  # warm up connection pools
    started = time.perf_counter()
    if threads == 1:
        for i in range(n):
            op(clients[0], i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i: op(clients[i % threads], i), range(n)))
    return rate(n, time.perf_counter() - started)


def measure(endpoint: str, keys: dict[str, str], args: argparse.Namespace, threads: int) -> dict[str, Any]:
    made: list[str] = []
    run = uuid.uuid4().hex[:6]

    def create(c: Any, i: int) -> None:
        made.append(
            c.create_domain(
                DomainName=f"bench-{run}-{threads}-{i}-{uuid.uuid4().hex[:6]}",
                AuthMode="IAM",
                DefaultUserSettings={"ExecutionRole": ROLE},
                SubnetIds=["subnet-1"],
                VpcId="vpc-1",
            )["DomainArn"].rsplit("/", 1)[1]  # moto's answer has no DomainId member
        )

    def describe(c: Any, i: int) -> None:
        c.describe_domain(DomainId=made[i % len(made)])

    def list_page(c: Any, i: int) -> None:
        c.list_domains(MaxResults=args.page_size)

    make = lambda: client(endpoint, keys)  # noqa: E731
    result = {
        "CreateDomain": timed(args.domains, threads, make, create),
        "DescribeDomain": timed(args.describes, threads, make, describe),
        "ListDomains": timed(args.lists, threads, make, list_page),
    }
    result["list_items_per_call"] = len(make().list_domains(MaxResults=args.page_size)["Domains"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=200)
    parser.add_argument("--describes", type=int, default=400)
    parser.add_argument("--lists", type=int, default=200)
    parser.add_argument("--page-size", type=int, default=20)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--database-url", default=os.environ.get("BYOI_BENCH_DATABASE_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="byoi-bench-") as tmp:
        workdir = Path(tmp)
        byoi_proc, byoi_url, byoi_keys = start_byoi(workdir, args.database_url)
        moto_proc, moto_url, moto_keys = start_moto(workdir)
        try:
            report: dict[str, Any] = {
                "store": "postgresql" if args.database_url else "sqlite",
                "calls": {"create": args.domains, "describe": args.describes, "list": args.lists},
            }
            for threads in (1, args.threads):
                byoi_r = measure(byoi_url, byoi_keys, args, threads)
                moto_r = measure(moto_url, moto_keys, args, threads)
                report[f"threads_{threads}"] = {
                    "byoi_ops_per_s": byoi_r,
                    "moto_ops_per_s": moto_r,
                    "ratio_byoi_over_moto": {
                        op: round(byoi_r[op] / moto_r[op], 2) if moto_r[op] else None
                        for op in ("CreateDomain", "DescribeDomain", "ListDomains")
                    },
                }
        finally:
            for proc in (byoi_proc, moto_proc):
                proc.terminate()
                proc.wait(15)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
