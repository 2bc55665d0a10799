"""Model runtime: the embedder interface, its adapters and the model's spec sidecar."""

from edge_app.runtime.embedder import Embedder, open_embedder
from edge_app.runtime.spec import ModelSpec, load_spec, sha256_file

__all__ = ["Embedder", "ModelSpec", "load_spec", "open_embedder", "sha256_file"]
