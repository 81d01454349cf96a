"""Service models that drive the API: botocore's SageMaker model, and byoi's own extension model.

Requests are validated and responses shaped from these, never from hand-written shapes.
"""

from __future__ import annotations

from functools import lru_cache

import botocore.session
from botocore.model import OperationModel, ServiceModel

SAGEMAKER_PREFIX = "SageMaker"


@lru_cache(maxsize=1)
def sagemaker_model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("sagemaker")


def operation(prefix: str, name: str) -> OperationModel | None:
    """The operation model for `<prefix>.<name>`, or None when no model defines it."""
    if prefix == SAGEMAKER_PREFIX:
        model = sagemaker_model()
        return model.operation_model(name) if name in model.operation_names else None
    return None
