#!/usr/bin/env python3
"""Regenerate the tiny int8 model the test suite uses (tests/support/data/tiny.tflite + sidecar).

Trains the tiny backbone on the suite's generated products and converts it through
the shipped model's path (int8, parity gate, fingerprinted sidecar). Needs the
train extra (TensorFlow). Run after changing training, conversion or the sidecar:

    .venv/bin/python scripts/make_test_model.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.tiny import COMMITTED_MODEL, convert_tiny, make_tiny_dataset, train_tiny_run  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        dataset = make_tiny_dataset(base / "data")
        run = train_tiny_run(dataset, base / "run")
        model = convert_tiny(run, dataset, base / "tiny.tflite")
        COMMITTED_MODEL.parent.mkdir(parents=True, exist_ok=True)
        for path in (model, Path(str(model) + ".json")):
            shutil.copy(path, COMMITTED_MODEL.parent / path.name)
    print(f"wrote {COMMITTED_MODEL} ({COMMITTED_MODEL.stat().st_size} bytes) and its sidecar")


if __name__ == "__main__":
    main()
