"""The three response headers the proxy rewrites: Location, Refresh and Set-Cookie.

RStudio builds absolute redirects from the forwarded headers (rstudio-behind-a-proxy.md §2), so with the
prefix stripped and `X-RStudio-Root-Path` set they are already right; this is the guard for when they are
not (an old rserver, an app behind `/p/`, a misconfigured root path), as jupyter-rsession-proxy's
`rewrite_netloc` is:

- an absolute `Location` (or `Refresh: n; url=…`) on any other scheme://host (`localhost`,
  `127.0.0.1:8787`, a container's address) is moved onto the public scheme://host, under the session's
  root path if it was not already there; a `../` or `./` target is resolved against the request path,
  never above the session's root; other relative targets pass as they are.
- `Set-Cookie` loses its `Domain` (a session's cookie belongs to byoi's host only) and is kept inside the
  session: a missing Path, or one outside `/sessions/<id>`, becomes `Path=/sessions/<id>`, so a session
  can set no cookie that byoi or another session would receive. A cookie named like byoi's own is dropped.
  Everything else (value, Expires, HttpOnly, Secure, SameSite) is kept byte-exact.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from byoi.proxy.headers import PublicOrigin

_REFRESH = re.compile(rb"(\s*[0-9.]+\s*[;,]\s*url\s*=\s*)(['\"]?)(.*?)\2\s*", re.IGNORECASE)


def rewrite_location(value: bytes, origin: PublicOrigin, root_path: str, request_path: str) -> bytes:
    text = value.decode("latin-1").strip()
    if text.startswith(("../", "./")) or text in ("..", ".") or text.startswith(("..?", ".?", "..#", ".#")):
        cut = min((i for i in (text.find("?"), text.find("#")) if i >= 0), default=len(text))
        return (root_path + _resolve(request_path, text[:cut]) + text[cut:]).encode("latin-1")
    if not text.startswith("//") and "://" not in text[:12]:
        return value  # relative: the browser resolves it against the public URL it is on
    parts = urlsplit(text)
    netloc = parts.netloc.lower()
    if netloc in (origin.netloc, f"{origin.netloc}:{origin.port}"):
        if parts.scheme == origin.scheme:
            return value
        return urlunsplit(parts._replace(scheme=origin.scheme, netloc=origin.netloc)).encode("latin-1")
    path = parts.path or "/"
    if path != root_path and not path.startswith(root_path + "/"):
        path = root_path + _resolve("/", path)
    return urlunsplit((origin.scheme, origin.netloc, path, parts.query, parts.fragment)).encode("latin-1")


def rewrite_refresh(value: bytes, origin: PublicOrigin, root_path: str, request_path: str) -> bytes:
    match = _REFRESH.fullmatch(value)
    if match is None:
        return value
    url = rewrite_location(match.group(3), origin, root_path, request_path)
    return match.group(1) + match.group(2) + url + match.group(2)


def rewrite_set_cookie(value: bytes, root_path: bytes, strip: frozenset[bytes]) -> bytes | None:
    """The Set-Cookie value to send the browser, or None to drop it."""
    first, *attributes = value.split(b";")
    if first.partition(b"=")[0].strip() in strip:
        return None
    kept = [first]
    has_path = False
    for attribute in attributes:
        key, _, attr_value = attribute.partition(b"=")
        key = key.strip().lower()
        if key == b"domain":
            continue
        if key == b"path":
            if has_path or not _inside(attr_value.strip(), root_path):
                continue
            has_path = True
        kept.append(attribute)
    if not has_path:
        kept.append(b" Path=" + root_path)
    return b";".join(kept)


def _inside(path: bytes, root_path: bytes) -> bool:
    if path != root_path and not path.startswith(root_path + b"/"):
        return False
    return b"/." not in path and b"%" not in path and b"\\" not in path


def _resolve(base: str, target: str) -> str:
    """RFC 3986 reference resolution of a path against a path, clamped at '/' (remove_dot_segments)."""
    merged = target if target.startswith("/") else base[: base.rfind("/") + 1] + target
    out: list[str] = []
    segments = merged.split("/")
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    trailing = segments[-1] in (".", "..")
    return "/" + "/".join(out) + ("/" if trailing and out else "")
