"""Keep a camera alive: reopen it with exponential backoff when it fails or disappears."""

from __future__ import annotations

import logging
import threading
from typing import Callable

import numpy as np

from shelfsight.edge_app.camera.base import Frame, FrameSource
from shelfsight.edge_app.core.errors import CameraError

log = logging.getLogger(__name__)


class ReconnectingSource(FrameSource):
    """Wraps a source factory. `read()` blocks through outages and returns None only when closed or ended.

    `wait(seconds) -> bool` is the pause between attempts (True means: stop);
    it defaults to an Event wait that `close()` interrupts.
    """

    def __init__(
        self,
        factory: Callable[[], FrameSource],
        initial_s: float = 0.5,
        max_s: float = 10.0,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        super().__init__()
        self._factory = factory
        self.initial_s, self.max_s = initial_s, max_s
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._source: FrameSource | None = None
        self.reconnects = 0  # connections made after losing one
        self._connected_before = 0
        self.connected = False
        self.last_error = ""
        self.name = "reconnecting"

    def open(self) -> None:
        """Returns at once: the first connection is made by `read()`, so a missing camera never blocks start-up."""
        self._stop.clear()

    def _connect(self) -> bool:
        delay = self.initial_s
        while not self._stop.is_set():
            source = self._factory()
            self.name = f"reconnecting:{source.name}"
            try:
                source.open()
            except CameraError as exc:
                self.last_error = str(exc)
                log.warning("%s; retrying in %.1f s", exc, delay)
                if self._wait(delay):
                    return False
                delay = min(delay * 2, self.max_s)
                continue
            self._source, self.connected = source, True
            return True
        return False

    def _drop(self) -> None:
        self.connected = False
        if self._source is not None:
            self._source.close()
            self._source = None

    def read(self) -> Frame | None:
        while not self._stop.is_set():
            if self._source is None:
                if not self._connect():
                    return None
                self.reconnects += self._connected_before
                self._connected_before = 1
            assert self._source is not None
            try:
                return self._source.read()
            except CameraError as exc:
                self.last_error = str(exc)
                log.warning("%s; reopening", exc)
                self._drop()
        return None

    def _grab(self) -> np.ndarray | None:  # read() is overridden; kept for the interface
        frame = self.read()
        return None if frame is None else frame.rgb

    def interrupt(self) -> None:
        self._stop.set()
        source = self._source
        if source is not None:
            source.interrupt()

    def close(self) -> None:
        self.interrupt()
        self._drop()
