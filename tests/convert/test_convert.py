"""Real TFLite conversion of a tiny trained model: Keras-vs-TFLite parity, spec sidecar, tamper checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from shelfsight.convert.tflite import convert_run  # noqa: E402
from shelfsight.edge_app.core.errors import ModelError, ParityError  # noqa: E402
from shelfsight.edge_app.core.labels import scan_folder  # noqa: E402
from shelfsight.edge_app.core.spec import load_spec, sha256_file  # noqa: E402
from shelfsight.edge_app.evaluation.retrieval import embed_paths  # noqa: E402
from shelfsight.edge_app.runtime.factory import open_embedder  # noqa: E402


def test_int8_model_matches_keras_model(fresh_tiny_model: Path, tiny_run: Path, tiny_dataset):
    paths = scan_folder(tiny_dataset["queries"], "q").paths
    with open_embedder(tiny_run) as keras_model, open_embedder(fresh_tiny_model) as int8_model:
        a, b = embed_paths(keras_model, paths), embed_paths(int8_model, paths)
    cosine = np.sum(a * b, axis=1)
    assert cosine.mean() >= 0.98, cosine
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)


def test_int8_model_takes_raw_uint8_pixels_and_outputs_float(fresh_tiny_model: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(fresh_tiny_model))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and inp["quantization"] == (1.0, 0)
    assert out["dtype"] == np.float32
    tensor_types = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in tensor_types  # full-integer inside


def test_sidecar_carries_what_the_edge_needs(fresh_tiny_model: Path, tiny_run: Path):
    spec = load_spec(fresh_tiny_model)
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert spec.fingerprint == sha256_file(fresh_tiny_model)
    assert (spec.input_size, spec.embedding_dim, spec.quantization) == (64, 32, "int8")
    assert spec.training_data_fingerprint == manifest["training_data_fingerprint"]
    assert spec.created and "(x-127)/128" in spec.preprocessing
    assert spec.parity["mean_cosine"] >= 0.98


def test_tampered_model_or_sidecar_is_refused(fresh_tiny_model: Path, tmp_path: Path):
    copy = tmp_path / "m.tflite"
    shutil.copy(fresh_tiny_model, copy)
    shutil.copy(str(fresh_tiny_model) + ".json", str(copy) + ".json")
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="fingerprint mismatch"):
        open_embedder(copy)
    Path(str(copy) + ".json").unlink()
    with pytest.raises(ModelError, match="sidecar"):
        open_embedder(copy)


def test_not_a_tflite_file_gets_a_clear_error(tmp_path: Path):
    from dataclasses import replace

    from shelfsight.edge_app.core.spec import ModelSpec, write_spec

    fake = tmp_path / "photo.tflite"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    write_spec(fake, replace(ModelSpec(fingerprint="", input_size=64, embedding_dim=32), fingerprint=sha256_file(fake)))
    with pytest.raises(ModelError, match="photo.tflite"):
        open_embedder(fake)
    with pytest.raises(ModelError, match="expected a .tflite"):
        open_embedder(tmp_path / "photo.png")


@pytest.mark.parametrize("quantization", ["fp16", "fp32"])
def test_float_exports(tiny_run: Path, tiny_dataset, tmp_path: Path, quantization: str):
    out = tmp_path / f"m-{quantization}.tflite"
    spec = convert_run(
        tiny_run,
        out,
        quantization=quantization,
        parity_catalog=tiny_dataset["catalog"],
        parity_queries=tiny_dataset["queries"],
    )
    assert spec.quantization == quantization and spec.input_dtype == "float32"
    assert spec.parity["mean_cosine"] > 0.999
    with open_embedder(out) as embedder:
        assert embedder.embed_batch(np.zeros((1, 64, 64, 3), np.uint8)).shape == (1, 32)


def test_failed_parity_gate_leaves_nothing_behind(tiny_run: Path, tiny_dataset, tmp_path: Path):
    out = tmp_path / "strict.tflite"
    with pytest.raises(ParityError, match="mean cosine"):
        convert_run(
            tiny_run,
            out,
            calibration_dir=tiny_dataset["train"],
            parity_catalog=tiny_dataset["catalog"],
            parity_queries=tiny_dataset["queries"],
            min_cosine=1.01,
        )
    assert list(tmp_path.iterdir()) == []
