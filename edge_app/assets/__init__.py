"""Files that ship inside the package: the default int8 embedder, its model card, the default visual vocabulary."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent


def default_model_path() -> Path:
    """The bundled default embedder (`default_model.tflite`, with its `.json` sidecar)."""
    return ASSETS_DIR / "default_model.tflite"


def default_vocabulary_path() -> Path:
    """The bundled visual vocabulary for local-feature search (`shelfsight vocabulary` made it)."""
    return ASSETS_DIR / "default_vocabulary.npz"
