"""Warm-start an embedder from an exported `.tflite` model instead of a Keras run.

The Keras run of a shipped model may be gone (run directories are large and
stay on the workstation that trained them), yet the `.tflite` still holds
every weight: int8 per-channel kernels with batch norm folded in. Reading them
back gives a float network that computes what the shipped model computes, up
to int8 rounding, so a further stage of training can start from it instead of
repeating the stages that made it.

Folded batch norm cannot be unfolded, so each batch-norm layer becomes a
pass-through that adds the folded bias (gamma 1, mean 0, variance 1 - eps).
That is exact while batch-norm statistics stay frozen, which is how
pretrained backbones are fine-tuned here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from shelfsight.edge_app.core.errors import ModelError

log = logging.getLogger(__name__)


def _weighted_layers(embedder: Any) -> list[tuple[Any, Any]]:
    """(conv / depthwise / dense layer, the batch norm that follows it or None), in graph order."""
    from keras import layers

    from shelfsight.train.model import EMBEDDING_LAYER, backbone_of

    pairs: list[tuple[Any, Any]] = []
    for layer in backbone_of(embedder).layers:
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            pairs.append((layer, None))
        elif isinstance(layer, layers.BatchNormalization):
            conv = pairs[-1][0] if pairs else None
            if conv is None or pairs[-1][1] is not None or layer.input is not conv.output:
                raise ModelError(f"batch norm {layer.name} does not directly follow a convolution")
            pairs[-1] = (conv, layer)
    pairs.append((embedder.get_layer(EMBEDDING_LAYER), None))
    return pairs


def _keras_kernel(op: str, kernel: np.ndarray) -> np.ndarray:
    if op == "CONV_2D":
        return np.transpose(kernel, (1, 2, 3, 0))  # (out, kh, kw, in) -> (kh, kw, in, out)
    if op == "DEPTHWISE_CONV_2D":
        return kernel[0][..., None]  # (1, kh, kw, ch) -> (kh, kw, ch, 1)
    return kernel.T  # FULLY_CONNECTED (out, in) -> (in, out)


def load_tflite_weights(embedder: Any, path: str | Path) -> None:
    """Fill `embedder` (same backbone and embedding size) with the weights of the `.tflite` at `path`.

    Raises ModelError when the file is not a readable TFLite model (int8, fp16 or
    fp32) or its layers do not match the embedder's one for one.
    """
    from shelfsight.edge_app.runtime.litert import read_layer_weights

    tflite = read_layer_weights(path)
    pairs = _weighted_layers(embedder)
    if len(tflite) != len(pairs):
        raise ModelError(
            f"{path}: {len(tflite)} weighted layers, this embedder has {len(pairs)}; another architecture?"
        )
    for (layer, bn), weights in zip(pairs, tflite):
        kernel = _keras_kernel(weights.op, weights.kernel)
        channels = kernel.shape[-2] if weights.op == "DEPTHWISE_CONV_2D" else kernel.shape[-1]
        bias = weights.bias if weights.bias is not None else np.zeros(channels, np.float32)
        current = layer.get_weights()
        if tuple(current[0].shape) != kernel.shape:
            raise ModelError(f"{path}: {weights.op} kernel {kernel.shape} does not fit {layer.name} {current[0].shape}")
        if bn is not None:
            layer.set_weights([kernel])
            bn.set_weights([np.ones(channels), bias, np.zeros(channels), np.full(channels, 1.0 - float(bn.epsilon))])
        elif len(current) == 2:
            layer.set_weights([kernel, bias])
        else:
            raise ModelError(f"{path}: {layer.name} has no bias or batch norm to carry the folded bias")
    log.info("initialised %d layers from %s (weights read back)", len(pairs), Path(path).name)
