"""Showing products to a kiosk in tests of teaching and undoing."""

from __future__ import annotations

import time

import numpy as np

from shelfsight.edge_app.camera import Frame
from shelfsight.edge_app.core.images import iter_image_files, load_rgb
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.kiosk.app import Kiosk


def views_of(sample_set: SampleSet, product_id: str) -> list[np.ndarray]:
    """The rendered query photos of one product: what a clerk holds up to the camera."""
    return [load_rgb(p) for p in iter_image_files(sample_set.queries_dir / product_id)]


def show(kiosk: Kiosk, frames: list[np.ndarray]) -> list[str | None]:
    """Run frames through the recognition worker's path; the product id each was recognised as."""
    return [kiosk.process(Frame(rgb, time.monotonic(), i)).frame.product_id for i, rgb in enumerate(frames)]  # type: ignore[union-attr]
