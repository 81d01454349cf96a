"""The domain's RStudioServerPro app and the RStudio launcher page (`/rstudio/default/`), through real doors
against a real `byoi server`: the AWS CLI and boto3 for the API, Playwright driving Debian's Chromium for the
page (tests/support/browser.py), real Docker Engine sessions from images in a real registry.

RStudio Server in the sessions is the STAND-IN image (tests/images/rstudio-standin): a TEST DOUBLE for the IDE
binary only; the registry, the image, inspection, Docker Engine, the containers and R are real. The page at
/sessions/<id>/ belongs to the session proxy: here only the URL the launcher sends the browser to is checked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from botocore.exceptions import ClientError
from playwright.sync_api import expect

from byoi.runtime.instance_types import HostCapacity, InstanceTypes
from byoi.services.instance_offers import offers
from tests.support import sessions as s
from tests.support.docker_images import docker_available
from tests.support.processes import ByoiServer

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_available(), reason="Docker Engine is not reachable (scripts/services.sh)"),
]

AWS = str(Path(sys.executable).parent / "aws")
PASSWORD = "correct horse battery"  # noqa: S105 - a test account's
SHARED = {"UserProfileName": "domain-shared", "AppType": "RStudioServerPro", "AppName": "default"}


@pytest.fixture(scope="module")
def server(rstudio_server: ByoiServer) -> ByoiServer:
    return rstudio_server  # shared with tests/test_session_proxy.py (tests/conftest.py)


@pytest.fixture(scope="module")
def world(server: ByoiServer, rstudio_image: str) -> dict[str, Any]:
    """An RStudio domain with the stand-in image attached (no version: any CREATED one), users alice and bob
    (each a user profile and a user principal bound to it)."""
    sm, ext = server.client(), s.extension(server)
    image = rstudio_image
    domain = s.rstudio_domain(sm, [{"ImageName": image, "AppImageConfigName": s.CONFIG}])
    principals = {}
    for user in ("alice", "bob"):
        sm.create_user_profile(DomainId=domain, UserProfileName=user)
        principals[user] = s.unique(user)
        ext.create_principal(Name=principals[user], Role="user", DomainId=domain, UserProfileName=user)
    return {"sm": sm, "ext": ext, "domain": domain, "image": image, "principals": principals}


def aws(server: ByoiServer, *args: str) -> Any:
    out = subprocess.run(
        [AWS, "sagemaker", *args, "--output", "json"], env=server.aws_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else {}


def shared_apps_cli(server: ByoiServer, domain: str) -> list[dict[str, Any]]:
    listed = aws(server, "list-apps", "--domain-id-equals", domain, "--user-profile-name-equals", "domain-shared")
    return listed["Apps"]  # type: ignore[no-any-return]


def wait_shared(sm: Any, domain: str, status: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        app = sm.describe_app(DomainId=domain, **SHARED)
        if app["Status"] == status:
            return app  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, app
        time.sleep(0.2)


@pytest.fixture
def context(chromium: Any) -> Iterator[Any]:  # the run's one Chromium (tests/conftest.py)
    ctx = chromium.new_context()
    yield ctx
    ctx.close()


def open_launcher(server: ByoiServer, world: dict[str, Any], context: Any, user: str = "alice") -> Any:
    """Follow a presigned URL for `user` (LandingUri app:RStudioServerPro:): the browser lands on the launcher."""
    url = world["sm"].create_presigned_domain_url(
        DomainId=world["domain"], UserProfileName=user, LandingUri="app:RStudioServerPro:"
    )["AuthorizedUrl"]
    page = context.new_page()
    page.goto(url)
    assert page.url == server.endpoint + "/rstudio/default/"
    return page


def csrf_of(page: Any) -> str:
    return str(page.locator("input[name=csrf_token]").first.get_attribute("value"))


def row(page: Any, name: str) -> Any:
    return page.locator(f"#sessions tr[data-app='{name}']")


# -- the domain's RStudioServerPro app ------------------------------------------------------------------------


def shared_statuses(sm: Any, domain: str) -> list[str]:
    return [a["Status"] for a in sm.list_apps(DomainIdEquals=domain, UserProfileNameEquals="domain-shared")["Apps"]]


def test_the_shared_app_is_in_service_right_after_create_domain(server: ByoiServer) -> None:
    role, sm = s.ROLE, server.client()
    created = aws(
        server, "create-domain", "--domain-name", s.unique("cli"), "--auth-mode", "IAM",
        "--default-user-settings", f"ExecutionRole={role}",
        "--domain-settings", f"RStudioServerProDomainSettings={{DomainExecutionRoleArn={role}}}",
    )  # fmt: skip
    domain = created["DomainId"]
    [app] = shared_apps_cli(server, domain)
    assert (app["AppType"], app["AppName"], app["Status"]) == ("RStudioServerPro", "default", "InService")
    described = sm.describe_app(DomainId=domain, **SHARED)
    assert described["AppArn"].endswith(f":app/{domain}/domain-shared/RStudioServerPro/default")
    assert described["ResourceSpec"] == {"InstanceType": "system"}
    # A domain without RStudio has none; the UpdateDomain that adds RStudio makes it, once.
    plain = sm.create_domain(DomainName=s.unique("plain"), AuthMode="IAM", DefaultUserSettings={"ExecutionRole": role})
    assert shared_statuses(sm, plain["DomainId"]) == []
    for _ in range(2):
        sm.update_domain(
            DomainId=plain["DomainId"],
            DomainSettingsForUpdate={"RStudioServerProDomainSettingsForUpdate": {"DomainExecutionRoleArn": role}},
        )
        assert shared_statuses(sm, plain["DomainId"]) == ["InService"]
    # It does not stop DeleteDomain: it has no container and goes with the domain.
    sm.delete_domain(DomainId=domain)
    deadline = time.monotonic() + 20
    while any(d["DomainId"] == domain for d in sm.list_domains(MaxResults=100)["Domains"]):
        assert time.monotonic() < deadline, "the domain was not deleted"
        time.sleep(0.2)


def test_the_documented_delete_and_create_app_steps_work_on_a_fresh_domain(server: ByoiServer) -> None:
    sm = server.client()
    domain = s.rstudio_domain(sm)
    sm.create_user_profile(DomainId=domain, UserProfileName="carol")
    key = ["--domain-id", domain, "--user-profile-name", "domain-shared", "--app-type", "RStudioServerPro",
           "--app-name", "default"]  # fmt: skip
    arn = sm.describe_app(DomainId=domain, **SHARED)["AppArn"]
    aws(server, "delete-app", *key)
    wait_shared(sm, domain, "Deleted")
    # Settling the domain again does not bring it back behind the administrator's back.
    sm.update_domain(DomainId=domain, DefaultUserSettings={"ExecutionRole": s.ROLE})
    assert shared_statuses(sm, domain) == ["Deleted"]
    assert aws(server, "create-app", *key)["AppArn"] == arn
    assert [a["Status"] for a in shared_apps_cli(server, domain)] == ["InService"]  # the same record, again
    # A live user profile still stops DeleteDomain, and the message does not send anyone after the shared app.
    with pytest.raises(ClientError) as refused:
        sm.delete_domain(DomainId=domain)
    message = refused.value.response["Error"]["Message"]
    assert "carol" in message and "RStudioServerPro" not in message


def test_a_user_reads_the_shared_app_but_cannot_change_it(server: ByoiServer, world: dict[str, Any]) -> None:
    domain = world["domain"]
    alice = server.client_as(world["ext"], world["principals"]["alice"])
    assert alice.describe_app(DomainId=domain, **SHARED)["Status"] == "InService"
    listed = alice.list_apps(DomainIdEquals=domain, UserProfileNameEquals="domain-shared")["Apps"]
    assert [(a["AppType"], a["Status"]) for a in listed] == [("RStudioServerPro", "InService")]
    assert ("domain-shared", "default") in {(a["UserProfileName"], a["AppName"]) for a in alice.list_apps()["Apps"]}
    for call in (alice.delete_app, alice.create_app):
        with pytest.raises(ClientError) as refused:
            call(DomainId=domain, **SHARED)
        assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    # Another domain's shared app stays out of sight.
    other = s.rstudio_domain(world["sm"])
    with pytest.raises(ClientError) as refused:
        alice.describe_app(DomainId=other, **SHARED)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    assert world["sm"].describe_app(DomainId=domain, **SHARED)["Status"] == "InService"


def test_instance_type_offers_say_why_a_type_is_not_offered() -> None:
    """Byoi.ListInstanceTypes' answer as a pure function: the host's capacity decides, in CreateApp's words."""
    types = InstanceTypes({"ml.t3.medium": (2, 4), "ml.m5.4xlarge": (16, 64)})
    small = offers(types, HostCapacity(cpus=4, memory_bytes=8 << 30))
    assert [(o["InstanceType"], o["Offered"]) for o in small] == [("ml.t3.medium", True), ("ml.m5.4xlarge", False)]
    assert "needs 16 vCPU and 64 GiB" in small[1]["Reason"] and small[0]["Reason"] is None
    assert all(o["Offered"] for o in offers(types, None))  # the engine did not answer: the table alone


# -- the launcher page -----------------------------------------------------------------------------------------


def test_without_a_cookie_the_launcher_asks_to_sign_in(server: ByoiServer, world: dict[str, Any]) -> None:
    with httpx.Client(base_url=server.endpoint, follow_redirects=False) as client:
        for path in ("/rstudio/default/", f"/console/domains/{world['domain']}"):
            answer = client.get(path)
            assert (answer.status_code, answer.headers["location"]) == (303, f"/auth/sign-in?next={path}")
        answer = client.post("/rstudio/default/sessions", data={"app_name": "x"})
        assert (answer.status_code, answer.headers["location"]) == (303, "/auth/sign-in?next=/rstudio/default/")
        assert client.get("/rstudio/default").headers["location"] == "/rstudio/default/"


def test_a_session_from_the_launcher_to_stop(server: ByoiServer, world: dict[str, Any], context: Any) -> None:
    sm, domain, image = world["sm"], world["domain"], world["image"]
    page = open_launcher(server, world, context)
    assert page.locator("#user").inner_text() == world["principals"]["alice"]
    assert page.locator("#domain-id").inner_text() == domain
    assert page.locator("#no-sessions").is_visible()
    # New Session: the stand-in image (its latest version), the default instance type preselected.
    assert page.get_by_label("Instance type").input_value() == "ml.t3.medium"
    page.get_by_label("Session name").fill("from-the-launcher")
    page.get_by_label("Image").select_option(label=f"{image}, latest (version 1)")
    page.get_by_role("button", name="Start session").click()
    page.wait_for_url(re.compile(re.escape(server.endpoint) + r"/sessions/[0-9a-f]{16}/$"))
    session_id = page.url.rstrip("/").rsplit("/", 1)[1]
    ext = world["ext"]
    assert s.progress(ext, domain, "alice", "from-the-launcher")["SessionId"] == session_id
    described = s.wait_app(sm, domain, "alice", "from-the-launcher", ("InService", "Failed"))
    assert described["Status"] == "InService", described.get("FailureReason")
    assert described["ResourceSpec"]["SageMakerImageVersionArn"].endswith(f"/{image}/1")
    # Back on the launcher: listed with its status, image, version and instance type, and an Open link. In a page of
    # its own: the session's page moves on to RStudio by itself once it answers, which must not race this load.
    page.close()
    page = context.new_page()
    page.goto(server.endpoint + "/rstudio/default/")
    listed = row(page, "from-the-launcher")
    assert listed.locator(".state").inner_text() == "InService"
    assert (listed.locator(".image").inner_text(), listed.locator(".version").inner_text()) == (image, "1")
    assert listed.locator(".instance-type").inner_text() == "ml.t3.medium"
    # The browser waited on the session's page, which moves on to RStudio by itself once it answers: whether it got
    # there before this page was loaded depends on the launch's speed, so either is right here; the use below is not.
    assert re.fullmatch(r"none yet|\d+ s ago", listed.locator(".activity").inner_text())
    assert listed.get_by_role("link", name="Open from-the-launcher").get_attribute("href") == (
        f"{server.endpoint}/sessions/{session_id}/"
    )
    # Open: RStudio (the stand-in) through byoi's proxy, R evaluated over its WebSocket, the result on the page.
    listed.get_by_role("link", name="Open from-the-launcher").click()
    page.wait_for_selector('body[data-standin="rserver"][data-ws="open"]', timeout=30_000)
    assert page.url == f"{server.endpoint}/sessions/{session_id}/"  # after rserver's own sign-in hop
    page.locator("#code").fill("sum(1:6) * 2")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#out")).to_contain_text("42", timeout=15_000)
    # The use shows as the session's last activity (written by the proxy every BYOI_SESSION_ACTIVITY_SECONDS).
    deadline = time.monotonic() + 20
    while not s.app_status(sm, domain, "alice", "from-the-launcher").get("LastUserActivityTimestamp"):
        assert time.monotonic() < deadline, "the proxy never recorded the session's activity"
        time.sleep(0.3)
    page.goto(server.endpoint + "/rstudio/default/")
    listed = row(page, "from-the-launcher")
    assert listed.locator(".activity").inner_text() != "none yet"
    # Stop: DeleteApp; the page follows it to Deleted by itself (it refreshes while a session stops).
    listed.get_by_role("button", name="Stop from-the-launcher").click()
    page.wait_for_url(server.endpoint + "/rstudio/default/")
    assert row(page, "from-the-launcher").locator(".state").inner_text() in ("Deleting", "Deleted")
    expect(row(page, "from-the-launcher").locator(".state")).to_have_text("Deleted", timeout=30_000)
    assert s.app_status(sm, domain, "alice", "from-the-launcher")["Status"] == "Deleted"
    assert row(page, "from-the-launcher").get_by_role("button").count() == 0


def test_a_post_without_the_csrf_token_is_refused(server: ByoiServer, world: dict[str, Any], context: Any) -> None:
    page = open_launcher(server, world, context)
    since = time.time()
    for fields in ({}, {"csrf_token": "A" * 43}):
        answer = page.request.post(
            server.endpoint + "/rstudio/default/sessions",
            form={**fields, "app_name": "csrf-less", "image": "", "instance_type": ""},
            max_redirects=0,
        )
        assert answer.status == 403 and "security token" in answer.text()
    answer = page.request.post(server.endpoint + "/rstudio/default/stop", form={"app_name": "x"}, max_redirects=0)
    assert answer.status == 403
    with pytest.raises(ClientError) as missing:
        s.app_status(world["sm"], world["domain"], "alice", "csrf-less")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFound"
    events = world["ext"].list_audit_events(StartTime=since, MaxResults=100)["AuditEvents"]
    refused = [(e["Operation"], e["Outcome"]) for e in events if e["PrincipalName"] == world["principals"]["alice"]]
    assert refused.count(("CreateApp", "CsrfTokenMismatch")) == 2 and ("DeleteApp", "CsrfTokenMismatch") in refused


def test_another_users_session_is_neither_listed_nor_stoppable(
    server: ByoiServer, world: dict[str, Any], context: Any
) -> None:
    sm, domain = world["sm"], world["domain"]
    image_arn = sm.describe_image(ImageName=world["image"])["ImageArn"]
    sm.create_app(DomainId=domain, UserProfileName="bob", AppType="RSessionGateway", AppName="bobs-session",
                  ResourceSpec={"SageMakerImageArn": image_arn})  # fmt: skip
    page = open_launcher(server, world, context)
    assert row(page, "bobs-session").count() == 0 and "bobs-session" not in page.content()
    # A crafted Stop naming bob's session (with alice's valid token): the launcher acts on alice's profile only.
    answer = page.request.post(
        server.endpoint + "/rstudio/default/stop",
        form={"csrf_token": csrf_of(page), "app_name": "bobs-session", "user_profile_name": "bob"},
        max_redirects=0,
    )
    assert answer.status == 404 and "bobs-session" in answer.text()
    assert s.app_status(sm, domain, "bob", "bobs-session")["Status"] in ("Pending", "InService")
    # The domain's Url leads its users to the launcher, and not another domain's.
    other = s.rstudio_domain(sm)
    answer = page.request.get(f"{server.endpoint}/console/domains/{domain}", max_redirects=0)
    assert (answer.status, answer.headers["location"]) == (303, "/rstudio/default/")
    assert sm.describe_domain(DomainId=domain)["Url"].endswith(f"/console/domains/{domain}")
    answer = page.request.get(f"{server.endpoint}/console/domains/{other}", max_redirects=0)
    assert answer.status == 403
    sm.delete_app(DomainId=domain, UserProfileName="bob", AppType="RSessionGateway", AppName="bobs-session")


def test_bad_input_shows_the_apis_message_next_to_the_form(
    server: ByoiServer, world: dict[str, Any], context: Any
) -> None:
    page = open_launcher(server, world, context)
    page.get_by_label("Session name").fill("not a valid name!")
    page.get_by_label("Image").select_option(label=f"{world['image']}, version 1")
    page.get_by_label("Instance type").select_option("ml.t3.small")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Start session").click()
    assert posted.value.status == 400
    error = page.locator("#launch-error").inner_text()
    assert "AppName" in error and "not a valid name!" in error, error
    assert page.get_by_label("Session name").input_value() == "not a valid name!"
    assert page.get_by_label("Image").input_value().endswith(f"/{world['image']}/1")
    assert page.get_by_label("Instance type").input_value() == "ml.t3.small"
    # The service's refusals read the same way: a live session's name is taken.
    page.get_by_label("Session name").fill("session-taken")
    page.get_by_role("button", name="Start session").click()
    page.wait_for_url(re.compile(r".*/sessions/[0-9a-f]{16}/$"))
    page.goto(server.endpoint + "/rstudio/default/")
    page.get_by_label("Session name").fill("session-taken")
    page.get_by_role("button", name="Start session").click()
    assert "already exists" in page.locator("#launch-error").inner_text()
    world["sm"].delete_app(
        DomainId=world["domain"], UserProfileName="alice", AppType="RSessionGateway", AppName="session-taken"
    )


def test_what_the_launcher_says_when_rstudio_is_unavailable(
    server: ByoiServer, world: dict[str, Any], context: Any
) -> None:
    sm, ext = world["sm"], world["ext"]
    domain = s.rstudio_domain(sm)
    sm.create_user_profile(
        DomainId=domain,
        UserProfileName="dora",
        UserSettings={"RStudioServerProAppSettings": {"AccessStatus": "DISABLED"}},
    )
    sm.create_user_profile(DomainId=domain, UserProfileName="erin")
    for user in ("dora", "erin"):
        ext.create_principal(Name=s.unique(user), Role="user", DomainId=domain, UserProfileName=user)
    there = {"sm": sm, "domain": domain}
    page = open_launcher(server, there, context, "dora")
    assert "DISABLED" in page.locator("#access-disabled").inner_text()
    assert page.get_by_role("button", name="Start session").count() == 0
    # The domain's RStudioServerPro app deleted: the launcher says so, and how an administrator restores it.
    sm.delete_app(DomainId=domain, **SHARED)
    wait_shared(sm, domain, "Deleted")
    page = open_launcher(server, there, context, "erin")
    notice = page.locator("#shared-app-down").inner_text()
    assert "Deleted" in notice and "create-app" in notice and f"--domain-id {domain}" in notice
    assert page.get_by_role("button", name="Start session").count() == 0
    sm.create_app(DomainId=domain, **SHARED)
    page.reload()
    assert page.locator("#shared-app-down").count() == 0 and page.locator("#no-images").is_visible()
    # An administrator has no sessions of their own.
    admin = s.unique("admin")
    ext.create_principal(Name=admin, Role="admin", Password=PASSWORD)
    page.goto(server.endpoint + "/auth/sign-in?next=/rstudio/default/")
    page.get_by_label("Username").fill(admin)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(server.endpoint + "/rstudio/default/")
    assert "Administrators have no RStudio sessions of their own" in page.locator("#admin-note").inner_text()
    # The domain's Url, for an administrator: the console's page of the domain (src/byoi/console/domains.py).
    answer = page.request.get(f"{server.endpoint}/console/domains/{domain}", max_redirects=0)
    assert answer.status == 200 and f'<code id="domain-id">{domain}</code>' in answer.text()
