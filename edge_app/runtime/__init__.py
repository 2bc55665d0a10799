"""Model runtime: the LiteRT adapter of the `Embedder` interface and the factory that opens a model path."""

from shelfsight.edge_app.runtime.factory import open_embedder

__all__ = ["open_embedder"]
