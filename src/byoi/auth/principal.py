"""Who is calling: one typed `Principal` for every door, and the context variable services read it from.

Every door turns its credentials into a Principal (the API door from a SigV4 signature's access key, the
browser doors from a session cookie) and hands it to `byoi.api.dispatch.dispatch`, which sets it here for the
duration of the call. Services that scope what they return (lists, describes) read `current()`; they never see
how the caller signed in. Background work runs as `SYSTEM`.

Chosen over an explicit argument on every service method: the operations are found by name and called with
the request's members as keyword arguments (`byoi.app.Services.operations`), so a context variable reaches
every one of them without changing their wire-shaped signatures, and a call made outside `dispatch` sees
`SYSTEM` only where it is set on purpose (workers) and an error everywhere else.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "user", "system"]
Door = Literal["api", "browser", "system"]
ADMIN: Role = "admin"
USER: Role = "user"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    `name` identifies the principal (unique); `role` decides what it may do; a user is bound to exactly one
    user profile (`domain_id`, `user_profile_name`). `access_key_id` is the key that signed the request (API
    door), `door` how the call arrived, `source` the client's address (for the audit log).
    """

    name: str
    role: Role
    domain_id: str | None = None
    user_profile_name: str | None = None
    access_key_id: str | None = None
    door: Door = "api"
    source: str | None = None
    # For users: the (lower-cased) names of the images attached to their domain or profile, when the door read
    # them with the credentials (one query per request instead of two); None: not read yet.
    attached_images: frozenset[str] | None = None

    @property
    def is_admin(self) -> bool:
        return self.role in (ADMIN, "system")

    def owns_profile(self, domain_id: str | None, user_profile_name: str | None) -> bool:
        return (
            self.role == USER
            and self.domain_id is not None
            and (domain_id, user_profile_name) == (self.domain_id, self.user_profile_name)
        )


SYSTEM = Principal(name="byoi-system", role="system", door="system")

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("byoi_principal", default=None)


class NoPrincipal(RuntimeError):
    """A service scoped its answer outside any call: a bug (every door goes through dispatch)."""


def current() -> Principal:
    principal = _current.get()
    if principal is None:
        raise NoPrincipal("no principal is set: this service call did not come through byoi.api.dispatch")
    return principal


@contextmanager
def acting_as(principal: Principal) -> Iterator[Principal]:
    token = _current.set(principal)
    try:
        yield principal
    finally:
        _current.reset(token)
