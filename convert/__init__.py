"""shelfsight export: Keras embedder -> verified int8 TFLite with its spec sidecar."""
