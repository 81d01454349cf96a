"""Browser sign-in in a real browser (Playwright driving Debian's Chromium, tests/support/browser.py) against a
real byoi server: local accounts (sign-in, sign-out, cookie flags, CSRF, the failed-sign-in limit) and presigned
domain URLs made with boto3 and the AWS CLI (valid, replayed, raced, expired, tampered, foreign), sessions
ending when the principal is deleted or signed out everywhere, and the audit records of all of it."""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import httpx2 as httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from byoi.auth.browser import SignInLimiter, check_landing_uri, landing_path, safe_relative_path
from byoi.cli.client import extension_client
from byoi.errors import ValidationException
from tests.conftest import fresh_postgres_database
from tests.support.attach import new_domain, unique
from tests.support.errors import code, message
from tests.support.processes import free_port
from tests.support.tls import make_ca_and_server_cert

AWS = str(Path(sys.executable).parent / "aws")
PASSWORD = "correct horse battery"  # noqa: S105 - a test account's
TWELVE_HOURS = 12 * 3600


@pytest.fixture
def context(chromium):  # the run's one Chromium (tests/conftest.py)
    """A fresh browser profile (its own cookies) for each test."""
    ctx = chromium.new_context()
    yield ctx
    ctx.close()


@pytest.fixture
def ext(server):
    return extension_client(server.endpoint, "byoi")


def user(sm, ext, domain_id: str, password: str | None = PASSWORD) -> str:
    """A user profile in `domain_id` and the user principal bound to it (same name); returns the name."""
    name = unique("u")
    sm.create_user_profile(DomainId=domain_id, UserProfileName=name)
    extra = {"Password": password} if password else {}
    ext.create_principal(Name=name, Role="user", DomainId=domain_id, UserProfileName=name, **extra)
    return name


def whoami(context, endpoint: str) -> dict:
    page = context.new_page()
    try:
        response = page.goto(endpoint + "/auth/whoami")
        assert response is not None
        body = response.json()
        assert (response.status == 200) == body["SignedIn"], (response.status, body)
        return body
    finally:
        page.close()


def sign_in(page, endpoint: str, username: str, password: str, next_path: str = "") -> None:
    page.goto(endpoint + "/auth/sign-in" + (f"?next={next_path}" if next_path else ""))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def session_cookie(context) -> dict:
    [cookie] = [c for c in context.cookies() if c["name"] == "byoi_session"]
    return cookie


def audit(ext, operation: str, since: float) -> list[dict]:
    events = ext.list_audit_events(Operation=operation, StartTime=since)["AuditEvents"]
    return sorted(events, key=lambda e: int(e["EventId"]))


def test_password_sign_in_and_sign_out(server, sm, ext, context):
    domain_id = new_domain(sm)
    alice = user(sm, ext, domain_id)
    page = context.new_page()
    # Not signed in: the landing page sends the browser to the form, which comes back to it.
    page.goto(server.endpoint + "/auth/landing")
    assert page.url == server.endpoint + "/auth/sign-in?next=/auth/landing"
    assert page.locator("html").get_attribute("lang") == "en" and page.locator("main").count() == 1
    # A wrong password: the form again, with the error and the name kept; no session.
    page.get_by_label("Username").fill(alice)
    page.get_by_label("Password").fill("not the password")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 401
    assert page.get_by_role("alert").inner_text() == "Wrong username or password."
    assert page.get_by_label("Username").input_value() == alice
    assert not [c for c in context.cookies() if c["name"] == "byoi_session"]
    # The right one: on the landing page, signed in as alice.
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(server.endpoint + "/auth/landing")
    assert page.locator("#user").inner_text() == alice
    me = whoami(context, server.endpoint)
    assert (me["PrincipalName"], me["Role"], me["DomainId"], me["UserProfileName"], me["Via"]) == (
        alice,
        "user",
        domain_id,
        alice,
        "password",
    )
    stolen = session_cookie(context)
    # Sign out: back on the form, not signed in, and the old cookie value no longer works anywhere.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(server.endpoint + "/auth/sign-in?signed-out=1")
    assert page.get_by_role("status").inner_text() == "You are signed out."
    assert whoami(context, server.endpoint) == {"SignedIn": False}
    context.add_cookies([stolen])
    assert whoami(context, server.endpoint) == {"SignedIn": False}
    # ?next= takes relative paths only: another host is never a destination.
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        sign_in(page, server.endpoint, alice, PASSWORD, evil)
        assert page.url == server.endpoint + "/auth/landing", evil
    sign_in(page, server.endpoint, alice, PASSWORD, "/auth/whoami")
    assert page.url == server.endpoint + "/auth/whoami"


def test_session_cookie_flags_over_http(server, sm, ext, context):
    domain_id = new_domain(sm)
    alice = user(sm, ext, domain_id)
    page = context.new_page()
    sign_in(page, server.endpoint, alice, PASSWORD)
    cookie = session_cookie(context)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False  # plain HTTP: a Secure cookie would never be sent back
    assert cookie["path"] == "/"
    assert abs(cookie["expires"] - (time.time() + TWELVE_HOURS)) < 60  # Max-Age: the session's lifetime
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie["value"])  # opaque: nothing about the user in it
    # Scripts in the page cannot read it.
    assert "byoi_session" not in page.evaluate("document.cookie")
    [form_cookie] = [c for c in context.cookies() if c["name"] == "byoi_sign_in_csrf"]
    assert form_cookie["httpOnly"] is True and form_cookie["sameSite"] == "Lax"


def start_https_server(tmp_path: Path, registry: str) -> tuple[subprocess.Popen, str, Path]:
    ca, cert, key = make_ca_and_server_cert(tmp_path / "tls")
    port, data_dir = free_port(), tmp_path / "byoi-https"
    proc = subprocess.Popen(
        [sys.executable, "-m", "byoi", "server", "--port", str(port), "--data-dir", str(data_dir),
         "--registry", f"http://{registry}", "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=(tmp_path / "server.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    endpoint = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        try:
            if httpx.get(endpoint + "/healthz", verify=str(ca), timeout=1).status_code in (200, 503):
                return proc, endpoint, ca
        except httpx.TransportError:
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)


@pytest.mark.slow
def test_session_cookie_is_secure_over_https(tmp_path, registry, chromium, monkeypatch):  # noqa: F811
    proc, endpoint, ca = start_https_server(tmp_path, registry)
    try:
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "byoi-https" / "credentials"))
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))  # botocore trusts the test CA
        sm = boto3.Session(profile_name="byoi").client(
            "sagemaker", endpoint_url=endpoint, config=Config(retries={"max_attempts": 1})
        )
        ext = extension_client(endpoint, "byoi")
        domain_id = new_domain(sm)
        alice = user(sm, ext, domain_id)
        url = sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=alice)["AuthorizedUrl"]
        assert url.startswith(endpoint + "/auth/presigned?token=")  # the server's https URL
        ctx = chromium.new_context(ignore_https_errors=True)  # the test CA is not in Chromium's store
        try:
            page = ctx.new_page()
            page.goto(url)
            assert page.url == endpoint + "/rstudio/default/"  # no LandingUri: the RStudio launcher
            cookie = session_cookie(ctx)
            assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (True, True, "Lax")
            page.goto(endpoint + "/auth/sign-in")
            [form_cookie] = [c for c in ctx.cookies() if c["name"] == "byoi_sign_in_csrf"]
            assert form_cookie["secure"] is True
        finally:
            ctx.close()
        sm.close()
        ext.close()  # an idle TLS keep-alive connection holds uvicorn's graceful shutdown until it times out
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_forms_without_their_csrf_token_are_refused(server, sm, ext, context):
    domain_id = new_domain(sm)
    alice = user(sm, ext, domain_id)
    page = context.new_page()
    # The sign-in form: its token removed, or replaced, is refused before the password is looked at.
    for tamper in (
        "document.querySelector('input[name=csrf_token]').remove()",
        "document.querySelector('input[name=csrf_token]').value = 'A'.repeat(43)",
    ):
        page.goto(server.endpoint + "/auth/sign-in")
        page.get_by_label("Username").fill(alice)
        page.get_by_label("Password").fill(PASSWORD)
        page.evaluate(tamper)
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.get_by_role("button", name="Sign in").click()
        assert answer.value.status == 403, tamper
        assert "security token" in page.locator("#error-message").inner_text()
        assert whoami(context, server.endpoint) == {"SignedIn": False}
    # Without the pre-session cookie the form's own token is worthless (a forged cross-site form has no cookie).
    page.goto(server.endpoint + "/auth/sign-in")
    token = page.locator("input[name=csrf_token]").input_value()
    context.clear_cookies()
    forged = context.request.post(
        server.endpoint + "/auth/sign-in",
        form={"csrf_token": token, "username": alice, "password": PASSWORD},
        max_redirects=0,
    )
    assert forged.status == 403
    # Signed in, the sign-out form needs the session's token: without it the session survives.
    sign_in(page, server.endpoint, alice, PASSWORD)
    for tamper in (
        "document.querySelector('input[name=csrf_token]').remove()",
        "document.querySelector('input[name=csrf_token]').value = 'A'.repeat(43)",
    ):
        page.goto(server.endpoint + "/auth/landing")
        page.evaluate(tamper)
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.get_by_role("button", name="Sign out").click()
        assert answer.value.status == 403, tamper
        assert whoami(context, server.endpoint)["PrincipalName"] == alice
    page.goto(server.endpoint + "/auth/landing")
    page.get_by_role("button", name="Sign out").click()  # with its token: works
    assert whoami(context, server.endpoint) == {"SignedIn": False}


def _form_post(client: httpx.Client, endpoint: str, username: str, password: str) -> httpx.Response:
    """The sign-in form as a browser sends it (its CSRF cookie and token), without a browser."""
    form = client.get(endpoint + "/auth/sign-in").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token
    data = {"csrf_token": token[1], "username": username, "password": password}
    return client.post(endpoint + "/auth/sign-in", data=data)


@pytest.mark.slow
def test_failed_sign_ins_are_limited_per_account_and_address(server_factory, registry, chromium):  # noqa: F811
    srv = server_factory([f"http://{registry}"])  # its own limiter: other tests' failures do not count
    sm, ext = srv.client(), extension_client(srv.endpoint, "byoi")
    domain_id = new_domain(sm)
    alice, carol, dave = (user(sm, ext, domain_id) for _ in range(3))
    ctx = chromium.new_context()
    try:
        page = ctx.new_page()
        # Failures are slowed down: the n-th answer is held at least 0.2 s × n (a lower bound, which a loaded
        # machine can only lengthen).
        took = []
        for _ in range(5):
            page.goto(srv.endpoint + "/auth/sign-in")
            page.get_by_label("Username").fill(alice)
            page.get_by_label("Password").fill("wrong password")
            started = time.monotonic()
            with page.expect_response(lambda r: r.request.method == "POST") as answer:
                page.get_by_role("button", name="Sign in").click()
            took.append(time.monotonic() - started)
            assert answer.value.status == 401
            assert page.get_by_role("alert").inner_text() == "Wrong username or password."
        assert all(t >= 0.2 * (i + 1) for i, t in enumerate(took)), took
        # The account is now limited: even the right password is refused, with 429 and a Retry-After.
        page.goto(srv.endpoint + "/auth/sign-in")
        page.get_by_label("Username").fill(alice)
        page.get_by_label("Password").fill(PASSWORD)
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.get_by_role("button", name="Sign in").click()
        assert answer.value.status == 429
        assert 800 <= int(answer.value.headers["retry-after"]) <= 900
        assert "Too many failed sign-ins" in page.locator("h1").inner_text()
        assert whoami(ctx, srv.endpoint) == {"SignedIn": False}
    finally:
        ctx.close()
    with httpx.Client(base_url=srv.endpoint) as client:
        # Another account from the same address is not limited by alice's failures...
        assert _form_post(client, srv.endpoint, carol, PASSWORD).status_code == 303
        # ... and a success clears an account's count: 4 failures, a success, 4 more, and still not limited.
        for _ in range(4):
            assert _form_post(client, srv.endpoint, dave, "wrong password").status_code == 401
        assert _form_post(client, srv.endpoint, dave, PASSWORD).status_code == 303
        for _ in range(4):
            assert _form_post(client, srv.endpoint, dave, "wrong password").status_code == 401
        assert _form_post(client, srv.endpoint, dave, PASSWORD).status_code == 303
        # The address: 13 failures so far; 7 more on names that do not exist make 20, and then no account,
        # however fresh, may sign in from it.
        for i in range(7):
            assert _form_post(client, srv.endpoint, f"nobody-{i}", "wrong password").status_code == 401
        refused = _form_post(client, srv.endpoint, carol, PASSWORD)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    outcomes = [e["Outcome"] for e in audit(ext, "SignIn", 0)]
    assert outcomes.count("InvalidCredentials") == 20 and outcomes.count("TooManyAttempts") == 2


def test_presigned_url_from_boto3_signs_in_once(server, sm, ext, context, chromium):  # noqa: F811
    domain_id = new_domain(sm, name=unique("team"))
    domain_name = sm.describe_domain(DomainId=domain_id)["DomainName"]
    alice = user(sm, ext, domain_id, password=None)  # no password needed: the URL is the credential
    url = sm.create_presigned_domain_url(
        DomainId=domain_id,
        UserProfileName=alice,
        SessionExpirationDurationInSeconds=1800,
        LandingUri="app:RStudioServerPro:",
    )["AuthorizedUrl"]
    assert re.fullmatch(re.escape(server.endpoint) + r"/auth/presigned\?token=[A-Za-z0-9_-]{43}", url)
    page = context.new_page()
    page.goto(url)
    # Landed on the RStudio launcher, which names the user and the domain, signed in for
    # SessionExpirationDurationInSeconds.
    assert page.url == server.endpoint + "/rstudio/default/"
    assert page.locator("#user").inner_text() == alice
    assert page.locator("#domain").inner_text() == f"{domain_name} ({domain_id})"
    me = whoami(context, server.endpoint)
    assert (me["PrincipalName"], me["DomainId"], me["UserProfileName"], me["Via"]) == (
        alice,
        domain_id,
        alice,
        "presigned",
    )
    assert abs(session_cookie(context)["expires"] - (time.time() + 1800)) < 60
    # A second use, from another browser profile: refused with a clear page, and no session.
    other = chromium.new_context()
    try:
        replay = other.new_page()
        response = replay.goto(url)
        assert response is not None and response.status == 403
        assert "already been used" in replay.locator("#error-message").inner_text()
        assert whoami(other, server.endpoint) == {"SignedIn": False}
    finally:
        other.close()
    assert whoami(context, server.endpoint)["PrincipalName"] == alice  # the first browser stays signed in


def test_presigned_url_from_the_aws_cli(server, sm, ext, context):
    domain_id = new_domain(sm)
    alice = user(sm, ext, domain_id, password=None)
    out = subprocess.run(
        [AWS, "sagemaker", "create-presigned-domain-url", "--domain-id", domain_id, "--user-profile-name", alice,
         "--landing-uri", "app:RStudioServerPro:", "--output", "json"],
        env=server.aws_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    url = json.loads(out.stdout)["AuthorizedUrl"]
    page = context.new_page()
    page.goto(url)
    assert page.url == server.endpoint + "/rstudio/default/"
    assert page.locator("#user").inner_text() == alice
    assert page.locator("#domain-id").inner_text() == domain_id
    assert whoami(context, server.endpoint)["PrincipalName"] == alice


def test_racing_browsers_share_one_token_once(server, sm, ext):
    """Many requests at once with one token (each on a connection already open, released together): exactly
    one is signed in."""
    domain_id = new_domain(sm)
    alice = user(sm, ext, domain_id, password=None)
    racers = 12
    for _ in range(4):
        url = sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=alice)["AuthorizedUrl"]
        start = threading.Barrier(racers)

        def follow(_: int, url: str = url, start: threading.Barrier = start) -> int:
            with httpx.Client(timeout=30) as client:
                client.get(server.endpoint + "/auth/whoami")  # the connection is open before the race
                start.wait()
                return client.get(url).status_code

        with concurrent.futures.ThreadPoolExecutor(racers) as pool:
            statuses = sorted(pool.map(follow, range(racers)))
        assert statuses == [303] + [403] * (racers - 1), statuses


@pytest.mark.slow
def test_racing_browsers_share_one_token_once_on_postgresql(server_factory, registry, postgres_url):
    srv = server_factory([f"http://{registry}"], database_url=fresh_postgres_database(postgres_url))
    sm, ext = srv.client(), extension_client(srv.endpoint, "byoi")
    test_racing_browsers_share_one_token_once(srv, sm, ext)


@pytest.mark.slow
def test_expired_presigned_url_is_refused(server, sm, ext, context):
    domain_id = new_domain(sm)
    alice = user(sm, ext, domain_id, password=None)
    url = sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=alice, ExpiresInSeconds=5)["AuthorizedUrl"]
    time.sleep(5.5)
    page = context.new_page()
    response = page.goto(url)
    assert response is not None and response.status == 403
    assert "expired" in page.locator("#error-message").inner_text()
    assert whoami(context, server.endpoint) == {"SignedIn": False}


def _variants(token: str) -> list[str]:
    """The token with each character changed (to another URL-safe one, case flips included), and cut short."""
    out = []
    for i, ch in enumerate(token):
        other = ch.swapcase() if ch.isalpha() else ("A" if ch != "A" else "B")
        out.append(token[:i] + other + token[i + 1 :])
    return [*out, token[:-1], token + "A", ""]


def test_tampered_presigned_url_is_refused(server, sm, ext, context):
    domain_id = new_domain(sm)
    alice = user(sm, ext, domain_id, password=None)
    url = sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=alice)["AuthorizedUrl"]
    base, token = url.split("token=")
    page = context.new_page()
    response = page.goto(base + "token=" + token[:10] + ("x" if token[10] != "x" else "y") + token[11:])
    assert response is not None and response.status == 403
    assert page.locator("#error-message").inner_text() == "This sign-in link is not valid."
    assert whoami(context, server.endpoint) == {"SignedIn": False}
    response = page.goto(base + "token=" + token[:20])
    assert response is not None and response.status == 400
    assert "malformed" in page.locator("#error-message").inner_text()
    # Every one-character change is refused (403 unknown, 400 malformed), never signs in, never a 500.
    with httpx.Client(follow_redirects=False) as client:
        for variant in _variants(token):
            r = client.get(base + "token=" + variant)
            assert r.status_code == (400 if len(variant) != 43 else 403), (variant, r.status_code)
            assert "byoi_session" not in r.headers.get("set-cookie", "")
    # None of that used the real token up.
    page.goto(url)
    assert page.url == server.endpoint + "/rstudio/default/"
    assert whoami(context, server.endpoint)["PrincipalName"] == alice


def test_one_users_url_never_opens_another_profile(server, sm, ext, context, chromium):  # noqa: F811
    domain_id = new_domain(sm)
    alice, bob = user(sm, ext, domain_id), user(sm, ext, domain_id)
    as_alice = server.client_as(ext, alice)
    with pytest.raises(ClientError) as refused:
        as_alice.create_presigned_domain_url(DomainId=domain_id, UserProfileName=bob)
    assert code(refused) == "AccessDeniedException" and bob in message(refused)
    # Alice's own URL signs in as alice, the administrator's URL for bob as bob: each the token's own user.
    mine = as_alice.create_presigned_domain_url(DomainId=domain_id, UserProfileName=alice)["AuthorizedUrl"]
    bobs = sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=bob)["AuthorizedUrl"]
    context.new_page().goto(mine)
    assert whoami(context, server.endpoint)["PrincipalName"] == alice
    other = chromium.new_context()
    try:
        other.new_page().goto(bobs)
        me = whoami(other, server.endpoint)
        assert (me["PrincipalName"], me["UserProfileName"]) == (bob, bob)
    finally:
        other.close()
    # Following bob's link in alice's browser replaces alice's session (it is signed out), never merges them.
    alice_cookie = session_cookie(context)
    bobs_again = sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=bob)["AuthorizedUrl"]
    context.new_page().goto(bobs_again)
    assert whoami(context, server.endpoint)["PrincipalName"] == bob
    context.clear_cookies()
    context.add_cookies([alice_cookie])
    assert whoami(context, server.endpoint) == {"SignedIn": False}


def test_deleting_the_principal_ends_its_sessions(server, sm, ext, context):
    domain_id = new_domain(sm)
    carol = user(sm, ext, domain_id)
    sign_in(context.new_page(), server.endpoint, carol, PASSWORD)
    assert whoami(context, server.endpoint)["PrincipalName"] == carol
    pending = sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=carol)["AuthorizedUrl"]
    ext.delete_principal(Name=carol)
    assert whoami(context, server.endpoint) == {"SignedIn": False}  # the very next request
    # A URL made before the deletion signs nobody in, even once a principal of that name exists again.
    ext.create_principal(Name=carol, Role="user", DomainId=domain_id, UserProfileName=carol)
    response = context.new_page().goto(pending)
    assert response is not None and response.status == 403
    assert whoami(context, server.endpoint) == {"SignedIn": False}
    # And a profile without a principal gets no URL, with the way to make one.
    ext.delete_principal(Name=carol)
    with pytest.raises(ClientError) as missing:
        sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=carol)
    assert code(missing) == "ResourceNotFound" and "byoi admin users create" in message(missing)


@pytest.mark.slow
def test_signing_out_everywhere_ends_every_session(server, sm, ext, context, chromium):  # noqa: F811
    domain_id = new_domain(sm)
    dave = user(sm, ext, domain_id)
    second = chromium.new_context()
    try:
        sign_in(context.new_page(), server.endpoint, dave, PASSWORD)
        second.new_page().goto(
            sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=dave)["AuthorizedUrl"]
        )
        pending = sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=dave)["AuthorizedUrl"]
        assert whoami(context, server.endpoint)["PrincipalName"] == dave
        assert whoami(second, server.endpoint)["PrincipalName"] == dave
        ext.revoke_principal_sessions(Name=dave)
        assert whoami(context, server.endpoint) == {"SignedIn": False}
        assert whoami(second, server.endpoint) == {"SignedIn": False}
        # A URL made before the revocation is revoked too; a new sign-in works.
        response = second.new_page().goto(pending)
        assert response is not None and response.status == 403
        assert whoami(second, server.endpoint) == {"SignedIn": False}
        sign_in(context.new_page(), server.endpoint, dave, PASSWORD)
        assert whoami(context, server.endpoint)["PrincipalName"] == dave
        # A new password also signs out every browser signed in before it.
        ext.set_principal_password(Name=dave, Password="another long password")  # noqa: S106
        assert whoami(context, server.endpoint) == {"SignedIn": False}
    finally:
        second.close()


def test_presigned_url_requests_are_checked(server, sm, ext, context):
    domain_id = new_domain(sm)
    alice = user(sm, ext, domain_id, password=None)
    unchecked = server.client(parameter_validation=False)  # the server's own checks, not botocore's

    def refused(expected: str, **params) -> str:
        with pytest.raises(ClientError) as err:
            unchecked.create_presigned_domain_url(**{"DomainId": domain_id, "UserProfileName": alice, **params})
        assert code(err) == expected, (params, message(err))
        return message(err)

    for landing in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "studio::", "app:JupyterServer:",
                    "app:RStudioServerPro:https://evil.example", "javascript:alert(1)", "auth/whoami"):  # fmt: skip
        assert "LandingUri" in refused("ValidationException", LandingUri=landing), landing
    assert "ExpiresInSeconds" in refused("ValidationException", ExpiresInSeconds=4)
    assert "ExpiresInSeconds" in refused("ValidationException", ExpiresInSeconds=301)
    refused("ValidationException", SessionExpirationDurationInSeconds=1799)
    refused("ValidationException", SpaceName="space1")
    refused("ResourceNotFound", DomainId="d-zzzzzzzzzzzz")
    refused("ResourceNotFound", UserProfileName="nobody-here")
    sso = sm.create_domain(DomainName=unique("sso"), AuthMode="SSO", DefaultUserSettings={})["DomainId"]
    assert "IAM" in refused("ValidationException", DomainId=sso, UserProfileName="whoever")
    # A relative path is a landing of its own; app:RStudioServerPro:<path> lands on that path (here the launcher's
    # address without its slash, which sends the browser on to the launcher).
    url = sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=alice, LandingUri="/auth/whoami")
    page = context.new_page()
    page.goto(url["AuthorizedUrl"])
    assert page.url == server.endpoint + "/auth/whoami"
    url = sm.create_presigned_domain_url(
        DomainId=domain_id, UserProfileName=alice.upper(), LandingUri="app:RStudioServerPro:/rstudio/default"
    )  # profile names ignore case, as SageMaker's
    page.goto(url["AuthorizedUrl"])
    assert page.url == server.endpoint + "/rstudio/default/"
    assert whoami(context, server.endpoint)["UserProfileName"] == alice


def test_audit_log_records_sign_ins_refusals_and_sign_outs(server, sm, ext, context):
    since = time.time()
    domain_id = new_domain(sm)
    erin = user(sm, ext, domain_id)
    arn = f"arn:aws:sagemaker:us-east-1:000000000000:user-profile/{domain_id}/{erin}"
    url = sm.create_presigned_domain_url(DomainId=domain_id, UserProfileName=erin)["AuthorizedUrl"]
    page = context.new_page()
    page.goto(url)
    page.goto(url)  # replayed
    page.goto(url.split("token=")[0] + "token=" + "B" * 43)  # unknown
    page.goto(url.split("token=")[0] + "token=short")  # malformed
    sign_in(page, server.endpoint, erin, "wrong password")
    sign_in(page, server.endpoint, erin, PASSWORD)
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/auth/sign-in?signed-out=1")
    presigned = [
        (e["PrincipalName"], e.get("ResourceArn"), e["Outcome"]) for e in audit(ext, "SignInWithPresignedUrl", since)
    ]
    assert presigned == [
        (erin, arn, "ok"),
        (erin, arn, "TokenUsed"),
        ("anonymous", None, "TokenUnknown"),
        ("anonymous", None, "TokenMalformed"),
    ]
    sign_ins = [(e["PrincipalName"], e["Outcome"]) for e in audit(ext, "SignIn", since)]
    assert sign_ins == [(erin, "InvalidCredentials"), (erin, "ok")]
    [out] = audit(ext, "SignOut", since)
    assert (out["PrincipalName"], out["Outcome"]) == (erin, "ok")
    events = [*audit(ext, "SignInWithPresignedUrl", since), *audit(ext, "SignIn", since), out]
    assert {(e["Door"], e["SourceAddress"]) for e in events} == {("browser", "127.0.0.1")}
    assert all(e.get("RequestId") for e in events)
    # The password never reaches the audit log.
    assert PASSWORD not in json.dumps(ext.list_audit_events(StartTime=since, MaxResults=100), default=str)


def test_failed_sign_in_window_moves_on():
    """The limiter alone, on a clock the test moves: the limit lifts once the oldest failure is 15 minutes old."""
    now = [1000.0]
    limiter = SignInLimiter(clock=lambda: now[0])
    delays = [limiter.failed("Alice", "10.0.0.1") for _ in range(5)]
    assert delays == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert limiter.retry_after("alice ", "10.0.0.2") == 900  # names ignore case and spaces; any address
    now[0] += 600
    assert limiter.retry_after("alice", "10.0.0.2") == 300
    now[0] += 300
    assert limiter.retry_after("alice", "10.0.0.2") is None
    assert limiter.retry_after("bob", "10.0.0.1") is None  # 5 of the address's 20
    for i in range(19):
        limiter.failed(f"user{i}", "10.0.0.1")
    assert limiter.retry_after("bob", "10.0.0.1") is None  # 19: the address's 5 earlier failures have expired
    limiter.failed("user19", "10.0.0.1")
    assert limiter.retry_after("bob", "10.0.0.1") == 900  # 20 from the address: any account is refused there
    assert limiter.retry_after("bob", "10.0.0.3") is None


@pytest.mark.parametrize(
    ("landing", "path"),
    [
        (None, "/rstudio/default/"),
        ("app:RStudioServerPro:", "/rstudio/default/"),
        ("app:RStudioServerPro:/rstudio/default", "/rstudio/default"),
        ("app:RStudioServerPro:/rstudio/default/", "/rstudio/default/"),
        ("/auth/whoami", "/auth/whoami"),
        ("/a/b?c=d#e", "/a/b?c=d#e"),
    ],
)
def test_landing_uri_to_path(landing, path):
    assert check_landing_uri(landing) == landing
    assert landing_path(landing) == path


def test_an_unsafe_rstudio_landing_path_lands_on_the_launcher():
    """landing_path never trusts what it is given: a path that is not one on this server goes to the launcher."""
    for landing in ("app:RStudioServerPro://evil.example", "app:RStudioServerPro:evil", "https://evil.example/"):
        assert landing_path(landing) == "/rstudio/default/", landing


@pytest.mark.parametrize(
    "landing",
    ["//evil.example", "/\\evil.example", "/a\\b", "https://evil.example/", "studio::", "app:JupyterLab:",
     "app:RStudioServerPro:evil", "app:RStudioServerPro://evil.example", "/a b", "/\n", "x"],
)  # fmt: skip
def test_landing_uris_that_would_leave_byoi_are_refused(landing):
    with pytest.raises(ValidationException):
        check_landing_uri(landing)
    assert safe_relative_path(landing) is None
