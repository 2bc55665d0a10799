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
    centre = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
    dst = (corners @ rot.T + centre).astype(np.float32)
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    homography = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(rgb, homography, (size, size), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), homography, (size, size), flags=cv2.INTER_LINEAR)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    out = warped.astype(np.float32) * alpha + background.astype(np.float32) * (1 - alpha)
    if relight:
        out = out * rng.uniform(*p.gain) + rng.uniform(*p.bias)
        out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** rng.uniform(*p.gamma)
    return np.clip(out, 0, 255).astype(np.uint8)


def _save(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])


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
            _save(warp_onto(rng, rgb, background, params, relight=True), out / product / f"{path.stem}_{i}.jpg")
    return out
