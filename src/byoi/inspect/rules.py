"""The RStudio image contract as small named rules over a report's facts.

Each rule returns (passed, message); its level comes from configuration: `required` failures make the
version CREATE_FAILED, `warning` and `info` are recorded only, `off` skips the rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from byoi.inspect.config import DEFAULT_LEVELS, InspectionConfig
from byoi.inspect.facts import DEFAULT_PATH, env_map, socket_support

Rule = Callable[[dict[str, Any], "RuleContext"], tuple[bool, str]]


class RuleContext:
    def __init__(self, config: InspectionConfig, platform: str) -> None:
        self.config = config
        self.platform = platform


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def linux_platform(facts: dict[str, Any], ctx: RuleContext) -> tuple[bool, str]:
    got = facts.get("Platform") or "unknown"
    want = ctx.platform
    # An image without a variant matches a platform with one only when the architectures agree.
    if got == want or (got.split("/")[:2] == want.split("/")[:2] and len(want.split("/")) > len(got.split("/"))):
        return True, f"the image is for {got}"
    if not got.startswith("linux/"):
        return False, f"the image is for {got}, not a Linux image for {want}"
    return False, f"the image is for {got}, but the runtime platform is {want}"


def r_present(facts: dict[str, Any], _ctx: RuleContext) -> tuple[bool, str]:
    installs = facts.get("RInstallations") or []
    if not installs:
        path = env_map(facts.get("Env") or []).get("PATH", DEFAULT_PATH)
        return False, (
            f"R is missing: no R on PATH ({path}) and no R installation in /usr/lib/R, /usr/local/lib/R "
            "or /opt/R/<version>"
        )
    described = []
    for i in installs:
        where = i.get("Home") or i.get("Binary")
        described.append(f"R {i.get('Version') or '(version unknown)'} at {where}")
    return True, "; ".join(described)


def _workbench_session(facts: dict[str, Any]) -> str:
    """Posit's r-session-complete and images like it: rsession for a Workbench server, no rserver."""
    r_version = next((i["Version"] for i in facts.get("RInstallations") or [] if i.get("Version")), "<R version>")
    return (
        f"This is a Posit Workbench session image ({facts['RSession']['Path']} without rserver, as "
        "r-session-complete): byoi runs the open-source RStudio Server, which this image does not have. Build a "
        f"compatible image, for example FROM rocker/rstudio:{r_version}, or install rstudio-server from Posit's "
        "open-source .deb"
    )


def rstudio_server(facts: dict[str, Any], _ctx: RuleContext) -> tuple[bool, str]:
    server = facts.get("RStudioServer")
    if not server:
        if facts.get("RSession"):
            return False, _workbench_session(facts)
        return False, "RStudio Server is missing: /usr/lib/rstudio-server/bin/rserver does not exist"
    if not server.get("Executable"):
        return False, "RStudio Server cannot start: /usr/lib/rstudio-server/bin/rserver is not executable"
    version = server.get("Version")
    return True, f"RStudio Server {version} at {server['Path']}" if version else f"RStudio Server at {server['Path']}"


def rstudio_socket(facts: dict[str, Any], _ctx: RuleContext) -> tuple[bool, str]:
    server = facts.get("RStudioServer")
    if not server:
        return True, "no RStudio Server to start (see rstudio-server)"
    version, supported = server.get("Version"), socket_support(facts)
    if supported:
        return True, f"RStudio Server {version} listens on a Unix socket (--www-socket): byoi publishes no port for it"
    if supported is False:
        return False, (
            f"RStudio Server {version} cannot listen on a Unix socket (--www-socket needs 2024.12 or later): byoi "
            "reaches it on a port published on the host's 127.0.0.1, where any local user of the Docker host can "
            "connect to it without signing in. Rebuild on RStudio Server 2024.12 or later (for example FROM "
            "rocker/rstudio:4.4.2)"
        )
    unknown = (
        f"RStudio Server's version {version!r} is not YYYY.MM.patch"
        if version
        else "RStudio Server's version is unknown (no VERSION file in /usr/lib/rstudio-server)"
    )
    return True, (
        f"{unknown}: byoi will start rserver with --www-socket, and RStudio Server older than 2024.12 will then "
        "fail to start"
    )


def non_root_user(facts: dict[str, Any], _ctx: RuleContext) -> tuple[bool, str]:
    people = [u["Name"] for u in facts.get("Users") or [] if 1000 <= u["Uid"] < 65534]
    if people:
        return True, f"non-root users: {', '.join(people[:10])}"
    return False, "no non-root user (uid 1000 to 65533) in /etc/passwd; sessions will run as a user byoi adds"


def rstudio_urls(facts: dict[str, Any], _ctx: RuleContext) -> tuple[bool, str]:
    env = env_map(facts.get("Env") or [])
    unset = [k for k in ("RSTUDIO_CONNECT_URL", "RSTUDIO_PACKAGE_MANAGER_URL") if not env.get(k)]
    if not unset:
        return True, "RSTUDIO_CONNECT_URL and RSTUDIO_PACKAGE_MANAGER_URL are set"
    return False, f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set in the image's environment"


def image_size(facts: dict[str, Any], ctx: RuleContext) -> tuple[bool, str]:
    size, limit = facts.get("UncompressedSize") or 0, ctx.config.limits.size_warning_bytes
    if size > limit:
        return False, f"the image is {_size(size)} uncompressed, over the {_size(limit)} limit"
    return True, f"the image is {_size(size)} uncompressed (limit {_size(limit)})"


def reticulate(facts: dict[str, Any], _ctx: RuleContext) -> tuple[bool, str]:
    found = [p for p in facts.get("RPackages") or [] if p["Name"] == "reticulate"]
    if found:
        return True, f"reticulate {found[0]['Version']} in {found[0]['Library']}"
    return False, "the R package reticulate is not installed in any R library (Python from R will not work)"


def entrypoint_override(facts: dict[str, Any], _ctx: RuleContext) -> tuple[bool, str]:
    parts = [f"{k.upper()} {facts[k]}" for k in ("Entrypoint", "Cmd") if facts.get(k)]
    if not parts:
        return True, "no ENTRYPOINT or CMD"
    return False, f"{' and '.join(parts)} will not run: byoi overrides them and starts rserver itself"


RULES: dict[str, Rule] = {
    "linux-platform": linux_platform,
    "r-present": r_present,
    "rstudio-server": rstudio_server,
    "rstudio-socket": rstudio_socket,
    "non-root-user": non_root_user,
    "rstudio-urls": rstudio_urls,
    "image-size": image_size,
    "reticulate": reticulate,
    "entrypoint-override": entrypoint_override,
}
assert set(RULES) == set(DEFAULT_LEVELS)


def evaluate(facts: dict[str, Any], config: InspectionConfig, platform: str) -> list[dict[str, Any]]:
    ctx = RuleContext(config, platform)
    outcomes = []
    for name, rule in RULES.items():
        level = config.level(name)
        if level == "off":
            outcomes.append({"Name": name, "Level": level, "Outcome": "SKIPPED", "Message": "turned off"})
            continue
        passed, message = rule(facts, ctx)
        outcomes.append({"Name": name, "Level": level, "Outcome": "PASSED" if passed else "FAILED", "Message": message})
    return outcomes


def failure_reason(outcomes: list[dict[str, Any]]) -> str | None:
    """Every failed required rule, in plain words; None when the image is compatible."""
    failed = [o for o in outcomes if o["Level"] == "required" and o["Outcome"] == "FAILED"]
    if not failed:
        return None
    return "Not compatible with RStudio: " + "; ".join(f"{o['Message']} [{o['Name']}]" for o in failed)
