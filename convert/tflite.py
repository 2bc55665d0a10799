"""Keras embedder -> TFLite, with the spec sidecar the edge loader checks.

int8 is full-integer: uint8 pixels in (scale 1, zero point 0, i.e. raw RGB),
int8 inside, float embedding out. Dynamic-range quantisation is deliberately
not offered: on x86 and ARM it runs slower than fp32. Conversion goes through
`from_keras_model`; `from_concrete_functions` silently yields NaN models with
Keras 3.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from shelfsight.edge_app.core.errors import InputError, ModelError
from shelfsight.edge_app.core.images import fit_square, iter_image_files, load_rgb
from shelfsight.edge_app.core.spec import (
    ModelSpec,
    sha256_file,
    sidecar_path,
    write_spec,
)

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "fp16", "fp32")


def calibration_images(folder: str | Path, size: int, limit: int = 300, seed: int = 0) -> list[np.ndarray]:
    """A random, reproducible sample of prepared images from `folder` (any depth)."""
    paths = list(iter_image_files(folder))
    if not paths:
        raise InputError(f"calibration folder {folder} has no images")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(limit, len(paths)), replace=False)
    return [fit_square(load_rgb(paths[i]), size) for i in sorted(chosen)]


def _full_range_image(size: int) -> np.ndarray:
    """Pins the input range to exactly 0..255 so the uint8 input gets scale 1, zero point 0."""
    ramp = np.linspace(0, 255, size * size * 3).reshape(size, size, 3)
    return np.round(ramp).astype(np.uint8)


def _representative(images: Sequence[np.ndarray]) -> Iterator[list[np.ndarray]]:
    size = images[0].shape[0]
    yield [_full_range_image(size)[None].astype(np.float32)]
    for image in images:
        yield [image[None].astype(np.float32)]


def convert_keras(model, quantization: str, calibration: Sequence[np.ndarray] = ()) -> bytes:
    """Convert an export model (0..255 float pixels -> embedding) to TFLite bytes."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ModelError(f"unknown quantization {quantization!r}; choose one of {QUANTIZATIONS}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "int8":
        if not calibration:
            raise InputError("int8 conversion needs calibration images (--calibration DIR)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    elif quantization == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises a zoo of internal types
        raise ModelError(f"TFLite conversion failed: {exc.__class__.__name__}: {str(exc)[:500]}") from exc


def _check_int8_input(path: Path) -> None:
    from shelfsight.edge_app.runtime.litert import _open_interpreter

    detail = _open_interpreter(path, 1).get_input_details()[0]
    scale, zero = detail["quantization"]
    if detail["dtype"] != np.uint8 or abs(scale - 1.0) > 1e-6 or zero != 0:
        raise ModelError(f"int8 model input is {detail['dtype']} scale={scale} zero={zero}; expected uint8, 1.0, 0")


def write_model(tflite: bytes, out: str | Path, spec: ModelSpec) -> ModelSpec:
    """Write the model and its sidecar atomically; returns the spec with the real fingerprint."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(tflite)
    spec = replace(spec, fingerprint=sha256_file(tmp))
    if spec.quantization == "int8":
        try:
            _check_int8_input(tmp)
        except ModelError:
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(out)
    write_spec(out, spec)
    return spec


def base_spec(manifest: dict, quantization: str) -> ModelSpec:
    return ModelSpec(
        fingerprint="",
        input_size=int(manifest["input_size"]),
        embedding_dim=int(manifest["embedding_dim"]),
        quantization=quantization,
        input_dtype="uint8" if quantization == "int8" else "float32",
        backbone=str(manifest.get("backbone", "")),
        training_data_fingerprint=str(manifest.get("training_data_fingerprint", "")),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def remove_model(path: str | Path) -> None:
    Path(path).unlink(missing_ok=True)
    sidecar_path(path).unlink(missing_ok=True)


def convert_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    quantization: str = "int8",
    calibration_dir: str | Path | None = None,
    parity_catalog: str | Path | None = None,
    parity_queries: str | Path | None = None,
    min_cosine: float = 0.98,
    max_drop_points: float = 1.0,
    calibration_limit: int = 300,
) -> ModelSpec:
    """Convert a training run and gate it on parity; the model lands at `out` only if it passes."""
    from shelfsight.convert.parity import ParityReport, check, measure
    from shelfsight.edge_app.runtime.litert import LiteRTEmbedder
    from shelfsight.train.keras_embedder import KerasEmbedder
    from shelfsight.train.model import export_model
    from shelfsight.train.trainer import load_manifest

    manifest = load_manifest(run_dir)
    reference = KerasEmbedder(run_dir)
    size = reference.input_size
    calibration: list[np.ndarray] = []
    if calibration_dir is not None:
        calibration = calibration_images(calibration_dir, size, calibration_limit)
    tflite = convert_keras(export_model(reference.model), quantization, calibration)

    out = Path(out)
    candidate = out.with_name(f".candidate-{out.name}")
    spec = write_model(tflite, candidate, base_spec(manifest, quantization))
    try:
        with LiteRTEmbedder(candidate, threads=2) as converted:
            if parity_catalog is not None and parity_queries is not None:
                report = measure(reference, converted, parity_catalog, parity_queries)
            else:
                if not calibration:
                    raise InputError("the parity gate needs --parity-catalog/--parity-queries or --calibration images")
                log.warning("no parity folders given: checking embedding cosine only, not Recall@1")
                batch = np.stack(calibration[:100])
                cosine = np.sum(reference.embed_batch(batch) * converted.embed_batch(batch), axis=1)
                report = ParityReport(
                    float(cosine.mean()), float(cosine.min()), float("nan"), float("nan"), 0.0, len(batch)
                )
            log.info("parity: %s", report.to_dict())
            check(report, min_cosine, max_drop_points)
    except Exception:
        remove_model(candidate)
        raise
    spec = replace(spec, parity=report.to_dict())
    candidate.replace(out)
    write_spec(out, spec)
    sidecar_path(candidate).unlink(missing_ok=True)
    return spec
