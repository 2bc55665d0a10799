"""ORB keypoints for geometric verification, and their compact storage.

The kiosk confirms an embedding match by matching local features between the
camera crop and the candidate's reference images. Both sides must compute them
identically, so `compute_keypoints` is the single definition: the image is
prepared with `fit_square(rgb, WORK_SIZE)`, converted to grayscale and run
through ORB. Point coordinates are therefore in a WORK_SIZE x WORK_SIZE frame.

It sits in the kernel because the catalog build, HQ's enrollment inbox and the kiosk all
extract them, and none of those may import another.

Serialised form (little endian): b"ORB1", uint16 K, uint16 work size, then K x 2
uint16 coordinates in 1/16 pixel, then K x 32 descriptor bytes. ~36 bytes per keypoint.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from shelfsight.edge_app.core.errors import CatalogError, ImageError
from shelfsight.edge_app.core.images import fit_square

WORK_SIZE = 320
DEFAULT_FEATURES = 400
DESCRIPTOR_BYTES = 32
MAX_KEYPOINTS = 4096

_MAGIC = b"ORB1"
_HEADER = struct.Struct("<4sHH")
_SUBPIXEL = 16.0


def compute_keypoints(rgb: np.ndarray, n_features: int = DEFAULT_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """ORB on the grayscale WORK_SIZE square of `rgb` -> (points float32 (K, 2) x/y, descriptors uint8 (K, 32)).

    K may be 0 for a featureless image (a plain box side); that is not an error.
    """
    square = fit_square(rgb, WORK_SIZE)
    gray = cv2.cvtColor(square, cv2.COLOR_RGB2GRAY)
    orb = cv2.ORB_create(nfeatures=int(n_features))  # type: ignore[attr-defined]  # missing from the cv2 stubs
    try:
        found, descriptors = orb.detectAndCompute(gray, None)
    except cv2.error as exc:
        raise ImageError(f"ORB failed on the image ({exc})") from exc
    if descriptors is None or not found:
        return np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    points = np.array([kp.pt for kp in found], dtype=np.float32).reshape(-1, 2)
    return points, np.ascontiguousarray(descriptors, dtype=np.uint8)


def serialise_keypoints(points: np.ndarray, descriptors: np.ndarray) -> bytes:
    """Pack keypoints into bytes (see the module docstring for the layout)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    descriptors = np.asarray(descriptors, dtype=np.uint8)
    if descriptors.shape != (len(points), DESCRIPTOR_BYTES):
        raise CatalogError(f"keypoints: {len(points)} points but descriptors of shape {descriptors.shape}")
    if len(points) > MAX_KEYPOINTS:
        raise CatalogError(f"keypoints: {len(points)} exceeds the limit of {MAX_KEYPOINTS}")
    fixed = np.clip(np.round(points * _SUBPIXEL), 0, 65535).astype("<u2")
    return _HEADER.pack(_MAGIC, len(points), WORK_SIZE) + fixed.tobytes() + descriptors.tobytes()


def deserialise_keypoints(data: bytes, name: str = "keypoints") -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `serialise_keypoints`; CatalogError naming `name` if the bytes are not valid."""
    if len(data) < _HEADER.size:
        raise CatalogError(f"{name}: truncated keypoint data ({len(data)} bytes)")
    magic, count, work_size = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CatalogError(f"{name}: not keypoint data (bad magic {magic!r})")
    if work_size != WORK_SIZE:
        raise CatalogError(f"{name}: keypoints computed at {work_size}px, this version uses {WORK_SIZE}px")
    expected = _HEADER.size + count * (4 + DESCRIPTOR_BYTES)
    if count > MAX_KEYPOINTS or len(data) != expected:
        raise CatalogError(f"{name}: keypoint data has {len(data)} bytes, expected {expected} for {count} keypoints")
    offset = _HEADER.size
    fixed = np.frombuffer(data, dtype="<u2", count=count * 2, offset=offset).reshape(count, 2)
    descriptors = np.frombuffer(data, dtype=np.uint8, count=count * DESCRIPTOR_BYTES, offset=offset + count * 4)
    points = fixed.astype(np.float32) / _SUBPIXEL
    return points, descriptors.reshape(count, DESCRIPTOR_BYTES).copy()
