"""The suite's one set of fakes: a projection embedder standing in for a second model, and synthetic product photos."""

from __future__ import annotations

import numpy as np
from PIL import Image

from shelfsight.edge_app.core.embedder import Embedder, l2_normalise
from shelfsight.edge_app.core.spec import ModelSpec


class ProjectionEmbedder(Embedder):
    """Downsample to `grid` x `grid`, centre, and project with a fixed random matrix.

    Similar images give similar vectors, so it stands in for a real model where
    only bookkeeping is under test, or where a second, different model is needed
    (a catalog built with another model): a different `seed` is another model
    with another fingerprint. Counts the images it embedded in `calls`.
    """

    def __init__(self, seed: int = 0, dim: int = 32, input_size: int = 32, grid: int = 8) -> None:
        if input_size % grid:
            raise ValueError("input_size must be a multiple of grid")
        self.spec = ModelSpec(fingerprint=f"{seed:032x}{grid:016x}{dim:016x}", input_size=input_size, embedding_dim=dim)
        self._grid = grid
        self._projection = np.random.default_rng(seed).standard_normal((grid * grid * 3, dim)).astype(np.float32)
        self.calls = 0

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = self._check_batch(batch)
        self.calls += len(batch)
        n, g, f = len(batch), self._grid, self.input_size // self._grid
        small = batch.reshape(n, g, f, g, f, 3).mean(axis=(2, 4)).reshape(n, -1) / 255.0
        small -= small.mean(axis=1, keepdims=True)
        return l2_normalise(small @ self._projection)


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
