"""The embedding model: raw pixels in, an L2-normalised product embedding out.

Normalisation `(x - 127) / 128` is folded into the model so every runtime feeds
plain RGB 0..255 (uint8 in the int8 TFLite). The exported model stops at the
`embedding` layer (before L2 normalisation, which quantises badly); runtimes
normalise the float output themselves.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDING_LAYER = "embedding"
BACKBONES = ("efficientnet-lite0", "tiny")


def _tiny_backbone(input_size: int):  # -> keras.Model
    """A small MobileNet-style net (ReLU6, depthwise, BN) for tests and smoke runs."""
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 3), name="normalised_rgb")
    x = inputs
    for i, filters in enumerate((16, 32, 48)):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"tiny{i}_conv")(x)
        x = layers.BatchNormalization(epsilon=1e-3, momentum=0.9, name=f"tiny{i}_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"tiny{i}_relu")(x)
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"tiny{i}_dwconv")(x)
        x = layers.BatchNormalization(epsilon=1e-3, momentum=0.9, name=f"tiny{i}_dw_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"tiny{i}_dw_relu")(x)
    return keras.Model(inputs, x, name="tiny_backbone")


def build_embedding_model(
    input_size: int = 224,
    dim: int = 256,
    backbone: str = "efficientnet-lite0",
    pretrained: bool = True,
    weights: str | Path | None = None,
):  # -> keras.Model
    """uint8-range float pixels (N, S, S, 3) -> (N, dim) unit vectors."""
    import keras
    from keras import layers

    if backbone == "efficientnet-lite0":
        from shelfsight.train.backbone import build_backbone, load_pretrained_backbone

        net = load_pretrained_backbone(input_size, weights) if pretrained else build_backbone(input_size)
    elif backbone == "tiny":
        net = _tiny_backbone(input_size)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")

    pixels = keras.Input((input_size, input_size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalise")(pixels)
    x = net(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(dim, name=EMBEDDING_LAYER)(x)
    x = layers.UnitNormalization(name="l2_normalise")(x)
    return keras.Model(pixels, x, name="shelfsight_embedder")


def backbone_of(model):  # -> keras.Model
    """The backbone sub-model nested inside an embedding model."""
    import keras

    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def export_model(model):  # -> keras.Model
    """The same network ending at the un-normalised embedding, for conversion."""
    import keras

    return keras.Model(model.inputs, model.get_layer(EMBEDDING_LAYER).output, name="shelfsight_export")


def set_trainable(model, train_from_block: int, freeze_batchnorm: bool = True) -> None:
    """Freeze the backbone below `train_from_block` and, for pretrained nets, all batch-norm statistics.

    Frozen BN (trainable=False runs BN in inference mode in Keras 3) keeps the
    ImageNet statistics, which small CPU batches would otherwise wreck. A net
    trained from scratch has no statistics worth keeping, so its BN learns.
    """
    from keras import layers

    net = backbone_of(model)
    for layer in net.layers:
        block = _block_index(layer.name)
        if isinstance(layer, layers.BatchNormalization) and freeze_batchnorm:
            layer.trainable = False
        elif block is None:
            # stem is frozen whenever any block is; head trains always
            layer.trainable = layer.name.startswith("head") or train_from_block <= 0
        else:
            layer.trainable = block >= train_from_block


def _block_index(name: str) -> int | None:
    for prefix in ("block", "tiny"):
        if name.startswith(prefix):
            digits = name[len(prefix) :].split("_", 1)[0]
            if digits.isdigit():
                return int(digits)
    return None


def imagenet_embedding_model(input_size: int = 224, weights: str | Path | None = None):  # -> keras.Model
    """The off-the-shelf baseline: ImageNet backbone, global average pooling, no fine-tuning (1280-d)."""
    import keras
    from keras import layers

    from shelfsight.train.backbone import load_pretrained_backbone

    pixels = keras.Input((input_size, input_size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalise")(pixels)
    x = load_pretrained_backbone(input_size, weights)(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.UnitNormalization(name="l2_normalise")(x)
    return keras.Model(pixels, x, name="imagenet_baseline")
