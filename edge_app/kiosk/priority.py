"""The pipeline lock, with the camera first (issue 13 item 3).

The camera worker and every HTTP search share one interpreter, so they take
turns. A plain lock hands the pipeline to whichever thread the OS wakes, and
under 200 concurrent searches the camera worker waited behind dozens of them
(10 fps fell to 0.4). Here the camera worker goes first: while it is waiting,
nobody else may take the pipeline, so between two frames at most the one
search already running when the frame arrived delays it. Searches still run
whenever the camera worker has no frame to process (the gaps between camera
frames), and they never starve while the camera is idle or gone.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class PipelineLock:
    """A mutex with two doors: `first()` for the camera worker, the plain `with lock:` for everyone else.

    `camera_first=False` makes both doors one plain `threading.Lock` (the behaviour before
    issue 13, kept for the benchmark's "before" row).
    """

    def __init__(self, camera_first: bool = True) -> None:
        self.camera_first = camera_first
        self._plain = threading.Lock()
        self._cond = threading.Condition()
        self._busy = False
        self._camera_waiting = 0

    @contextmanager
    def first(self) -> Iterator[None]:
        """Hold the pipeline for a frame; taken before any other waiter."""
        if not self.camera_first:
            with self._plain:
                yield
            return
        with self._cond:
            self._camera_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._busy)
            finally:
                self._camera_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def __enter__(self) -> None:
        if not self.camera_first:
            self._plain.acquire()
            return
        with self._cond:
            self._cond.wait_for(lambda: not self._busy and not self._camera_waiting)
            self._busy = True

    def __exit__(self, *exc: object) -> None:
        if not self.camera_first:
            self._plain.release()
            return
        self._release()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()
