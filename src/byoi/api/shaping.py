"""Shape a service's result into exactly the members of an operation's output shape.

Services return plain dicts in wire names; this drops members the model does not define and `None`
values (AWS omits absent members rather than sending null), and writes timestamps as epoch seconds.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from botocore.model import ListShape, MapShape, Shape, StructureShape


def shape_output(shape: Shape | None, value: Any) -> Any:
    if shape is None:
        return {}
    return _shape(shape, value)


def _shape(shape: Shape, value: Any) -> Any:
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            return value
        out = {}
        for name, member in shape.members.items():
            item = value.get(name)
            if item is not None:
                out[name] = _shape(member, item)
        return out
    if isinstance(shape, ListShape):
        return [_shape(shape.member, v) for v in value]
    if isinstance(shape, MapShape):
        return {k: _shape(shape.value, v) for k, v in value.items()}
    if shape.type_name == "timestamp" and isinstance(value, dt.datetime):
        return value.timestamp()
    return value
