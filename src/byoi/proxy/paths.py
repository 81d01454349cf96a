"""`/sessions/<id>/<rest>`: the one place a request path is normalised, before anything reads it.

The gate checks a session id and the proxy forwards to a session, and both must read the id from the same
string, or `/sessions/<mine>/../<yours>/` could pass the check on `<mine>` and reach `<yours>`. So the raw
path (ASGI `scope["raw_path"]`, bytes as they came off the wire) is split on `/` while still encoded, each
segment is percent-decoded exactly once, and what comes out is either refused (`BadPath`, a 400) or turned
into a `SessionPath` whose fields are all the proxy and the gate ever look at:

- the session id is the second segment, 16 lowercase hex digits, written literally (no escapes);
- `.` segments are dropped and `..` pops one segment of the rest; a `..` that would climb out of the
  session (to pop the id) is refused, however it is spelled (`..`, `%2e%2e`, `%2E.`);
- NUL, control characters and backslashes (raw or `%5c`) are refused anywhere; so are malformed escapes
  (`%zz`, a lone `%`), which would otherwise change meaning when re-encoded;
- an encoded slash (`%2f`) stays one segment, re-encoded as `%2F`, unless it hides a dot segment;
- empty segments (`//`) collapse; a trailing slash is kept (RStudio's pages use relative asset URLs);
- the rest is re-encoded canonically (unreserved and sub-delims literal, everything else `%XX`), so
  upstream sees one spelling of each path whatever the browser sent.

Most requests take the fast path: one regex over the raw bytes proves nothing needs rewriting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = b"/sessions/"
SESSION_ID = re.compile(r"[0-9a-f]{16}")

# The characters RFC 3986 allows literally in a path segment (pchar minus pct-encoded): unreserved,
# sub-delims, ':' and '@'. Anything else is sent as %XX.
_PCHAR = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@"
_QUOTE = [chr(b) if b in _PCHAR else f"%{b:02X}" for b in range(256)]
_HEX = b"0123456789abcdefABCDEF"

# Already canonical: literal id, then segments of pchar characters only, none empty, none starting with a
# dot (so no '.' or '..' and no '//'); the slow path handles everything else, '/.well-known' included.
_FAST = re.compile(rb"/sessions/([0-9a-f]{16})((?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)*/?)")


class BadPath(ValueError):
    """A path the proxy will not forward; the message is fit for a 400 page."""


@dataclass(frozen=True, slots=True)
class SessionPath:
    session_id: str
    rest: str  # the path sent upstream: starts with '/', canonically percent-encoded, no query
    prefix: str  # /sessions/<id>
    needs_slash: bool  # the request was exactly /sessions/<id>: redirect to /sessions/<id>/


def parse_session_path(raw_path: bytes) -> SessionPath:
    fast = _FAST.fullmatch(raw_path)
    if fast is not None:
        session_id = fast.group(1).decode("ascii")
        rest = fast.group(2).decode("ascii")
        return SessionPath(session_id, rest or "/", "/sessions/" + session_id, not rest)
    return _parse_slowly(raw_path)


def _parse_slowly(raw_path: bytes) -> SessionPath:
    if not raw_path.startswith(b"/"):
        raise BadPath("the path must start with '/'")
    raw_segments = [s for s in raw_path.split(b"/") if s]  # collapses '//'
    if len(raw_segments) < 2 or raw_segments[0] != PREFIX.strip(b"/"):
        raise BadPath("the path must be /sessions/<session-id>/…")
    raw_id = raw_segments[1]
    if not SESSION_ID.fullmatch(raw_id.decode("latin-1")):
        raise BadPath("the session id must be 16 lowercase hexadecimal digits")
    session_id = raw_id.decode("ascii")
    rest: list[str] = []
    for raw in raw_segments[2:]:
        segment = _decode_segment(raw)
        if segment in (b".", b".."):
            if segment == b".." and not rest:
                raise BadPath("'..' may not leave the session")
            if segment == b"..":
                rest.pop()
            continue
        if b"/" in segment and any(part in (b".", b"..") for part in segment.split(b"/")):
            raise BadPath("an encoded slash may not hide a '.' or '..' segment")
        rest.append("".join([_QUOTE[b] for b in segment]))
    trailing = raw_path.endswith(b"/") or _ends_in_dot_segment(raw_segments)
    text = "/" + "/".join(rest)
    if rest and trailing:
        text += "/"
    needs_slash = len(raw_segments) == 2 and not raw_path.endswith(b"/")
    return SessionPath(session_id, text, "/sessions/" + session_id, needs_slash)


def _decode_segment(raw: bytes) -> bytes:
    """Percent-decode once; refuse what must never be forwarded (controls, NUL, backslash, bad escapes)."""
    if b"%" not in raw:
        decoded = raw
    else:
        parts = raw.split(b"%")
        out = bytearray(parts[0])
        for part in parts[1:]:
            if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
                raise BadPath("malformed percent-encoding in the path")
            out.append(int(part[:2], 16))
            out += part[2:]
        decoded = bytes(out)
    if any(b < 0x20 or b == 0x7F or b == 0x5C for b in decoded):
        raise BadPath("control characters and backslashes are not allowed in the path")
    return decoded


def _ends_in_dot_segment(raw_segments: list[bytes]) -> bool:
    """`/a/b/..` means the directory `/a/`: a path ending in a dot segment keeps a trailing slash."""
    last = raw_segments[-1].lower()
    return last in (b".", b"..", b"%2e", b"%2e%2e", b".%2e", b"%2e.")
