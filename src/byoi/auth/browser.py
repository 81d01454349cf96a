"""Browser sign-in, the parts that need no store and no HTTP: random secrets and their hashes, where a
presigned URL lands, which `?next=` paths are safe, the public URL and cookie settings, and the limiter of
failed password sign-ins.

Session ids, CSRF tokens and presigned tokens are 32 random bytes, URL-safe base64 (43 characters). Only their
SHA-256 is stored (`byoi.store.schema_identity`), so a copy of the database signs nobody in.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import regex

from byoi.config import Settings
from byoi.errors import ValidationException

SESSION_COOKIE = "byoi_session"
SIGN_IN_CSRF_COOKIE = "byoi_sign_in_csrf"  # the pre-session CSRF cookie of the sign-in form (double submit)
_SECRET = regex.compile(r"[A-Za-z0-9_-]{43}")
# A relative path on this server: one leading "/", then no "/" or "\" (which browsers read as "//": another
# host), and nothing but printable ASCII without spaces.
_RELATIVE = regex.compile(r"/(?![/\\])[\x21-\x7e]*")
RSTUDIO_LANDING = "app:RStudioServerPro:"
LANDING_PAGE = "/auth/landing"
LAUNCHER_PAGE = "/rstudio/default/"  # the domain's RStudio launcher (byoi.web.launcher)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """What the store keeps of a session id or token: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def well_formed(secret: str) -> bool:
    return _SECRET.fullmatch(secret) is not None


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def safe_relative_path(value: str | None) -> str | None:
    """`value` when it is a path on this server (`/…`, no scheme, no `//`, no backslash), else None."""
    if value and _RELATIVE.fullmatch(value) and "\\" not in value:
        return value
    return None


def check_landing_uri(value: str | None) -> str | None:
    """A LandingUri byoi can honour, unchanged, or ValidationException naming what it accepts."""
    if value is None or value == "":
        return None
    if value.startswith(RSTUDIO_LANDING):
        path = value[len(RSTUDIO_LANDING) :]
        if path == "" or safe_relative_path(path):
            return value
    elif safe_relative_path(value):
        return value
    raise ValidationException(
        f"LandingUri {value[:100]!r} is not one byoi can land on: use app:RStudioServerPro: (optionally followed by "
        "a path starting with /) or a relative path on this server starting with / (no scheme, no //, no backslash)"
    )


def landing_path(landing_uri: str | None) -> str:
    """Where a browser signed in by a presigned URL goes: the one place LandingUri becomes a path.

    No LandingUri and `app:RStudioServerPro:` land on the domain's RStudio launcher (`/rstudio/default/`, where
    SageMaker serves RStudio); `app:RStudioServerPro:<path>` on that path when it is a safe path on this server,
    else the launcher; a relative path lands there."""
    if landing_uri is None:
        return LAUNCHER_PAGE
    if landing_uri.startswith(RSTUDIO_LANDING):
        return safe_relative_path(landing_uri[len(RSTUDIO_LANDING) :]) or LAUNCHER_PAGE
    return safe_relative_path(landing_uri) or LAUNCHER_PAGE


@dataclass(frozen=True)
class BrowserSettings:
    """`BYOI_PUBLIC_URL`: the URL browsers reach this server at (scheme://host[:port], no path), when that is
    not `Settings.endpoint_url` (behind a reverse proxy). Presigned URLs are built on it, and an https public
    URL marks cookies Secure even when a proxy in front terminates TLS."""

    public_url: str | None = None
    # BYOI_PROXY_ADMIN_ACCESS=1: administrators may open users' sessions through the proxy (off by default).
    admin_session_access: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BrowserSettings:
        env = os.environ if env is None else env
        flag = env.get("BYOI_PROXY_ADMIN_ACCESS", "").strip().lower()
        if flag not in ("", "0", "1", "true", "false", "yes", "no"):
            raise ValueError(f"BYOI_PROXY_ADMIN_ACCESS must be 1 or 0, not {flag!r}")
        admins = flag in ("1", "true", "yes")
        raw = env.get("BYOI_PUBLIC_URL", "").strip()
        if not raw:
            return cls(admin_session_access=admins)
        if not regex.fullmatch(
            r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?/?|https?://\[[0-9a-fA-F:]+\](:[0-9]{1,5})?/?", raw
        ):
            raise ValueError(f"BYOI_PUBLIC_URL must look like https://host[:port], not {raw!r}")
        return cls(raw.rstrip("/"), admins)

    def base_url(self, settings: Settings) -> str:
        return self.public_url or settings.endpoint_url

    def secure_cookies(self, settings: Settings) -> bool:
        return settings.tls_cert is not None or self.base_url(settings).startswith("https://")


@dataclass(frozen=True)
class Limits:
    per_account: int = 5
    per_address: int = 20
    window_seconds: float = 15 * 60
    delay_step: float = 0.2  # seconds added to a failed sign-in's answer per recent failure of the account
    max_delay: float = 1.0
    max_keys: int = 100_000  # the oldest keys are forgotten beyond this, so memory stays bounded


class SignInLimiter:
    """Failed password sign-ins, per account and per source address, in a sliding window.

    Kept in this process's memory: with several replicas each counts the failures it saw, so an attacker
    spreading attempts over N replicas gets up to N times the limit (still bounded; put a shared limiter in
    the gateway in front for a stricter one). A restart forgets the counts.
    """

    def __init__(self, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or Limits()
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def keys(username: str, address: str | None) -> tuple[str, str]:
        return f"account:{username.strip().lower()}", f"address:{address or '-'}"

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.limits.window_seconds:
            times.popleft()
        return times

    def retry_after(self, username: str, address: str | None) -> int | None:
        """Seconds until a sign-in may be tried again, or None when it may be tried now."""
        account, addr = self.keys(username, address)
        now = self.clock()
        waits = []
        with self._lock:
            for key, limit in ((account, self.limits.per_account), (addr, self.limits.per_address)):
                times = self._recent(key, now)
                if len(times) >= limit:
                    waits.append(times[-limit] + self.limits.window_seconds - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, username: str, address: str | None) -> float:
        """Count a failure; return how long to hold the answer (grows with the account's recent failures)."""
        now = self.clock()
        with self._lock:
            count = 0
            for key in self.keys(username, address):
                times = self._recent(key, now)
                times.append(now)
                self._failures[key] = times
                self._failures.move_to_end(key)
                count = count or len(times)
            while len(self._failures) > self.limits.max_keys:
                self._failures.popitem(last=False)
        return min(self.limits.delay_step * count, self.limits.max_delay)

    def succeeded(self, username: str) -> None:
        """A correct password clears the account's count (the address keeps its own)."""
        with self._lock:
            self._failures.pop(self.keys(username, None)[0], None)
