"""Instance types: `ml.*` names mapped to the CPU and memory limits of a session container.

The defaults are the vCPU and memory of SageMaker's instance types RStudio offers (GPU types are left
out: the Docker runtime passes no GPUs to sessions; on Kubernetes a file adds them with `gpus`, below).
Operators override or add entries with a TOML file (`BYOI_INSTANCE_TYPES=FILE`):

    [types."ml.t3.medium"]
    vcpu = 1
    memory_gib = 2

A type is offered only if this host can give one session that much: a type asking for more CPUs or
memory than the Docker host (or the largest Kubernetes node) has is refused with a message saying what it
has. Names must be `ml.*` values of the SageMaker model's AppInstanceType enum (requests are validated
against it), checked when the table is loaded; a bad file raises `SessionConfigError` naming the file, the
key and the value.

On Kubernetes an entry may also say where its pods go (the Docker runtime ignores these three keys):

    [types."ml.g4dn.xlarge"]
    vcpu = 4
    memory_gib = 16
    gpus = 1                                            # limits: nvidia.com/gpu = 1
    node_selector = { "node.kubernetes.io/instance-type" = "g4dn.xlarge" }
    tolerations = [ { key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" } ]

`node_selector` is a table of label keys to label values, `tolerations` a list of Kubernetes tolerations
(key, operator `Exists`/`Equal`, value, effect `NoSchedule`/`PreferNoSchedule`/`NoExecute`,
tolerationSeconds with `NoExecute` only), `gpus` a whole number >= 0; each is checked when the file is loaded.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import regex

from byoi.runtime.settings import SessionConfigError

GiB = 1 << 30
DEFAULT_TYPE = "ml.t3.medium"

# name -> (vCPU, memory GiB)
DEFAULTS: dict[str, tuple[float, float]] = {
    "ml.t3.micro": (2, 1),
    "ml.t3.small": (2, 2),
    "ml.t3.medium": (2, 4),
    "ml.t3.large": (2, 8),
    "ml.t3.xlarge": (4, 16),
    "ml.t3.2xlarge": (8, 32),
    "ml.m5.large": (2, 8),
    "ml.m5.xlarge": (4, 16),
    "ml.m5.2xlarge": (8, 32),
    "ml.m5.4xlarge": (16, 64),
    "ml.m5.8xlarge": (32, 128),
    "ml.m5.12xlarge": (48, 192),
    "ml.m5.16xlarge": (64, 256),
    "ml.m5.24xlarge": (96, 384),
    "ml.c5.large": (2, 4),
    "ml.c5.xlarge": (4, 8),
    "ml.c5.2xlarge": (8, 16),
    "ml.c5.4xlarge": (16, 32),
    "ml.c5.9xlarge": (36, 72),
    "ml.c5.12xlarge": (48, 96),
    "ml.c5.18xlarge": (72, 144),
    "ml.c5.24xlarge": (96, 192),
    "ml.r5.large": (2, 16),
    "ml.r5.xlarge": (4, 32),
    "ml.r5.2xlarge": (8, 64),
    "ml.r5.4xlarge": (16, 128),
    "ml.r5.8xlarge": (32, 256),
    "ml.r5.12xlarge": (48, 384),
    "ml.r5.16xlarge": (64, 512),
    "ml.r5.24xlarge": (96, 768),
}


# Kubernetes label keys ([prefix/]name) and values, as the API server checks them.
_LABEL_NAME = regex.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = regex.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = regex.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}
PLACEMENT_KEYS = ("node_selector", "tolerations", "gpus")


def label_key_ok(key: str) -> bool:
    """Whether `key` is a valid Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return bool(_LABEL_NAME.fullmatch(name))


def label_value_ok(value: str) -> bool:
    return bool(_LABEL_VALUE.fullmatch(value))


class InstanceTypeError(ValueError):
    """A request's type that is unknown, or that this host cannot provide; the message says which and why."""


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpu: float
    memory_bytes: int

    @property
    def nano_cpus(self) -> int:
        return int(self.vcpu * 1e9)

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB


@dataclass(frozen=True)
class Placement:
    """Where a type's session pods go on Kubernetes: node labels they need, taints they tolerate, GPUs."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    gpus: int = 0


NO_PLACEMENT = Placement()


@dataclass(frozen=True)
class HostCapacity:
    cpus: int
    memory_bytes: int
    where: str = "the Docker host"  # what has this much, as a refusal says it: "but <where> has 4 CPUs …"


class InstanceTypes:
    def __init__(
        self,
        table: dict[str, tuple[float, float]] | None = None,
        source: str = "instance types",
        placement: dict[str, Placement] | None = None,
    ) -> None:
        self.table = dict(DEFAULTS if table is None else table)
        self.placement = dict(placement or {})  # name -> Kubernetes placement (types without one: none)
        known = model_instance_types()
        for name, (vcpu, mem) in self.table.items():
            if not name.startswith("ml.") or name not in known:
                raise SessionConfigError(
                    f"{source}: {name!r} is not an instance type of the SageMaker model (AppInstanceType, "
                    "ml.* values such as ml.t3.medium)"
                )
            for key, value in (("vcpu", vcpu), ("memory_gib", mem)):
                if not math.isfinite(value) or value <= 0:
                    raise SessionConfigError(f"{source}: [types.{name!r}] {key} must be > 0, not {value!r}")

    @classmethod
    def load(cls, path: Path | None) -> InstanceTypes:
        """The defaults, with the entries of a TOML file (`[types."ml.x"] vcpu, memory_gib`) on top;
        SessionConfigError naming the file, the key and the bad value otherwise."""
        table = dict(DEFAULTS)
        placement: dict[str, Placement] = {}
        if path is None:
            return cls(table)
        source = f"BYOI_INSTANCE_TYPES={path}"
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SessionConfigError(f"{source}: cannot read instance types: {exc}") from None
        unknown = sorted(set(data) - {"types"})
        if unknown:
            raise SessionConfigError(f"{source}: unknown key {unknown[0]!r} (the file has one table, [types])")
        types = data.get("types", {})
        if not isinstance(types, dict):
            raise SessionConfigError(f'{source}: types must be a table of [types."ml.*"] entries, not {types!r}')
        for name, entry in types.items():
            table[name] = _entry(source, name, entry)
            found = _placement(source, name, entry)
            if found != NO_PLACEMENT:
                placement[name] = found
        return cls(table, source, placement)

    def placement_of(self, name: str) -> Placement:
        """The type's Kubernetes placement (none configured: no node selector, no tolerations, no GPUs)."""
        return self.placement.get(name, NO_PLACEMENT)

    def get(self, name: str, host: HostCapacity) -> InstanceType:
        """The type's limits, or InstanceTypeError saying why this host cannot run it."""
        if name not in self.table:
            offered = ", ".join(sorted(self.offered(host))) or "none"
            raise InstanceTypeError(f"InstanceType {name} is not offered by byoi (offered on this host: {offered})")
        vcpu, mem_gib = self.table[name]
        wanted = InstanceType(name, vcpu, int(mem_gib * GiB))
        if vcpu > host.cpus or wanted.memory_bytes > host.memory_bytes:
            raise InstanceTypeError(
                f"InstanceType {name} needs {vcpu:g} vCPU and {mem_gib:g} GiB of memory, but {host.where} has "
                f"{host.cpus} CPUs and {host.memory_bytes / GiB:.1f} GiB; pick a smaller type "
                f"(offered on this host: {', '.join(sorted(self.offered(host))) or 'none'})"
            )
        return wanted

    def offered(self, host: HostCapacity) -> list[str]:
        return [n for n, (c, m) in self.table.items() if c <= host.cpus and m * GiB <= host.memory_bytes]


def _entry(source: str, name: str, entry: object) -> tuple[float, float]:
    """One [types."ml.x"] table: exactly vcpu and memory_gib, positive numbers (not booleans, not strings)."""
    where = f"{source}: [types.{name!r}]"
    if not isinstance(entry, dict):
        raise SessionConfigError(f"{where} must be a table with vcpu and memory_gib, not {entry!r}")
    extra = sorted(set(entry) - {"vcpu", "memory_gib", *PLACEMENT_KEYS})
    if extra:
        raise SessionConfigError(
            f"{where}: unknown key {extra[0]!r} (only vcpu and memory_gib); Kubernetes placement adds "
            "node_selector, tolerations and gpus"
        )
    values = []
    for key in ("vcpu", "memory_gib"):
        if key not in entry:
            raise SessionConfigError(f"{where} needs {key}")
        value = entry[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise SessionConfigError(f"{where} {key} must be a number > 0, not {value!r}")
        values.append(float(value))
    return values[0], values[1]


def _placement(source: str, name: str, entry: dict[str, Any]) -> Placement:
    """The entry's node_selector, tolerations and gpus, each checked the way the API server would."""
    where = f"{source}: [types.{name!r}]"
    selector = entry.get("node_selector", {})
    if not isinstance(selector, dict):
        raise SessionConfigError(f"{where} node_selector must be a table of label = value, not {selector!r}")
    for key, value in selector.items():
        if not label_key_ok(key):
            raise SessionConfigError(f"{where} node_selector: {key!r} is not a valid Kubernetes label key")
        if not isinstance(value, str) or not label_value_ok(value):
            raise SessionConfigError(
                f"{where} node_selector.{key!r} must be a Kubernetes label value (a string of at most 63 letters, "
                f"digits, -, _ and .), not {value!r}"
            )
    tolerations = entry.get("tolerations", [])
    if not isinstance(tolerations, list):
        raise SessionConfigError(f"{where} tolerations must be a list of tables, not {tolerations!r}")
    checked = tuple(_toleration(f"{where} tolerations[{i}]", t) for i, t in enumerate(tolerations))
    gpus = entry.get("gpus", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise SessionConfigError(f"{where} gpus must be a whole number >= 0, not {gpus!r}")
    return Placement(dict(selector), checked, gpus)


def _toleration(where: str, tol: object) -> dict[str, Any]:
    if not isinstance(tol, dict):
        raise SessionConfigError(f"{where} must be a table (key, operator, value, effect), not {tol!r}")
    extra = sorted(set(tol) - _TOLERATION_KEYS)
    if extra:
        raise SessionConfigError(f"{where}: unknown key {extra[0]!r} (only {', '.join(sorted(_TOLERATION_KEYS))})")
    for key in ("key", "operator", "value", "effect"):
        if key in tol and not isinstance(tol[key], str):
            raise SessionConfigError(f"{where} {key} must be a string, not {tol[key]!r}")
    operator = tol.get("operator", "Equal")
    if operator not in ("Exists", "Equal"):
        raise SessionConfigError(f"{where} operator must be Exists or Equal, not {operator!r}")
    if tol.get("key") and not label_key_ok(tol["key"]):
        raise SessionConfigError(f"{where} key {tol['key']!r} is not a valid Kubernetes label key")
    if not tol.get("key") and operator != "Exists":
        raise SessionConfigError(f'{where}: a toleration without a key needs operator = "Exists"')
    if operator == "Exists" and tol.get("value"):
        raise SessionConfigError(f"{where}: operator Exists takes no value, not {tol['value']!r}")
    if "value" in tol and not label_value_ok(tol["value"]):
        raise SessionConfigError(f"{where} value {tol['value']!r} is not a valid Kubernetes label value")
    if "effect" in tol and tol["effect"] not in _EFFECTS:
        raise SessionConfigError(f"{where} effect must be one of {', '.join(sorted(_EFFECTS))}, not {tol['effect']!r}")
    if "tolerationSeconds" in tol:
        seconds = tol["tolerationSeconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
            raise SessionConfigError(f"{where} tolerationSeconds must be a whole number >= 0, not {seconds!r}")
        if tol.get("effect") != "NoExecute":
            raise SessionConfigError(f"{where}: tolerationSeconds applies to effect NoExecute only")
    return dict(tol)


@cache
def model_instance_types() -> frozenset[str]:
    """The AppInstanceType enum of botocore's SageMaker model (the values CreateApp requests are checked against)."""
    from byoi.sagemaker_model import sagemaker_model  # the model the API validates with, loaded once

    return frozenset(sagemaker_model().shape_for("AppInstanceType").enum)
