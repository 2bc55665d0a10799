"""Keras adapter of the embedder seam: embeds with a training run's float model (workstation only)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from shelfsight.edge_app.core.embedder import Embedder, l2_normalise
from shelfsight.edge_app.core.errors import ModelError
from shelfsight.edge_app.core.spec import ModelSpec, sha256_file

log = logging.getLogger(__name__)

BATCH = 32


class KerasEmbedder(Embedder):
    """Wraps a Keras model taking 0..255 float pixels; `model` may be given directly (tests, benchmarks)."""

    def __init__(self, run_dir: str | Path | None = None, model=None, spec: ModelSpec | None = None) -> None:
        import keras
        import tensorflow as tf

        from shelfsight.train.trainer import MODEL_FILE, load_manifest

        if model is None:
            if run_dir is None:
                raise ModelError("KerasEmbedder needs a run directory or a model")
            path = Path(run_dir) / MODEL_FILE
            if not path.is_file():
                raise ModelError(f"{run_dir}: no {MODEL_FILE}; is this a finished training run?")
            manifest = load_manifest(run_dir)
            try:
                model = keras.models.load_model(path, compile=False)
            except (ValueError, OSError) as exc:
                raise ModelError(f"{path}: cannot load Keras model ({exc})") from exc
            spec = ModelSpec(
                fingerprint=sha256_file(path),
                input_size=int(manifest["input_size"]),
                embedding_dim=int(manifest["embedding_dim"]),
                quantization="float32-keras",
                input_dtype="float32",
                training_data_fingerprint=manifest.get("training_data_fingerprint", ""),
                created=manifest.get("created", ""),
            )
        if spec is None:
            size, dim = int(model.input_shape[1]), int(model.output_shape[-1])
            spec = ModelSpec(
                fingerprint="keras-in-memory", input_size=size, embedding_dim=dim, quantization="float32-keras"
            )
        self.spec = spec
        self.model = model
        self._predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = self._check_batch(batch)
        outputs = [
            np.asarray(self._predict(batch[i : i + BATCH].astype(np.float32))) for i in range(0, len(batch), BATCH)
        ]
        if not outputs:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.concatenate(outputs))
