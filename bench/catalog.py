"""Catalog benchmark: DescribeImageVersion and ListImages through signed HTTP, against a trivial signed
request's floor, on SQLite and PostgreSQL. Prints JSON.

    .venv/bin/python bench/catalog.py [--images 10000] [--versions-per-image 5] [--requests 2000] [--threads 8]
                                      [--postgres-url postgresql://...]

The catalog is filled straight into the store (bulk inserts of CREATED versions, the same rows the
services write), then a real `byoi server` is started on it and measured with boto3 clients. The floor is
`Byoi.GetServerInfo`: same server, same signing and dispatch, no store access; each operation's cost is
reported as a ratio to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import fresh_postgres_database  # noqa: E402
from tests.support.processes import ByoiServer  # noqa: E402

from byoi.cli.client import extension_client  # noqa: E402
from byoi.store.db import Database, migrate  # noqa: E402
from byoi.store.schema import image_versions, images  # noqa: E402


async def fill(url: str, n_images: int, per_image: int) -> None:
    await asyncio.to_thread(migrate, url)
    db = Database(url)
    now = time.time()
    digest = "sha256:" + "ab" * 32
    async with db.transaction() as conn:
        for start in range(0, n_images, 1000):
            rows = [
                {
                    "name": f"bench-{i:05d}",
                    "name_key": f"bench-{i:05d}",
                    "status": "CREATED",
                    "spec": {"RoleArn": "arn:aws:iam::000000000000:role/bench"},
                    "last_version": per_image,
                    "created_at": now + i * 1e-3,
                    "modified_at": now + i * 1e-3,
                }
                for i in range(start, min(start + 1000, n_images))
            ]
            await conn.execute(sa.insert(images), rows)
        ids = [r.id for r in await conn.execute(sa.select(images.c.id).order_by(images.c.id))]
        batch = []
        for image_id in ids:
            for v in range(1, per_image + 1):
                batch.append(
                    {
                        "image_id": image_id,
                        "version": v,
                        "status": "CREATED",
                        "base_image": "bench/r:latest",
                        "container_image": f"127.0.0.1:5000/bench/r@{digest}",
                        "client_token": str(uuid.uuid4()),
                        "spec": {},
                        "created_at": now,
                        "modified_at": now,
                    }
                )
            if len(batch) >= 5000:
                await conn.execute(sa.insert(image_versions), batch)
                batch = []
        if batch:
            await conn.execute(sa.insert(image_versions), batch)
    await db.close()


def measure(label: str, make_call, requests: int, threads: int) -> dict:
    """Run `requests` calls spread over `threads` threads (one client each); latency per call."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = requests // threads

    def worker(seed: int) -> None:
        call = make_call(seed)
        local = []
        for _ in range(per_thread):
            t0 = time.perf_counter()
            call()
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "operation": label,
        "requests": len(latencies),
        "throughput_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


def bench_backend(backend: str, database_url: str | None, args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"byoi-bench-{backend}-"))
    url = database_url or f"sqlite+aiosqlite:///{workdir / 'byoi.db'}"
    t0 = time.perf_counter()
    asyncio.run(fill(url, args.images, args.versions_per_image))
    fill_s = time.perf_counter() - t0
    srv = ByoiServer(
        data_dir=workdir,
        registries=["http://127.0.0.1:5000"],
        database_url=database_url,
        env={"BYOI_LOG_LEVEL": "WARNING"},
    ).start()
    try:

        def floor(seed):
            c = extension_client(srv.endpoint, "byoi")
            return lambda: c.get_server_info()

        def describe(seed):
            c = srv.client()
            rng = random.Random(seed)
            return lambda: c.describe_image_version(
                ImageName=f"bench-{rng.randrange(args.images):05d}", Version=rng.randint(1, args.versions_per_image)
            )

        srv.session()  # sets AWS_SHARED_CREDENTIALS_FILE for the extension client
        results = [
            measure("Floor (Byoi.GetServerInfo)", floor, args.requests, args.threads),
            measure("DescribeImageVersion", describe, args.requests, args.threads),
        ]
        # ListImages paged to the end (MaxResults 100): each page is one request.
        c = srv.client()
        t0 = time.perf_counter()
        lat, token, total = [], None, 0
        while True:
            kwargs = {"MaxResults": 100, **({"NextToken": token} if token else {})}
            s = time.perf_counter()
            page = c.list_images(**kwargs)
            lat.append(time.perf_counter() - s)
            total += len(page["Images"])
            token = page.get("NextToken")
            if not token:
                break
        elapsed = time.perf_counter() - t0
        lat.sort()
        results.append(
            {
                "operation": "ListImages (paged to the end, 100 per page, one client)",
                "requests": len(lat),
                "images_listed": total,
                "throughput_per_s": round(len(lat) / elapsed, 1),
                "p50_ms": round(statistics.median(lat) * 1000, 2),
                "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)] * 1000, 2),
                "seconds_to_list_all": round(elapsed, 2),
            }
        )
        # The paged listing runs on one client, so its floor is measured on one client too.
        single_floor = measure("Floor, one client", floor, 200, 1)
        results.append(single_floor)
        floor_p50 = results[0]["p50_ms"]
        results[1]["p50_ratio_to_floor"] = round(results[1]["p50_ms"] / floor_p50, 2)
        results[2]["p50_ratio_to_floor"] = round(results[2]["p50_ms"] / single_floor["p50_ms"], 2)
        results[1]["throughput_ratio_to_floor"] = round(
            results[1]["throughput_per_s"] / results[0]["throughput_per_s"], 3
        )
        return {"backend": backend, "fill_seconds": round(fill_s, 1), "results": results}
    finally:
        srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--versions-per-image", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--postgres-url", default=None, help="a PostgreSQL server URL; a fresh database is created")
    args = parser.parse_args()
    report = {
        "benchmark": "catalog",
        "images": args.images,
        "versions": args.images * args.versions_per_image,
        "threads": args.threads,
        "backends": [bench_backend("sqlite", None, args)],
    }
    if args.postgres_url:
        report["backends"].append(bench_backend("postgresql", fresh_postgres_database(args.postgres_url), args))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
