"""Type checks for the JSON an inspection reads: the image manifest's descriptors and the image config.

A registry stores whatever it is given: Distribution checks the Go types of a manifest it accepts, other
registries check nothing, and no registry looks inside a config blob. So every member the inspection
reads is checked here first, and a wrong type ends the inspection with an InspectionError naming the
member (`config.ExposedPorts is an array, not an object`) rather than an AttributeError deep in the
report code. `null` counts as absent for optional members, as Go and Docker treat it.
"""

from __future__ import annotations

from typing import Any

from byoi.inspect.errors import InspectionError
from byoi.oci_json import descriptor_problem, json_type

_WANTED: dict[type, str] = {str: "a string", dict: "an object", list: "an array"}


def _optional(parent: dict[str, Any], key: str, kind: type, name: str, what: str) -> Any:
    """parent[key] when present and of `kind`; None when absent or null; InspectionError otherwise."""
    value = parent.get(key)
    if value is not None and not isinstance(value, kind):
        raise InspectionError(f"{what} is malformed: {name} is {json_type(value)}, not {_WANTED[kind]}")
    return value


def _strings(parent: dict[str, Any], key: str, name: str, what: str, single_ok: bool = False) -> None:
    """An optional array of strings (or, when `single_ok`, one string, as Docker accepts for Cmd)."""
    value = parent.get(key)
    if value is None or (single_ok and isinstance(value, str)):
        return
    if not isinstance(value, list):
        raise InspectionError(f"{what} is malformed: {name} is {json_type(value)}, not an array of strings")
    for position, item in enumerate(value):
        if not isinstance(item, str):
            raise InspectionError(f"{what} is malformed: {name}[{position}] is {json_type(item)}, not a string")


def check_image_config(config: dict[str, Any]) -> None:
    """The members of an image config (OCI image spec, Docker's image JSON) that the report reads."""
    what = "the image config"
    for key in ("architecture", "os", "variant"):
        _optional(config, key, str, key, what)
    inner = _optional(config, "config", dict, "config", what)
    if inner:
        for key in ("User", "WorkingDir"):
            _optional(inner, key, str, f"config.{key}", what)
        _strings(inner, "Env", "config.Env", what)
        for key in ("Entrypoint", "Cmd"):
            _strings(inner, key, f"config.{key}", what, single_ok=True)
        _optional(inner, "ExposedPorts", dict, "config.ExposedPorts", what)
    rootfs = _optional(config, "rootfs", dict, "rootfs", what)
    if rootfs:
        _strings(rootfs, "diff_ids", "rootfs.diff_ids", what)


def check_descriptor(desc: Any, name: str) -> dict[str, Any]:
    """A content descriptor of the manifest (`name` says which, e.g. "layer 2"), checked by the shared rules."""
    problem = descriptor_problem(desc, name)
    if problem:
        raise InspectionError(f"the image manifest is malformed: {problem}")
    return desc  # type: ignore[no-any-return]


def descriptor_size(desc: dict[str, Any]) -> int:
    """The size of a checked descriptor (0 when it gives none)."""
    return int(desc.get("size") or 0)
