"""Opens the right `Embedder` adapter for a model path.

A `.tflite` file is the edge's own format and opens with the LiteRT adapter.
Anything else (a Keras training run directory on a workstation) is handed to an
adapter registered under the `shelfsight.embedders` entry-point group; the
`train` package registers one in `setup.cfg`. The edge runtime therefore never
imports the training code, and a kiosk without TensorFlow gets a clear error
instead of an ImportError.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path

from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import ModelError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "shelfsight.embedders"


def open_embedder(model: str | Path, threads: int = 2) -> Embedder:
    """Open a `.tflite` file (edge runtime) or a Keras training run directory (workstation only)."""
    path = Path(model)
    if path.is_dir():
        return _open_registered(path)
    if path.suffix != ".tflite":
        raise ModelError(f"{path}: expected a .tflite file or a training run directory")
    from shelfsight.edge_app.runtime.litert import (
        LiteRTEmbedder,  # loads LiteRT only when a model is opened
    )

    return LiteRTEmbedder(path, threads=threads)


def _open_registered(path: Path) -> Embedder:
    adapters = list(entry_points(group=ENTRY_POINT_GROUP))
    if not adapters:
        raise ModelError(
            f"{path}: a training run directory needs the workstation install (pip install 'shelfsight[train]')"
        )
    errors = []
    for adapter in adapters:
        try:
            factory = adapter.load()
        except ImportError as exc:  # the adapter's own dependencies (TensorFlow) are not installed
            errors.append(f"{adapter.name}: {exc}")
            continue
        embedder: Embedder = factory(path)
        return embedder
    raise ModelError(f"{path}: no embedder adapter could be loaded ({'; '.join(errors)})")
