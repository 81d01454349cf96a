"""Find the server and credentials the way boto3 does, falling back to the local data dir's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.config import Config

from byoi.config import CREDENTIALS_PROFILE as PROFILE
from byoi.config import DEFAULT_HOST, DEFAULT_PORT, default_data_dir


def sagemaker_client(endpoint_url: str | None = None, profile: str | None = None, region: str | None = None) -> Any:
    endpoint = (
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_SAGEMAKER")
        or os.environ.get("AWS_ENDPOINT_URL")
        or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
    )
    profile = profile or os.environ.get("AWS_PROFILE")
    config = Config(retries={"max_attempts": 3, "mode": "standard"})
    if profile is None and botocore.session.Session().get_credentials() is None:
        # Nothing configured the boto3 way: use the administrator key byoi wrote on first start.
        local = default_data_dir() / "credentials"
        if local.exists():
            os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", str(local))
            profile = PROFILE
    session = boto3.Session(profile_name=profile, region_name=region)
    return session.client(
        "sagemaker", endpoint_url=endpoint, region_name=session.region_name or "us-east-1", config=config
    )


def credentials_hint(data_dir: Path, endpoint_url: str) -> str:
    return (
        "Use byoi with the AWS CLI or boto3:\n"
        f"  export AWS_SHARED_CREDENTIALS_FILE={data_dir / 'credentials'}\n"
        f"  export AWS_PROFILE={PROFILE}\n"
        f"  export AWS_ENDPOINT_URL_SAGEMAKER={endpoint_url}\n"
        "  aws sagemaker list-images"
    )
