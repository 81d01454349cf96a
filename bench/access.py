"""Access benchmark: what the authorization table costs a user's call, against an administrator's, through
signed HTTP on one real `byoi server`. Prints JSON.

    .venv/bin/python bench/access.py [--images 10000] [--attached 100] [--requests 2000] [--threads 8]
                                     [--postgres-url postgresql://...]

The catalog (`--images` images with one CREATED version each) is filled straight into the store, as in
bench/catalog.py; then the server starts, and through the API an administrator creates a domain whose default
settings attach `--attached` of them, a user profile, and a user principal bound to it with an access key.

In the same run: a signed `Byoi.GetServerInfo` (the floor: signing, key lookup, dispatch, no store access), and
DescribeImage as the administrator and as the user on the same attached images (the user's call also runs the
policy check and the visibility query); then ListImages paged to the end for the user, who sees `--attached` of
`--images`, next to the administrator paging through as many images. Ratios: user / administrator, and each to
the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import sqlalchemy as sa
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.catalog import measure  # noqa: E402
from tests.conftest import fresh_postgres_database  # noqa: E402
from tests.support.processes import ByoiServer  # noqa: E402

from byoi.api.model import extension_data_path  # noqa: E402
from byoi.cli.client import extension_client  # noqa: E402
from byoi.store.db import Database, migrate  # noqa: E402
from byoi.store.schema import image_versions, images  # noqa: E402

ROLE = "arn:aws:iam::000000000000:role/bench"
CONFIG = "bench-config"
PAGE = 10


async def fill(url: str, n_images: int) -> None:
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
                    "spec": {"RoleArn": ROLE},
                    "last_version": 1,
                    "created_at": now + i * 1e-3,
                    "modified_at": now + i * 1e-3,
                }
                for i in range(start, min(start + 1000, n_images))
            ]
            await conn.execute(sa.insert(images), rows)
        ids = [r.id for r in await conn.execute(sa.select(images.c.id).order_by(images.c.id))]
        for start in range(0, len(ids), 5000):
            await conn.execute(
                sa.insert(image_versions),
                [
                    {
                        "image_id": image_id,
                        "version": 1,
                        "status": "CREATED",
                        "base_image": "bench/r:latest",
                        "container_image": f"127.0.0.1:5000/bench/r@{digest}",
                        "client_token": f"bench-{image_id}",
                        "spec": {},
                        "created_at": now,
                        "modified_at": now,
                    }
                    for image_id in ids[start : start + 5000]
                ],
            )
    await db.close()


def attached_names(n_images: int, attached: int) -> list[str]:
    """Spread over the catalog, so a user's page is not simply the first rows of the table."""
    step = max(1, n_images // attached)
    return [f"bench-{i:05d}" for i in range(0, n_images, step)][:attached]


def set_up_user(srv: ByoiServer, names: list[str]) -> tuple[str, str]:
    """Through the API, as the administrator: a domain attaching `names`, a profile, a user and its key."""
    sm = srv.client()
    ext = extension_client(srv.endpoint, "byoi")
    sm.create_app_image_config(AppImageConfigName=CONFIG)
    custom = [{"ImageName": n, "AppImageConfigName": CONFIG} for n in names]
    domain = sm.create_domain(
        DomainName="bench",
        AuthMode="IAM",
        DefaultUserSettings={"ExecutionRole": ROLE, "RSessionAppSettings": {"CustomImages": custom}},
    )["DomainId"]
    sm.create_user_profile(DomainId=domain, UserProfileName="analyst")
    ext.create_principal(Name="analyst", Role="user", DomainId=domain, UserProfileName="analyst")
    key = ext.create_access_key(PrincipalName="analyst")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def user_session(key: tuple[str, str]) -> boto3.Session:
    session = boto3.Session(aws_access_key_id=key[0], aws_secret_access_key=key[1], region_name="us-east-1")
    loader = session._session.get_component("data_loader")
    if extension_data_path() not in loader.search_paths:
        loader.search_paths.append(extension_data_path())
    return session


def page_through(client: Any, pages: int | None) -> dict[str, Any]:
    """ListImages, PAGE per page, to the end (or `pages` pages); one request per page."""
    lat: list[float] = []
    token, total = None, 0
    t0 = time.perf_counter()
    while pages is None or len(lat) < pages:
        s = time.perf_counter()
        page = client.list_images(MaxResults=PAGE, **({"NextToken": token} if token else {}))
        lat.append(time.perf_counter() - s)
        total += len(page["Images"])
        token = page.get("NextToken")
        if not token:
            break
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "requests": len(lat),
        "images_listed": total,
        "p50_ms": round(statistics.median(lat) * 1000, 2),
        "seconds_to_list": round(elapsed, 3),
    }


def bench_backend(backend: str, database_url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"byoi-bench-access-{backend}-"))
    url = database_url or f"sqlite+aiosqlite:///{workdir / 'byoi.db'}"
    t0 = time.perf_counter()
    asyncio.run(fill(url, args.images))
    fill_s = time.perf_counter() - t0
    srv = ByoiServer(
        data_dir=workdir,
        registries=["http://127.0.0.1:5000"],
        database_url=database_url,
        env={"BYOI_LOG_LEVEL": "WARNING"},
    ).start()
    try:
        srv.session()  # AWS_SHARED_CREDENTIALS_FILE: the administrator's key
        names = attached_names(args.images, args.attached)
        key = set_up_user(srv, names)
        config = Config(retries={"max_attempts": 1})  # as srv.client() builds the administrator's

        def admin_sm(seed: int) -> Any:
            return srv.client()

        def user_sm(seed: int) -> Any:
            return user_session(key).client("sagemaker", endpoint_url=srv.endpoint, config=config)

        def floor(client_of: Callable[[int], Any]) -> Callable[[int], Callable[[], Any]]:
            def make(seed: int) -> Callable[[], Any]:
                if client_of is admin_sm:
                    c = extension_client(srv.endpoint, "byoi")
                else:
                    c = user_session(key).client("byoi", endpoint_url=srv.endpoint, config=config)
                return lambda: c.get_server_info()

            return make

        def describe(client_of: Callable[[int], Any]) -> Callable[[int], Callable[[], Any]]:
            def make(seed: int) -> Callable[[], Any]:
                c, rng = client_of(seed), random.Random(seed)
                return lambda: c.describe_image(ImageName=rng.choice(names))

            return make

        # Interleaved rounds, so the machine's load drifts over both sides alike; each figure is the median
        # over the rounds.
        rounds: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.rounds):
            for label, make in (
                ("floor_admin", floor(admin_sm)),
                ("floor_user", floor(user_sm)),
                ("describe_image_admin", describe(admin_sm)),
                ("describe_image_user", describe(user_sm)),
            ):
                rounds.setdefault(label, []).append(measure(label, make, args.requests, args.threads))
        results = {label: _median(runs) for label, runs in rounds.items()}
        admin_c, user_c = admin_sm(0), user_sm(0)
        listing = {
            "list_images_user": page_through(user_c, None),
            "list_images_admin_same_pages": page_through(admin_c, -(-args.attached // PAGE)),
        }
        assert listing["list_images_user"]["images_listed"] == len(names), listing
        floor_p50 = results["floor_admin"]["p50_ms"]
        ratios = {
            "describe_user_over_admin_p50": _ratio(results, "describe_image_user", "describe_image_admin", "p50_ms"),
            "describe_user_over_admin_throughput": _ratio(
                results, "describe_image_user", "describe_image_admin", "throughput_per_s"
            ),
            "floor_user_over_admin_p50": _ratio(results, "floor_user", "floor_admin", "p50_ms"),
            "describe_admin_over_floor_p50": round(results["describe_image_admin"]["p50_ms"] / floor_p50, 2),
            "describe_user_over_floor_p50": round(results["describe_image_user"]["p50_ms"] / floor_p50, 2),
            "list_page_user_over_admin_p50": round(
                listing["list_images_user"]["p50_ms"] / listing["list_images_admin_same_pages"]["p50_ms"], 3
            ),
        }
        return {
            "backend": backend,
            "fill_seconds": round(fill_s, 1),
            "results": results,
            "listing": listing,
            "ratios": ratios,
        }
    finally:
        srv.stop()


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[0])
    for key in ("throughput_per_s", "p50_ms", "p99_ms"):
        out[key] = round(statistics.median(r[key] for r in runs), 2)
    out["requests"] = sum(r["requests"] for r in runs)
    return out


def _ratio(results: dict[str, Any], a: str, b: str, key: str) -> float:
    return round(results[a][key] / results[b][key], 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--attached", type=int, default=100)
    parser.add_argument("--requests", type=int, default=1000, help="per measurement and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--postgres-url", default=None, help="a PostgreSQL server URL; a fresh database is created")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "access",
        "images": args.images,
        "attached_to_user": args.attached,
        "threads": args.threads,
        "backends": [bench_backend("sqlite", None, args)],
    }
    if args.postgres_url:
        report["backends"].append(bench_backend("postgresql", fresh_postgres_database(args.postgres_url), args))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
