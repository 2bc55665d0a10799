"""Seeded rotated / tilted / scaled / relit query sets for `scripts/bench_pipeline.py`.

Two sets, each an ImageFolder pair (catalog/, queries/) written under an output folder:

* GroZi-120: per product the `n_catalog` largest crops are the catalog
  (symlinks: a store photographs its references with care; the kiosk's catalog
  build rejects crops under 64 px); the first `max_queries` (by name) of the
  remaining crops become queries, warped onto a cluttered background.
* Grocery Store iconic images: the iconic image is the catalog; `per_product`
  warped and relit renderings of it are the queries.

A warp is: any in-plane rotation, a perspective tilt (corners pulled in by up
to `tilt` of the side), a scale, and a position jitter, composited onto a
background made of blurred pieces of random images of the same dataset, so the
clutter carries real packaging texture (distractors) rather than plain noise.

`HARD` adds what a shopper's photo has on top (the issue's "glare, clutter, tilt,
partial views"): the product partly out of the frame, a hand-sized blob covering
part of it, a specular highlight that saturates a patch, defocus or motion blur,
sensor noise and stronger JPEG compression.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from shelfsight.edge_app.core.images import iter_image_files, load_rgb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarpParams:
    out_size: int = 320
    tilt: float = 0.18  # corner displacement, share of the side
    scale: tuple[float, float] = (0.45, 0.8)  # product's longer side / output side
    gain: tuple[float, float] = (0.6, 1.3)  # relighting: contrast gain
    bias: tuple[float, float] = (-30.0, 30.0)  # relighting: brightness offset
    gamma: tuple[float, float] = (0.7, 1.4)
    offset: float = 0.1  # centre jitter, share of the frame (0.3: a product partly out of the frame)
    occlude: tuple[float, float] = (0.0, 0.0)  # share of the product's box a blob covers (0: none)
    glare: float = 0.0  # chance of a saturated highlight on the product
    blur: float = 0.0  # largest defocus sigma or half motion length in pixels (0: sharp)
    noise: float = 0.0  # sensor noise standard deviation in grey levels
    jpeg: int = 90  # JPEG quality the query is saved at


HARD = WarpParams(offset=0.3, occlude=(0.1, 0.35), glare=0.6, blur=2.0, noise=6.0, jpeg=60)


def clutter(rng: np.random.Generator, pool: Sequence[np.ndarray], size: int) -> np.ndarray:
    """A background of blurred, randomly placed pieces of `pool` images."""
    canvas = np.full((size, size, 3), rng.integers(60, 200, 3), np.uint8)
    for _ in range(int(rng.integers(6, 12))):
        piece = pool[int(rng.integers(len(pool)))]
        side = int(rng.integers(size // 4, size // 2 + 1))
        piece = cv2.resize(piece, (side, side), interpolation=cv2.INTER_AREA)
        x, y = (int(v) for v in rng.integers(-side // 2, size - side // 2, 2))
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, size), min(y + side, size)
        canvas[y0:y1, x0:x1] = piece[y0 - y : y1 - y, x0 - x : x1 - x]
    return cv2.GaussianBlur(canvas, (0, 0), 2.0)


def warp_onto(
    rng: np.random.Generator, rgb: np.ndarray, background: np.ndarray, p: WarpParams, relight: bool
) -> np.ndarray:
    """`rgb` rotated by any angle, tilted, scaled and placed on `background` (same size as the output)."""
    h, w = rgb.shape[:2]
    size = background.shape[0]
    side = rng.uniform(*p.scale) * size / max(h, w)
    half = np.array([w, h], np.float64) * side / 2
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * half
    corners += rng.uniform(-p.tilt, p.tilt, (4, 2)) * half * 2  # perspective: each corner moves on its own
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = size / 2 + rng.uniform(-p.offset, p.offset, 2) * size
    dst = (corners @ rot.T + centre).astype(np.float32)
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    homography = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(rgb, homography, (size, size), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), homography, (size, size), flags=cv2.INTER_LINEAR)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    out = warped.astype(np.float32) * alpha + background.astype(np.float32) * (1 - alpha)
    if p.occlude[1] > 0:
        out = _occlude(rng, out, dst, rng.uniform(*p.occlude))
    if p.glare > 0 and rng.random() < p.glare:  # no draw when off: the default sets stay as they were
        out = _glare(rng, out, dst)
    if relight:
        out = out * rng.uniform(*p.gain) + rng.uniform(*p.bias)
        out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** rng.uniform(*p.gamma)
    if p.blur > 0:
        out = _blur(rng, np.clip(out, 0, 255).astype(np.float32), p.blur)
    if p.noise > 0:
        out = out + rng.normal(0.0, p.noise, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _occlude(rng: np.random.Generator, out: np.ndarray, corners: np.ndarray, share: float) -> np.ndarray:
    """A skin-toned ellipse (a hand, a thumb) over `share` of the product's bounding box, from one side."""
    x0, y0 = corners.min(axis=0)
    x1, y1 = corners.max(axis=0)
    area = share * (x1 - x0) * (y1 - y0)
    a = np.sqrt(area / np.pi * rng.uniform(1.0, 2.5))
    b = area / (np.pi * a)
    t = rng.uniform(0, 1)
    edge = corners[int(rng.integers(4))] * (1 - t) + corners[int(rng.integers(4))] * t
    mask = np.zeros(out.shape[:2], np.uint8)
    axes = (int(a), int(b))
    cv2.ellipse(mask, (int(edge[0]), int(edge[1])), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    skin = np.array([rng.uniform(150, 230), rng.uniform(100, 170), rng.uniform(80, 140)], np.float32)
    alpha = (cv2.GaussianBlur(mask, (0, 0), 2.0).astype(np.float32) / 255.0)[..., None]
    return out * (1 - alpha) + skin * alpha


def _glare(rng: np.random.Generator, out: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """A specular highlight: a soft bright ellipse somewhere on the product, saturating its core."""
    h, w = out.shape[:2]
    t = rng.uniform(0.2, 0.8, 2)
    centre = corners.min(axis=0) * (1 - t) + corners.max(axis=0) * t
    span = float(np.linalg.norm(corners.max(axis=0) - corners.min(axis=0)))
    sx, sy = span * rng.uniform(0.05, 0.18), span * rng.uniform(0.03, 0.10)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    dx, dy = xx - centre[0], yy - centre[1]
    u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
    light = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))[..., None] * rng.uniform(180, 320)
    return out + light


def _blur(rng: np.random.Generator, out: np.ndarray, largest: float) -> np.ndarray:
    """Defocus (Gaussian) or linear motion blur of a random strength up to `largest`."""
    strength = rng.uniform(0.3, largest)
    if rng.random() < 0.5:
        return cv2.GaussianBlur(out, (0, 0), strength)
    length = max(3, int(round(2 * strength)) | 1)
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    turn = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
    kernel = np.asarray(cv2.warpAffine(kernel, turn, (length, length)), np.float32)
    return cv2.filter2D(out, -1, kernel / max(float(kernel.sum()), 1e-6))


def _save(rgb: np.ndarray, path: Path, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])


def link(src: Path, dst: Path) -> None:
    """`dst` becomes a symlink to `src` (its folders made): sets are ImageFolder trees of links."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve())


def _pool(rng: np.random.Generator, paths: Sequence[Path], n: int = 60) -> list[np.ndarray]:
    chosen = rng.choice(len(paths), size=min(n, len(paths)), replace=False)
    return [load_rgb(paths[int(i)]) for i in chosen]


def _largest_first(path: Path) -> tuple[int, int, str]:
    from PIL import Image

    with Image.open(path) as image:
        w, h = image.size
    return -min(w, h), -w * h, path.name


def grozi_set(
    root: Path, out: Path, *, n_catalog: int = 3, max_queries: int = 4, seed: int = 0, params: WarpParams = WarpParams()
) -> tuple[Path, Path]:
    """GroZi-120: largest crops as catalog, other crops warped onto clutter as queries."""
    rng = np.random.default_rng(seed)
    products = sorted(p for p in root.iterdir() if p.is_dir())
    per_product = {p.name: sorted(iter_image_files(p)) for p in products}
    everything = [path for paths in per_product.values() for path in paths]
    pool = _pool(rng, everything)
    for name, paths in per_product.items():
        catalog = set(sorted(paths, key=_largest_first)[:n_catalog])
        for path in sorted(catalog):
            link(path, out / "catalog" / name / path.name)
        for path in [p for p in paths if p not in catalog][:max_queries]:
            background = clutter(rng, pool, params.out_size)
            _save(
                warp_onto(rng, load_rgb(path), background, params, relight=False),
                out / "queries" / name / f"{path.stem}.jpg",
                params.jpeg,
            )
    return out / "catalog", out / "queries"


def iconic_set(
    catalog: Path,
    out: Path,
    *,
    per_product: int = 3,
    seed: int = 0,
    params: WarpParams = WarpParams(),
    clutter_from: Sequence[Path] | None = None,
) -> Path:
    """Warped and relit renderings of each iconic image (ImageFolder `catalog`) as queries.

    `clutter_from`: images to make the backgrounds from, in a fixed order (the draw is seeded). Without it they come from the
    catalog itself, so a query's background can hold an unwarped piece of another catalog
    product, which local features then match (up to 183 inliers measured): fine for closed-set
    recall, wrong for "not in catalog" calibration, where it makes a held-out product's query
    really show a catalog product.
    """
    rng = np.random.default_rng(seed)
    images = sorted(p for p in iter_image_files(catalog) if p.parent != catalog)
    pool = _pool(rng, list(clutter_from) if clutter_from is not None else images)
    for path in images:
        product = path.parent.relative_to(catalog)
        rgb = load_rgb(path)
        for i in range(per_product):
            background = clutter(rng, pool, params.out_size)
            _save(
                warp_onto(rng, rgb, background, params, relight=True),
                out / product / f"{path.stem}_{i}.jpg",
                params.jpeg,
            )
    return out
