"""byoi.cli.wire and byoi.cli.credentials, the build path's standard-library client, against botocore itself:
the same signatures, the same credentials, region and endpoint for the same environment and files, the same
errors and retries, the same documents. HTTP behaviour is checked against small real servers on 127.0.0.1 (real
sockets, http.server); the build tests (tests/test_builds.py, tests/test_cli_shape.py) run it against the real
byoi server.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.auth
import botocore.session
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotocoreCredentials
from botocore.exceptions import ClientError

from byoi.cli import build_run, client, credentials, wire
from byoi.cli.output import ExitCode, document
from tests.support.processes import free_port

AMZ_DATE = "20260314T092653Z"

# -- signatures ----------------------------------------------------------------------------------------------

SIGNED = [
    ("POST", "http://127.0.0.1:8080/", {"X-Amz-Target": "Byoi.StartImageBuild", "Content-Type": "x"}, b'{"a":1}'),
    ("POST", "http://127.0.0.1:8080/byoi/build-contexts/by-digest/" + "ab" * 32, {}, b""),
    ("POST", "http://localhost:8080/byoi/build-contexts", {"X-Amz-Content-SHA256": "cd" * 32}, b""),
    ("GET", "http://127.0.0.1:8080/byoi/builds/b-0123456789abcdef/events?offset=42", {}, b""),
    ("GET", "http://h:1/p?b=2&a=1&a=0&c", {}, b""),  # sorted by key, then value; a bare key
    ("GET", "http://h:1/p?x=%2F%20y&empty=", {}, b""),  # already encoded: left as it is
    ("GET", "http://h:1/a/./b/../c//d/", {}, b""),  # dot and empty segments
    ("GET", "http://h:1/sp ace/ünï/~tilde", {}, b""),  # encoded in the canonical path
    ("GET", "http://h:1", {}, b""),  # no path at all
    ("GET", "http://EXAMPLE.test:80/x", {}, b""),  # lower-case host, default port dropped
    ("GET", "https://example.test:443/x", {}, b""),
    ("GET", "https://example.test:8443/x", {}, b"body over https"),
    ("GET", "http://[::1]:8080/x", {}, b""),
    ("PUT", "http://h:1/x", {"User-Agent": "not signed", "X-Custom": "  many   spaces  here "}, b"x"),
    ("POST", "http://h:1/x", {"Authorization": "old", "X-Amz-Date": "old", "host": "given.example:9"}, b""),
    ("post", "http://h:1/x", {"x-amz-target": "SageMaker.DescribeImageVersion", "Expect": "100-continue"}, b"{}"),
]
KEYS = [
    wire.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
    wire.Credentials("ASIAEXAMPLE", "secret", "session//token=="),
]


@pytest.mark.parametrize("keys", KEYS, ids=["keys", "session-token"])
@pytest.mark.parametrize(("method", "url", "headers", "body"), SIGNED, ids=[f"{m} {u}" for m, u, _, _ in SIGNED])
def test_the_signature_is_botocores(monkeypatch, keys, method, url, headers, body):
    fixed = dt.datetime.strptime(AMZ_DATE, "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: fixed)
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    signer = botocore.auth.SigV4Auth(
        BotocoreCredentials(keys.access_key, keys.secret_key, keys.token), "sagemaker", "eu-west-3"
    )
    signer.add_auth(request)
    ours = wire.sign(keys, "eu-west-3", method, url, dict(headers), body, amz_date=AMZ_DATE)
    assert list(ours.items()) == list(request.headers.items())


def test_a_signature_of_the_current_time():
    headers = wire.sign(KEYS[0], "us-east-1", "GET", "http://h:1/x")
    signed_at = dt.datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - signed_at).total_seconds()) < 5


# -- endpoint, credentials and region --------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An environment with no AWS settings at all: an empty home, no byoi data dir, no instance metadata."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "BOTO_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("BYOI_DATA_DIR", str(tmp_path / "no-data-dir"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / ".aws").mkdir()
    return tmp_path


def botocores(endpoint_url: str | None, profile: str | None) -> wire.Setup:
    """What the CLI's botocore clients use: client._session_and_endpoint, the session's credentials and region."""
    session, endpoint = client._session_and_endpoint(endpoint_url, profile)
    found = session.get_credentials()
    frozen = found.get_frozen_credentials() if found else None
    keys = wire.Credentials(frozen.access_key, frozen.secret_key, frozen.token) if frozen else None
    return wire.Setup(endpoint, keys, client.region_of(session), session.get_config_variable("ca_bundle"))


CREDENTIALS_FILE = """\
[default]
aws_access_key_id = FILE_DEFAULT
aws_secret_access_key = file-default-secret
[team]
aws_access_key_id = FILE_TEAM
aws_secret_access_key = file-team-secret
aws_session_token = file-team-token
region = ap-south-1
[both]
aws_access_key_id = FILE_BOTH
aws_secret_access_key = file-both-secret
[profile team]
aws_access_key_id = NOT_A_PROFILE_IN_THIS_FILE
aws_secret_access_key = x
[old-token]
aws_access_key_id = FILE_OLD
aws_secret_access_key = old-secret
aws_security_token = security-token
aws_session_token = session-token
"""
CONFIG_FILE = """\
[default]
region = eu-central-1
[profile cfg]
aws_access_key_id = CONFIG_ONLY
aws_secret_access_key = config-secret
aws_session_token = config-token
region = us-west-2
[profile both]
aws_access_key_id = CONFIG_BOTH
aws_secret_access_key = config-both-secret
region = sa-east-1
ca_bundle = /etc/ssl/certs/ca-certificates.crt
[cfg]
aws_access_key_id = NOT_A_PROFILE
aws_secret_access_key = x
[profile "spaced name"]
aws_access_key_id = SPACED
aws_secret_access_key = spaced-secret
[profile nested]
aws_access_key_id = NESTED
aws_secret_access_key = nested-secret
s3 =
  addressing_style = path
[profile proc-and-file]
credential_process = /bin/false
[profile proc-and-config]
credential_process = /bin/false
aws_access_key_id = CONFIG_PROC
aws_secret_access_key = x
[profile role]
role_arn = arn:aws:iam::123456789012:role/r
source_profile = cfg
[profile sso]
sso_account_id = 123456789012
sso_role_name = r
[profile web]
role_arn = arn:aws:iam::123456789012:role/r
web_identity_token_file = /nonexistent
"""
EXTRA_CREDENTIALS = "[proc-and-file]\naws_access_key_id = FILE_PROC\naws_secret_access_key = file-proc-secret\n"
ENV_KEYS = {"AWS_ACCESS_KEY_ID": "ENV_KEY", "AWS_SECRET_ACCESS_KEY": "env-secret"}

# (environment, --profile, found without botocore?)
RESOLVED = [
    (ENV_KEYS, None, True),
    ({**ENV_KEYS, "AWS_SESSION_TOKEN": "env-token"}, None, True),
    ({**ENV_KEYS, "AWS_SECURITY_TOKEN": "old-env-token", "AWS_SESSION_TOKEN": "env-token"}, None, True),
    ({**ENV_KEYS, "AWS_SESSION_TOKEN": ""}, None, True),
    ({**ENV_KEYS, "AWS_DEFAULT_REGION": "ca-central-1"}, None, True),
    ({**ENV_KEYS, "AWS_DEFAULT_REGION": ""}, None, True),  # set but empty: us-east-1, not the profile's
    (ENV_KEYS, "team", True),  # an explicit profile turns environment keys off
    ({**ENV_KEYS, "AWS_PROFILE": "team"}, None, True),  # AWS_PROFILE is passed as explicitly
    ({**ENV_KEYS, "AWS_PROFILE": "team"}, "cfg", True),  # --profile before AWS_PROFILE
    ({}, None, True),  # the default profile of the files; its region from the config file
    ({"AWS_PROFILE": "cfg"}, None, True),  # keys in the config file only, in a [profile cfg] section
    ({}, "both", True),  # credentials file first; region and ca_bundle from the config file
    ({"AWS_DEFAULT_REGION": "eu-north-1"}, "both", True),
    ({}, "old-token", True),  # aws_security_token before aws_session_token
    ({}, "spaced name", True),
    ({}, "nested", True),
    ({}, "proc-and-file", True),  # the credentials file comes before credential_process
    ({"AWS_CA_BUNDLE": "/etc/ssl/certs/byoi-test-bundle.pem"}, "team", True),
    ({"AWS_DEFAULT_PROFILE": "team"}, None, False),  # botocore's own profile variable: botocore decides
    ({**ENV_KEYS, "AWS_CREDENTIAL_EXPIRATION": "2999-01-01T00:00:00Z"}, None, False),  # botocore's to refresh
]


def write_files(home: Path, monkeypatch: pytest.MonkeyPatch, relocate: bool) -> None:
    """The files, at ~/.aws or (relocate) where AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE say, with $HOME."""
    folder = home / ("elsewhere" if relocate else ".aws")
    folder.mkdir(exist_ok=True)
    (folder / "credentials").write_text(CREDENTIALS_FILE + EXTRA_CREDENTIALS)
    (folder / "config").write_text(CONFIG_FILE)
    if relocate:
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "$HOME/elsewhere/credentials")
        monkeypatch.setenv("AWS_CONFIG_FILE", "~/elsewhere/config")


@pytest.mark.parametrize("relocate", [False, True], ids=["~/.aws", "relocated"])
@pytest.mark.parametrize(("env", "profile", "lean"), RESOLVED, ids=[f"{e}-{p}" for e, p, _ in RESOLVED])
def test_credentials_and_region_are_botocores(home, monkeypatch, env, profile, lean, relocate):
    write_files(home, monkeypatch, relocate)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if lean:  # found here, botocore never asked
        monkeypatch.setattr(credentials, "_from_botocore", lambda *a: pytest.fail("botocore was asked"))
    assert wire.setup(None, profile) == botocores(None, profile)
    if not lean:
        with pytest.raises(credentials._AskBotocore):
            credentials._from_files_and_environment(profile)


@pytest.mark.parametrize("profile", ["role", "sso", "web", "proc-and-config"])
def test_profiles_botocore_resolves_in_other_ways_are_left_to_it(home, monkeypatch, profile):
    write_files(home, monkeypatch, False)
    with pytest.raises(credentials._AskBotocore):
        credentials._from_files_and_environment(profile)
    monkeypatch.setenv("AWS_PROFILE", profile)
    with pytest.raises(credentials._AskBotocore):
        credentials._from_files_and_environment(None)


def test_web_identity_in_the_environment_is_left_to_botocore(home, monkeypatch):
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(home / "token"))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/r")
    with pytest.raises(credentials._AskBotocore):
        credentials._from_files_and_environment(None)


def test_credential_process_goes_through_botocore_and_gives_the_scripts_keys(home, monkeypatch):
    script = home / "creds.py"
    keys = {"Version": 1, "AccessKeyId": "PROCESS_KEY", "SecretAccessKey": "process-secret", "SessionToken": "tok"}
    script.write_text(f"import json\nprint(json.dumps({keys!r}))\n")
    (home / ".aws" / "config").write_text(f"[profile proc]\ncredential_process = {sys.executable} {script}\n")
    found = wire.setup(None, "proc")
    assert found.credentials == wire.Credentials("PROCESS_KEY", "process-secret", "tok")
    assert found == botocores(None, "proc")


def test_no_credentials_anywhere_is_botocores_none_and_the_byoi_data_dir_is_the_last_resort(home, monkeypatch):
    found = wire.setup(None, None)
    assert found.credentials is None and found == botocores(None, None)
    with pytest.raises(wire.NoCredentials, match="no credentials: set AWS_PROFILE"):
        wire.Client(found)
    data_dir = home / "data"
    data_dir.mkdir()
    (data_dir / "credentials").write_text("[byoi]\naws_access_key_id = BYOI_ADMIN\naws_secret_access_key = s\n")
    monkeypatch.setenv("BYOI_DATA_DIR", str(data_dir))
    assert wire.setup(None, None).credentials == wire.Credentials("BYOI_ADMIN", "s")


def test_partial_environment_keys_fail_as_botocore_fails(home, monkeypatch):
    from botocore.exceptions import PartialCredentialsError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ONLY_THE_KEY")
    with pytest.raises(PartialCredentialsError):
        wire.setup(None, None)


@pytest.mark.parametrize(("profile", "env", "source"), [("nope", {}, "--profile"), (None, {"AWS_PROFILE": "nope"},
                                                        "AWS_PROFILE")])  # fmt: skip
def test_an_unknown_profile_is_refused_naming_it_and_where_it_came_from(home, monkeypatch, profile, env, source):
    write_files(home, monkeypatch, False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(wire.ClientSetupError) as ours:
        wire.setup(None, profile)
    with pytest.raises(client.ClientSetupError) as theirs:
        botocores(None, profile)
    assert str(ours.value) == str(theirs.value)
    assert str(ours.value).startswith(f"{source}: profile 'nope' not found in ~/.aws/credentials or ~/.aws/config")


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [
        (None, {}, "http://127.0.0.1:8080"),
        (None, {"AWS_ENDPOINT_URL": "http://b:2"}, "http://b:2"),
        (None, {"AWS_ENDPOINT_URL": "http://b:2", "AWS_ENDPOINT_URL_SAGEMAKER": "http://a:1"}, "http://a:1"),
        ("https://c:3/", {"AWS_ENDPOINT_URL_SAGEMAKER": "http://a:1"}, "https://c:3/"),
        ("http://[::1]:8080", {}, "http://[::1]:8080"),
        ("not-a-url", {}, "--endpoint-url 'not-a-url' is not a URL"),
        ("ftp://h:1", {}, "--endpoint-url 'ftp://h:1' is not a URL"),
        ("http://bad_host:1", {}, "--endpoint-url 'http://bad_host:1' is not a URL"),
        ("http://h:port", {}, "--endpoint-url 'http://h:port' is not a URL"),
        (None, {"AWS_ENDPOINT_URL_SAGEMAKER": "http://[::1"}, "AWS_ENDPOINT_URL_SAGEMAKER 'http://[::1' is not a URL"),
    ],
)
def test_the_endpoint_is_found_in_botocores_order_and_checked(home, monkeypatch, given, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if expected.startswith("http"):
        assert wire.endpoint(given) == expected
    else:
        with pytest.raises(wire.ClientSetupError, match=expected.replace("[", r"\[")):
            wire.endpoint(given)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "http://[::1]:1", "http://[fe80::1%25eth0]:1", "https://a.b.example:443/p", "http://a..b",
     "http://-a", "http://a_b", f"http://{'a' * 64}", "http://[::ffff:1.2.3.4]", "http://a\tb", "http://:80",
     "http://trailing.dot.", "http://[v1.x]"],
)  # fmt: skip
def test_the_url_check_is_botocores(url):
    from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url

    assert credentials._is_valid_url(url) == bool(is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url))


def test_the_constants_are_the_servers_and_the_models():
    import byoi.api.model as model
    import byoi.config as config
    from byoi.api.protocol import CONTENT_TYPE

    assert (credentials.DEFAULT_HOST, credentials.DEFAULT_PORT) == (config.DEFAULT_HOST, config.DEFAULT_PORT)
    assert (wire.SAGEMAKER_PREFIX, wire.EXTENSION_PREFIX) == (model.SAGEMAKER_PREFIX, model.EXTENSION_PREFIX)
    assert Path(wire.MODELS) == model.FRAGMENTS.resolve() and wire.JSON_CONTENT_TYPE == CONTENT_TYPE
    extension = model.extension_model_dict()
    assert wire.extension_model() == {"operations": extension["operations"], "shapes": extension["shapes"]}
    sagemaker = botocore.session.get_session().get_service_model("sagemaker")
    for meta in (extension["metadata"], sagemaker.metadata):
        assert (meta["protocol"], meta["jsonVersion"], meta["signingName"]) == ("json", "1.1", wire.SERVICE)
    assert sagemaker.metadata["targetPrefix"] == wire.SAGEMAKER_PREFIX


def _types(shape: Any) -> Any:
    """A botocore shape's members and their types, nested."""
    if shape.type_name == "structure":
        return {name: _types(member) for name, member in shape.members.items()}
    if shape.type_name == "list":
        return [_types(shape.member)]
    return shape.type_name


def _our_types(shapes: dict[str, Any], name: str) -> Any:
    shape = shapes[name]
    if shape["type"] == "structure":
        return {m: _our_types(shapes, ref["shape"]) for m, ref in shape["members"].items()}
    if shape["type"] == "list":
        return [_our_types(shapes, shape["member"]["shape"])]
    return shape["type"]


def test_the_sagemaker_output_shapes_kept_here_are_botocores():
    sagemaker = botocore.session.get_session().get_service_model("sagemaker")
    for operation, shape in wire.SAGEMAKER_OUTPUTS.items():
        output = sagemaker.operation_model(operation).output_shape
        assert _our_types(wire.SAGEMAKER_SHAPES, shape) == _types(output)
        assert list(wire.SAGEMAKER_SHAPES[shape]["members"]) == list(output.members)  # the same order
    used = set(re.findall(r'\.sagemaker\("(\w+)"', Path(build_run.__file__).read_text()))
    assert used and used <= set(wire.SAGEMAKER_OUTPUTS)


# -- JSON calls against a real (small) HTTP server --------------------------------------------------------------

Answer = Callable[[http.server.BaseHTTPRequestHandler], None]


class Scripted(http.server.ThreadingHTTPServer):
    """Answers each request with the next of `answers` (the last one again when they run out)."""

    daemon_threads = True

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.seen: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Scripted

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append({"headers": dict(self.headers.items()), "body": body, "path": self.path})
        answers = self.server.answers
        (answers.pop(0) if len(answers) > 1 else answers[0])(self)

    def log_message(self, *args: Any) -> None:
        pass


def answer(status: int, body: Any = b"", headers: dict[str, str] | None = None) -> Answer:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    def send(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        sent = {"Content-Type": wire.JSON_CONTENT_TYPE, "x-amzn-RequestId": "rid-1", **(headers or {})}
        for name, value in sent.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return send


def hang_up(handler: http.server.BaseHTTPRequestHandler) -> None:
    """Close the connection without an answer."""
    handler.close_connection = True


@pytest.fixture
def serve() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def start(*answers: Answer) -> Scripted:
        server = Scripted(list(answers))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def lean(url: str) -> wire.Client:
    return wire.Client(wire.Setup(url, wire.Credentials("AKID", "secret"), "us-east-1"))


def botocore_extension(url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return client.extension_client(url)


BUILD = {
    "BuildId": "b-0123456789abcdef",
    "BuildStatus": "SUCCEEDED",
    "ImageUri": "127.0.0.1:5000/team/r:latest",
    "CreationTime": 1773480413.123456,
    "StartTime": 1773480414,
    "EndTime": "1773480415.5",
    "LastModifiedTime": 1773480415.000001,
    "BuildArgs": {"A": "1"},
    "NotInTheModel": "dropped",
    "FailureReason": None,
}


def test_a_call_is_signed_as_botocores_json_protocol_and_answered_as_its_client_answers(home, serve, monkeypatch):
    server = serve(answer(200, BUILD))
    ours = lean(server.url).extension("DescribeImageBuild", {"BuildId": BUILD["BuildId"]})
    theirs = botocore_extension(server.url, monkeypatch).describe_image_build(BuildId=BUILD["BuildId"])
    mine, boto = server.seen
    assert mine["path"] == boto["path"] == "/" and json.loads(mine["body"]) == json.loads(boto["body"])
    for name in ("X-Amz-Target", "Content-Type", "Host"):
        assert mine["headers"][name] == boto["headers"][name], name
    assert "x-amz-target" in mine["headers"]["Authorization"]
    for result in (ours, theirs):  # the two answers were sent a moment apart
        result["ResponseMetadata"]["HTTPHeaders"].pop("date")
    assert ours == theirs  # datetimes and all, ResponseMetadata too (headers, RequestId, RetryAttempts)
    assert json.dumps(document(ours)) == json.dumps(document(theirs))  # the same document, key for key


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "America/New_York"])
def test_timestamps_are_botocores_in_every_time_zone(home, serve, monkeypatch, tz):
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        server = serve(answer(200, BUILD))
        ours = lean(server.url).extension("DescribeImageBuild", {"BuildId": BUILD["BuildId"]})
        theirs = botocore_extension(server.url, monkeypatch).describe_image_build(BuildId=BUILD["BuildId"])
        assert document(ours) == document(theirs) and isinstance(ours["CreationTime"], dt.datetime)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_503_then_a_200_is_retried_and_counted(serve):
    server = serve(answer(503, b""), answer(200, {"BuildId": "b-0123456789abcdef", "BuildStatus": "QUEUED"}))
    result = lean(server.url).extension("StartImageBuild", {"ContextId": "ctx-1"})
    assert result["BuildStatus"] == "QUEUED" and result["ResponseMetadata"]["RetryAttempts"] == 1
    assert len(server.seen) == 2 and server.seen[0]["headers"]["X-Amz-Date"]  # signed again for the retry


@pytest.mark.parametrize(
    ("answers", "attempts"),
    [
        ([answer(503, b"")], wire.ATTEMPTS),  # no body: the status as the code, its reason as the message
        ([answer(502, b"<html><body>Bad Gateway</body></html>")], wire.ATTEMPTS),
        ([answer(500, {"__type": "InternalFailure", "Message": "An internal error occurred"})], wire.ATTEMPTS),
        ([answer(429, {"__type": "ThrottlingException", "message": "slow down"})], wire.ATTEMPTS),
        ([answer(400, {"__type": "ThrottlingException", "message": "slow down"})], wire.ATTEMPTS),
        ([answer(400, {"__type": "ValidationException", "Message": "bad ContextId"})], 1),
        ([answer(404, {"__type": "com.amazon#ResourceNotFound:http://x", "Message": "no such build"})], 1),
        ([answer(403, b"not json at all")], 1),
    ],
)
def test_errors_are_botocores_after_the_same_retries(home, serve, monkeypatch, answers, attempts):
    server = serve(*answers)
    monkeypatch.setattr(wire, "_backoff", lambda attempt, throttled: None)  # botocore's own waits are real
    with pytest.raises(wire.ApiError) as ours:
        lean(server.url).extension("DescribeImageBuild", {"BuildId": "b-0123456789abcdef"})
    assert len(server.seen) == attempts
    with pytest.raises(ClientError) as theirs:
        botocore_extension(server.url, monkeypatch).describe_image_build(BuildId="b-0123456789abcdef")
    assert len(server.seen) == 2 * attempts  # botocore made as many
    error = theirs.value.response["Error"]
    assert (ours.value.code, ours.value.message) == (error["Code"], error["Message"])


def test_the_cli_words_an_error_and_exits_as_common_fail_does(serve, capsys):
    from byoi.cli.common import fail

    server = serve(answer(400, {"__type": "ValidationException", "Message": "bad [ContextId]"}))
    with pytest.raises(build_run.Exit) as ours, build_run.api_failures():
        lean(server.url).extension("StartImageBuild", {})
    ours_err = capsys.readouterr().err
    error = {"Code": "ValidationException", "Message": "bad [ContextId]"}
    boto_error = ClientError({"Error": error}, "StartImageBuild")  # type: ignore[arg-type]
    assert fail(boto_error).exit_code == ours.value.code == ExitCode.INVALID_INPUT
    assert ours_err == capsys.readouterr().err == "error: ValidationException: bad [ContextId]\n"


def test_a_server_that_hangs_up_or_is_not_there_is_unreachable_as_botocore_says(home, serve, monkeypatch, capsys):
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

    from byoi.cli.common import fail

    server = serve(hang_up)
    refused = f"http://127.0.0.1:{free_port()}"
    for url, botocore_error in ((server.url, ConnectionClosedError), (refused, EndpointConnectionError)):
        with pytest.raises(build_run.Exit) as ours, build_run.api_failures():
            lean(url).extension("DescribeImageBuild", {"BuildId": "b-0123456789abcdef"})
        assert ours.value.code == ExitCode.UNAVAILABLE
        ours_err = capsys.readouterr().err
        with pytest.raises(botocore_error) as theirs:
            botocore_extension(url, monkeypatch).describe_image_build(BuildId="b-0123456789abcdef")
        assert fail(theirs.value).exit_code == ExitCode.UNAVAILABLE
        assert ours_err == capsys.readouterr().err == f"error: cannot reach byoi at {url}/: is `byoi up` running?\n"
    assert len(server.seen) == 2 * wire.ATTEMPTS  # botocore retried them as often


def test_a_bad_region_is_refused_as_botocore_refuses_it(serve):
    from botocore.exceptions import InvalidRegionError

    found = wire.Setup(serve(answer(200, {})).url, wire.Credentials("AKID", "secret"), "not a region")
    with pytest.raises(wire.WireError) as ours:
        wire.Client(found).extension("DescribeImageBuild", {})
    assert str(ours.value) == str(InvalidRegionError(region_name="not a region"))


def test_an_event_stream_is_read_line_by_line_as_it_comes(serve):
    """The build's log stream: a chunked GET read while the server still writes it."""
    gate = threading.Event()

    class Stream(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b'id: 7\nevent: log\ndata: {"m": "one"}\n\n', b"event: end\ndata: {}\n\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                gate.wait(5)
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with lean(f"http://127.0.0.1:{server.server_address[1]}").open("GET", "/events", query="offset=0") as response:
            lines = wire.lines(response)
            first = [next(lines) for _ in range(4)]  # before the server sends the rest
            assert time.monotonic() - started < 2.5  # not once the server gave up waiting
            gate.set()
            assert first == ["id: 7", "event: log", 'data: {"m": "one"}', ""]
            assert list(lines) == ["event: end", "data: {}", ""]
    finally:
        server.shutdown()
        server.server_close()


def test_https_is_verified_with_the_ca_bundle_and_refused_without_it(serve, tmp_path):
    """A real TLS server with a private CA: trusted through the CA bundle (AWS_CA_BUNDLE or the profile's
    ca_bundle), refused with the system's CAs, for JSON calls and the build routes alike."""
    import ssl

    from tests.support.tls import make_ca_and_server_cert

    ca, cert, key = make_ca_and_server_cert(tmp_path / "tls")
    server = serve(answer(200, {"BuildId": "b-0123456789abcdef", "BuildStatus": "QUEUED"}))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    url = server.url.replace("http://", "https://")
    keys = wire.Credentials("AKID", "secret")

    trusted = wire.Client(wire.Setup(url, keys, "us-east-1", str(ca)))
    assert isinstance(trusted.verify, ssl.SSLContext)
    assert trusted.extension("StopImageBuild", {"BuildId": "b-0123456789abcdef"})["BuildStatus"] == "QUEUED"
    assert trusted.request("POST", "/byoi/build-contexts/by-digest/" + "ab" * 32).status == 200

    untrusted = wire.Client(wire.Setup(url, keys, "us-east-1"))
    assert untrusted.verify is True  # the system's CAs, loaded when first used
    with pytest.raises(wire.WireError, match=rf"SSL validation failed for {url}/ .*CERTIFICATE_VERIFY_FAILED"):
        untrusted.extension("StopImageBuild", {"BuildId": "b-0123456789abcdef"})
    with pytest.raises(wire.TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusted.request("POST", "/byoi/build-contexts/by-digest/" + "ab" * 32)


def test_a_ca_bundle_that_is_not_there_is_named_not_a_traceback(tmp_path):
    missing = tmp_path / "no-such-bundle.pem"
    with pytest.raises(wire.ClientSetupError, match=f"the CA bundle {missing} .*No such file"):
        wire.Client(wire.Setup("https://127.0.0.1:1", wire.Credentials("AKID", "secret"), "us-east-1", str(missing)))
