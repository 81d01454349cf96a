"""Which headers cross the proxy, in each direction, and what the proxy adds.

Requests: hop-by-hop headers (and any the Connection header names) stop here, as do `Authorization` and
`Host`; byoi's own session cookie is cut out of `Cookie` (the user's RStudio must never see it) and every
other cookie passes byte-exact. Whatever the client claims about forwarding (`Forwarded`, `X-Forwarded-*`,
`X-Real-IP`) and anything addressed to RStudio (`X-RStudio-*`: a client could otherwise choose its own root
path or `X-RStudio-Request`) is removed, then the proxy states them once, single-valued: rserver does not
split comma lists (rstudio-behind-a-proxy.md §2), and it builds every redirect from these headers.
RStudio's CSRF headers, `Origin` and `Referer` pass untouched (§4).

Responses: hop-by-hop headers stop, and so do upstream's `Date` and `Server` (the ASGI server writes its
own); `Location`, `Refresh` and `Set-Cookie` go through rewrite.py.

Header names arrive lowercased as bytes (ASGI) and are compared against precomputed frozensets; the work per
request is one pass over the headers with no parsing unless a header needs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",  # not standard, still sent by some clients; hop-by-hop in practice
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers never forwarded: hop-by-hop, the client's credentials for byoi, what the proxy sets itself,
# and `Expect` (uvicorn has already answered `100 Continue` to the client when the body is read).
_REQUEST_DROP = HOP_BY_HOP | {b"authorization", b"host", b"forwarded", b"x-real-ip", b"expect"}
# A WebSocket handshake to upstream is aiohttp's own (key, version, protocols; no compression).
_WEBSOCKET_DROP = _REQUEST_DROP | {
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"sec-websocket-accept",
}
_CLIENT_CLAIMS = (b"x-forwarded-", b"x-rstudio-")
# Response headers the ASGI server writes itself (uvicorn's `date` and `server`): upstream's copies would make
# a second Date (a single-valued header) and name the upstream's software to the browser.
_RESPONSE_DROP = HOP_BY_HOP | {b"date", b"server"}
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class BadHost(ValueError):
    """A Host header the proxy will not repeat to RStudio (which builds redirects from it)."""


@dataclass(frozen=True, slots=True)
class PublicOrigin:
    """Where the browser thinks it is: the scheme and host[:port] RStudio must build its URLs on."""

    scheme: str  # http or https
    netloc: str  # host[:port], the port only when not the scheme's default
    port: int

    @property
    def default_port(self) -> bool:
        return _DEFAULT_PORTS.get(self.scheme) == self.port

    @classmethod
    def from_url(cls, url: str) -> PublicOrigin:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"the public URL must be http(s)://host[:port], not {url!r}")
        return cls.from_host(parts.scheme, parts.netloc.rpartition("@")[2])

    @classmethod
    def from_host(cls, scheme: str, host: str) -> PublicOrigin:
        """From a request's own Host header (no public URL configured): validated, since RStudio repeats it."""
        if not _HOST.fullmatch(host):
            raise BadHost(f"bad Host header {host[:100]!r}")
        name, colon, port_text = host.rpartition(":") if not host.endswith("]") else ("", "", "")
        if not colon:
            name, port_text = host, ""
        port = int(port_text) if port_text else _DEFAULT_PORTS[scheme]
        if not 0 < port < 65536:
            raise BadHost(f"bad port in Host header {host[:100]!r}")
        netloc = name.lower() if port == _DEFAULT_PORTS[scheme] else f"{name.lower()}:{port}"
        return cls(scheme, netloc, port)


def request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    origin: PublicOrigin,
    root_path: str,
    client: str | None,
    strip_cookies: frozenset[bytes],
    websocket: bool = False,
) -> list[tuple[str, str]]:
    """The headers to send upstream, in aiohttp's form (str pairs; aiohttp adds none of its own)."""
    drop = _WEBSOCKET_DROP if websocket else _REQUEST_DROP
    out: list[tuple[str, str]] = []
    cookies: list[bytes] = []
    named: set[bytes] = set()
    for name, value in headers:
        if name in drop:
            if name == b"connection":
                named.update(t.strip().lower() for t in value.split(b","))
            continue
        if name.startswith(_CLIENT_CLAIMS):
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    if named - drop:  # Connection named an end-to-end header: it is hop-by-hop for this request
        gone = {n.decode("latin-1") for n in named - drop}
        out = [(n, v) for n, v in out if n not in gone]
        cookies = [] if "cookie" in gone else cookies
    if cookies:
        cookie = filter_cookie_header(b"; ".join(cookies), strip_cookies)
        if cookie:
            out.append(("cookie", cookie.decode("latin-1")))
    out.append(("host", origin.netloc))
    out.append(("x-rstudio-root-path", root_path))
    out.append(("x-forwarded-host", origin.netloc))
    out.append(("x-forwarded-proto", origin.scheme))
    if not origin.default_port:
        out.append(("x-forwarded-port", str(origin.port)))
    if client:
        out.append(("x-forwarded-for", client))
    return out


def filter_cookie_header(value: bytes, strip: frozenset[bytes]) -> bytes:
    """The Cookie header without the named cookies; the others byte-exact, in order, joined by '; '."""
    if not any(name in value for name in strip):
        return value
    kept = [pair for pair in value.split(b";") if pair.strip().partition(b"=")[0].strip() not in strip]
    return b"; ".join(pair.strip() for pair in kept if pair.strip())


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], bool]:
    """Upstream's headers, lowercased, hop-by-hop dropped; and whether Location/Refresh/Set-Cookie are among
    them (only then does the caller pay for rewriting)."""
    out: list[tuple[bytes, bytes]] = []
    named: set[bytes] = set()
    rewrite = False
    for name, value in raw:
        lower = name.lower()
        if lower in _RESPONSE_DROP:
            if lower == b"connection":
                named.update(t.strip().lower() for t in value.split(b","))
            continue
        if lower in _REWRITTEN:
            rewrite = True
        out.append((lower, value))
    if named - _RESPONSE_DROP:
        out = [(n, v) for n, v in out if n not in named]
    return out, rewrite


_REWRITTEN = frozenset({b"location", b"refresh", b"set-cookie"})
