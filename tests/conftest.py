"""Session fixtures shared by every test area: tiny generated data and a real tiny int8 model.

`tiny_model` is the committed int8 `.tflite` (tests/support/data, made by
`scripts/make_test_model.py` through the same Keras -> int8 + parity-gate path as
the shipped model), so every area tests against a genuine TFLite embedder and the
kiosk side needs no TensorFlow. `tiny_run` and `fresh_tiny_model` train and convert
in the session; they need TensorFlow, and tests that use them are marked
`workstation` (and skipped where TensorFlow is not installed).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.tiny import COMMITTED_MODEL, convert_tiny, make_tiny_dataset, train_tiny_run

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WORKSTATION_DIRS = ("train", "convert")
WORKSTATION_FIXTURES = {"tiny_run", "fresh_tiny_model"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        area = Path(str(item.fspath)).relative_to(root).parts[0]
        if area in WORKSTATION_DIRS or WORKSTATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.workstation)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'train': ..., 'catalog': ..., 'queries': ...}: ImageFolder trees of 6 generated products."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the committed int8 `.tflite` embedder (64 px in, 32-d out) with its sidecar."""
    folder = tmp_path_factory.mktemp("tiny-model")
    for name in (COMMITTED_MODEL.name, COMMITTED_MODEL.name + ".json"):
        shutil.copy(COMMITTED_MODEL.parent / name, folder / name)
    return folder / COMMITTED_MODEL.name


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished training run directory of the tiny backbone (real training, a few steps)."""
    pytest.importorskip("tensorflow", reason="training needs TensorFlow (the train extra)")
    return train_tiny_run(tiny_dataset, tmp_path_factory.mktemp("tiny-run"))


@pytest.fixture(scope="session")
def fresh_tiny_model(tiny_run: Path, tiny_dataset: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_run` converted in this session: for tests that compare the int8 model with its Keras run."""
    return convert_tiny(tiny_run, tiny_dataset, tmp_path_factory.mktemp("fresh-model") / "tiny.tflite")
