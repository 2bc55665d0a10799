"""The embedder seam: one small interface, one factory keyed by the model path.

Everything that turns pixels into vectors (catalog ingestion, the kiosk,
`shelfsight eval`) talks to `Embedder`. The TFLite runtime is imported in
exactly one adapter module (`litert.py`); the Keras adapter lives in `train/`
and is only reachable on a workstation that has TensorFlow.
"""

from __future__ import annotations

import abc

import numpy as np

from shelfsight.edge_app.core.errors import ModelError
from shelfsight.edge_app.core.images import fit_square
from shelfsight.edge_app.core.spec import ModelSpec


class Embedder(abc.ABC):
    """Maps prepared uint8 RGB images to L2-normalised float32 embeddings."""

    spec: ModelSpec

    @property
    def input_size(self) -> int:
        return int(self.spec.input_size)

    @property
    def dim(self) -> int:
        return int(self.spec.embedding_dim)

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    @abc.abstractmethod
    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8, already prepared by `fit_square` -> (N, D) float32, unit norm."""

    def embed_image(self, rgb: np.ndarray) -> np.ndarray:
        """One RGB image of any size -> (D,) float32."""
        return self.embed_batch(fit_square(rgb, self.input_size)[None])[0]

    def close(self) -> None:
        """Release the runtime. Idempotent."""

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        size = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ModelError(f"expected a batch of shape (N, {size}, {size}, 3), got {batch.shape}")
        return np.ascontiguousarray(batch, dtype=np.uint8)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
