"""Console benchmark: time to first byte and full render of the console's image list, image page and version
page, against the API calls each page makes, on the same server in the same run. Prints JSON.

    .venv/bin/python bench/console.py [--images 10000] [--packages 200] [--runs 15]

The catalog is filled straight into the store (as bench/catalog.py does: 10,000 CREATED images), then a real
`byoi server` is started on it with a real registry, and one more image gets two real versions: a synthetic
image with `--packages` R packages (real layers, pushed, inspected by byoi; tests/support/layers.py) and the same
with one package changed. For each page:

- `ttfb_ms`: an HTTP GET of the page with the signed-in cookie until its first byte (httpx, streaming);
- `load_ms`: Chromium (Playwright, Debian's binary) navigating to the page until the `load` event, with its
  style sheet and htmx, from the Navigation Timing entry;
- `api_ms`: the same operations the page calls (`PAGES` below), made one after another with boto3 over signed
  HTTP, as a client rendering the same page would. The page's `Server-Timing` header says how many calls it
  made; the benchmark refuses to compare when that differs from its replay.

Ratios are page ÷ API (the issue's goal: each page ≤ 1.5× its API calls). Medians over `--runs`, after a warm-up.
`floor` is the administrator's home page, which makes no API call: its load is what Chromium spends on any console
page (style sheet, htmx, layout); `load_beyond_floor_vs_api` is a page's load less that floor, ÷ its API calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx2 as httpx  # noqa: E402
from catalog import fill  # noqa: E402
from tests.support import layers  # noqa: E402
from tests.support import sessions as s  # noqa: E402
from tests.support.browser import ARGS, CHROMIUM  # noqa: E402
from tests.support.oci import Pusher  # noqa: E402
from tests.support.processes import ByoiServer, free_port, start_registry  # noqa: E402

PASSWORD = "bench password 1"  # noqa: S105 - a throwaway account's

Replay = Callable[[Any, Any], None]  # (sagemaker client, extension client) -> the page's calls


def sign_in(endpoint: str, name: str) -> dict[str, str]:
    """The cookies of a password sign-in through the real form."""
    with httpx.Client(base_url=endpoint, follow_redirects=False) as client:
        form = client.get("/auth/sign-in")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token, "no CSRF token on the sign-in form"
        answer = client.post("/auth/sign-in", data={"csrf_token": token[1], "username": name, "password": PASSWORD})
        assert answer.status_code == 303, (answer.status_code, answer.text[:300])
        return dict(client.cookies)


def ttfb(client: httpx.Client, path: str) -> tuple[float, float, int]:
    """(seconds to the first byte, seconds to the last, the page's call count from Server-Timing)."""
    started = time.perf_counter()
    with client.stream("GET", path) as answer:
        first = None
        for _chunk in answer.iter_raw():
            if first is None:
                first = time.perf_counter() - started
        assert answer.status_code == 200, (path, answer.status_code)
        calls = re.search(r'desc="(\d+) calls"', answer.headers.get("server-timing", ""))
    return first or 0.0, time.perf_counter() - started, int(calls[1]) if calls else -1


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def measure_page(
    label: str, path: str, replay: Replay, cookies: dict[str, str], srv: ByoiServer, browser: Any, runs: int
) -> dict[str, Any]:
    sm, ext = srv.client(), s.extension(srv)
    counted = [0]

    def count(**_: Any) -> None:
        counted[0] += 1

    for client_ in (sm, ext):
        client_.meta.events.register("before-call", count)
    with httpx.Client(base_url=srv.endpoint, cookies=cookies) as client:
        _, _, calls = ttfb(client, path)  # warm-up, and the page's own count of calls
        replay(sm, ext)
        replayed = counted[0]
        if replayed != calls:
            raise SystemExit(f"{label}: the page made {calls} API calls, the replay {replayed}: update PAGES")
        firsts, wholes, apis = [], [], []
        for _ in range(runs):
            first, whole, _ = ttfb(client, path)
            firsts.append(first)
            wholes.append(whole)
            started = time.perf_counter()
            replay(sm, ext)
            apis.append(time.perf_counter() - started)
    context = browser.new_context()
    context.add_cookies([{"name": k, "value": v, "url": srv.endpoint} for k, v in cookies.items()])
    page = context.new_page()
    loads, breakdown = [], {}
    for i in range(runs + 1):
        page.goto(srv.endpoint + path, wait_until="load")
        entry = page.evaluate("() => performance.getEntriesByType('navigation')[0].toJSON()")
        if i:
            loads.append((entry["loadEventEnd"] - entry["startTime"]) / 1000)
        if i == runs:  # where the last load's time went
            resources = page.evaluate(
                "() => performance.getEntriesByType('resource').map(r => [r.name, r.startTime, r.responseEnd])"
            )
            breakdown = {
                "response_start_ms": round(entry["responseStart"], 1),
                "dom_content_loaded_ms": round(entry["domContentLoadedEventEnd"], 1),
                "load_ms": round(entry["loadEventEnd"], 1),
                "resources": [
                    {"url": name.split("?")[0].rsplit("/", 1)[-1], "start_ms": round(a, 1), "end_ms": round(b, 1)}
                    for name, a, b in resources
                ],
            }
    context.close()
    api = statistics.median(apis) or float("nan")  # the floor page makes no call
    return {
        "page": label,
        "path": path,
        "api_calls": calls,
        "ttfb_ms": median_ms(firsts),
        "html_ms": median_ms(wholes),
        "load_ms": median_ms(loads),
        "api_ms": median_ms(apis),
        "ttfb_vs_api": round(statistics.median(firsts) / api, 2),
        "load_vs_api": round(statistics.median(loads) / api, 2),
        "replayed_calls": replayed,
        "last_load": breakdown,
    }


# -- what each page calls (src/byoi/console/images.py, versions.py), replayed with the page's concurrency -------

OTHER_VERSIONS = 100  # src/byoi/console/versions.py
POOL = ThreadPoolExecutor(8)  # the console runs a page's per-row calls 8 at a time; so does the replay


def fan_out(calls: list[Callable[[], Any]]) -> list[Any]:
    return list(POOL.map(lambda call: call(), calls))


def image_list(sm: Any, _ext: Any) -> None:
    """ListImages (25, newest first), then each image's newest version (ListImageVersions, 1 row)."""
    listed = sm.list_images(MaxResults=25, SortBy="CREATION_TIME", SortOrder="DESCENDING")["Images"]
    latest = {"MaxResults": 1, "SortBy": "VERSION", "SortOrder": "DESCENDING"}
    fan_out([lambda i=i: sm.list_image_versions(ImageName=i["ImageName"], **latest) for i in listed])


def image_page(image: str) -> Replay:
    def replay(sm: Any, _ext: Any) -> None:
        """DescribeImage, ListImageVersions (20), per version DescribeImageVersion + ListAliases, ListTags."""
        arn = sm.describe_image(ImageName=image)["ImageArn"]
        versions = sm.list_image_versions(ImageName=image, SortBy="VERSION", SortOrder="DESCENDING", MaxResults=20)
        calls: list[Callable[[], Any]] = []
        for v in versions["ImageVersions"]:
            key = {"ImageName": image, "Version": v["Version"]}
            calls += [lambda k=key: sm.describe_image_version(**k), lambda k=key: sm.list_aliases(**k, MaxResults=100)]
        fan_out(calls)
        sm.list_tags(ResourceArn=arn, MaxResults=50)

    return replay


def version_page(image: str, number: int) -> Replay:
    def replay(sm: Any, ext: Any) -> None:
        """DescribeImageVersion + ListAliases, then the report + the other versions, then GetServerInfo."""
        key = {"ImageName": image, "Version": number}
        fan_out([lambda: sm.describe_image_version(**key), lambda: sm.list_aliases(**key, MaxResults=100)])
        fan_out(
            [
                lambda: ext.describe_image_version_report(**key),
                lambda: sm.list_image_versions(
                    ImageName=image, SortBy="VERSION", SortOrder="DESCENDING", MaxResults=OTHER_VERSIONS
                ),
            ]
        )
        ext.get_server_info()

    return replay


def pages(image: str) -> list[tuple[str, str, Replay]]:
    return [
        ("image list", "/console/images", image_list),
        ("image page", f"/console/images/{image}", image_page(image)),
        ("version page", f"/console/images/{image}/versions/2", version_page(image, 2)),
    ]


def packages(n: int, bump: str | None = None) -> dict[str, str]:
    out = {f"pkg{i:03d}": f"1.{i}.0" for i in range(n)}
    if bump:
        out[bump] = "9.9.9"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--packages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    workdir = Path(tempfile.mkdtemp(prefix="byoi-bench-console-"))
    started = time.perf_counter()
    asyncio.run(fill(f"sqlite+aiosqlite:///{workdir / 'byoi.db'}", args.images, 1))
    fill_s = time.perf_counter() - started
    port = free_port()
    registry_proc = start_registry(workdir / "registry", port)
    registry = f"127.0.0.1:{port}"
    srv = ByoiServer(data_dir=workdir, registries=[f"http://{registry}"], env={"BYOI_LOG_LEVEL": "WARNING"}).start()
    try:
        sm, ext = srv.client(), s.extension(srv)
        image = "bench-packages"
        sm.create_image(ImageName=image, RoleArn=s.ROLE)
        pusher = Pusher(f"http://{registry}")
        for tag, bump in (("v1", None), ("v2", "pkg007")):
            layer = layers.compatible_layer(packages(args.packages, bump))
            layers.push_image(pusher, "bench/packages", tag, [layer])
            sm.create_image_version(ImageName=image, BaseImage=f"{registry}/bench/packages:{tag}")
        sm.get_waiter("image_version_created").wait(ImageName=image, Version=2, WaiterConfig={"Delay": 1})
        admin = "bench-admin"
        ext.create_principal(Name=admin, Role="admin", Password=PASSWORD)
        cookies = sign_in(srv.endpoint, admin)
        results = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
            # The floor: the administrator's home page makes no API call, so its load is what Chromium spends on any
            # console page (the style sheet, htmx, layout), whatever the page's calls.
            floor = measure_page(
                "floor (admin home, no API call)", "/console/", lambda *_: None, cookies, srv, browser, args.runs
            )
            for label, path, replay in pages(image):
                result = measure_page(label, path, replay, cookies, srv, browser, args.runs)
                beyond = max(0.0, result["load_ms"] - floor["load_ms"])
                result["load_beyond_floor_vs_api"] = round(beyond / result["api_ms"], 2)
                results.append(result)
            browser.close()
        print(
            json.dumps(
                {
                    "benchmark": "console",
                    "images": args.images + 1,
                    "r_packages": args.packages,
                    "runs": args.runs,
                    "fill_seconds": round(fill_s, 1),
                    "goal": "each page <= 1.5x its API calls",
                    "floor": {k: floor[k] for k in ("path", "ttfb_ms", "load_ms", "last_load")},
                    "pages": results,
                },
                indent=2,
            )
        )
    finally:
        srv.stop()
        registry_proc.terminate()


if __name__ == "__main__":
    main()
