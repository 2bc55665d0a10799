"""Who may use the console, and which requests may change something.

Bound to loopback the console needs no credential; on any other address it needs one
(`Credential`), given once per browser session. Every state-changing request carries the
page's CSRF token and an Origin of the console itself, so another site open in the same
browser cannot approve anything; without a credential the Host header must name loopback,
so a DNS-rebinding page cannot read the token either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

from shelfsight.edge_app.core.errors import ConfigError

MIN_CREDENTIAL_CHARS = 8
MAX_CREDENTIAL_CHARS = 256
# scrypt at the cost OWASP suggests for interactive logins (n=2**14, r=8, p=1: 16 MiB, ~50 ms).
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class Credential:
    """A staff token or PIN kept only as a salted scrypt hash; `check` compares in constant time."""

    def __init__(self, secret: str) -> None:
        if not MIN_CREDENTIAL_CHARS <= len(secret) <= MAX_CREDENTIAL_CHARS:
            raise ConfigError(
                f"the console credential must be {MIN_CREDENTIAL_CHARS} to {MAX_CREDENTIAL_CHARS} characters"
            )
        self._salt = secrets.token_bytes(16)
        self._hash = self._derive(secret)
        # One check at a time: each takes 16 MiB and ~50 ms, so parallel guesses can neither
        # exhaust memory nor go faster than one after another.
        self._lock = threading.Lock()

    def _derive(self, secret: str) -> bytes:
        return hashlib.scrypt(secret.encode("utf-8"), salt=self._salt, **_SCRYPT)

    def check(self, presented: object) -> bool:
        if not isinstance(presented, str) or not 0 < len(presented) <= MAX_CREDENTIAL_CHARS:
            return False
        with self._lock:
            return hmac.compare_digest(self._derive(presented), self._hash)


def host_name(host_header: str) -> str:
    """The name part of a Host header ("[::1]:8090" -> "::1", "localhost:8090" -> "localhost")."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def same_origin(origin: str | None, host_header: str) -> bool:
    """The request's Origin is this console (scheme http, same host and port as the Host header)."""
    return origin is not None and origin == f"http://{host_header}"
