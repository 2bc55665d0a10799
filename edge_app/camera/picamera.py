"""Raspberry Pi camera via picamera2: the only module that imports it (lazily, on open)."""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from shelfsight.edge_app.camera.base import FrameSource
from shelfsight.edge_app.core.errors import CameraError

log = logging.getLogger(__name__)


class PiCameraSource(FrameSource):
    def __init__(self, width: int = 640, height: int = 480, fps: float = 15.0) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.name = f"picamera:{width}x{height}"
        self._camera: Any = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError as exc:
            raise CameraError(
                "picamera2 is not installed; on a Raspberry Pi: sudo apt install python3-picamera2"
            ) from exc
        camera = None
        try:
            camera = Picamera2()
            config = camera.create_video_configuration(
                main={"size": (self.width, self.height), "format": "RGB888"},
                controls={"FrameRate": self.fps},
            )
            camera.configure(config)
            camera.start()
        except Exception as exc:  # picamera2/libcamera raise plain RuntimeError/IndexError when no camera is attached
            if camera is not None:
                _quietly_close(camera)
            raise CameraError(f"{self.name}: cannot start the Pi camera ({exc})") from exc
        self._camera = camera
        log.info("opened %s", self.name)

    def _grab(self) -> np.ndarray | None:
        if self._camera is None:
            raise CameraError(f"{self.name}: not open")
        try:
            array = self._camera.capture_array("main")
        except Exception as exc:  # same reason as in open()
            raise CameraError(f"{self.name}: capture failed ({exc})") from exc
        # libcamera's "RGB888" is B, G, R in memory order. OpenCV swaps the channels in one pass;
        # numpy's reversed-stride copy takes some 60x longer, more than the rest of a frame's preprocessing.
        return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._camera is not None:
            _quietly_close(self._camera)
            self._camera = None


def _quietly_close(camera: Any) -> None:
    for step in ("stop", "close"):
        try:
            getattr(camera, step)()
        except Exception:  # releasing must never raise over the error that led here
            log.debug("picamera2 %s failed", step, exc_info=True)
