"""A folder of images played as a camera (in name order, optionally looping)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from shelfsight.edge_app.camera.base import FrameSource
from shelfsight.edge_app.core.errors import CameraError, ImageError, InputError
from shelfsight.edge_app.core.images import iter_image_files, load_rgb

log = logging.getLogger(__name__)


class FolderSource(FrameSource):
    def __init__(self, path: str | Path, interval_s: float = 0.0, loop: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.interval_s, self.loop = interval_s, loop
        self.name = f"folder:{self.path}"
        self._files: list[Path] = []
        self._pos = 0
        self._stop = threading.Event()

    def open(self) -> None:
        if not self.path.is_dir():
            raise CameraError(f"{self.path}: no such image folder")
        self._files = list(iter_image_files(self.path))
        if not self._files:
            raise CameraError(f"{self.path}: no images in the folder")
        self._pos = 0
        self._stop.clear()

    def _grab(self) -> np.ndarray | None:
        # A bad file is skipped with a warning: one corrupt picture must not stop the kiosk.
        for _ in range(len(self._files)):
            if self._pos >= len(self._files):
                if not self.loop:
                    return None
                self._pos = 0
            path = self._files[self._pos]
            self._pos += 1
            try:
                return load_rgb(path)
            except (ImageError, InputError) as exc:
                log.warning("skipping %s", exc)
        raise CameraError(f"{self.path}: none of the images can be read")

    def _wait_turn(self) -> bool:
        if self._count and self.interval_s:
            return not self._stop.wait(self.interval_s)
        return not self._stop.is_set()

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
