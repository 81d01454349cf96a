"""Sessions through byoi's proxy, end to end: a real `byoi server`, registry and Docker Engine, RStudio reached
on its Unix socket only. RStudio Server here is the STAND-IN (tests/images/rstudio-standin), a TEST DOUBLE for
the IDE binary only: it does rserver's sign-in cookie dance under the root path, CSRF on /rpc and R over a
WebSocket, so the proxy is exercised the way real RStudio would exercise it.

Who gets in (owner / other user / no cookie / unknown, with path tricks), the launch progress page, RStudio's
cookies and redirects under the prefix, R evaluated over the proxied WebSocket, the sockets closed to other
local users, activity recorded, idle shutdown, and the loopback fallback for an RStudio without --www-socket.
"""

from __future__ import annotations

import http.client
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.support import sessions as s
from tests.support.docker_images import docker_available, docker_client
from tests.support.processes import ByoiServer, free_port, wait_http

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not running (scripts/services.sh)"),
]


@pytest.fixture(scope="module")
def server(rstudio_server: ByoiServer) -> ByoiServer:
    return rstudio_server  # shared with tests/test_launcher.py (tests/conftest.py)


def profile_with_principal(sm: Any, ext: Any, domain: str, user: str) -> None:
    """A user profile and the byoi user principal bound to it (so presigned URLs can sign it in)."""
    sm.create_user_profile(DomainId=domain, UserProfileName=user)
    ext.create_principal(Name=f"{domain}-{user}", Role="user", DomainId=domain, UserProfileName=user)


def cookie_of(sm: Any, domain: str, user: str) -> str:
    """The byoi session cookie a browser gets by following the user's presigned URL."""
    url = sm.create_presigned_domain_url(DomainId=domain, UserProfileName=user)["AuthorizedUrl"]
    answer = httpx.get(url, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return str(answer.cookies["byoi_session"])


def launched(world: dict[str, Any], user: str, name: str) -> dict[str, Any]:
    sm = world["sm"]
    sm.create_app(
        DomainId=world["domain"],
        UserProfileName=user,
        AppType="RSessionGateway",
        AppName=name,
        ResourceSpec={"SageMakerImageArn": world["image_arn"]},
    )
    described = s.wait_app(sm, world["domain"], user, name, ("InService", "Failed"))
    assert described["Status"] == "InService", described
    return dict(s.progress(world["ext"], world["domain"], user, name))


@pytest.fixture(scope="module")
def world(server: ByoiServer, rstudio_image: str) -> dict[str, Any]:
    sm = server.client()
    image = rstudio_image
    domain = s.rstudio_domain(sm, [{"ImageName": image, "AppImageConfigName": s.CONFIG}])
    ext = s.extension(server)
    for user in ("alice", "bob"):
        profile_with_principal(sm, ext, domain, user)
    w: dict[str, Any] = {
        "sm": sm,
        "ext": ext,
        "domain": domain,
        "image": image,
        "image_arn": sm.describe_image(ImageName=image)["ImageArn"],
        "server": server,
    }
    w["alice"] = launched(w, "alice", "alice-rs")
    w["bob"] = launched(w, "bob", "bob-rs")
    w["alice_cookie"] = cookie_of(sm, domain, "alice")
    w["bob_cookie"] = cookie_of(sm, domain, "bob")
    return w


def client(world: dict[str, Any], cookie: str | None) -> httpx.Client:
    c = httpx.Client(base_url=world["server"].endpoint, follow_redirects=False, timeout=30)
    if cookie:
        c.cookies.set("byoi_session", cookie)
    return c


def raw_get(server: ByoiServer | int, path: str, cookie: str) -> tuple[int, str]:
    """GET with the path sent exactly as written (no client-side normalisation of `..` or `%2e`)."""
    port = server if isinstance(server, int) else server.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("Cookie", f"byoi_session={cookie}")
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_no_cookie_goes_to_sign_in_and_back(world: dict[str, Any]) -> None:
    sid = world["alice"]["SessionId"]
    with client(world, None) as c:
        answer = c.get(f"/sessions/{sid}/some/page?x=1")
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/auth/sign-in?next=/sessions/{sid}/some/page"
        assert c.post(f"/sessions/{sid}/rpc/client_init", json={}).status_code == 401  # not a page load
    with pytest.raises(InvalidStatus):
        s.evaluate(world["alice"]["Url"], "1 + 1", timeout=10)


def test_the_owner_gets_rstudio_with_its_cookies_and_redirects_under_the_prefix(world: dict[str, Any]) -> None:
    sid = world["alice"]["SessionId"]
    prefix = f"/sessions/{sid}"
    with client(world, world["alice_cookie"]) as c:
        assert c.get(prefix).headers["location"].endswith(f"{prefix}/")  # the prefix gets its slash
        first = c.get(f"{prefix}/")
        # rserver's own sign-in hop: an absolute Location on the public host, under the prefix.
        assert first.status_code == 302, first.text
        assert first.headers["location"] == f"{world['server'].endpoint}{prefix}/auth-sign-in?appUri=%2F"
        signed = c.get(first.headers["location"])
        assert signed.status_code == 302 and signed.headers["location"] == f"{world['server'].endpoint}{prefix}/"
        paths = {ck.name: ck.path for ck in c.cookies.jar if ck.name != "byoi_session"}
        assert {"user-id", "rs-csrf-token", "csrf-token"} <= set(paths) and set(paths.values()) == {prefix}, paths
        page = c.get(f"{prefix}/")
        assert page.status_code == 200 and "byoi test stand-in" in page.text
        # RStudio's CSRF check on /rpc passes through untouched: with the header the client gets an id …
        csrf = next(ck.value for ck in c.cookies.jar if ck.name == "rs-csrf-token")
        init = c.post(f"{prefix}/rpc/client_init", json={"method": "client_init", "params": []},
                      headers={"X-RS-CSRF-Token": csrf})  # fmt: skip
        assert init.json()["result"]["clientId"]
        # … and without it RStudio itself refuses (error 3), not the proxy.
        refused = c.post(f"{prefix}/rpc/client_init", json={"method": "client_init", "params": []})
        assert refused.status_code == 200 and refused.json()["error"]["code"] == 3


def test_the_owner_evaluates_r_over_the_proxied_websocket(world: dict[str, Any]) -> None:
    headers = {"Cookie": f"byoi_session={world['alice_cookie']}"}
    assert s.evaluate(world["alice"]["Url"], "x <- 40; x + 2", headers=headers) == 42
    assert s.evaluate(world["alice"]["Url"], "Sys.getenv('BYOI_USER_PROFILE_NAME')", headers=headers) == "alice"


def test_another_user_gets_403_whatever_the_path(world: dict[str, Any]) -> None:
    alice, bob = world["alice"]["SessionId"], world["bob"]["SessionId"]
    server, cookie = world["server"], world["bob_cookie"]
    # Bob's own session answers (so a refusal below is the owner check, not a broken proxy).
    status, body = raw_get(server, f"/sessions/{bob}/api/info", cookie)
    assert status == 200 and '"standin":true' in body.replace(" ", "")
    tricks = [
        f"/sessions/{alice}/api/info",
        f"/sessions/{bob}/../{alice}/api/info",
        f"/sessions/{bob}/%2e%2e/{alice}/api/info",
        f"/sessions/{bob}/%2E%2E/{alice}/api/info",
        f"/sessions/{bob}/..%2f{alice}/api/info",
        f"/sessions/{bob}%2f..%2f{alice}/api/info",
        f"/sessions//{alice}/api/info",
        f"//sessions/{alice}/api/info",
        f"/sessions/{bob}/./../{alice}/api/info",
        f"/sessions/%{ord(alice[0]):02x}{alice[1:]}/api/info",
        f"/sessions/{bob}/..\\{alice}/api/info",
    ]
    for path in tricks:
        status, body = raw_get(server, path, cookie)
        assert status in (400, 403, 404), (path, status, body[:200])
        assert "standin" not in body, path
    assert raw_get(server, f"/sessions/{alice}/api/info", cookie)[0] == 403
    with pytest.raises(InvalidStatus) as refused:
        s.evaluate(world["alice"]["Url"], "1 + 1", timeout=10, headers={"Cookie": f"byoi_session={cookie}"})
    assert refused.value.response.status_code == 403
    # An unknown session is a 404 for a signed-in user.
    assert raw_get(server, "/sessions/0123456789abcdef/", cookie)[0] == 404


def test_a_local_user_other_than_byoi_cannot_reach_any_session(world: dict[str, Any]) -> None:
    """`nobody` on the host: the socket's directory is closed to it, and no port is published for a session."""
    for who in ("alice", "bob"):
        socket_path = world[who]["Endpoint"].removeprefix("unix:")
        probe = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            f"try:\n s.connect({socket_path!r}); print('connected')\n"
            "except PermissionError: print('denied')\n"
            "except OSError as e: print('error', e)\n"
        )
        run = subprocess.run(
            ["su", "nobody", "-s", "/bin/sh", "-c", f"python3 -c {shlex.quote(probe)}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert run.stdout.strip() == "denied", run.stdout + run.stderr
        # …while byoi's user (root here) can: the same probe as root connects.
        mine = subprocess.run(["python3", "-c", probe], capture_output=True, text=True, timeout=30)
        assert mine.stdout.strip() == "connected", mine.stdout + mine.stderr
        container = docker_client().api.inspect_container(world[who]["ContainerName"])
        # (8787 may be listed, from the image's EXPOSE, but bound to nothing)
        assert not any(container["NetworkSettings"]["Ports"].values()), container["NetworkSettings"]["Ports"]
        assert not container["HostConfig"]["PortBindings"]
        assert docker_client().api.port(world[who]["ContainerName"], 8787) in (None, [])


def test_a_session_shows_its_progress_then_rstudio_then_its_failure(world: dict[str, Any]) -> None:
    sm, domain = world["sm"], world["domain"]
    sm.create_app(DomainId=domain, UserProfileName="alice", AppType="RSessionGateway", AppName="alice-later",
                  ResourceSpec={"SageMakerImageArn": world["image_arn"]})  # fmt: skip
    p = s.progress(world["ext"], domain, "alice", "alice-later")
    url = f"/sessions/{p['SessionId']}/api/info"
    seen_progress = False
    with client(world, world["alice_cookie"]) as c:
        deadline = time.monotonic() + 90
        while True:
            answer = c.get(url)
            if answer.status_code == 200 and 'id="progress"' in answer.text:
                seen_progress = True
                assert answer.headers["refresh"] == "2"  # it moves on by itself
            elif answer.status_code == 200 and '"standin"' in answer.text:
                break
            else:
                assert answer.status_code == 200, (answer.status_code, answer.text[:300])
            assert time.monotonic() < deadline, "the session never answered through the proxy"
            time.sleep(0.05)
    assert seen_progress, "the launch was never seen in progress"
    # Killed from outside: the reconciler marks it Failed, and the proxy shows the FailureReason.
    docker_client().api.kill(s.progress(world["ext"], domain, "alice", "alice-later")["ContainerName"])
    failed = s.wait_app(sm, domain, "alice", "alice-later", ("Failed",), timeout=60)
    with client(world, world["alice_cookie"]) as c:
        deadline = time.monotonic() + 10  # an allowed decision is remembered 2 s (docs/proxy.md)
        while "Session alice-later failed" not in (answer := c.get(f"/sessions/{p['SessionId']}/")).text:
            assert time.monotonic() < deadline, answer.text[:500]
            time.sleep(0.25)
    assert answer.status_code == 502
    assert "exit code 137" in answer.text and "exit code 137" in failed["FailureReason"], answer.text[:500]


def test_activity_through_the_proxy_is_recorded(world: dict[str, Any]) -> None:
    sm, domain = world["sm"], world["domain"]
    before = s.app_status(sm, domain, "bob", "bob-rs").get("LastUserActivityTimestamp")
    started = time.time()
    with client(world, world["bob_cookie"]) as c:
        assert c.get(f"/sessions/{world['bob']['SessionId']}/api/info").status_code == 200
    deadline = time.monotonic() + 15
    while True:
        after = s.app_status(sm, domain, "bob", "bob-rs").get("LastUserActivityTimestamp")
        if after is not None and after.timestamp() >= started - 0.5:
            break
        assert time.monotonic() < deadline, f"activity was not recorded: {before} -> {after}"
        time.sleep(0.2)
    assert before is None or after > before


def test_idle_sessions_are_stopped_and_used_ones_kept(world: dict[str, Any], registry: str) -> None:
    sm = world["sm"]
    domain = s.rstudio_domain(sm, [{"ImageName": world["image"], "AppImageConfigName": s.CONFIG}])
    for user in ("carol", "dave"):
        profile_with_principal(sm, world["ext"], domain, user)
    w = {**world, "domain": domain}
    used, idle = launched(w, "carol", "busy"), launched(w, "dave", "idle")
    carol = cookie_of(sm, domain, "carol")
    arn = sm.describe_domain(DomainId=domain)["DomainArn"]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "byoi:idle-timeout-minutes", "Value": "0.05"}])  # 3 seconds
    with client(w, carol) as c:
        deadline = time.monotonic() + 60
        while s.app_status(sm, domain, "dave", "idle")["Status"] not in ("Deleting", "Deleted"):
            assert c.get(f"/sessions/{used['SessionId']}/api/info").status_code == 200
            assert time.monotonic() < deadline, "the idle session was never stopped"
            time.sleep(0.5)
        for _ in range(4):  # still used after the idle one went: kept
            assert c.get(f"/sessions/{used['SessionId']}/api/info").status_code == 200
            time.sleep(0.5)
    assert s.app_status(sm, domain, "carol", "busy")["Status"] == "InService"
    s.wait_app(sm, domain, "dave", "idle", ("Deleted",), timeout=60)
    assert idle["SessionId"]
    sm.delete_app(DomainId=domain, UserProfileName="carol", AppType="RSessionGateway", AppName="busy")


# -- forward-auth: docs/nginx-forward-auth.conf, run by Debian's nginx in front of the same server --------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nginx(server: ByoiServer, tmp_path_factory: pytest.TempPathFactory):
    """nginx with the documented configuration, its placeholders filled in; its URL."""
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = (REPO / "docs" / "nginx-forward-auth.conf").read_text()
    conf = conf.replace("__LISTEN__", f"127.0.0.1:{port}").replace("__BYOI__", f"127.0.0.1:{server.port}")
    (prefix / "nginx.conf").write_text(conf)
    log = (prefix / "nginx.log").open("wb")
    proc = subprocess.Popen(
        ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=20, ok=(200, 503))
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_forward_auth_answers_from_the_same_decision(world: dict[str, Any]) -> None:
    alice = world["alice"]["SessionId"]
    check = world["server"].endpoint + "/auth/session-check"
    ok = httpx.get(check, headers={"X-Original-URI": f"/sessions/{alice}/rpc/x?y=1"},
                   cookies={"byoi_session": world["alice_cookie"]})  # fmt: skip
    assert ok.status_code == 200
    assert ok.headers["x-byoi-upstream"] == world["alice"]["Endpoint"]  # unix:/…/rserver.sock
    assert ok.headers["x-byoi-root-path"] == f"/sessions/{alice}" and ok.headers["x-byoi-upstream-path"] == "/rpc/x"
    other = httpx.get(check, headers={"X-Original-URI": f"/sessions/{alice}/"},
                      cookies={"byoi_session": world["bob_cookie"]})  # fmt: skip
    assert other.status_code == 403 and "x-byoi-upstream" not in other.headers
    anonymous = httpx.get(check, headers={"X-Original-URI": f"/sessions/{alice}/"})
    assert anonymous.status_code == 401 and anonymous.headers["x-byoi-location"].startswith("/auth/sign-in?next=")
    tricky = httpx.get(check, headers={"X-Original-URI": f"/sessions/{world['bob']['SessionId']}/../{alice}/"},
                       cookies={"byoi_session": world["bob_cookie"]})  # fmt: skip
    assert tricky.status_code == 403 and tricky.headers["x-byoi-refused"] == "path"  # `..` out of a session


def test_nginx_with_forward_auth_lets_only_the_owner_in(world: dict[str, Any], nginx: str) -> None:
    alice, bob = world["alice"]["SessionId"], world["bob"]["SessionId"]
    with httpx.Client(base_url=nginx, follow_redirects=False, timeout=30) as c:
        c.cookies.set("byoi_session", world["alice_cookie"])
        info = c.get(f"/sessions/{alice}/api/info")
        assert info.status_code == 200 and info.json()["standin"] is True
        first = c.get(f"/sessions/{alice}/")  # rserver's sign-in hop, on nginx's public host
        assert (
            first.status_code == 302
            and first.headers["location"] == f"{nginx}/sessions/{alice}/auth-sign-in?appUri=%2F"
        )
        assert c.get(f"/sessions/{bob}/api/info").status_code == 403
    nginx_port = int(nginx.rsplit(":", 1)[1])
    for trick in (f"/sessions/{bob}/../{alice}/api/info", f"/sessions/{bob}/%2e%2e/{alice}/api/info"):
        status, body = raw_get(nginx_port, trick, world["bob_cookie"])
        assert status == 403 and "standin" not in body, (trick, status)
    headers = {"Cookie": f"byoi_session={world['alice_cookie']}"}
    assert s.evaluate(f"{nginx}/sessions/{alice}/", "6 * 7", headers=headers) == 42  # WebSocket through nginx
    with pytest.raises(InvalidStatus):
        s.evaluate(
            f"{nginx}/sessions/{alice}/", "1", timeout=10, headers={"Cookie": f"byoi_session={world['bob_cookie']}"}
        )
    with httpx.Client(base_url=nginx, follow_redirects=False, timeout=30) as anonymous:
        answer = anonymous.get(f"/sessions/{alice}/")
        # (nginx makes the Location absolute, on its own host)
        assert answer.status_code == 303
        assert answer.headers["location"] == f"{nginx}/auth/sign-in?next=/auth/session-status/{alice}"


def test_an_rstudio_without_www_socket_falls_back_to_a_loopback_port(world: dict[str, Any], registry: str) -> None:
    """The stand-in as an RStudio 2023.06 (it refuses --www-socket, as that release does): the report warns,
    naming the version and the risk, and the session listens on a port published on 127.0.0.1 only."""
    sm, ext = world["sm"], world["ext"]
    image = s.unique("old-rstudio")
    version = s.register(sm, registry, image, "rstudio-standin-old", "v1")
    report = ext.describe_image_version_report(ImageName=image, Version=version)["Report"]
    socket_rule = next(r for r in report["Rules"] if r["Name"] == "rstudio-socket")
    assert (socket_rule["Outcome"], socket_rule["Level"]) == ("FAILED", "warning"), socket_rule
    assert "2023.06.0+421" in socket_rule["Message"], socket_rule
    assert "127.0.0.1" in socket_rule["Message"] and report["RStudioServer"]["SupportsSocket"] is False
    domain = s.rstudio_domain(sm, [{"ImageName": image, "AppImageConfigName": s.CONFIG}])
    profile_with_principal(sm, ext, domain, "erin")
    w = {**world, "domain": domain, "image_arn": sm.describe_image(ImageName=image)["ImageArn"]}
    p = launched(w, "erin", "old")
    assert p["Endpoint"] == f"127.0.0.1:{p['HostPort']}", p
    bindings = docker_client().api.inspect_container(p["ContainerName"])["HostConfig"]["PortBindings"]
    assert bindings == {"8787/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    with client(w, cookie_of(sm, domain, "erin")) as c:  # still opened through the proxy by its owner
        info = c.get(f"/sessions/{p['SessionId']}/api/info")
        assert info.status_code == 200 and info.json()["standin"] is True
    assert raw_get(world["server"], f"/sessions/{p['SessionId']}/api/info", world["bob_cookie"])[0] == 403
    sm.delete_app(DomainId=domain, UserProfileName="erin", AppType="RSessionGateway", AppName="old")


def test_the_cli_prints_the_session_url_and_a_presigned_link(world: dict[str, Any]) -> None:
    server, domain, alice = world["server"], world["domain"], world["alice"]

    def byoi(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "byoi", *args], env={**server.aws_env(), **env}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    listed = byoi("sessions", "list", "-d", domain, "-u", "alice", "-o", "json")
    assert listed.returncode == 0 and alice["Url"] in listed.stdout, listed.stdout + listed.stderr
    link = byoi("sessions", "url", "alice-rs", "-d", domain, "-u", "alice")
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip()
    assert url.startswith(f"{server.endpoint}/auth/presigned?token="), url
    landed = httpx.get(url, follow_redirects=False)  # signs the browser in as alice, onto her session
    assert landed.status_code == 303 and landed.headers["location"] == f"/sessions/{alice['SessionId']}/"
    with client(world, str(landed.cookies["byoi_session"])) as c:
        assert c.get(f"/sessions/{alice['SessionId']}/api/info").status_code == 200
    # No browser here (BROWSER names one that fails): `open` prints the link instead.
    opened = byoi("sessions", "open", "alice-rs", "-d", domain, "-u", "alice", BROWSER="/bin/false")
    assert opened.returncode == 0 and f"No browser is available here; open {alice['Url']}" in opened.stdout.replace(
        "\n", ""
    ), opened.stdout + opened.stderr
    gone = byoi("sessions", "url", "no-such-app", "-d", domain, "-u", "alice")
    assert gone.returncode != 0 and "no-such-app" in (gone.stdout + gone.stderr)
