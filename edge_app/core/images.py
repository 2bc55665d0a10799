"""Image decoding and the one preprocessing step every embedder shares.

Training, evaluation, catalog ingestion and the kiosk must feed the model
identically prepared pixels, otherwise the int8 model's calibration and the
catalog embeddings drift apart. That is why `fit_square` lives here, on the
edge side (no TensorFlow), and everything else calls it.
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shelfsight.edge_app.core.errors import ImageError, InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# Refuse decompression bombs explicitly instead of letting Pillow warn.
MAX_PIXELS = 64_000_000


class ImageTooLarge(ImageError):
    """An image whose header declares more pixels than the caller accepts (refused before decoding)."""


def check_pixels(image: Image.Image, name: str, max_pixels: int) -> None:
    """Refuse by the header's size: `Image.open` reads only the header, `load` would allocate the pixels."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"{name}: image too large ({width}x{height} pixels, limit {max_pixels:,})")


def _to_rgb(image: Image.Image, name: str, max_pixels: int) -> np.ndarray:
    check_pixels(image, name, max_pixels)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: cannot decode image ({exc.__class__.__name__})") from exc


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as an RGB uint8 array (H, W, 3), EXIF orientation applied.

    ImageTooLarge when its header declares more than `max_pixels`, before any pixel is decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            return _to_rgb(image, str(path), max_pixels)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from exc


def decode_rgb(data: bytes, name: str = "upload", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) as RGB uint8.

    ImageTooLarge when the header declares more than `max_pixels`, before any pixel is decoded.
    Messages name the error's class only: Pillow's text for bytes in memory carries object reprs.
    """
    if not data:
        raise ImageError(f"{name}: empty image data")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _to_rgb(image, name, max_pixels)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc.__class__.__name__})") from exc


class BoundedDecoder:
    """Decodes uploads with a pixel limit and at most `concurrent` decodes at a time.

    The header check keeps one bomb from allocating; the slots keep many legal but large
    images arriving together from multiplying the peak memory (each decode holds its pixels).
    """

    def __init__(self, max_pixels: int = MAX_PIXELS, concurrent: int = 2) -> None:
        self.max_pixels = max_pixels
        self._slots = threading.BoundedSemaphore(concurrent)

    def decode(self, data: bytes, name: str = "upload") -> np.ndarray:
        with self._slots:
            return decode_rgb(data, name, self.max_pixels)


def fit_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """The centred square of the image, resized to size x size.

    Cropping (not padding) keeps the product large in the frame; products are
    photographed roughly centred, and the kiosk's region of interest already
    frames them. Cropping before resizing touches only the pixels kept, which
    matters at camera resolutions.

    Shrinking runs on every kiosk frame, so it is split in two: a box average by
    the largest whole factor (OpenCV's integer-factor area path: anti-aliased and
    several times faster than its general one), then bilinear for what is left,
    which is less than 2x and so keeps every input pixel in some output pixel.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    if h < 1 or w < 1:
        raise ImageError("empty image")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square: np.ndarray = np.asarray(rgb[top : top + side, left : left + side], dtype=np.uint8)
    factor = side // size
    if factor >= 2:
        usable = side - side % factor  # at most factor-1 pixels trimmed, so the factor is exact
        side = usable // factor
        square = cv2.resize(square[:usable, :usable], (side, side), interpolation=cv2.INTER_AREA)
    if side == size:
        return np.ascontiguousarray(square)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)


def iter_image_files(folder: str | Path) -> Iterator[Path]:
    """Image files below `folder`, sorted, hidden files skipped."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            yield path


def load_batch(paths: Iterable[str | Path], size: int) -> np.ndarray:
    """Load and prepare several images into one (N, size, size, 3) uint8 batch."""
    arrays = [fit_square(load_rgb(p), size) for p in paths]
    if not arrays:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack(arrays)
