"""LiteRT adapter: the only module that imports a TFLite interpreter.

`ai-edge-litert` is preferred; `tflite-runtime` is a fallback for platforms
where LiteRT has no wheel (it is much slower on x86 int8 and needs numpy<2).
The interpreter is built once per embedder and reused for every frame.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from shelfsight.edge_app.core.embedder import Embedder, l2_normalise
from shelfsight.edge_app.core.errors import ModelError
from shelfsight.edge_app.core.spec import ModelSpec, load_spec

log = logging.getLogger(__name__)


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        log.warning("ai-edge-litert not installed; falling back to tflite-runtime (slower)")
        return Interpreter
    except ImportError as exc:
        raise ModelError("no TFLite runtime: install ai-edge-litert (pip install 'shelfsight[edge]')") from exc


# Written by the C++ runtime straight to file descriptor 2 on every interpreter creation (no
# logging switch reaches it: TF_CPP_MIN_LOG_LEVEL does not): noise in every command's output.
_BANNERS = (b"INFO: Created TensorFlow Lite XNNPACK delegate",)


@contextlib.contextmanager
def _runtime_banners_dropped() -> Iterator[None]:
    """Catch what is written to fd 2 meanwhile and pass it on without the runtime's banners.

    Other threads' output is delayed by the interpreter's creation, never lost (a file, not a
    pipe, so a long message cannot block the writer).
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            rest = b"".join(line for line in caught if not line.startswith(_BANNERS))
            if rest:
                os.write(2, rest)


def _open_interpreter(path: Path, threads: int) -> Any:
    interpreter_cls = _interpreter_class()
    try:
        with _runtime_banners_dropped():
            interpreter = interpreter_cls(model_path=str(path), num_threads=max(1, int(threads)))
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a usable TFLite model ({exc})") from exc
    return interpreter


class LayerWeights(NamedTuple):
    """One weighted op of a TFLite model, dequantised to float32, in TFLite's own layout.

    CONV_2D kernels are (out, kh, kw, in), DEPTHWISE_CONV_2D (1, kh, kw, channels),
    FULLY_CONNECTED (out, in). Batch norm is already folded into kernel and bias.
    """

    op: str
    kernel: np.ndarray
    bias: np.ndarray | None


WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _dequantised(interpreter: Any, detail: dict[str, Any]) -> np.ndarray:
    values = interpreter.get_tensor(detail["index"])
    if values.dtype == np.float32:
        return values.copy()
    if values.dtype not in (np.int8, np.int32):
        raise ModelError(f"weights of dtype {values.dtype} cannot be read back")
    params = detail["quantization_parameters"]
    scales = np.asarray(params["scales"], np.float32)
    zeros = np.asarray(params["zero_points"], np.float32)
    if scales.size > 1:  # per-channel: broadcast along the quantised axis
        shape = [1] * values.ndim
        shape[int(params["quantized_dimension"])] = scales.size
        scales, zeros = scales.reshape(shape), zeros.reshape(shape)
    return ((values.astype(np.float32) - zeros) * scales).astype(np.float32)


def read_layer_weights(path: str | Path) -> list[LayerWeights]:
    """The weighted ops of a TFLite model in execution order, dequantised.

    Lets training warm-start from a shipped model whose Keras run is gone. The
    interpreter is built without the XNNPACK delegate, which would take the
    constant tensors over and hide them; `_get_ops_details` is the interpreter's
    only way to walk the graph. An fp16 model stores its weights as float16
    constants expanded by DEQUANTIZE ops at run time, so the model is run once
    (on zeros, keeping every tensor) before the weights are read.
    """
    interpreter_cls = _interpreter_class()
    # The resolver enum lives beside whichever interpreter class was picked (LiteRT or tflite-runtime).
    resolvers = importlib.import_module(interpreter_cls.__module__).OpResolverType
    try:
        interpreter = interpreter_cls(
            model_path=str(path),
            experimental_op_resolver_type=resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            experimental_preserve_all_tensors=True,
        )
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
        layers: list[LayerWeights] = []
        for op in interpreter._get_ops_details():
            if op["op_name"] not in WEIGHTED_OPS:
                continue
            inputs = list(op["inputs"])
            kernel = _dequantised(interpreter, details[inputs[1]])
            bias = _dequantised(interpreter, details[inputs[2]]) if len(inputs) > 2 and inputs[2] >= 0 else None
            layers.append(LayerWeights(op["op_name"], kernel, bias))
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: cannot read the model's weights ({exc})") from exc
    if not layers or not all(
        np.isfinite(layer.kernel).all() and (layer.bias is None or np.isfinite(layer.bias).all()) for layer in layers
    ):
        raise ModelError(f"{path}: no readable weights (or some are not finite)")
    return layers


class LiteRTEmbedder(Embedder):
    """A TFLite embedding model with its verified spec sidecar."""

    def __init__(self, path: str | Path, threads: int = 2, spec: ModelSpec | None = None) -> None:
        self.path = Path(path)
        self.spec = spec if spec is not None else load_spec(self.path)
        self._interpreter = _open_interpreter(self.path, threads)
        # The interpreter is not re-entrant; the kiosk may embed from a web request and the camera loop.
        self._lock = threading.Lock()
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        self._in_dtype = inp["dtype"]
        self._in_quant = inp.get("quantization", (0.0, 0))
        self._out_dtype = out["dtype"]
        self._out_quant = out.get("quantization", (0.0, 0))
        size = self.input_size
        if tuple(inp["shape"][1:]) != (size, size, 3):
            raise ModelError(f"{self.path}: input shape {tuple(inp['shape'])} does not match spec size {size}")
        if int(out["shape"][-1]) != self.dim:
            raise ModelError(f"{self.path}: output dim {out['shape'][-1]} does not match spec dim {self.dim}")
        log.info(
            "loaded %s (%s, %dpx -> %dd, %d threads)", self.path.name, self.spec.quantization, size, self.dim, threads
        )

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        if self._in_dtype == np.uint8:
            return image[None]
        if self._in_dtype == np.int8:
            return (image.astype(np.int16) - 128).astype(np.int8)[None]
        return image.astype(np.float32)[None]

    def _read(self) -> np.ndarray:
        out = self._interpreter.get_tensor(self._out_index)[0]
        if self._out_dtype in (np.int8, np.uint8):
            scale, zero = self._out_quant
            return (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = self._check_batch(batch)
        out = np.empty((len(batch), self.dim), np.float32)
        with self._lock:
            if self._interpreter is None:
                raise ModelError(f"{self.path}: embedder is closed")
            for i, image in enumerate(batch):
                self._interpreter.set_tensor(self._in_index, self._prepare(image))
                self._interpreter.invoke()
                out[i] = self._read()
        return l2_normalise(out)

    def close(self) -> None:
        with self._lock:
            self._interpreter = None
