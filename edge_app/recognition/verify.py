"""Geometric verification: do the query's ORB features map onto a reference's by one homography?

A flat printed face seen at an angle is a planar perspective warp of its
catalog photo, so true matches agree on one homography while coincidental
descriptor matches scatter. The inlier count after Lowe's ratio test and
RANSAC is therefore strong evidence that global embeddings cannot give.
It costs a few milliseconds per reference, so it runs on the shortlist only.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from catalog.keypoints import compute_keypoints

log = logging.getLogger(__name__)

MIN_MATCHES = 6  # below this RANSAC cannot separate a homography from chance


@dataclass(frozen=True)
class Features:
    points: np.ndarray  # (K, 2) float32, in the keypoint work frame
    descriptors: np.ndarray  # (K, 32) uint8

    def __len__(self) -> int:
        return len(self.points)


def extract(rgb: np.ndarray, n_features: int) -> Features:
    """Query features, computed exactly like the catalog's reference keypoints."""
    points, descriptors = compute_keypoints(rgb, n_features)
    return Features(points, descriptors)


def _plausible(h: np.ndarray) -> bool:
    """Reject mirrored or collapsed warps: a held product is never mirrored or squashed to a line."""
    det = float(np.linalg.det(h[:2, :2]))
    return 0.02 < det < 50.0 and abs(float(h[2, 0])) < 0.02 and abs(float(h[2, 1])) < 0.02


def count_inliers(query: Features, reference: Features, ratio: float = 0.8, ransac_px: float = 6.0) -> int:
    """RANSAC-homography inliers among ratio-test matches of reference -> query (0 if none plausible)."""
    if len(query) < MIN_MATCHES or len(reference) < MIN_MATCHES:
        return 0
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(reference.descriptors, query.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if len(good) < MIN_MATCHES:
        return 0
    src = reference.points[[m.queryIdx for m in good]].reshape(-1, 1, 2)
    dst = query.points[[m.trainIdx for m in good]].reshape(-1, 1, 2)
    homography, mask = cv2.findHomography(src, dst, cv2.RANSAC, ransac_px, maxIters=500, confidence=0.99)
    if homography is None or mask is None or not _plausible(homography):
        return 0
    return int(mask.sum())


class ReferenceFeatureCache:
    """Keeps recently verified references' keypoints in memory (bounded) instead of re-reading SQLite."""

    def __init__(self, load: Callable[[str], tuple[np.ndarray, np.ndarray]], capacity: int = 2048) -> None:
        self._load = load
        self._capacity = capacity
        self._items: OrderedDict[str, Features] = OrderedDict()

    def get(self, reference_id: str) -> Features:
        key = str(reference_id)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        points, descriptors = self._load(reference_id)
        features = Features(np.asarray(points, np.float32).reshape(-1, 2), np.asarray(descriptors, np.uint8))
        self._items[key] = features
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)
        return features

    def clear(self) -> None:
        self._items.clear()
