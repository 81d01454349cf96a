"""Where the build path's client finds the server and its credentials: the order botocore uses, without botocore.

Why: importing botocore's session to read two INI files and a few environment variables cost a fast `byoi
build` tens of milliseconds. The endpoint, profile, credentials and region are found here as
`client._session_and_endpoint` and botocore's session find them (tests/test_cli_wire.py compares the two for a
table of environments and files): an explicit `--profile`/`AWS_PROFILE` turns environment keys off; the
shared credentials file comes before the config file (`[profile NAME]` sections); `AWS_DEFAULT_REGION` before
the profile's `region`. Only static keys are read here (from the environment, the shared credentials file and
the config file). Whenever botocore might find something else first or instead (`role_arn`,
`credential_process`, SSO, web identity, `AWS_DEFAULT_PROFILE`, container or instance metadata, an expiring
key, a file it cannot parse, nothing at all, and then byoi's data-dir credentials), botocore itself is asked,
exactly as the other commands ask it, so nothing that works with them stops working here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import cache
from typing import Any, NamedTuple
from urllib.parse import urlsplit

# byoi.config's (a test keeps them equal): importing it would import platformdirs and the inspection settings.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class ClientSetupError(Exception):
    """The client cannot be set up from what the user gave (a bad endpoint URL, an unknown profile): the
    message says which setting is wrong and where it came from."""


class NoCredentials(Exception):
    """Neither these lookups nor botocore's found credentials."""

    def __init__(self) -> None:
        super().__init__("no credentials: set AWS_PROFILE / AWS_SHARED_CREDENTIALS_FILE or use --profile")


# -- the endpoint ----------------------------------------------------------------------------------------

_UNSAFE_URL_CHARS = frozenset("\t\r\n")
_HOSTNAME = r"^((?!-)[A-Z\d-]{1,63}(?<!-)\.)*((?!-)[A-Z\d-]{1,63}(?<!-))$"  # botocore's host labels
_HEX, _IPV4 = "[0-9A-Fa-f]{1,4}", r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}"
_LS32 = f"(?:{_HEX}:{_HEX}|{_IPV4})"
_IPV6 = "|".join(  # botocore's (urllib3's) IPv6 address, one alternative per RFC 3986 form
    (
        f"(?:{_HEX}:){{6}}{_LS32}",
        f"::(?:{_HEX}:){{5}}{_LS32}",
        f"(?:{_HEX})?::(?:{_HEX}:){{4}}{_LS32}",
        f"(?:(?:{_HEX}:)?{_HEX})?::(?:{_HEX}:){{3}}{_LS32}",
        f"(?:(?:{_HEX}:){{0,2}}{_HEX})?::(?:{_HEX}:){{2}}{_LS32}",
        f"(?:(?:{_HEX}:){{0,3}}{_HEX})?::{_HEX}:{_LS32}",
        f"(?:(?:{_HEX}:){{0,4}}{_HEX})?::{_LS32}",
        f"(?:(?:{_HEX}:){{0,5}}{_HEX})?::{_HEX}",
        f"(?:(?:{_HEX}:){{0,6}}{_HEX})?::",
    )
)
_UNRESERVED = r"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._!\-~"


@cache
def _ipv6_addrz() -> re.Pattern[str]:  # compiled when first used: compiling it took 8 ms of each start
    return re.compile(rf"^\[(?:{_IPV6})(?:(?:%25|%)(?:[{_UNRESERVED}]|%[a-fA-F0-9]{{2}})+)?\]$")


def is_ipv6_url(url: str) -> bool:
    """botocore's `is_valid_ipv6_endpoint_url`."""
    if _UNSAFE_URL_CHARS.intersection(url):
        return False
    hostname = urlsplit(url).hostname
    return hostname is not None and ":" in hostname and bool(_ipv6_addrz().match(f"[{hostname}]"))


def _is_valid_url(url: str) -> bool:
    """botocore's `is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url)`, and a port that is a number."""
    if _UNSAFE_URL_CHARS.intersection(url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        hostname = parts.hostname
    except ValueError:
        return False
    if is_ipv6_url(url):
        return True
    if hostname is None or len(hostname) > 255:
        return False
    return bool(re.match(_HOSTNAME, hostname[:-1] if hostname.endswith(".") else hostname, re.IGNORECASE))


def endpoint(endpoint_url: str | None) -> str:
    """`--endpoint-url`, else AWS_ENDPOINT_URL_SAGEMAKER, else AWS_ENDPOINT_URL, else byoi's default."""
    for source, value in (
        ("--endpoint-url", endpoint_url),
        ("AWS_ENDPOINT_URL_SAGEMAKER", os.environ.get("AWS_ENDPOINT_URL_SAGEMAKER")),
        ("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL")),
    ):
        if value:
            # botocore would raise a bare "ValueError: Invalid endpoint" later, naming neither option nor source.
            if not _is_valid_url(value) or not value.lower().startswith(("http://", "https://")):
                raise ClientSetupError(
                    f"{source} {value!r} is not a URL: use http(s)://host[:port], e.g. http://{DEFAULT_HOST}:{DEFAULT_PORT}"
                )
            return value
    return f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"


def unknown_profile(source: str, name: str) -> ClientSetupError:
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
    )
    return ClientSetupError(
        f"{source}: profile {name!r} not found in {files[0]} or {files[1]}"
        " (set AWS_SHARED_CREDENTIALS_FILE to byoi's <data-dir>/credentials and use profile byoi)"
    )


# -- credentials and region ------------------------------------------------------------------------------


class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None = None


class Setup(NamedTuple):
    """Where the server is and who signs: what `_session_and_endpoint` and the session's credentials give."""

    endpoint: str
    credentials: Credentials | None
    region: str
    ca_bundle: str | None = None  # AWS_CA_BUNDLE, else the profile's ca_bundle


class _AskBotocore(Exception):
    """botocore would find credentials in a way this module does not follow (or fail in its own words)."""


# Profile settings that make botocore take credentials from somewhere else before the shared credentials file
# (assume role, web identity, SSO, `aws login`) or, for credential_process, before the config file's keys.
_BEFORE_FILES = ("role_arn", "web_identity_token_file", "sso_role_name", "sso_account_id", "login_session")
_BEFORE_CONFIG_KEYS = ("credential_process",)


def _read_ini(path: str) -> dict[str, dict[str, Any]] | None:
    """botocore's `raw_config_parse`: each section as a dict (indented values as sub-dicts); None: no file."""
    path = os.path.expanduser(os.path.expandvars(path))
    if not os.path.isfile(path):
        return None
    import configparser

    parser = configparser.RawConfigParser()
    try:
        parser.read([path])
    except (configparser.Error, UnicodeDecodeError):
        raise _AskBotocore from None  # botocore's ConfigParseError says it best
    sections: dict[str, dict[str, Any]] = {}
    for section in parser.sections():
        values: dict[str, Any] = {}
        for option in parser.options(section):
            value = parser.get(section, option)
            if value.startswith("\n"):
                try:
                    value = dict(_pair(line) for line in value.splitlines() if line.strip())
                except ValueError:
                    raise _AskBotocore from None
            values[option] = value
        sections[section] = values
    return sections


def _pair(line: str) -> tuple[str, str]:
    key, value = line.strip().split("=", 1)
    return key.strip(), value.strip()


def _config_profiles(sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """botocore's `build_profile_map`: `[profile NAME]` sections (and `[default]`) by profile name."""
    import shlex

    profiles: dict[str, dict[str, Any]] = {}
    for key, values in sections.items():
        if key.startswith("profile"):
            try:
                parts = shlex.split(key)
            except ValueError:
                continue
            if len(parts) == 2:
                profiles[parts[1]] = values
        elif key == "default":
            profiles[key] = values
    return profiles


def _static_keys(section: Mapping[str, Any]) -> Credentials | None:
    """The keys of a credentials-file section or config profile, as botocore's file providers read them."""
    if "aws_access_key_id" not in section:
        return None
    access, secret = section["aws_access_key_id"], section.get("aws_secret_access_key")
    if not isinstance(access, str) or not isinstance(secret, str) or not access or not secret:
        raise _AskBotocore  # a partial or odd entry: botocore's PartialCredentialsError or its own reading
    token = next((section[k] for k in ("aws_security_token", "aws_session_token") if k in section), None)
    return Credentials(access, secret, token if isinstance(token, str) else None)


def _environment_keys() -> Credentials | None:
    """botocore's EnvProvider, for keys that do not expire."""
    access = os.environ.get("AWS_ACCESS_KEY_ID", "")
    if not access:
        return None
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not secret or os.environ.get("AWS_CREDENTIAL_EXPIRATION"):
        raise _AskBotocore  # partial (botocore says which variable is missing) or refreshable
    token = next((t for t in (os.environ.get(k, "") for k in ("AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")) if t), None)
    return Credentials(access, secret, token)


def _from_files_and_environment(profile: str | None) -> tuple[Credentials, str, str | None]:
    """(credentials, region, CA bundle) found as botocore finds them, or _AskBotocore."""
    source = "--profile" if profile else "AWS_PROFILE"
    explicit = profile or os.environ.get("AWS_PROFILE")
    if explicit is None and "AWS_DEFAULT_PROFILE" in os.environ:
        raise _AskBotocore  # botocore's own profile variable, with its own precedence
    name = "default" if explicit is None else explicit
    config = _config_profiles(_read_ini(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")) or {})
    shared = _read_ini(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")) or {}
    merged = {**config.get(name, {}), **shared.get(name, {})}  # the session's view of the profile
    if explicit is not None and name not in config and name not in shared:
        raise unknown_profile(source, name)

    found = None
    if explicit is None:  # an explicit profile turns environment keys off (create_credential_resolver)
        found = _environment_keys()
        if found is None and "AWS_WEB_IDENTITY_TOKEN_FILE" in os.environ:
            raise _AskBotocore
    if found is None:
        if any(k in merged for k in _BEFORE_FILES):
            raise _AskBotocore
        found = _static_keys(shared.get(name, {}))
    if found is None:
        if any(k in merged for k in _BEFORE_CONFIG_KEYS):
            raise _AskBotocore
        found = _static_keys(config.get(name, {}))
    if found is None:
        raise _AskBotocore  # boto2 files, container or instance metadata, byoi's data dir: botocore's to find

    region = os.environ["AWS_DEFAULT_REGION"] if "AWS_DEFAULT_REGION" in os.environ else merged.get("region")
    bundle = os.environ["AWS_CA_BUNDLE"] if "AWS_CA_BUNDLE" in os.environ else merged.get("ca_bundle")
    if not isinstance(region, str | None) or not isinstance(bundle, str | None):
        raise _AskBotocore
    return found, region or "us-east-1", bundle or None


def _from_botocore(endpoint_url: str | None, profile: str | None) -> Setup:
    """What the botocore client finds, exactly as the rest of the CLI does (`client._session_and_endpoint`)."""
    from byoi.cli.client import _session_and_endpoint, region_of

    session, found_endpoint = _session_and_endpoint(endpoint_url, profile)
    creds = session.get_credentials()
    frozen = creds.get_frozen_credentials() if creds is not None else None
    bundle = session.get_config_variable("ca_bundle")
    return Setup(
        found_endpoint,
        Credentials(frozen.access_key, frozen.secret_key, frozen.token) if frozen else None,
        region_of(session),
        bundle or None,
    )


def setup(endpoint_url: str | None, profile: str | None) -> Setup:
    """The endpoint, credentials and region a botocore client made by `byoi.cli.client` would use."""
    found_endpoint = endpoint(endpoint_url)
    try:
        creds, region, bundle = _from_files_and_environment(profile)
    except _AskBotocore:
        return _from_botocore(endpoint_url, profile)
    return Setup(found_endpoint, creds, region, bundle)
