"""OpenCV sources: a USB webcam, an RTSP/HTTP stream, or a video file."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shelfsight.edge_app.camera.base import FrameSource
from shelfsight.edge_app.core.errors import CameraError

log = logging.getLogger(__name__)


class OpenCVSource(FrameSource):
    """`cv2.VideoCapture` on a webcam index or a stream URL."""

    def __init__(self, device: int | str = 0, width: int | None = None, height: int | None = None) -> None:
        super().__init__()
        self.device = device
        self.width, self.height = width, height
        self.name = f"opencv:{device}"
        self._cap: Any = None

    def _target(self) -> int | str:
        return self.device

    def open(self) -> None:
        # One decoder thread: the interpreter owns the cores, and a second FFmpeg thread only
        # adds hand-over latency to each frame (MJPG 480x360: 0.41 ms with two, 0.34 ms with one).
        cap = cv2.VideoCapture(self._target(), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"{self.name}: cannot open (is it connected, is the URL or index right?)")
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self._cap = cap
        log.info("opened %s", self.name)

    def _read_bgr(self) -> np.ndarray | None:
        if self._cap is None:
            raise CameraError(f"{self.name}: not open")
        ok, bgr = self._cap.read()
        return bgr if ok and bgr is not None else None

    def _grab(self) -> np.ndarray | None:
        bgr = self._read_bgr()
        if bgr is None:
            raise CameraError(f"{self.name}: stopped delivering frames")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileSource(OpenCVSource):
    """A video file played like a camera: paced at its frame rate (if `realtime`), looping if asked."""

    def __init__(self, path: str | Path, loop: bool = True, realtime: bool = True) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self.loop, self.realtime = loop, realtime
        self.name = f"video:{self.path.name}"
        self.fps = 0.0
        self._next_due = 0.0
        self._stop = threading.Event()

    def _target(self) -> int | str:
        if not self.path.is_file():
            raise CameraError(f"{self.path}: no such video file")
        return str(self.path)

    def open(self) -> None:
        super().open()
        self._stop.clear()
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._next_due = time.monotonic()

    def _grab(self) -> np.ndarray | None:
        bgr = self._read_bgr()
        if bgr is None and self.loop and self._count > 0:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            bgr = self._read_bgr()
        if bgr is None:
            if self._count == 0:
                raise CameraError(f"{self.path}: no decodable frames")
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _wait_turn(self) -> bool:
        if self.realtime and self.fps > 0 and self._count > 0:
            self._next_due += 1.0 / self.fps
            delay = self._next_due - time.monotonic()
            if delay > 0:
                return not self._stop.wait(delay)
            self._next_due = time.monotonic()  # fell behind: do not try to catch up in a burst
        return not self._stop.is_set()

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        super().close()
