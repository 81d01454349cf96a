"""Service models that drive the API: botocore's SageMaker model (the part byoi serves, byoi.sagemaker_model),
and byoi's own extension model.

Requests are validated and responses shaped from these, never from hand-written shapes.

The extension model (`X-Amz-Target: Byoi.<Operation>`) is written in botocore's own format and split
into fragments, one JSON file per area in `api/models/` (each with "operations" and "shapes"), merged
here. Because it is a botocore model, clients get a real botocore client for it (signing, validation,
error parsing) from `extension_client()`, exactly like the SageMaker one.
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from botocore.model import OperationModel, ServiceModel

from byoi.sagemaker_model import sagemaker_model as sagemaker_model  # re-exported: the API's model of SageMaker

SAGEMAKER_PREFIX = "SageMaker"
EXTENSION_PREFIX = "Byoi"
EXTENSION_SERVICE = "byoi"
EXTENSION_API_VERSION = "2026-11-27"
FRAGMENTS = Path(__file__).parent / "models"


@lru_cache(maxsize=1)
def extension_model_dict() -> dict[str, Any]:
    operations: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    for fragment in sorted(FRAGMENTS.glob("*.json")):
        data = json.loads(fragment.read_text())
        for kind, target in (("operations", operations), ("shapes", shapes)):
            for name, value in data.get(kind, {}).items():
                if name in target and target[name] != value:
                    raise ValueError(f"{fragment.name} redefines {kind[:-1]} {name} differently")
                target[name] = value
    return {
        "version": "2.0",
        "metadata": {
            "apiVersion": EXTENSION_API_VERSION,
            "endpointPrefix": EXTENSION_SERVICE,
            "jsonVersion": "1.1",
            "protocol": "json",
            "protocols": ["json"],
            "serviceFullName": "byoi extensions",
            "serviceId": "byoi",
            "signatureVersion": "v4",
            "signingName": "sagemaker",
            "targetPrefix": EXTENSION_PREFIX,
            "uid": f"byoi-{EXTENSION_API_VERSION}",
        },
        "operations": operations,
        "shapes": shapes,
    }


@lru_cache(maxsize=1)
def extension_model() -> ServiceModel:
    return ServiceModel(extension_model_dict(), service_name=EXTENSION_SERVICE)


def operation(prefix: str, name: str) -> OperationModel | None:
    """The operation model for `<prefix>.<name>`, or None when no model defines it."""
    model = {SAGEMAKER_PREFIX: sagemaker_model, EXTENSION_PREFIX: extension_model}.get(prefix)
    if model is None:
        return None
    service = model()
    return service.operation_model(name) if name in service.operation_names else None


def all_operation_names() -> set[str]:
    return set(sagemaker_model().operation_names) | set(extension_model().operation_names)


@lru_cache(maxsize=1)
def extension_data_path() -> str:
    """A botocore data directory holding the merged extension model, for `session.create_client('byoi')`."""
    root = Path(tempfile.mkdtemp(prefix="byoi-model-"))
    target = root / EXTENSION_SERVICE / EXTENSION_API_VERSION
    target.mkdir(parents=True)
    (target / "service-2.json").write_text(json.dumps(extension_model_dict()))
    return str(root)
