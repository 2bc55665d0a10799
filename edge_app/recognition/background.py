"""What the camera sees when nobody holds anything up, learned while the kiosk runs.

A kiosk usually looks at a counter or a wall with posters: textured, so a
"low texture" test alone cannot tell it is empty, and the pipeline would say
"not recognised" to nobody. The view that stays still and unrecognised for a
while is the background; a frame that matches it is an empty view and skips
the model altogether. The background keeps being re-learned the same way, so
it follows slow lighting changes.
"""

from __future__ import annotations

import cv2
import numpy as np

_THUMB = (40, 30)  # width, height of the grey thumbnail the comparison uses


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    small = cv2.resize(rgb, _THUMB, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (3, 3), 0).astype(np.float32)


class BackgroundModel:
    """`learn_frames` still, unrecognised frames in a row make a background; 0 disables learning."""

    def __init__(self, learn_frames: int = 50, diff: float = 6.0) -> None:
        self.learn_frames, self.diff = learn_frames, diff
        self._background: np.ndarray | None = None
        self._previous: np.ndarray | None = None
        self._still = 0

    @property
    def learned(self) -> bool:
        return self._background is not None

    def _distance(self, a: np.ndarray, b: np.ndarray) -> float:
        # Mean absolute difference after removing the mean: a global brightness shift is not a product.
        return float(np.abs((a - a.mean()) - (b - b.mean())).mean())

    def matches(self, roi: np.ndarray) -> tuple[bool, np.ndarray]:
        """(whether the ROI shows the learned background, its thumbnail for `observe`)."""
        thumb = thumbnail(roi)
        return self._background is not None and self._distance(thumb, self._background) < self.diff, thumb

    def observe(self, thumb: np.ndarray, recognised: bool) -> None:
        """Feed every frame's thumbnail with whether a product was recognised in it."""
        if self.learn_frames <= 0:
            return
        still = self._previous is not None and self._distance(thumb, self._previous) < self.diff
        self._previous = thumb
        self._still = self._still + 1 if still and not recognised else 0
        if self._still >= self.learn_frames:
            self._background = thumb
            self._still = 0

    def reset(self) -> None:
        self._background, self._previous, self._still = None, None, 0
