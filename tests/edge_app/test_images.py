"""`fit_square`, the one preprocessing step every embedding in the product goes through."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shelfsight.edge_app.core.errors import ImageError
from shelfsight.edge_app.core.images import fit_square


@pytest.mark.parametrize("shape", [(360, 480), (480, 640), (720, 1280), (1080, 1920), (100, 80), (224, 300)])
def test_any_frame_becomes_a_contiguous_square(shape):
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = fit_square(rgb, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_shrinking_averages_fine_detail_instead_of_aliasing():
    # a one-pixel checkerboard: point sampling would return stripes of 0 and 255
    board = (np.indices((720, 1280)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = fit_square(np.repeat(board[..., None], 3, axis=2), 224)
    assert abs(float(out.mean()) - 127.5) < 2 and out.std() < 8


def test_shrinking_stays_close_to_a_full_area_resize():
    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (7, 7), 2)
    area = cv2.resize(np.ascontiguousarray(frame[:, 80:560]), (224, 224), interpolation=cv2.INTER_AREA)
    assert np.abs(fit_square(frame, 224).astype(float) - area).mean() < 2.0


def test_centre_is_kept_and_an_empty_image_is_refused():
    frame = np.zeros((100, 300, 3), np.uint8)
    frame[:, 100:200] = 200  # the centre square
    assert fit_square(frame, 50).min() == 200
    with pytest.raises(ImageError):
        fit_square(np.zeros((0, 10, 3), np.uint8), 8)
