"""Local features (ORB) for candidate retrieval and geometric verification, and their compact storage.

Two extractors, both ORB with 32-byte binary descriptors:

* **whole image, version 2** (`extract_features`): the whole image, aspect ratio
  kept, resized so its longest side is `FEATURE_SIDE` (640 px), up to
  `DEFAULT_FEATURES` (1,000) features. Tall packages keep their top and bottom
  and small crops are enlarged enough for ORB's 31-pixel patches. Measured on
  the development sets (Grocery Store packaged products against their iconic
  images, warped iconic renderings on clutter): 640 px beat 480 and 800 px, and
  1,000 features were worth twice the 500's retrieval hits; 1,500 added little
  at 2x the time. Catalog references and kiosk queries both use it.
* **centre square, version 1** (`compute_keypoints`): the 320 px centre square,
  400 features; what catalogs built before version 2 hold. Kept only so those
  references can still be verified (their JPEG is a 256 px square, too little to
  recompute version 2 from); a rebuild gives them version 2 features.

Both sides must compute features identically, so these functions are the single
definition. Point coordinates are in the extractor's work frame (`frame`:
width x height in pixels).

Serialised form (little endian): b"ORB1", uint16 K, uint16 work size (square), or
b"ORB2", uint16 K, uint16 width, uint16 height; then K x 2 uint16 coordinates in
1/16 pixel, then K x 32 descriptor bytes. ~36 bytes per keypoint.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from shelfsight.edge_app.core.errors import CatalogError, ImageError
from shelfsight.edge_app.core.images import fit_square

WORK_SIZE = 320  # version 1: side of the centre square
LEGACY_FEATURES = 400  # version 1: features per image
DEFAULT_FEATURES = 1000  # version 2
FEATURE_SIDE = 640  # version 2: longest side of the work frame
FAST_THRESHOLD = 20  # OpenCV's default: the references' corner detector threshold
EXTRACTOR = "orb-whole-v2"  # names how reference features and their visual words were made
DESCRIPTOR_BYTES = 32
MAX_KEYPOINTS = 4096
MAX_FRAME_SIDE = 4096  # 1/16-pixel coordinates must fit a uint16

_MAGIC = b"ORB1"
_HEADER = struct.Struct("<4sHH")
_MAGIC_V2 = b"ORB2"
_HEADER_V2 = struct.Struct("<4sHHH")
_SUBPIXEL = 16.0


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one image: positions in its work frame and their binary descriptors."""

    points: np.ndarray  # (K, 2) float32, x/y in the work frame
    descriptors: np.ndarray  # (K, 32) uint8
    frame: tuple[int, int]  # (width, height) of the work frame in pixels
    version: int = 2

    def __len__(self) -> int:
        return len(self.points)

    @property
    def area(self) -> float:
        return float(self.frame[0] * self.frame[1])


def _orb(gray: np.ndarray, n_features: int, fast_threshold: int = FAST_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    # ORB_create is missing from the cv2 stubs
    orb = cv2.ORB_create(nfeatures=int(n_features), fastThreshold=int(fast_threshold))  # type: ignore[attr-defined]
    try:
        found, descriptors = orb.detectAndCompute(gray, None)
    except cv2.error as exc:
        raise ImageError(f"ORB failed on the image ({exc})") from exc
    if descriptors is None or not found:
        return np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    # Strongest first, so that any prefix (the vocabulary's training sample, a smaller budget) is the best part.
    order = np.argsort([-kp.response for kp in found], kind="stable")
    points = np.array([found[i].pt for i in order], dtype=np.float32).reshape(-1, 2)
    return points, np.ascontiguousarray(descriptors[order], dtype=np.uint8)


def work_frame(rgb: np.ndarray, side: int = FEATURE_SIDE) -> np.ndarray:
    """The whole image as grayscale, resized (aspect kept) so its longest side is `side`."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Grey first: a third of the pixels to resize. INTER_AREA anti-aliases when shrinking.
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(gray, size, interpolation=interpolation)


def extract_features(
    rgb: np.ndarray, n_features: int = DEFAULT_FEATURES, side: int = FEATURE_SIDE, fast_threshold: int = FAST_THRESHOLD
) -> LocalFeatures:
    """Version 2 features of the whole image. K may be 0 (a plain box side, fruit); that is not an error.

    `fast_threshold` only decides which corners are candidates (ORB keeps the `n_features` with the
    best Harris response among them); descriptors and scales are the same whatever it is, so a
    query may use a lower one than its references were extracted with.
    """
    if not 32 <= side <= MAX_FRAME_SIDE:
        raise ImageError(f"feature side {side} outside 32..{MAX_FRAME_SIDE}")
    if not 1 <= fast_threshold <= 255:
        raise ImageError(f"FAST threshold {fast_threshold} outside 1..255")
    gray = work_frame(rgb, side)
    points, descriptors = _orb(gray, min(int(n_features), MAX_KEYPOINTS), fast_threshold)
    return LocalFeatures(points, descriptors, (int(gray.shape[1]), int(gray.shape[0])), 2)


def extract_legacy(rgb: np.ndarray, n_features: int = LEGACY_FEATURES) -> LocalFeatures:
    """Version 1 features (the 320 px centre square), to verify against references built before version 2."""
    points, descriptors = compute_keypoints(rgb, n_features)
    return LocalFeatures(points, descriptors, (WORK_SIZE, WORK_SIZE), 1)


def compute_keypoints(rgb: np.ndarray, n_features: int = LEGACY_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """Version 1: ORB on the grayscale WORK_SIZE square -> (points float32 (K, 2) x/y, descriptors uint8 (K, 32))."""
    square = fit_square(rgb, WORK_SIZE)
    return _orb(cv2.cvtColor(square, cv2.COLOR_RGB2GRAY), n_features)


def _body(points: np.ndarray, descriptors: np.ndarray) -> tuple[int, bytes]:
    """(K, the coordinates and descriptors as stored), checked: what both layouts share after their header."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    descriptors = np.asarray(descriptors, dtype=np.uint8)
    if descriptors.shape != (len(points), DESCRIPTOR_BYTES):
        raise CatalogError(f"keypoints: {len(points)} points but descriptors of shape {descriptors.shape}")
    if len(points) > MAX_KEYPOINTS:
        raise CatalogError(f"keypoints: {len(points)} exceeds the limit of {MAX_KEYPOINTS}")
    fixed = np.clip(np.round(points * _SUBPIXEL), 0, 65535).astype("<u2")
    return len(points), fixed.tobytes() + descriptors.tobytes()


def _check_size(data: bytes, header_size: int, count: int, name: str) -> None:
    expected = header_size + count * (4 + DESCRIPTOR_BYTES)
    if count > MAX_KEYPOINTS or len(data) != expected:
        raise CatalogError(f"{name}: keypoint data has {len(data)} bytes, expected {expected} for {count} keypoints")


def _read_body(data: bytes, offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    fixed = np.frombuffer(data, dtype="<u2", count=count * 2, offset=offset).reshape(count, 2)
    descriptors = np.frombuffer(data, dtype=np.uint8, count=count * DESCRIPTOR_BYTES, offset=offset + count * 4)
    return fixed.astype(np.float32) / _SUBPIXEL, descriptors.reshape(count, DESCRIPTOR_BYTES).copy()


def serialise_keypoints(points: np.ndarray, descriptors: np.ndarray) -> bytes:
    """Pack keypoints into bytes (see the module docstring for the layout)."""
    count, body = _body(points, descriptors)
    return _HEADER.pack(_MAGIC, count, WORK_SIZE) + body


def deserialise_keypoints(data: bytes, name: str = "keypoints") -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `serialise_keypoints`; CatalogError naming `name` if the bytes are not valid."""
    if len(data) < _HEADER.size:
        raise CatalogError(f"{name}: truncated keypoint data ({len(data)} bytes)")
    magic, count, work_size = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CatalogError(f"{name}: not keypoint data (bad magic {magic!r})")
    if work_size != WORK_SIZE:
        raise CatalogError(f"{name}: keypoints computed at {work_size}px, this version uses {WORK_SIZE}px")
    _check_size(data, _HEADER.size, count, name)
    return _read_body(data, _HEADER.size, count)


def _check_frame(width: int, height: int, name: str) -> None:
    if not (1 <= width <= MAX_FRAME_SIDE and 1 <= height <= MAX_FRAME_SIDE):
        raise CatalogError(f"{name}: work frame {width}x{height} outside 1..{MAX_FRAME_SIDE}")


def serialise_features(features: LocalFeatures) -> bytes:
    """Pack either version (version 1 through `serialise_keypoints`, the layout older releases read)."""
    if features.version == 1:
        return serialise_keypoints(features.points, features.descriptors)
    count, body = _body(features.points, features.descriptors)
    width, height = features.frame
    _check_frame(width, height, "keypoints")
    return _HEADER_V2.pack(_MAGIC_V2, count, width, height) + body


def deserialise_features(data: bytes, name: str = "keypoints") -> LocalFeatures:
    """Inverse of `serialise_features` for both versions; CatalogError naming `name` if the bytes are not valid."""
    if data[:4] != _MAGIC_V2:
        points, descriptors = deserialise_keypoints(data, name)
        return LocalFeatures(points, descriptors, (WORK_SIZE, WORK_SIZE), 1)
    if len(data) < _HEADER_V2.size:
        raise CatalogError(f"{name}: truncated keypoint data ({len(data)} bytes)")
    _, count, width, height = _HEADER_V2.unpack_from(data)
    _check_size(data, _HEADER_V2.size, count, name)
    _check_frame(width, height, name)
    points, descriptors = _read_body(data, _HEADER_V2.size, count)
    if count and (points[:, 0].max() > width or points[:, 1].max() > height):
        raise CatalogError(f"{name}: keypoints outside their {width}x{height} work frame")
    return LocalFeatures(points, descriptors, (width, height), 2)
