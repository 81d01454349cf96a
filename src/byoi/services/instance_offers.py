"""Byoi.ListInstanceTypes' answer, as pure functions: which of byoi's instance types this host can give one
session, and why not the others (the same check and message CreateApp applies, `InstanceTypes.get`)."""

from __future__ import annotations

from typing import Any

from byoi.runtime.instance_types import HostCapacity, InstanceTypeError, InstanceTypes


def offers(types: InstanceTypes, capacity: HostCapacity | None) -> list[dict[str, Any]]:
    """Every type of the table in its order; with no capacity (the engine did not answer) all are offered, as
    CreateApp then checks the table only."""
    out = []
    for name, (vcpu, memory_gib) in types.table.items():
        reason = None
        if capacity is not None:
            try:
                types.get(name, capacity)
            except InstanceTypeError as exc:
                reason = str(exc)
        out.append(
            {"InstanceType": name, "Vcpu": vcpu, "MemoryGiB": memory_gib, "Offered": reason is None, "Reason": reason}
        )
    return out
