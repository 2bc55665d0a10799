"""LiteRT adapter: the only module that imports a TFLite interpreter.

`ai-edge-litert` is preferred; `tflite-runtime` is a fallback for platforms
where LiteRT has no wheel (it is much slower on x86 int8 and needs numpy<2).
The interpreter is built once per embedder and reused for every frame.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.errors import ModelError
from edge_app.runtime.embedder import Embedder, l2_normalise
from edge_app.runtime.spec import ModelSpec, load_spec

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


def _open_interpreter(path: Path, threads: int) -> Any:
    interpreter_cls = _interpreter_class()
    try:
        interpreter = interpreter_cls(model_path=str(path), num_threads=max(1, int(threads)))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a usable TFLite model ({exc})") from exc
    return interpreter


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
        log.info("loaded %s (%s, %dpx -> %dd, %d threads)", self.path.name, self.spec.quantization, size, self.dim, threads)

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
