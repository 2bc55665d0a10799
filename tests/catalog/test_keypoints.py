"""ORB keypoints: computation at the fixed working size and the compact storage format."""

from __future__ import annotations

import numpy as np
import pytest

from shelfsight.edge_app.core.errors import CatalogError
from shelfsight.edge_app.core.features import (
    WORK_SIZE,
    compute_keypoints,
    deserialise_keypoints,
    serialise_keypoints,
)
from tests.support.fakes import product_photo


def test_compute_and_round_trip() -> None:
    points, descriptors = compute_keypoints(product_photo(1, size=(400, 300)))
    assert 20 <= len(points) <= 400 and descriptors.shape == (len(points), 32)
    assert points.min() >= 0 and points.max() < WORK_SIZE
    data = serialise_keypoints(points, descriptors)
    assert len(data) == 8 + 36 * len(points)
    back_points, back_descriptors = deserialise_keypoints(data)
    assert np.abs(back_points - points).max() <= 1 / 32 + 1e-6
    assert np.array_equal(back_descriptors, descriptors)


def test_featureless_image_has_no_keypoints() -> None:
    points, descriptors = compute_keypoints(np.full((200, 200, 3), 90, np.uint8))
    assert points.shape == (0, 2) and descriptors.shape == (0, 32)
    assert [a.shape for a in deserialise_keypoints(serialise_keypoints(points, descriptors))] == [(0, 2), (0, 32)]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"ORB", "truncated"),
        (b"XXXX\x00\x00\x40\x01", "bad magic"),
        (b"ORB1\x01\x00\x40\x01" + b"\x00" * 10, "expected 44"),
        (b"ORB1\x00\x00\x00\x01", "computed at 256px"),
    ],
)
def test_corrupt_keypoints_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        deserialise_keypoints(data, "ref x")
