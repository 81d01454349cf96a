"""Short-lived signed URLs of a build's checked context, for builders that fetch it themselves (a BuildKit Job on
Kubernetes has no byoi credentials and no SigV4 signer: it has only this URL).

    <base>/byoi/builds/<build id>/context.tar?expires=<unix time>&sig=<hex HMAC-SHA256(key, "<build id>\\n<expires>")>

The key is derived from the master key (`SecretBox.derived_key`), which every replica shares, so a URL made by one
replica is honoured by every other. A URL names one build and ends at `expires` (TTL seconds after it is made; a longer
one is refused even when its signature is good, so a leaked key cannot make URLs for ever); the route answers
404 once the build has settled, as the runner deletes the context then. Signatures are compared in constant time
and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from byoi.build.base import BUILD_ID

TTL = 900.0  # seconds: scheduling the Job's pod and pulling BuildKit's image come first
KEY_PURPOSE = "build context urls"  # SecretBox.derived_key's purpose: the signer and the route derive one key
_DIGITS = frozenset("0123456789")


def _signature(key: bytes, build_id: str, expires: int) -> str:
    return hmac.new(key, f"{build_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def sign(base_url: str, key: bytes, build_id: str, now: float | None = None, ttl: float = TTL) -> str:
    """The context URL of `build_id` on byoi at `base_url`, valid for `ttl` seconds."""
    expires = int((time.time() if now is None else now) + ttl)
    return (
        f"{base_url.rstrip('/')}/byoi/builds/{build_id}/context.tar"
        f"?expires={expires}&sig={_signature(key, build_id, expires)}"
    )


def check(key: bytes, build_id: str, expires: str, sig: str, now: float | None = None, ttl: float = TTL) -> str | None:
    """None when the URL's parts are good; else what is wrong, in words fit for a 403's body."""
    if not BUILD_ID.fullmatch(build_id):
        return "not a build id"
    if not expires or len(expires) > 12 or not set(expires) <= _DIGITS:
        return "expires is not a time"
    moment = time.time() if now is None else now
    when = int(expires)
    if when < moment:
        return "the URL has expired"
    if when > moment + ttl + 1:
        return "the URL claims to last longer than byoi makes them"
    if not hmac.compare_digest(_signature(key, build_id, when), sig):
        return "the signature does not match"
    return None
