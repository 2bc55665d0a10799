"""The stored 'not in catalog' threshold is bound to the model, vocabulary and pipeline it was calibrated with."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from shelfsight.catalog.schema import MODEL_BOUND_META
from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.cli import build_cli
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.recognition.pipeline import CALIBRATION_META_KEY, THRESHOLD_META_KEY
from tests.support.fakes import ProjectionEmbedder, product_photo


def run(*args: str) -> Result:
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def other_models_catalog(path: Path) -> Path:
    """A catalog built with another model than the tiny one, calibrated for it."""
    embedder = ProjectionEmbedder(seed=3)
    with Catalog(path) as catalog:
        catalog.add_product("cola", "Cola")
        catalog.add_reference("cola", product_photo(1), embedder)
        catalog.set_meta(THRESHOLD_META_KEY, 0.42)
        catalog.set_meta(CALIBRATION_META_KEY, {"model": embedder.fingerprint, "vocabulary": None, "pipeline": "full"})
    return path


def test_the_catalog_keys_reembed_drops_are_the_recognizers() -> None:
    assert {THRESHOLD_META_KEY, CALIBRATION_META_KEY} <= set(MODEL_BOUND_META)


def test_calibrate_store_refuses_a_catalog_of_another_model_before_calibrating(
    tmp_path: Path, tiny_model: Path
) -> None:
    db = other_models_catalog(tmp_path / "kiosk.db")
    (tmp_path / "refs").mkdir(), (tmp_path / "queries").mkdir()  # empty: calibrating them would fail differently
    folders = ["--catalog", str(tmp_path / "refs"), "--queries", str(tmp_path / "queries"), "--no-progress"]
    result = run("eval", "--model", str(tiny_model), *folders, "--calibrate", "--store", str(db))
    assert result.exit_code == 1 and "built with model" in result.output and "Traceback" not in result.output
    with Catalog(db) as catalog:
        assert catalog.get_meta(THRESHOLD_META_KEY) == 0.42
    alone = run("eval", "--model", str(tiny_model), *folders, "--store", str(db))
    assert alone.exit_code == 2 and "give both" in alone.output


def test_reembed_clears_the_old_models_threshold(tmp_path: Path, tiny_model: Path) -> None:
    db = other_models_catalog(tmp_path / "store.db")
    result = CliRunner().invoke(
        build_cli(), ["catalog", "reembed", "--db", str(db), "--model", str(tiny_model), "--no-progress"]
    )
    assert result.exit_code == 0 and "threshold was cleared" in result.output, result.output
    with Catalog(db) as catalog:
        assert catalog.get_meta(THRESHOLD_META_KEY) is None and catalog.get_meta(CALIBRATION_META_KEY) is None
    again = CliRunner().invoke(build_cli(), ["catalog", "reembed", "--db", str(db), "--model", str(tiny_model)])
    assert again.exit_code == 0 and "cleared" not in again.output


@pytest.mark.parametrize(
    ("calibrated_for", "runs"),
    [
        ({"pipeline": "full"}, RecognitionConfig(verify=False)),
        ({"pipeline": "full"}, RecognitionConfig()),  # calibrated before aligned similarity: another scale
        ({"model": "another"}, RecognitionConfig()),
    ],
)
def test_a_mismatch_at_start_is_a_warning_and_the_safe_default(
    tmp_path: Path,
    sample_catalog: Any,
    embedder: Embedder,
    caplog: pytest.LogCaptureFixture,
    calibrated_for: dict[str, str],
    runs: RecognitionConfig,
) -> None:
    with Catalog(tmp_path / "kiosk.db") as catalog:
        catalog.replace_with_snapshot(json.loads(json.dumps(sample_catalog.export_snapshot())))
        binding = {**Recognizer(embedder, catalog, RecognitionConfig()).calibration_binding(), **calibrated_for}
        catalog.set_meta(THRESHOLD_META_KEY, 0.9)
        catalog.set_meta(CALIBRATION_META_KEY, binding)
        with caplog.at_level(logging.WARNING, logger="shelfsight.edge_app.recognition.pipeline"):
            threshold = Recognizer(embedder, catalog, runs).unknown_threshold
        assert threshold == runs.default_unknown_threshold != 0.9
        assert "was calibrated for" in caplog.text and "using the default" in caplog.text
