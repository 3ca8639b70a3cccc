"""The master key that seals server-side secrets (TOTP seeds, the operator's keys, sessions).

A 32-byte key read from ``MSS_MASTER_KEY_FILE``. In development it is generated on first use
with 0600 permissions; in production it must already exist (supplied by a secret store).
"""

from __future__ import annotations

from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.utils

from mss.errors import ConfigError, CryptoError
from mss.files import create_private
from mss.settings import Settings


class MasterKey:
    """Seals and opens small secrets with XSalsa20-Poly1305 (NaCl SecretBox)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != nacl.secret.SecretBox.KEY_SIZE:
            raise ConfigError("the master key must be exactly 32 bytes")
        self._box = nacl.secret.SecretBox(key)

    @classmethod
    def load(cls, settings: Settings) -> MasterKey:
        """Read the key file; create it first in development. Raises ConfigError."""
        path = Path(settings.storage.master_key_file)
        if not path.exists():
            if settings.is_production:
                raise ConfigError(f"MSS_MASTER_KEY_FILE {path} does not exist (production never generates it)")
            # Another process may create it first: then this one reads theirs.
            create_private(path, nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE))
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} must not be readable by group or others (chmod 600)")
        return cls(path.read_bytes())

    def seal(self, plaintext: bytes) -> bytes:
        """Nonce + ciphertext + tag."""
        return bytes(self._box.encrypt(plaintext))

    def open(self, sealed: bytes) -> bytes:
        """The plaintext; raises CryptoError when the data was altered or sealed by another key."""
        try:
            return self._box.decrypt(sealed)
        except nacl.exceptions.CryptoError as exc:
            raise CryptoError("sealed data could not be opened with the master key") from exc
