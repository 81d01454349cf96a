"""Secrets at rest: access-key secrets are stored encrypted (Fernet) with a key kept outside the database.

The master key comes from `BYOI_MASTER_KEY` (or the `master_key` setting) or from `<data-dir>/master.key`,
created with mode 0600 on first start. A copy of the database alone therefore reveals no secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self._key = key

    def derived_key(self, purpose: str) -> bytes:
        """A key for one purpose (e.g. signing build-context URLs), derived from the master key: the same on every
        replica (they share the master key), never stored, and changed by a master-key rotation."""
        return hmac.new(self._key, f"byoi {purpose}".encode(), hashlib.sha256).digest()

    @classmethod
    def from_settings(cls, data_dir: Path, master_key: str | None) -> SecretBox:
        if master_key:
            return cls(master_key.encode())
        path = data_dir / "master.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise RuntimeError("stored secret cannot be decrypted: wrong master key?") from exc
