"""The suite's tiny generated data and its tiny int8 model.

`make_tiny_dataset` draws six flat "packages" deterministically, so every run
(and every machine) gets the same pixels. The tiny int8 model trained on them is
committed under `tests/support/data/` with its sidecar, so the kiosk, catalog and
sync tests run against a genuine TFLite embedder without TensorFlow. Regenerate
it with `scripts/make_test_model.py` after a change to training or conversion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TINY_SIZE = 64
TINY_DIM = 32
DATA_DIR = Path(__file__).resolve().parent / "data"
COMMITTED_MODEL = DATA_DIR / "tiny.tflite"


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


def make_tiny_dataset(base: Path) -> dict[str, Path]:
    """{'train': ..., 'catalog': ..., 'queries': ...}: ImageFolder trees of 6 generated products."""
    return {
        "train": make_image_folder(base / "train", 6, 8, seed=1),
        "catalog": make_image_folder(base / "catalog", 6, 2, seed=2),
        "queries": make_image_folder(base / "queries", 6, 3, seed=3),
    }


def train_tiny_run(dataset: dict[str, Path], run_dir: Path) -> Path:
    """A finished training run of the tiny backbone (real training, a few steps). Needs TensorFlow."""
    from shelfsight.train.config import TrainConfig
    from shelfsight.train.trainer import train

    cfg = TrainConfig(
        sources=[str(dataset["train"])], backbone="tiny", pretrained=False, input_size=TINY_SIZE,
        embedding_dim=TINY_DIM, epochs=3, steps_per_epoch=8, batch_size=8, learning_rate=3e-3, train_from_block=0,
    )  # fmt: skip
    train(cfg, run_dir, verbose=0)
    return run_dir


def convert_tiny(run_dir: Path, dataset: dict[str, Path], out: Path) -> Path:
    """The run as a parity-gated int8 `.tflite` + sidecar, through the shipped model's code path."""
    from shelfsight.convert.tflite import convert_run

    convert_run(
        run_dir, out, quantization="int8", calibration_dir=dataset["train"],
        parity_catalog=dataset["catalog"], parity_queries=dataset["queries"],
        # a few-step model is not yet smooth enough for the production tolerance on Recall@1
        max_drop_points=100.0,
    )  # fmt: skip
    return out
