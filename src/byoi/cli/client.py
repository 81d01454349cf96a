"""Find the server and credentials the way boto3 does, falling back to the local data dir's.

Order: `--endpoint-url`, else `AWS_ENDPOINT_URL_SAGEMAKER` / `AWS_ENDPOINT_URL`, else
http://127.0.0.1:8080; `--profile`, else `AWS_PROFILE`, else whatever botocore finds (environment,
`AWS_SHARED_CREDENTIALS_FILE`, ~/.aws), else the administrator key byoi wrote to its data dir. `byoi build`
finds the same without botocore where it can (byoi.cli.credentials), and through `_session_and_endpoint` otherwise.

Clients load their service models from a small botocore data directory in the user's cache
(`~/.cache/byoi/botocore-<key>`): SageMaker's model cut down to the operations the CLI calls (with every shape
they use, unchanged), byoi's extension model, and botocore's endpoint data for SageMaker only. Parsing
SageMaker's whole model (4 MB of JSON) and listing botocore's 400 service directories would otherwise cost
most of a short command's time. The directory is made once per botocore version and byoi model; where it
cannot be made (a read-only home, AWS_DATA_PATH set), clients load botocore's own data as boto3 does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from byoi.cli.credentials import ClientSetupError as ClientSetupError  # shared with the build path's client
from byoi.cli.credentials import endpoint as _endpoint
from byoi.cli.credentials import unknown_profile
from byoi.config import CREDENTIALS_PROFILE as PROFILE
from byoi.config import default_data_dir

if TYPE_CHECKING:
    import botocore.session

# The SageMaker operations the CLI calls (tests/test_cli_shape.py checks the CLI's code calls no other).
CLI_OPERATIONS = (
    "CreateApp",
    "CreateAppImageConfig",
    "CreateDomain",
    "CreateImage",
    "CreateImageVersion",
    "CreatePresignedDomainUrl",
    "CreateUserProfile",
    "DeleteApp",
    "DeleteDomain",
    "DeleteImage",
    "DeleteImageVersion",
    "DeleteUserProfile",
    "DescribeApp",
    "DescribeAppImageConfig",
    "DescribeDomain",
    "DescribeImage",
    "DescribeImageVersion",
    "DescribeUserProfile",
    "ListApps",
    "ListDomains",
    "ListImageVersions",
    "ListImages",
    "ListUserProfiles",
)
SAGEMAKER_API_VERSION = "2017-07-24"
_BOTOCORE_FILES = ("partitions.json", "sdk-default-configuration.json", "_retry.json")


def _session_and_endpoint(endpoint_url: str | None, profile: str | None) -> tuple[botocore.session.Session, str]:
    import botocore.session
    from botocore.exceptions import ProfileNotFound

    endpoint = _endpoint(endpoint_url)
    source = "--profile" if profile else "AWS_PROFILE"
    profile = profile or os.environ.get("AWS_PROFILE")
    try:
        if profile is None and botocore.session.Session().get_credentials() is None:
            local = default_data_dir() / "credentials"
            if local.exists():
                os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", str(local))
                profile = PROFILE
        session = botocore.session.Session(profile=profile)
        session.get_scoped_config()  # an unknown profile is refused here, naming it
    except ProfileNotFound as exc:
        raise unknown_profile(source, exc.kwargs.get("profile", profile)) from None
    _use_cli_models(session)
    return session, endpoint


def region_of(session: botocore.session.Session) -> str:
    return str(session.get_config_variable("region") or "us-east-1")


def _config(attempts: int = 3) -> Any:
    from botocore.config import Config

    return Config(retries={"max_attempts": attempts, "mode": "standard"})


def sagemaker_client(endpoint_url: str | None = None, profile: str | None = None) -> Any:
    session, endpoint = _session_and_endpoint(endpoint_url, profile)
    return session.create_client("sagemaker", endpoint_url=endpoint, region_name=region_of(session), config=_config())


def extension_client(endpoint_url: str | None = None, profile: str | None = None, attempts: int = 3) -> Any:
    """A botocore client for byoi's `Byoi.*` operations, built from the extension model (`attempts`: of each
    call, retries included)."""
    session, endpoint = _session_and_endpoint(endpoint_url, profile)
    loader = session.get_component("data_loader")
    if cli_data_path() not in loader.search_paths:  # botocore's own data: add the extension model's
        from byoi.api.model import extension_data_path

        loader.search_paths.append(extension_data_path())
    return session.create_client(
        "byoi", endpoint_url=endpoint, region_name=region_of(session), config=_config(attempts)
    )


# -- the CLI's model directory ---------------------------------------------------------------------


def _use_cli_models(session: botocore.session.Session) -> None:
    """Make `session` load its models from the CLI's data directory, when there is one."""
    from botocore.loaders import Loader

    if os.environ.get("AWS_DATA_PATH"):  # the user's own models: load as botocore does
        return
    path = cli_data_path()
    if path is not None:
        session.register_component("data_loader", Loader(extra_search_paths=[path], include_default_search_paths=False))


@cache
def cli_data_path() -> str | None:
    """The CLI's botocore data directory, made now if it is not there yet; None when it cannot be made."""
    import botocore

    from byoi.api.model import FRAGMENTS

    key = hashlib.sha256(botocore.__version__.encode() + ",".join(CLI_OPERATIONS).encode())
    for fragment in sorted(FRAGMENTS.glob("*.json")):
        key.update(fragment.name.encode() + fragment.read_bytes())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "byoi"
    target = root / f"botocore-{key.hexdigest()[:16]}"
    if (target / "complete").exists():
        return str(target)
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".botocore-", dir=root))
        try:
            _write_models(staging)
            (staging / "complete").touch()
            staging.rename(target)  # atomic; another process that got there first wins, and its copy is used
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (target / "complete").exists():
                raise
    except OSError:
        return None
    return str(target)


def _write_models(root: Path) -> None:
    import botocore
    from botocore.loaders import Loader

    from byoi.api.model import EXTENSION_API_VERSION, EXTENSION_SERVICE, extension_model_dict

    data = Path(botocore.__file__).parent / "data"
    for name in _BOTOCORE_FILES:
        shutil.copyfile(data / name, root / name)
    endpoints = json.loads((data / "endpoints.json").read_text())
    for partition in endpoints["partitions"]:
        partition["services"] = {k: v for k, v in partition["services"].items() if k == "sagemaker"}
    (root / "endpoints.json").write_text(json.dumps(endpoints))

    loader = Loader()
    sagemaker = root / "sagemaker" / SAGEMAKER_API_VERSION
    sagemaker.mkdir(parents=True)
    model = cut_model(loader.load_service_model("sagemaker", "service-2"))
    (sagemaker / "service-2.json").write_text(json.dumps(model))
    pages = loader.load_service_model("sagemaker", "paginators-1")
    pages["pagination"] = {k: v for k, v in pages["pagination"].items() if k in CLI_OPERATIONS}
    (sagemaker / "paginators-1.json").write_text(json.dumps(pages))
    ruleset = "endpoint-rule-set-1.json.gz"
    shutil.copyfile(data / "sagemaker" / SAGEMAKER_API_VERSION / ruleset, sagemaker / ruleset)

    extension = root / EXTENSION_SERVICE / EXTENSION_API_VERSION
    extension.mkdir(parents=True)
    (extension / "service-2.json").write_text(json.dumps(extension_model_dict()))


def cut_model(model: dict[str, Any], operations: tuple[str, ...] = CLI_OPERATIONS) -> dict[str, Any]:
    """`model` with only `operations`, and the shapes they reach (inputs, outputs, errors, members), unchanged."""
    shapes: dict[str, Any] = model["shapes"]
    kept: set[str] = set()

    def keep(name: str) -> None:
        if name in kept:
            return
        kept.add(name)
        shape = shapes[name]
        for member in shape.get("members", {}).values():
            keep(member["shape"])
        for part in ("member", "key", "value"):
            if part in shape:
                keep(shape[part]["shape"])

    for name in operations:
        op = model["operations"][name]
        for part in ("input", "output"):
            if part in op:
                keep(op[part]["shape"])
        for error in op.get("errors", []):
            keep(error["shape"])
    return {
        **model,
        "operations": {name: model["operations"][name] for name in operations},
        "shapes": {name: shapes[name] for name in sorted(kept)},
    }


def credentials_hint(data_dir: Path, endpoint_url: str) -> str:
    return (
        "Use byoi with the AWS CLI or boto3:\n"
        f"  export AWS_SHARED_CREDENTIALS_FILE={data_dir / 'credentials'}\n"
        f"  export AWS_PROFILE={PROFILE}\n"
        f"  export AWS_ENDPOINT_URL_SAGEMAKER={endpoint_url}\n"
        "  aws sagemaker list-images"
    )
