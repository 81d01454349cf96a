"""Read the wire error out of a botocore ClientError, as the tests assert on it."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def message(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Message"])
