"""A secret (the kiosk's staff PIN, HQ's console credential) kept only as a salted scrypt hash.

One definition for both local web servers: the cost, the constant-time comparison, the cap on
the work a tampered credential file may ask for, and one check at a time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

from shelfsight.edge_app.core.errors import ConfigError

# scrypt at the cost OWASP suggests for interactive logins (n=2**14, r=8, p=1: 16 MiB, ~50 ms).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# A stored hash may not ask for more work than this: a tampered file must not exhaust memory.
MAX_SCRYPT_MEMORY = 64 * 1024 * 1024
_FORMAT = "scrypt"


class SecretHash:
    """`check(presented)` is True for the secret this hash was made from; compared in constant time."""

    def __init__(self, salt: bytes, digest: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> None:
        if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or 128 * n * r > MAX_SCRYPT_MEMORY:
            raise ConfigError(f"scrypt cost n={n} r={r} p={p} is outside what a credential may ask for")
        if len(salt) < 16 or len(digest) != 32:
            raise ConfigError("a credential needs a salt of 16 bytes or more and a 32-byte hash")
        self._salt, self._digest, self._cost = salt, digest, (n, r, p)
        # One check at a time: each takes 16 MiB and ~50 ms, so parallel guesses can neither
        # exhaust memory nor go faster than one after another.
        self._lock = threading.Lock()

    @classmethod
    def of(cls, secret: str) -> "SecretHash":
        """A new hash of `secret` with a fresh salt."""
        salt = secrets.token_bytes(16)
        return cls(salt, _derive(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))

    @classmethod
    def from_line(cls, line: str) -> "SecretHash":
        """Parse `to_line`'s form; ConfigError (with no detail of the content) if it is not one."""
        try:
            kind, n, r, p, salt, digest = line.strip().split(":")
            cost = int(n), int(r), int(p)
            salt_bytes, digest_bytes = bytes.fromhex(salt), bytes.fromhex(digest)
        except ValueError as exc:
            raise ConfigError("not a scrypt credential line") from exc
        if kind != _FORMAT:
            raise ConfigError("not a scrypt credential line")
        return cls(salt_bytes, digest_bytes, *cost)

    def to_line(self) -> str:
        """One line: `scrypt:n:r:p:salt:hash` (hex), what a credential file holds."""
        n, r, p = self._cost
        return f"{_FORMAT}:{n}:{r}:{p}:{self._salt.hex()}:{self._digest.hex()}\n"

    def check(self, presented: object, max_chars: int) -> bool:
        if not isinstance(presented, str) or not 0 < len(presented) <= max_chars:
            return False
        with self._lock:
            return hmac.compare_digest(_derive(presented, self._salt, *self._cost), self._digest)


def _derive(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=MAX_SCRYPT_MEMORY)
