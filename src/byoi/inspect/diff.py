"""The difference between two reports: R version, R packages, environment, users, size, rules."""

from __future__ import annotations

import re
from typing import Any

from byoi.inspect.facts import env_map

_PIECES = re.compile(r"\d+|[A-Za-z]+")


def version_key(version: str) -> tuple[tuple[int, Any], ...]:
    """Order R package versions (`1.2-3`, `0.10.1`, `4.2.2`) number by number, as compareVersion does."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _PIECES.findall(version))


def _effective_packages(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each package as R would load it: the first library on the search path wins."""
    found: dict[str, dict[str, Any]] = {}
    for p in report.get("RPackages") or []:
        found.setdefault(p["Name"], p)
    return found


def _r_version(report: dict[str, Any]) -> str | None:
    installs = report.get("RInstallations") or []
    return installs[0].get("Version") if installs else None


def diff_reports(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    a, b = _effective_packages(old), _effective_packages(new)
    upgraded: list[dict[str, Any]] = []
    downgraded: list[dict[str, Any]] = []
    for name in sorted(set(a) & set(b)):
        va, vb = a[name]["Version"], b[name]["Version"]
        if va == vb:
            continue
        change = {"Name": name, "From": va, "To": vb, "Library": b[name]["Library"]}
        (upgraded if version_key(vb) > version_key(va) else downgraded).append(change)
    env_a, env_b = env_map(old.get("Env") or []), env_map(new.get("Env") or [])
    users_a = {u["Name"] for u in old.get("Users") or []}
    users_b = {u["Name"] for u in new.get("Users") or []}
    rules_a = {r["Name"]: r["Outcome"] for r in old.get("Rules") or []}
    result: dict[str, Any] = {
        "RVersion": {"From": _r_version(old), "To": _r_version(new), "Changed": _r_version(old) != _r_version(new)},
        "RStudioServerVersion": {
            "From": (old.get("RStudioServer") or {}).get("Version"),
            "To": (new.get("RStudioServer") or {}).get("Version"),
        },
        "PackagesAdded": [b[n] for n in sorted(set(b) - set(a))],
        "PackagesRemoved": [a[n] for n in sorted(set(a) - set(b))],
        "PackagesUpgraded": upgraded,
        "PackagesDowngraded": downgraded,
        "EnvAdded": [f"{k}={env_b[k]}" for k in sorted(set(env_b) - set(env_a))],
        "EnvRemoved": [f"{k}={env_a[k]}" for k in sorted(set(env_a) - set(env_b))],
        "EnvChanged": [
            {"Name": k, "From": env_a[k], "To": env_b[k]}
            for k in sorted(set(env_a) & set(env_b))
            if env_a[k] != env_b[k]
        ],
        "UsersAdded": sorted(users_b - users_a),
        "UsersRemoved": sorted(users_a - users_b),
        "UncompressedSize": _size_change(old, new, "UncompressedSize"),
        "CompressedSize": _size_change(old, new, "CompressedSize"),
        "RulesChanged": [
            {"Name": r["Name"], "From": rules_a.get(r["Name"]), "To": r["Outcome"]}
            for r in new.get("Rules") or []
            if rules_a.get(r["Name"]) != r["Outcome"]
        ],
    }
    return result


def _size_change(old: dict[str, Any], new: dict[str, Any], key: str) -> dict[str, int]:
    a, b = int(old.get(key) or 0), int(new.get(key) or 0)
    return {"From": a, "To": b, "Delta": b - a}
