"""The part of botocore's SageMaker service model that byoi serves: its operations and the shapes they reach.

botocore's model stays the authority for every shape and constraint; byoi only loads less of it. The whole
model (434 operations, 3260 shapes, mostly documentation) took about 10 MiB of the server's memory, and
loading it a second time (for the instance types) as much again, for the 34 operations byoi implements.
Here the file botocore would load is read once, with its documentation dropped while it is parsed, and cut
down to the operations in SERVED_OPERATIONS and every shape they reach (members, list members, map keys and
values, errors), which are kept exactly as botocore has them. (Keeping the cut in a file instead, so as not to
parse the whole document at all, was measured too: the server's idle memory was the same within 0.3 MiB, as
what the parse frees is used again by the rest of the start-up.)

SERVED_OPERATIONS is the one list of SageMaker operations byoi implements; tests/test_fixed_costs.py checks
it against the services, both ways, so an operation added to a service and not here (or the other way round)
fails the tests instead of answering UnknownOperationException.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from typing import Any

from botocore.loaders import Loader
from botocore.model import ServiceModel

SERVICE = "sagemaker"

SERVED_OPERATIONS = frozenset(
    {
        # images and their versions
        "CreateImage",
        "DescribeImage",
        "UpdateImage",
        "DeleteImage",
        "ListImages",
        "CreateImageVersion",
        "DescribeImageVersion",
        "UpdateImageVersion",
        "DeleteImageVersion",
        "ListImageVersions",
        "ListAliases",
        # how images are run
        "CreateAppImageConfig",
        "DescribeAppImageConfig",
        "UpdateAppImageConfig",
        "DeleteAppImageConfig",
        "ListAppImageConfigs",
        # domains and user profiles
        "CreateDomain",
        "DescribeDomain",
        "UpdateDomain",
        "DeleteDomain",
        "ListDomains",
        "CreateUserProfile",
        "DescribeUserProfile",
        "UpdateUserProfile",
        "DeleteUserProfile",
        "ListUserProfiles",
        # sessions and the browser's way in
        "CreateApp",
        "DescribeApp",
        "DeleteApp",
        "ListApps",
        "CreatePresignedDomainUrl",
        # tags
        "AddTags",
        "DeleteTags",
        "ListTags",
    }
)


class _WithoutDocumentation:
    """A botocore file loader (`exists`, `load_file`) that leaves out every "documentation" member as it parses,
    so the model's prose never takes memory at once."""

    OPENERS = ((".json", open), (".json.gz", gzip.open))

    def exists(self, file_path: str) -> bool:
        return any(os.path.isfile(file_path + ext) for ext, _ in self.OPENERS)

    def load_file(self, file_path: str) -> Any:
        for ext, opener in self.OPENERS:
            if os.path.isfile(file_path + ext):
                with opener(file_path + ext, "rb") as fh:
                    text = fh.read().decode("utf-8")
                return json.loads(text, object_pairs_hook=_drop_documentation)
        return None


def _drop_documentation(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in pairs if k != "documentation"}


def _referenced(shape: dict[str, Any]) -> list[str]:
    """The shapes one shape names: its members, a list's member, a map's key and value."""
    names = [ref["shape"] for ref in shape.get("members", {}).values()]
    names += [shape[part]["shape"] for part in ("member", "key", "value") if part in shape]
    return names


def subset(model: dict[str, Any], operations: frozenset[str]) -> dict[str, Any]:
    """`model` (a service-2 document) with only `operations` and the shapes they reach; KeyError naming an
    operation the model does not define."""
    ops = {name: model["operations"][name] for name in sorted(operations)}
    wanted: list[str] = []
    for op in ops.values():
        wanted += [op[part]["shape"] for part in ("input", "output") if part in op]
        wanted += [error["shape"] for error in op.get("errors", [])]
    shapes: dict[str, Any] = {}
    while wanted:
        name = wanted.pop()
        if name not in shapes:
            shapes[name] = model["shapes"][name]
            wanted += _referenced(shapes[name])
    rest = {k: v for k, v in model.items() if k not in ("operations", "shapes")}  # version, metadata
    return {**rest, "operations": ops, "shapes": shapes}


def load_service_document(loader: Loader | None = None) -> dict[str, Any]:
    """botocore's SageMaker service-2 document, found where botocore finds it (the directories in AWS_DATA_PATH
    first), without documentation unless `loader` says otherwise. No botocore session: creating one imports 55
    modules (its clients, their documentation, retries) that a server never uses."""
    if loader is None:
        paths = os.environ.get("AWS_DATA_PATH")
        extra = [os.path.expanduser(p) for p in paths.split(os.pathsep)] if paths else None
        loader = Loader(extra_search_paths=extra, file_loader=_WithoutDocumentation())
    document: dict[str, Any] = loader.load_service_model(SERVICE, "service-2")
    return document


@lru_cache(maxsize=1)
def sagemaker_model() -> ServiceModel:
    """The served part of botocore's SageMaker model (loaded once per process)."""
    return ServiceModel(subset(load_service_document(), SERVED_OPERATIONS), service_name=SERVICE)
