"""Session fixtures shared by every test area: tiny generated data and a real tiny int8 model.

The model is trained for a few real steps and converted through the same code
path as the shipped model (Keras -> int8 TFLite + sidecar, parity-gated), once
per session, so every area tests against a genuine TFLite embedder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY_SIZE = 64
TINY_DIM = 32


def _draw_product(index: int, variant: int, rng: np.random.Generator) -> Image.Image:
    """A flat 'package' with a product-specific colour and pattern, seen slightly differently each time."""
    palette = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40), (150, 40, 170), (30, 170, 170)]
    side = 96
    img = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 90, 3)))
    draw = ImageDraw.Draw(img)
    colour = palette[index % len(palette)]
    inset = 10 + variant % 4
    draw.rectangle([inset, inset, side - inset, side - inset], fill=colour)
    for j in range(index + 1):  # product-specific number of stripes
        y = inset + 8 + j * 10
        draw.rectangle([inset + 6, y, side - inset - 6, y + 4], fill=(255, 255, 255))
    if index % 2:
        draw.ellipse([side // 2 - 12, side // 2, side // 2 + 12, side // 2 + 24], fill=(0, 0, 0))
    return img.rotate(float(rng.uniform(-12, 12)), fillcolor=(60, 60, 60))


def make_image_folder(root: Path, products: int, per_product: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for p in range(products):
        folder = root / f"product-{p:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for v in range(per_product):
            _draw_product(p, v, rng).save(folder / f"view{v}.jpg", quality=92)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'train': ..., 'catalog': ..., 'queries': ...}: ImageFolder trees of 6 generated products."""
    base = tmp_path_factory.mktemp("tiny-data")
    return {
        "train": make_image_folder(base / "train", 6, 8, seed=1),
        "catalog": make_image_folder(base / "catalog", 6, 2, seed=2),
        "queries": make_image_folder(base / "queries", 6, 3, seed=3),
    }


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished training run directory of the tiny backbone (real training, a few steps)."""
    from shelfsight.train.config import TrainConfig
    from shelfsight.train.trainer import train

    run_dir = tmp_path_factory.mktemp("tiny-run")
    cfg = TrainConfig(
        sources=[str(tiny_dataset["train"])],
        backbone="tiny",
        pretrained=False,
        input_size=TINY_SIZE,
        embedding_dim=TINY_DIM,
        epochs=3,
        steps_per_epoch=8,
        batch_size=8,
        learning_rate=3e-3,
        train_from_block=0,
    )
    train(cfg, run_dir, verbose=0)
    return run_dir


@pytest.fixture(scope="session")
def tiny_model(tiny_run: Path, tiny_dataset: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a real int8 `.tflite` embedder (64 px in, 32-d out) with its verified sidecar."""
    from shelfsight.convert.tflite import convert_run

    out = tmp_path_factory.mktemp("tiny-model") / "tiny.tflite"
    convert_run(
        tiny_run,
        out,
        quantization="int8",
        calibration_dir=tiny_dataset["train"],
        parity_catalog=tiny_dataset["catalog"],
        parity_queries=tiny_dataset["queries"],
        # a few-step model is not yet smooth enough for the production tolerance on Recall@1
        max_drop_points=100.0,
    )
    return out
