"""Password hashing for browser sign-in: argon2id (argon2-cffi's defaults, RFC 9106's second recommendation).

Only the hash is stored. `verify` takes the same time whether or not the principal exists (a dummy hash is
checked when there is none), so a sign-in does not tell which names exist.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash("byoi: no such principal")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(stored_hash or _DUMMY, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
