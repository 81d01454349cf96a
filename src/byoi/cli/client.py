"""Find the server and credentials the way boto3 does, falling back to the local data dir's.

Order: `--endpoint-url`, else `AWS_ENDPOINT_URL_SAGEMAKER` / `AWS_ENDPOINT_URL`, else
http://127.0.0.1:8080; `--profile`, else `AWS_PROFILE`, else whatever boto3 finds (environment,
`AWS_SHARED_CREDENTIALS_FILE`, ~/.aws), else the administrator key byoi wrote to its data dir.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ProfileNotFound
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url

from byoi.config import CREDENTIALS_PROFILE as PROFILE
from byoi.config import DEFAULT_HOST, DEFAULT_PORT, default_data_dir


class ClientSetupError(Exception):
    """The client cannot be set up from what the user gave (a bad endpoint URL, an unknown profile): the
    message says which setting is wrong and where it came from."""


def _endpoint(endpoint_url: str | None) -> str:
    for source, value in (
        ("--endpoint-url", endpoint_url),
        ("AWS_ENDPOINT_URL_SAGEMAKER", os.environ.get("AWS_ENDPOINT_URL_SAGEMAKER")),
        ("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL")),
    ):
        if value:
            # botocore would raise a bare "ValueError: Invalid endpoint" later, naming neither option nor source.
            valid = is_valid_endpoint_url(value) or is_valid_ipv6_endpoint_url(value)
            if not valid or not value.lower().startswith(("http://", "https://")):
                raise ClientSetupError(
                    f"{source} {value!r} is not a URL: use http(s)://host[:port], e.g. http://{DEFAULT_HOST}:{DEFAULT_PORT}"
                )
            return value
    return f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"


def _session_and_endpoint(endpoint_url: str | None, profile: str | None) -> tuple[boto3.Session, str]:
    endpoint = _endpoint(endpoint_url)
    source = "--profile" if profile else "AWS_PROFILE"
    profile = profile or os.environ.get("AWS_PROFILE")
    try:
        if profile is None and botocore.session.Session().get_credentials() is None:
            local = default_data_dir() / "credentials"
            if local.exists():
                os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", str(local))
                profile = PROFILE
        return boto3.Session(profile_name=profile), endpoint
    except ProfileNotFound as exc:
        files = (
            os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
            os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
        )
        raise ClientSetupError(
            f"{source}: profile {exc.kwargs.get('profile', profile)!r} not found in {files[0]} or {files[1]}"
            " (set AWS_SHARED_CREDENTIALS_FILE to byoi's <data-dir>/credentials and use profile byoi)"
        ) from None


_CONFIG = Config(retries={"max_attempts": 3, "mode": "standard"})


def sagemaker_client(endpoint_url: str | None = None, profile: str | None = None) -> Any:
    session, endpoint = _session_and_endpoint(endpoint_url, profile)
    return session.client(
        "sagemaker", endpoint_url=endpoint, region_name=session.region_name or "us-east-1", config=_CONFIG
    )


def extension_client(endpoint_url: str | None = None, profile: str | None = None) -> Any:
    """A botocore client for byoi's `Byoi.*` operations, built from the extension model."""
    from byoi.api.model import extension_data_path

    session, endpoint = _session_and_endpoint(endpoint_url, profile)
    loader = session._session.get_component("data_loader")
    if extension_data_path() not in loader.search_paths:
        loader.search_paths.append(extension_data_path())
    return session.client("byoi", endpoint_url=endpoint, region_name=session.region_name or "us-east-1", config=_CONFIG)


def credentials_hint(data_dir: Path, endpoint_url: str) -> str:
    return (
        "Use byoi with the AWS CLI or boto3:\n"
        f"  export AWS_SHARED_CREDENTIALS_FILE={data_dir / 'credentials'}\n"
        f"  export AWS_PROFILE={PROFILE}\n"
        f"  export AWS_ENDPOINT_URL_SAGEMAKER={endpoint_url}\n"
        "  aws sagemaker list-images"
    )
