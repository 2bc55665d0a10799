"""Reference-image checks: size, blur, perceptual hash, and the stored JPEG copy.

A catalog is only as good as its reference photos; a tiny or badly blurred
photo produces an embedding that matches everything a little. These checks
run before anything is embedded and name the reason for a rejection.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from shelfsight.edge_app.core.errors import ImageError
from shelfsight.edge_app.core.features import extract_features, serialise_features
from shelfsight.edge_app.core.images import fit_square

# The stored copy of each reference (used by `reembed` when the originals are gone).
STORED_IMAGE_SIZE = 256
STORED_IMAGE_QUALITY = 88

# Product thumbnails (the kiosk's product card, /api/thumbnail): bounded so a synced catalog of 100k
# products stays small (a 256 px JPEG at this quality is ~8-20 kB).
THUMBNAIL_SIZE = 256
THUMBNAIL_QUALITY = 85

# Blur is measured on a grayscale square of at most this side, so the threshold does not depend on
# resolution. Smaller images are measured as they are: enlarging first would smear any small crop
# (a shelf-tag-sized product) into "blurry" however sharp it is.
_BLUR_WORK_SIZE = 256


@dataclass(frozen=True)
class QualityLimits:
    """Rejection thresholds for reference images."""

    min_side: int = 64  # pixels, shorter side of the original image
    min_sharpness: float = 15.0  # variance of the Laplacian at 256 px; typical photos score 100-2000

    def __post_init__(self) -> None:
        if self.min_side < 1 or self.min_sharpness < 0:
            raise ValueError("min_side must be >= 1 and min_sharpness >= 0")


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grayscale square, at most 256 px (higher = sharper)."""
    side = min(rgb.shape[0], rgb.shape[1], _BLUR_WORK_SIZE)
    if side < 3:
        return 0.0
    gray = fit_square(rgb, side).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    lap = gray[1:-1, :-2] + gray[1:-1, 2:] + gray[:-2, 1:-1] + gray[2:, 1:-1] - 4.0 * gray[1:-1, 1:-1]
    return float(lap.var())


def check_image(rgb: np.ndarray, limits: QualityLimits = QualityLimits(), name: str = "image") -> None:
    """Raise ImageError (naming `name` and the reason) for an image unfit as a reference."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"{name}: expected an RGB uint8 image, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    if min(height, width) < limits.min_side:
        raise ImageError(f"{name}: too small ({width}x{height}, need at least {limits.min_side} px per side)")
    score = sharpness(rgb)
    if score < limits.min_sharpness:
        raise ImageError(f"{name}: too blurry (sharpness {score:.1f} < {limits.min_sharpness:g})")


def phash(rgb: np.ndarray) -> str:
    """64-bit perceptual hash as 16 hex digits."""
    import imagehash

    return str(imagehash.phash(Image.fromarray(rgb)))


def phash_distance(a: str, b: str) -> int:
    """Hamming distance between two hex pHashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def stored_jpeg(rgb: np.ndarray, size: int = STORED_IMAGE_SIZE) -> bytes:
    """The prepared square of `rgb` as JPEG bytes, kept in the catalog for re-embedding."""
    buffer = io.BytesIO()
    Image.fromarray(fit_square(rgb, size)).save(buffer, format="JPEG", quality=STORED_IMAGE_QUALITY)
    return buffer.getvalue()


def thumbnail_jpeg(rgb: np.ndarray) -> bytes:
    """A product thumbnail: `rgb` fitted into a THUMBNAIL_SIZE square, as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(fit_square(rgb, THUMBNAIL_SIZE)).save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


@dataclass(frozen=True)
class ImageExtras:
    """Everything a reference stores besides its embedding."""

    phash: str
    image_jpeg: bytes
    keypoints: bytes


def reference_keypoints(rgb: np.ndarray) -> bytes:
    """A reference's serialised local features: version 2, the whole image (what the kiosk matches)."""
    return serialise_features(extract_features(rgb))


def describe_image(rgb: np.ndarray) -> ImageExtras:
    """pHash, stored JPEG copy and serialised ORB keypoints of a reference image."""
    return ImageExtras(phash(rgb), stored_jpeg(rgb), reference_keypoints(rgb))
