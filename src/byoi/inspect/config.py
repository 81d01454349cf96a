"""Inspection settings: which rules run at which level, and the limits that keep bad input harmless.

Operators change them with a TOML file (`byoi server --inspection-config FILE`):

    enabled = true
    [rules]
    reticulate = "off"            # off | info | warning | required
    non-root-user = "required"
    [limits]
    size_warning_bytes = 25_000_000_000
    max_ratio = 250
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

LEVELS = ("required", "warning", "info", "off")

# The RStudio image contract (DESIGN.md): rule name -> default level.
DEFAULT_LEVELS: dict[str, str] = {
    "linux-platform": "required",
    "r-present": "required",
    "rstudio-server": "required",
    "rstudio-socket": "warning",
    "non-root-user": "warning",
    "rstudio-urls": "warning",
    "image-size": "warning",
    "reticulate": "warning",
    "entrypoint-override": "info",
}

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    size_warning_bytes: int = 25 * 10**9  # the image-size rule (SageMaker's 25 GB)
    max_total_bytes: int = 200 * GiB  # uncompressed bytes of all layers together
    max_layer_bytes: int = 100 * GiB  # uncompressed bytes of one layer
    max_ratio: float = 250.0  # uncompressed / compressed, checked once a layer passes ratio_grace_bytes
    ratio_grace_bytes: int = 64 * MiB
    max_header_bytes: int = 1 * MiB  # one PAX or GNU long-name header
    max_path_bytes: int = 4096
    max_entries: int = 3_000_000  # tar entries over all layers
    max_capture_bytes: int = 1 * MiB  # one file whose content a rule reads
    max_config_bytes: int = 8 * MiB
    max_layers: int = 256


@dataclass(frozen=True)
class InspectionConfig:
    enabled: bool = True
    levels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVELS))
    limits: Limits = field(default_factory=Limits)
    concurrency: int = 2  # layers read at once
    cache_dir: Path | None = None  # None: <data dir>/inspect-cache

    def level(self, rule: str) -> str:
        return self.levels.get(rule, DEFAULT_LEVELS.get(rule, "warning"))


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    names = {int: "an integer", float: "a float", str: "a string", list: "an array", dict: "a table"}
    return names.get(type(value), f"a {type(value).__name__} value")


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {key} must be a table ([{key}]), not {_toml_type(value)}")
    return value


def _limit(key: str, value: Any, where: str) -> int | float:
    """A positive, finite limit; a whole number unless the limit is a ratio (`2e11` is fine, `2.5` is not)."""
    wanted = "a positive number" if key == "max_ratio" else "a positive integer"
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (key != "max_ratio" and not float(value).is_integer()):
        raise ValueError(f"{where}: limit {key} must be {wanted}, not {value!r}")
    return float(value) if key == "max_ratio" else int(value)


def parse_inspection_config(data: dict[str, Any], where: str = "inspection config") -> InspectionConfig:
    """Build a config from a parsed TOML document; raise ValueError naming the bad key. Every value is
    type-checked here, so a wrong type stops the server with that message rather than a traceback."""
    known = {"enabled", "rules", "limits", "concurrency", "cache_dir"}
    for key in data:
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    levels = dict(DEFAULT_LEVELS)
    for rule, level in _table(data, "rules", where).items():
        if rule not in DEFAULT_LEVELS:
            raise ValueError(f"{where}: unknown rule {rule!r} (rules: {', '.join(DEFAULT_LEVELS)})")
        if level not in LEVELS:
            raise ValueError(f"{where}: rule {rule} has level {level!r}; use one of {', '.join(LEVELS)}")
        levels[rule] = level
    names = {f.name for f in fields(Limits)}
    values: dict[str, Any] = {}
    for key, value in _table(data, "limits", where).items():
        if key not in names:
            raise ValueError(f"{where}: unknown limit {key!r} (limits: {', '.join(sorted(names))})")
        values[key] = _limit(key, value, where)
    limits = Limits(**values)
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"{where}: enabled must be true or false, not {enabled!r}")
    concurrency = data.get("concurrency", 2)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 16:
        raise ValueError(f"{where}: concurrency must be an integer from 1 to 16, not {concurrency!r}")
    cache_dir = data.get("cache_dir")
    if cache_dir == "":  # the default, <data dir>/inspect-cache
        cache_dir = None
    if cache_dir is not None and (not isinstance(cache_dir, str) or not cache_dir.strip() or "\0" in cache_dir):
        raise ValueError(f"{where}: cache_dir must be a directory path (a string), not {cache_dir!r}")
    return InspectionConfig(enabled, levels, limits, concurrency, Path(cache_dir).expanduser() if cache_dir else None)


def load_inspection_config(path: Path) -> InspectionConfig:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not valid TOML: the file is not UTF-8 text") from None
    return parse_inspection_config(data, str(path))
