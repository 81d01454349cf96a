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

from byoi.config import CREDENTIALS_PROFILE as PROFILE
from byoi.config import DEFAULT_HOST, DEFAULT_PORT, default_data_dir


def _session_and_endpoint(endpoint_url: str | None, profile: str | None) -> tuple[boto3.Session, str]:
    endpoint = (
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_SAGEMAKER")
        or os.environ.get("AWS_ENDPOINT_URL")
        or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
    )
    profile = profile or os.environ.get("AWS_PROFILE")
    if profile is None and botocore.session.Session().get_credentials() is None:
        local = default_data_dir() / "credentials"
        if local.exists():
            os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", str(local))
            profile = PROFILE
    return boto3.Session(profile_name=profile), endpoint


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
