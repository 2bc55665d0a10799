"""Staff mode: who may teach the kiosk and watch its camera.

The staff PIN is kept only as a salted scrypt hash in a file (`web.staff_credential`, written by
`shelfsight kiosk set-staff-pin`). A correct PIN opens a server-side session: a random token in
an HttpOnly, SameSite=Strict cookie, and a CSRF token the page keeps in memory and sends as
`X-CSRF-Token` with every state-changing request. Sessions end after `idle_s` without use; only
`max_sessions` exist at once (the least recently used goes first). Wrong PINs are counted per
client: `max_failures` in `window_s`, then 429 until the window has passed.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shelfsight.edge_app.core.credentials import SecretHash
from shelfsight.edge_app.core.errors import ConfigError, InputError
from shelfsight.edge_app.core.files import atomic_write

MIN_PIN_CHARS = 6
MAX_PIN_CHARS = 256
Clock = Callable[[], float]


def check_pin_text(pin: str) -> str:
    """`pin` if it can be a staff PIN; InputError says why not."""
    if not MIN_PIN_CHARS <= len(pin) <= MAX_PIN_CHARS:
        raise InputError(f"the staff PIN must be {MIN_PIN_CHARS} to {MAX_PIN_CHARS} characters")
    if not pin.isprintable():
        raise InputError("the staff PIN may hold only printable characters")
    return pin


def hash_pin(pin: str) -> str:
    """One line: `scrypt:n:r:p:salt:hash` (hex), what the credential file holds."""
    return SecretHash.of(check_pin_text(pin)).to_line()


def write_staff_credential(path: str | Path, pin: str) -> Path:
    """Store `pin`'s hash at `path` (replaced atomically), readable by its owner only."""
    path = Path(path)
    line = hash_pin(pin)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, line.encode("ascii"))
        os.chmod(path, 0o600)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the staff credential ({exc.strerror or type(exc).__name__})") from exc
    return path


class StaffCredential:
    """The staff PIN's hash from its file; `check` compares in constant time, one check at a time."""

    def __init__(self, hashed: SecretHash) -> None:
        self._hash = hashed

    @classmethod
    def load(cls, path: str | Path) -> "StaffCredential":
        path = Path(path)
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no staff credential; set one with `shelfsight kiosk set-staff-pin`") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable staff credential ({type(exc).__name__})") from exc
        try:
            return cls(SecretHash.from_line(text))
        except ConfigError as exc:
            raise ConfigError(f"{path}: not a staff credential written by `shelfsight kiosk set-staff-pin`") from exc

    def check(self, presented: object) -> bool:
        return self._hash.check(presented, MAX_PIN_CHARS)


@dataclass
class Session:
    csrf: str
    last_used: float


class Sessions:
    """Logged-in staff sessions by cookie token, in memory: a kiosk restart logs everyone out."""

    def __init__(self, idle_s: float = 900.0, max_sessions: int = 16, clock: Clock = time.monotonic) -> None:
        self.idle_s, self.max_sessions, self._clock = idle_s, max_sessions, clock
        self._by_token: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), last_used=self._clock())
        with self._lock:
            self._by_token[token] = session
            while len(self._by_token) > self.max_sessions:
                self._by_token.popitem(last=False)
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session for a cookie value (its idle time restarts), or None."""
        if not token:
            return None
        now = self._clock()
        with self._lock:
            session = self._by_token.get(token)
            if session is None:
                return None
            if now - session.last_used > self.idle_s:
                del self._by_token[token]
                return None
            session.last_used = now
            self._by_token.move_to_end(token)
            return session

    def close(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)


class RateLimit:
    """At most `limit` events per `window_s` per key; keys beyond `max_keys` forget the oldest."""

    def __init__(self, limit: int, window_s: float = 60.0, max_keys: int = 1024, clock: Clock = time.monotonic):
        self.limit, self.window_s, self.max_keys, self._clock = limit, window_s, max_keys, clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.setdefault(key, deque())
        self._events.move_to_end(key)
        while events and now - events[0] >= self.window_s:
            events.popleft()
        while len(self._events) > self.max_keys:
            self._events.popitem(last=False)
        return events

    def retry_after(self, key: str) -> int | None:
        """Seconds until `key` may act again, or None if it may now."""
        now = self._clock()
        with self._lock:
            events = self._recent(key, now)
            if len(events) < self.limit:
                return None
            return max(1, int(self.window_s - (now - events[0]) + 0.999))

    def record(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            self._recent(key, now).append(now)
