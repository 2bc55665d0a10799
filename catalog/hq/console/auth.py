"""Who may use the console, and which requests may change something.

Bound to loopback the console needs no credential; on any other address it needs one
(`Credential`), given once per browser session. Every state-changing request carries the
page's CSRF token and an Origin of the console itself, so another site open in the same
browser cannot approve anything; without a credential the Host header must name loopback,
so a DNS-rebinding page cannot read the token either.
"""

from __future__ import annotations

from shelfsight.edge_app.core.credentials import SecretHash
from shelfsight.edge_app.core.errors import ConfigError

MIN_CREDENTIAL_CHARS = 8
MAX_CREDENTIAL_CHARS = 256
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class Credential:
    """The console's token or PIN, kept only as a salted scrypt hash (`core.credentials`)."""

    def __init__(self, secret: str) -> None:
        if not MIN_CREDENTIAL_CHARS <= len(secret) <= MAX_CREDENTIAL_CHARS:
            raise ConfigError(
                f"the console credential must be {MIN_CREDENTIAL_CHARS} to {MAX_CREDENTIAL_CHARS} characters"
            )
        self._hash = SecretHash.of(secret)

    def check(self, presented: object) -> bool:
        return self._hash.check(presented, MAX_CREDENTIAL_CHARS)


def host_name(host_header: str) -> str:
    """The name part of a Host header ("[::1]:8090" -> "::1", "localhost:8090" -> "localhost")."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def same_origin(origin: str | None, host_header: str) -> bool:
    """The request's Origin is this console (scheme http, same host and port as the Host header)."""
    return origin is not None and origin == f"http://{host_header}"
