"""The frame-source seam: one small interface for every camera and file the kiosk reads.

Sources are context managers: `with open_source(cfg) as source:` opens the
device and always releases it. `read()` returns the next `Frame`, None when a
finite source (a video file or folder without looping) has ended, and raises
`CameraError` when the device fails; `ReconnectingSource` turns such failures
into reopen attempts with backoff so the kiosk keeps running.
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

log = logging.getLogger(__name__)

SourceT = TypeVar("SourceT", bound="FrameSource")


@dataclass(frozen=True)
class Frame:
    """One RGB uint8 image (H, W, 3) with its capture time (time.monotonic) and sequence number."""

    rgb: np.ndarray
    timestamp: float
    index: int
    capture_ms: float = 0.0  # time spent grabbing and decoding it


class FrameSource(abc.ABC):
    """A camera, stream, video file or image folder."""

    name: str = "source"

    def __init__(self) -> None:
        self._count = 0

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the device; raises CameraError if it cannot."""

    @abc.abstractmethod
    def _grab(self) -> np.ndarray | None:
        """The next RGB frame, None at the end of a finite source; CameraError on failure."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device. Idempotent. Call it from the reading thread, or after that thread ended:
        releasing a capture while another thread is inside `read()` can hang OpenCV."""

    def interrupt(self) -> None:
        """Make a waiting `read()` (pacing, reconnect backoff) return None soon. Safe from any thread."""

    def _wait_turn(self) -> bool:
        """Pace a source that plays recorded frames like a live camera; False: stop (closed)."""
        return True

    def read(self) -> Frame | None:
        if not self._wait_turn():
            return None
        start = time.perf_counter()  # after pacing: capture_ms is grab + decode only
        rgb = self._grab()
        if rgb is None:
            return None
        self._count += 1
        return Frame(rgb, time.monotonic(), self._count, (time.perf_counter() - start) * 1000.0)

    def __enter__(self: SourceT) -> SourceT:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
