"""What the camera sees when nobody holds anything up, learned while the kiosk runs.

A kiosk usually looks at a counter or a wall with posters: textured, so a
"low texture" test alone cannot tell it is empty, and the pipeline would say
"not recognised" to nobody. The view that stays still and unrecognised for a
while is the background; a frame that matches it is an empty view and skips
the model altogether.

Which still views may become the background. A shopper holding up a product the
catalog does not have also gives a still, unrecognised view, for seconds; it must
not turn into "empty" while it is held (nor stay background once a clerk teaches
it). So:

- before any background is known (the kiosk just started, nobody in front of it as
  a rule), `learn_frames` still, unrecognised frames in a row are enough;
- a still view that matches the known background refreshes it after `learn_frames`
  (it follows slow lighting changes);
- a still view that differs from the known background replaces it only after
  `replace_frames` in a row, far longer than anyone holds a product up (the counter
  was rearranged, a poster changed, the lights were switched);
- `forget` drops a background in which the pipeline found a catalog product (the
  kiosk rechecks background frames now and then; see `Kiosk._recognize_frame`).
"""

from __future__ import annotations

import cv2
import numpy as np

from shelfsight.edge_app.recognition.config import RecognitionConfig

_THUMB = (40, 30)  # width, height of the grey thumbnail the comparison uses
# Replacing a known background takes this many times `learn_frames`: 50 -> 1,800 frames, 3 minutes at
# 10 frames a second, where a held product lasts seconds.
REPLACE_FACTOR = 36
# Every this many frames in a row that match the background, one goes through the pipeline anyway: a
# background in which it finds a catalog product (one taught since, or synced) is forgotten.
RECHECK_EVERY = 10


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    small = cv2.resize(rgb, _THUMB, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (3, 3), 0).astype(np.float32)


class BackgroundModel:
    """`learn_frames` still, unrecognised frames in a row make the first background; 0 disables learning."""

    def __init__(self, learn_frames: int = 50, diff: float = 6.0, replace_frames: int | None = None) -> None:
        replace = learn_frames * REPLACE_FACTOR if replace_frames is None else replace_frames
        if learn_frames < 0 or replace < learn_frames:
            raise ValueError("need 0 <= learn_frames <= replace_frames")
        self.learn_frames, self.diff, self.replace_frames = learn_frames, diff, replace
        self._background: np.ndarray | None = None
        self._previous: np.ndarray | None = None
        self._still = 0
        self._matched = 0  # background frames since the pipeline last looked at one

    @classmethod
    def from_config(cls, config: RecognitionConfig) -> "BackgroundModel":
        return cls(config.background_frames, config.background_diff)

    @property
    def learned(self) -> bool:
        return self._background is not None

    def _distance(self, a: np.ndarray, b: np.ndarray) -> float:
        # Mean absolute difference after removing the mean: a global brightness shift is not a product.
        return float(np.abs((a - a.mean()) - (b - b.mean())).mean())

    def _is_background(self, thumb: np.ndarray) -> bool:
        return self._background is not None and self._distance(thumb, self._background) < self.diff

    def matches(self, roi: np.ndarray) -> tuple[bool, np.ndarray]:
        """(whether the ROI shows the learned background, its thumbnail for `observe`)."""
        thumb = thumbnail(roi)
        return self._is_background(thumb), thumb

    def recheck_due(self) -> bool:
        """Call for each frame that matches the background: True when the pipeline should look at this one."""
        self._matched += 1
        if self._matched < RECHECK_EVERY:
            return False
        self._matched = 0
        return True

    def observe(self, thumb: np.ndarray, recognised: bool) -> None:
        """Feed every frame's thumbnail with whether a product was recognised in it."""
        if self.learn_frames <= 0:
            return
        still = self._previous is not None and self._distance(thumb, self._previous) < self.diff
        self._previous = thumb
        self._still = self._still + 1 if still and not recognised else 0
        needed = self.learn_frames
        if self._background is not None and not self._is_background(thumb):
            needed = self.replace_frames  # something new in view: held up, or a changed counter?
        if self._still >= needed:
            self._background = thumb
            self._still = 0

    def forget(self) -> None:
        """Drop the background (it showed a catalog product); the next still view is learned afresh."""
        self._background, self._still, self._matched = None, 0, 0

    def reset(self) -> None:
        self._background, self._previous, self._still, self._matched = None, None, 0, 0
