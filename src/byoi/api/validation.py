"""Validate a decoded JSON request against a botocore shape.

Checks what AWS checks: required members, types, lengths, ranges, enums and regular-expression patterns
(applied to the whole value, with Java's `\\p{..}` classes, hence the `regex` module). Every violation is
collected, and the message follows AWS's wording: "2 validation errors detected: Value 'x' at
'ImageName' failed to satisfy constraint: Member must ...".
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from functools import lru_cache
from typing import Any

import regex
from botocore.model import ListShape, MapShape, Shape, StructureShape

from byoi.errors import SerializationException, ValidationException

MAX_SHOWN_VALUE = 60


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> regex.Pattern[str] | None:
    try:
        return regex.compile(pattern)
    except regex.error:
        return None  # a pattern Python cannot read is not enforced rather than failing every request


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_SHOWN_VALUE else text[:MAX_SHOWN_VALUE] + "..."


class _Collector:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, path: str, value: Any, constraint: str) -> None:
        self.errors.append(f"Value '{_show(value)}' at '{path}' failed to satisfy constraint: Member must {constraint}")


def validate_request(shape: StructureShape | None, body: Any) -> dict[str, Any]:
    """Return the request with timestamps as epoch floats; raise ValidationException listing every problem."""
    if not isinstance(body, dict):
        raise SerializationException("The request body must be a JSON object")
    if shape is None:
        return {}
    errors = _Collector()
    value = _check(shape, body, "", errors)
    if errors.errors:
        n = len(errors.errors)
        noun = "error" if n == 1 else "errors"
        raise ValidationException(f"{n} validation {noun} detected: " + "; ".join(errors.errors))
    return value  # type: ignore[no-any-return]


class _Redacting(_Collector):
    """For shapes marked `sensitive` in the model (passwords, secrets): the error names the member and the
    constraint, never the value, so a mistyped password cannot reach a response, a log line or the audit log."""

    def __init__(self, inner: _Collector) -> None:
        self.inner = inner
        self.errors = inner.errors

    def fail(self, path: str, value: Any, constraint: str) -> None:
        self.inner.fail(path, "*** (sensitive)", constraint)


def _check(shape: Shape, value: Any, path: str, errors: _Collector) -> Any:
    kind = shape.type_name
    checker = _CHECKERS.get(kind)
    if checker is None:
        return value
    if shape.metadata.get("sensitive") and not isinstance(errors, _Redacting):
        errors = _Redacting(errors)
    return checker(shape, value, path, errors)


def _join(path: str, member: str) -> str:
    return f"{path}.{member}" if path else member


def _check_structure(shape: Shape, value: Any, path: str, errors: _Collector) -> Any:
    assert isinstance(shape, StructureShape)
    if not isinstance(value, dict):
        errors.fail(path or shape.name, _show(value), "be an object")
        return value
    result = {}
    for name in shape.required_members:
        if value.get(name) is None:
            errors.fail(_join(path, name), "null", "not be null")
    for name, item in value.items():
        member = shape.members.get(name)
        if member is None:
            errors.fail(_join(path, name), _show(item), f"be a member of {shape.name}")
            continue
        if item is None:
            continue
        result[name] = _check(member, item, _join(path, name), errors)
    return result


def _check_length(shape: Shape, value: Any, path: str, errors: _Collector, unit: str) -> None:
    meta = shape.metadata
    if "min" in meta and len(value) < meta["min"]:
        errors.fail(path, value, f"have {unit} greater than or equal to {meta['min']}")
    if "max" in meta and len(value) > meta["max"]:
        errors.fail(path, value, f"have {unit} less than or equal to {meta['max']}")


def _check_list(shape: Shape, value: Any, path: str, errors: _Collector) -> Any:
    assert isinstance(shape, ListShape)
    if not isinstance(value, list):
        errors.fail(path, value, "be a list")
        return value
    _check_length(shape, value, path, errors, "length")
    return [_check(shape.member, item, f"{path}.{i + 1}.member", errors) for i, item in enumerate(value)]


def _check_map(shape: Shape, value: Any, path: str, errors: _Collector) -> Any:
    assert isinstance(shape, MapShape)
    if not isinstance(value, dict):
        errors.fail(path, value, "be a map")
        return value
    _check_length(shape, value, path, errors, "length")
    result = {}
    for key, item in value.items():
        _check(shape.key, key, f"{path}.key", errors)
        result[key] = _check(shape.value, item, f"{path}.{key}", errors)
    return result


def _check_string(shape: Shape, value: Any, path: str, errors: _Collector) -> Any:
    if not isinstance(value, str):
        errors.fail(path, value, "be a string")
        return value
    _check_length(shape, value, path, errors, "length")
    if "\x00" in value:  # PostgreSQL cannot store it in text or JSON columns, and no name or setting needs it
        errors.fail(path, value.replace("\x00", "\\u0000"), "not contain the NUL character (\\u0000)")
    if shape.enum and value not in shape.enum:
        errors.fail(path, value, f"satisfy enum value set: [{', '.join(shape.enum)}]")
    pattern = shape.metadata.get("pattern")
    if pattern:
        compiled = _compiled(pattern)
        if compiled is not None and not compiled.fullmatch(value):
            errors.fail(path, value, f"satisfy regular expression pattern: {pattern}")
    return value


# The widths AWS gives the model's integer types. JSON has no limit of its own, and a bigger number would
# overflow the store's integer columns (a 500) instead of being refused.
_INTEGER_BITS = {"integer": 32, "long": 64}


def _check_integer(shape: Shape, value: Any, path: str, errors: _Collector) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        errors.fail(path, value, "be an integer")
        return value
    bits = _INTEGER_BITS.get(shape.type_name, 64)
    lowest, highest = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if not lowest <= value <= highest:
        errors.fail(path, value, f"fit in a {bits}-bit integer ({lowest} to {highest})")
        return value
    _check_range(shape, value, path, errors)
    return value


def _check_range(shape: Shape, value: float, path: str, errors: _Collector) -> None:
    meta = shape.metadata
    if "min" in meta and value < meta["min"]:
        errors.fail(path, value, f"have value greater than or equal to {meta['min']}")
    if "max" in meta and value > meta["max"]:
        errors.fail(path, value, f"have value less than or equal to {meta['max']}")


def _check_float(shape: Shape, value: Any, path: str, errors: _Collector) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.fail(path, value, "be a number")
        return value
    _check_range(shape, value, path, errors)
    return float(value)


def _check_boolean(shape: Shape, value: Any, path: str, errors: _Collector) -> Any:
    if not isinstance(value, bool):
        errors.fail(path, value, "be a boolean")
    return value


def _check_timestamp(shape: Shape, value: Any, path: str, errors: _Collector) -> Any:
    """awsJson sends epoch seconds; ISO 8601 strings are accepted too. Returned as an epoch float."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            return parsed.timestamp()
    errors.fail(path, value, "be a timestamp (epoch seconds)")
    return value


def _check_blob(shape: Shape, value: Any, path: str, errors: _Collector) -> Any:
    if not isinstance(value, str):
        errors.fail(path, value, "be base64-encoded data")
        return value
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        errors.fail(path, value, "be base64-encoded data")
        return value
    _check_length(shape, decoded, path, errors, "length")
    return value


_CHECKERS = {
    "structure": _check_structure,
    "list": _check_list,
    "map": _check_map,
    "string": _check_string,
    "integer": _check_integer,
    "long": _check_integer,
    "float": _check_float,
    "double": _check_float,
    "boolean": _check_boolean,
    "timestamp": _check_timestamp,
    "blob": _check_blob,
}
