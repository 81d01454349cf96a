"""Instance types: `ml.*` names mapped to the CPU and memory limits of a session container.

The defaults are the vCPU and memory of SageMaker's instance types RStudio offers (GPU types are left
out: byoi does not pass GPUs to sessions). Operators override or add entries with a TOML file
(`BYOI_INSTANCE_TYPES=FILE`):

    [types."ml.t3.medium"]
    vcpu = 1
    memory_gib = 2

A type is offered only if this host can give one session that much: a type asking for more CPUs or
memory than the Docker host has is refused with a message saying what the host has. Names must be
`ml.*` values of the SageMaker model's AppInstanceType enum (requests are validated against it).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

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


class InstanceTypeError(ValueError):
    """A type that is unknown, or that this host cannot provide; the message says which and why."""


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
class HostCapacity:
    cpus: int
    memory_bytes: int


class InstanceTypes:
    def __init__(self, table: dict[str, tuple[float, float]] | None = None) -> None:
        self.table = dict(DEFAULTS if table is None else table)
        for name, (vcpu, mem) in self.table.items():
            if not name.startswith("ml.") or vcpu <= 0 or mem <= 0:
                raise InstanceTypeError(f"instance type {name!r}: names start with ml., vcpu and memory are > 0")

    @classmethod
    def load(cls, path: Path | None) -> InstanceTypes:
        """The defaults, with the entries of a TOML file (`[types."ml.x"] vcpu, memory_gib`) on top."""
        table = dict(DEFAULTS)
        if path is None:
            return cls(table)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InstanceTypeError(f"cannot read instance types from {path}: {exc}") from None
        for name, entry in (data.get("types") or {}).items():
            if not isinstance(entry, dict) or "vcpu" not in entry or "memory_gib" not in entry:
                raise InstanceTypeError(f"{path}: [types.{name!r}] needs vcpu and memory_gib")
            try:
                table[name] = (float(entry["vcpu"]), float(entry["memory_gib"]))
            except (TypeError, ValueError):
                raise InstanceTypeError(f"{path}: [types.{name!r}] vcpu and memory_gib must be numbers") from None
        return cls(table)

    def get(self, name: str, host: HostCapacity) -> InstanceType:
        """The type's limits, or InstanceTypeError saying why this host cannot run it."""
        if name not in self.table:
            offered = ", ".join(sorted(self.offered(host))) or "none"
            raise InstanceTypeError(f"InstanceType {name} is not offered by byoi (offered on this host: {offered})")
        vcpu, mem_gib = self.table[name]
        wanted = InstanceType(name, vcpu, int(mem_gib * GiB))
        if vcpu > host.cpus or wanted.memory_bytes > host.memory_bytes:
            raise InstanceTypeError(
                f"InstanceType {name} needs {vcpu:g} vCPU and {mem_gib:g} GiB of memory, but the Docker host has "
                f"{host.cpus} CPUs and {host.memory_bytes / GiB:.1f} GiB; pick a smaller type "
                f"(offered on this host: {', '.join(sorted(self.offered(host))) or 'none'})"
            )
        return wanted

    def offered(self, host: HostCapacity) -> list[str]:
        return [n for n, (c, m) in self.table.items() if c <= host.cpus and m * GiB <= host.memory_bytes]
