"""Small checks both local web servers (the kiosk page and HQ's console) make on every request."""

from __future__ import annotations

import hmac
import ipaddress


def is_loopback(host: str) -> bool:
    """True for an address (bind or client) only this machine can reach or be."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def same_token(presented: str | None, expected: str) -> bool:
    """Constant-time comparison of a header or cookie with a token (any characters, never an exception)."""
    return hmac.compare_digest((presented or "").encode("utf-8", "replace"), expected.encode("utf-8"))
