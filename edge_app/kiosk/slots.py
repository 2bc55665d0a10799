"""The two hand-over points between the kiosk's loops: a latest-item slot and a rate meter."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds only the newest item; readers wait for one newer than what they have seen."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._seq = 0

    def put(self, item: T) -> None:
        with self._cond:
            self._item, self._seq = item, self._seq + 1
            self._cond.notify_all()

    def get(self) -> tuple[T | None, int]:
        with self._cond:
            return self._item, self._seq

    def wait_newer(self, seen: int, timeout: float) -> tuple[T | None, int]:
        with self._cond:
            self._cond.wait_for(lambda: self._seq > seen, timeout=timeout)
            return self._item, self._seq

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class RateMeter:
    """Events per second over the last few seconds."""

    def __init__(self, horizon_s: float = 3.0) -> None:
        self._times: deque[float] = deque()
        self._horizon = horizon_s
        self._lock = threading.Lock()

    def tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._times.append(now)
            while self._times and now - self._times[0] > self._horizon:
                self._times.popleft()

    @property
    def rate(self) -> float:
        with self._lock:
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0
