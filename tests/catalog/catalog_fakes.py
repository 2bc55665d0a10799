"""Test helpers for the catalog tests (imported by name: this folder is on sys.path under pytest)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from edge_app.runtime.embedder import Embedder, l2_normalise
from edge_app.runtime.spec import ModelSpec


class ProjectionEmbedder(Embedder):
    """Downsample to 8x8 and project with a fixed random matrix: similar images -> similar vectors.

    Stands in for a real model where only the catalog's bookkeeping is under test;
    a different `seed` is a different "model" (another fingerprint).
    """

    def __init__(self, seed: int = 0, dim: int = 32, input_size: int = 32) -> None:
        self.spec = ModelSpec(fingerprint=f"{seed:064x}", input_size=input_size, embedding_dim=dim)
        self._projection = np.random.default_rng(seed).standard_normal((8 * 8 * 3, dim)).astype(np.float32)
        self.calls = 0

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = self._check_batch(batch)
        self.calls += len(batch)
        n, size = len(batch), self.input_size
        small = batch.reshape(n, 8, size // 8, 8, size // 8, 3).mean(axis=(2, 4)).reshape(n, -1)
        return l2_normalise((small / 255.0 - 0.5) @ self._projection)


def product_photo(seed: int, size: tuple[int, int] = (160, 120), noise: float = 0.0) -> np.ndarray:
    """A sharp synthetic 'product': coloured blocks and stripes determined by `seed`."""
    rng = np.random.default_rng(seed)
    height, width = size[1], size[0]
    blocks = rng.integers(0, 256, size=(6, 6, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(blocks).resize((width, height), Image.Resampling.NEAREST)).copy()
    image[:: 7 + seed % 5] = 255 - image[:: 7 + seed % 5]
    if noise:
        jitter = np.random.default_rng(seed * 7919 + int(noise * 1000)).normal(0, noise, image.shape)
        image = np.clip(image + jitter, 0, 255).astype(np.uint8)
    return image
