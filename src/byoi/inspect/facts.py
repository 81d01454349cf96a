"""What an image holds, read from its config and its final file tree: OS, users, R, RStudio Server (and
whether it can listen on a Unix socket), RStudio's rsession, R libraries and packages. Everything here is
a pure function of the tree and the config JSON.

Paths in the result are absolute (`/usr/lib/R`), as a user would write them.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from byoi.inspect.shapes import check_image_config
from byoi.inspect.tree import Tree

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
R_HOMES = ("usr/lib/R", "usr/local/lib/R")
RSERVER = "usr/lib/rstudio-server/bin/rserver"
RSESSION = "usr/lib/rstudio-server/bin/rsession"
RSTUDIO_VERSION_FILES = ("usr/lib/rstudio-server/VERSION", "usr/lib/rstudio-server/resources/VERSION")
SITE_LIBRARIES = ("usr/local/lib/R/site-library", "usr/lib/R/site-library", "usr/lib/R/library")
# rserver's --www-socket (listen on a Unix socket rather than a TCP port) first shipped in 2024.12.0+467.
SOCKET_SINCE = (2024, 12)
# RStudio's YYYY.MM.patch, then an optional build: 2024.12.0+467, 2024.12.0-daily+12, 2022.07.2+576.pro12.
_RSTUDIO_VERSION = re.compile(r"(\d{1,9})\.(\d{1,9})\.(\d{1,9})(?:[-+.~]\S*)?")


def parse_dcf(data: bytes) -> dict[str, str]:
    """An R DESCRIPTION file (Debian control format): `Key: value`, continuation lines indented."""
    fields: dict[str, str] = {}
    key = None
    for line in data.decode("utf-8", "replace").splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    return fields


def parse_os_release(data: bytes | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            result[key] = value
    return result


def parse_passwd(data: bytes | None) -> list[dict[str, Any]]:
    users = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) < 7 or line.startswith("#"):
            continue
        try:
            uid, gid = int(parts[2]), int(parts[3])
        except ValueError:
            continue
        users.append({"Name": parts[0], "Uid": uid, "Gid": gid, "Home": parts[5], "Shell": parts[6]})
    return users


def env_map(env: list[str]) -> dict[str, str]:
    result = {}
    for item in env:
        key, _, value = item.partition("=")
        result[key] = value
    return result


def _abs(path: str) -> str:
    return "/" + path


def _search_path(env: dict[str, str]) -> list[str]:
    return [p.strip("/") for p in env.get("PATH", DEFAULT_PATH).split(":") if p.startswith("/")]


def r_installations(tree: Tree, env: dict[str, str]) -> list[dict[str, Any]]:
    """R homes in the places R is installed (/usr/lib/R, /usr/local/lib/R, /opt/R/<version>), with the
    R version from the base package, and the `R` found on PATH."""
    on_path = next((posixpath.join(d, "R") for d in _search_path(env) if tree.is_file(posixpath.join(d, "R"))), None)
    candidates = list(R_HOMES)
    for version in tree.listdir("opt/R"):
        candidates += [f"opt/R/{version}/lib/R", f"opt/R/{version}/lib64/R"]
    found: dict[str, dict[str, Any]] = {}
    for home in candidates:
        real = tree.resolve(home)
        if real is None or real in found or not tree.is_dir(real):
            continue
        if not (tree.is_file(f"{real}/bin/R") or tree.is_file(f"{real}/bin/exec/R")):
            continue
        base = tree.read(f"{real}/library/base/DESCRIPTION")
        found[real] = {"Home": _abs(home), "Version": parse_dcf(base).get("Version") if base else None}
    installs = list(found.values())
    if on_path:
        if installs:
            installs[0]["Binary"] = _abs(on_path)
        else:
            installs.append({"Binary": _abs(on_path)})
    return installs


def r_libraries(tree: Tree, env: dict[str, str], installs: list[dict[str, Any]]) -> list[str]:
    """R's library search path as `.libPaths()` would have it (env libraries, site libraries, each R
    home's own library), limited to directories that exist. Symlinks are followed (a loop raises)."""
    named: list[str] = []
    for var in ("R_LIBS", "R_LIBS_USER", "R_LIBS_SITE"):
        for entry in env.get(var, "").split(":"):
            if entry.startswith("/") and not any(c in entry for c in "%$~"):
                named.append(entry.strip("/"))
    named += SITE_LIBRARIES
    for install in installs:
        if install.get("Home"):
            home = install["Home"].strip("/")
            named += [f"{home}/site-library", f"{home}/library"]
    seen: set[str] = set()
    result = []
    for lib in named:
        real = tree.resolve(lib)
        if real is None or real in seen or not tree.is_dir(real):
            continue
        seen.add(real)
        result.append(_abs(real))
    return result


def r_packages(tree: Tree, libraries: list[str]) -> list[dict[str, Any]]:
    packages = []
    for lib in libraries:
        for name in tree.listdir(lib):
            data = tree.read(f"{lib}/{name}/DESCRIPTION")
            if data is None:
                continue
            desc = parse_dcf(data)
            if desc.get("Package") != name:  # R skips directories whose DESCRIPTION names another package
                continue
            package = {"Name": name, "Version": desc.get("Version", ""), "Library": _abs(lib)}
            if desc.get("Priority"):
                package["Priority"] = desc["Priority"]
            packages.append(package)
    return packages


def _rstudio_version(tree: Tree) -> str | None:
    """The first line of RStudio's VERSION file (`2024.12.0+467`); None when there is none or it is blank."""
    for path in RSTUDIO_VERSION_FILES:
        lines = (tree.read(path) or b"").decode("utf-8", "replace").strip().splitlines()
        if lines:
            return lines[0].strip()[:64]
    return None


def rstudio_server(tree: Tree) -> dict[str, Any] | None:
    node = tree.node(RSERVER)
    if node is None or node[0] != "f":
        return None
    return {"Path": _abs(RSERVER), "Version": _rstudio_version(tree), "Executable": bool(node[1] & 0o111)}


def rsession(tree: Tree) -> dict[str, Any] | None:
    """RStudio's session binary. Open-source RStudio Server has it beside rserver; an image with rsession but
    no rserver is a Posit Workbench session image (Posit's r-session-complete), which a Workbench server
    outside the container drives."""
    node = tree.node(RSESSION)
    if node is None or node[0] != "f":
        return None
    return {"Path": _abs(RSESSION), "Version": _rstudio_version(tree), "Executable": bool(node[1] & 0o111)}


def parse_rstudio_version(version: str | None) -> tuple[int, int, int] | None:
    """RStudio's version as numbers: `2024.12.0+467` -> (2024, 12, 0); None when absent or not of the form
    YYYY.MM.patch (RStudio 1.x numbers such as `1.4.1717` parse too, and order before every YYYY one)."""
    match = _RSTUDIO_VERSION.fullmatch(version.strip()) if isinstance(version, str) else None
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def socket_support(facts: dict[str, Any]) -> bool | None:
    """Whether the image's rserver can listen on a Unix socket (`--www-socket`, RStudio Server 2024.12 and
    later): True or False from its version, None when unknown (no RStudio Server, no VERSION file, or a
    version that does not parse). `facts` is image_facts' result or a stored report; the answer comes from
    RStudioServer.Version alone, so reports stored before SupportsSocket existed get it too."""
    server = facts.get("RStudioServer")
    parsed = parse_rstudio_version(server.get("Version") if isinstance(server, dict) else None)
    return None if parsed is None else parsed[:2] >= SOCKET_SINCE


def _command(value: str | list[str] | None) -> list[str]:
    """Entrypoint / Cmd as a list: Docker also accepts one string in an image config (its StrSlice)."""
    return [value] if isinstance(value, str) else list(value or [])


def image_facts(tree: Tree, config: dict[str, Any]) -> dict[str, Any]:
    """The report's facts section, from the final tree and the image config JSON (InspectionError when
    a member it reads has the wrong type)."""
    check_image_config(config)
    cfg = config.get("config") or {}
    env_list = list(cfg.get("Env") or [])
    env = env_map(env_list)
    os_release = parse_os_release(tree.read("etc/os-release") or tree.read("usr/lib/os-release"))
    installs = r_installations(tree, env)
    libraries = r_libraries(tree, env, installs)
    facts: dict[str, Any] = {
        "Platform": "/".join(
            str(x) for x in (config.get("os"), config.get("architecture"), config.get("variant")) if x
        ),
        "Os": {
            k: os_release[w]
            for k, w in (("Id", "ID"), ("VersionId", "VERSION_ID"), ("PrettyName", "PRETTY_NAME"))
            if w in os_release
        },
        "Users": parse_passwd(tree.read("etc/passwd")),
        "User": cfg.get("User") or None,
        "Env": env_list,
        "ExposedPorts": sorted((cfg.get("ExposedPorts") or {}).keys()),
        "Entrypoint": _command(cfg.get("Entrypoint")),
        "Cmd": _command(cfg.get("Cmd")),
        "WorkingDir": cfg.get("WorkingDir") or None,
        "RInstallations": installs,
        "RStudioServer": rstudio_server(tree),
        "RSession": rsession(tree),
        "RLibraries": libraries,
        "RPackages": r_packages(tree, [lib.strip("/") for lib in libraries]),
    }
    if facts["RStudioServer"] is not None:
        facts["RStudioServer"]["SupportsSocket"] = socket_support(facts)
    return facts
