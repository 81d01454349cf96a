"""The session proxy door: `/sessions/<id>/…` to the session's RStudio, after the gate says yes.

`paths` normalises the raw path (the one parse both the gate and the forwarder read), `core` is the ASGI
app (`SessionProxy`) with the `Gate` and `Activity` it is given and the `Upstream` a gate answers,
`exchange` streams HTTP, `relay` relays WebSockets, `headers` and `rewrite` decide what crosses, `pool`
keeps one aiohttp client per endpoint. A door: it imports `byoi.runtime.base` and never services or store.
"""

from byoi.proxy.core import Activity, Gate, SessionProxy, Upstream
from byoi.proxy.paths import BadPath, SessionPath, parse_session_path

__all__ = ["Activity", "BadPath", "Gate", "SessionPath", "SessionProxy", "Upstream", "parse_session_path"]
