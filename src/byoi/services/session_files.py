"""What byoi puts around a session: its home directory on the host, the files written into its container
before it starts, and the names and labels that tie a container to its app. Pure functions plus the
host-directory work (run in a thread by the launcher)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import regex

from byoi.runtime.spec import DATABASE_CONFIG, DATABASE_DIR, FILE_LOCKS

MANAGED = "byoi.managed"
INSTALLATION = "byoi.installation"
APP_ARN = "byoi.app-arn"
SESSION_ID = "byoi.session-id"
GENERATION = "byoi.generation"
METADATA_FILE = "/opt/ml/metadata/resource-metadata.json"  # where SageMaker puts the app's metadata
# Values R's Renviron parser would mangle (quotes, ${} expansion, escapes, line breaks) are refused.
_UNSAFE_ENV_VALUE = regex.compile(r"[\x00-\x1f\x7f'\"\\`]|\$\{")
_ENV_NAME = regex.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_NAME = regex.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})")  # domain ids and profile names: one path part


def container_name(installation: str, session_id: str, generation: int) -> str:
    return f"byoi-{installation}-{session_id}-{generation}"


def labels(
    installation: str, arn: str, session_id: str, generation: int, domain_id: str, profile: str
) -> dict[str, str]:
    return {
        MANAGED: "true",
        INSTALLATION: installation,
        APP_ARN: arn,
        SESSION_ID: session_id,
        GENERATION: str(generation),
        "byoi.domain-id": domain_id,
        "byoi.user-profile": profile,
    }


def root_path(session_id: str) -> str:
    return f"/sessions/{session_id}/"


def unsafe_env(env: dict[str, str]) -> list[str]:
    """Names whose value cannot be written into Renviron.site as-is."""
    return [k for k, v in env.items() if not _ENV_NAME.fullmatch(k) or _UNSAFE_ENV_VALUE.search(v)]


def merged_renviron(original: bytes | None, env: dict[str, str]) -> bytes:
    """The image's own Renviron.site with byoi's lines after it (later lines win in R), so R sessions that
    RStudio starts without the container's environment still see the session's variables."""
    text = (original or b"").decode("utf-8", "replace")
    if text and not text.endswith("\n"):
        text += "\n"
    lines = [f"{k}='{v}'" for k, v in sorted(env.items())]
    return (
        text + "\n## Added by byoi for this session (domain settings, user profile, app)\n" + "\n".join(lines) + "\n"
    ).encode()


def session_files(
    r_home: str, original_renviron: bytes | None, env: dict[str, str], metadata: dict[str, Any]
) -> dict[str, bytes]:
    """Absolute path -> content of the files written into a created session container."""
    return {
        f"{r_home.rstrip('/')}/etc/Renviron.site": merged_renviron(original_renviron, env),
        DATABASE_CONFIG: f"provider=sqlite\ndirectory={DATABASE_DIR}\n".encode(),
        # Homes may live on network file systems: RStudio's advisory locks work there, link-based ones may not.
        FILE_LOCKS: b"lock-type=advisory\n",
        METADATA_FILE: (json.dumps(metadata, indent=2) + "\n").encode(),
    }


class UnsafeHomePath(PermissionError):
    """A home path that would leave the homes root (a name byoi did not make, or a symlink out of it)."""


def home_dir(homes_root: Path, domain_id: str, profile_name: str, home_uid: int) -> Path:
    """A profile's home on the host: `<homes root>/<domain id>/<profile name, lower case>-<uid>`. Keyed by name and
    HomeEfsFileSystemUid, so that a profile deleted and created again under the same name starts with an empty home
    (as on SageMaker, where it gets a new UID). The root is `BYOI_SESSION_HOMES_ROOT` (default `<data dir>/homes`):
    replicas given the same root give a user the same home. A name that is not one byoi makes is refused, so no
    request's value can name a path outside the root."""
    if not _PATH_NAME.fullmatch(domain_id) or not _PATH_NAME.fullmatch(profile_name) or not _uid_ok(home_uid):
        raise UnsafeHomePath(f"refusing a home for domain {domain_id!r}, profile {profile_name!r}: not a byoi name")
    return homes_root / domain_id / f"{profile_name.lower()}-{int(home_uid)}"


def _uid_ok(uid: object) -> bool:
    return isinstance(uid, int) and not isinstance(uid, bool) and uid >= 0


def _inside(root: Path, path: Path) -> bool:
    """Whether `path`, symlinks followed, is below `root` (symlinks followed too)."""
    return path.resolve().is_relative_to(root.resolve())


def ensure_home(path: Path, uid: int, gid: int) -> None:
    """Create the home (0750) owned by the session UID:GID; an existing home is left as it is. The homes root
    (the home's grandparent) is made 0700 when it is byoi's: bind mounts need no traversal by the session user."""
    root = path.parent.parent
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if root.stat().st_uid == os.getuid():
        os.chmod(root, 0o700)
    path.parent.mkdir(exist_ok=True)
    if not _inside(root, path.parent):
        raise UnsafeHomePath(f"refusing the home {path}: {path.parent} leads out of the homes root {root}")
    try:
        path.mkdir(mode=0o750)
    except FileExistsError:
        if not _inside(root, path):
            raise UnsafeHomePath(f"refusing the home {path}: it leads out of the homes root {root}") from None
        return
    try:
        os.chown(path, uid, gid)
    except PermissionError:
        if path.stat().st_uid != uid:
            raise PermissionError(
                f"cannot give {path} to UID {uid}: run byoi as root, or with the session UID "
                "(BYOI_SESSION_UID), so sessions can write their homes"
            ) from None


def remove_domain_homes(homes_root: Path, domain_id: str) -> None:
    """Remove a deleted domain's homes: `<homes root>/<domain id>` only, never a symlink or anything outside."""
    if not _PATH_NAME.fullmatch(domain_id):
        return
    target = homes_root / domain_id
    if target.is_dir() and not target.is_symlink() and target.parent == homes_root and _inside(homes_root, target):
        shutil.rmtree(target, ignore_errors=True)
