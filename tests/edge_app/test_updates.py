"""The kiosk keeps serving while sync changes its catalog or model underneath it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.core.images import iter_image_files, load_rgb
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.kiosk.config import KioskConfig, parse_config
from shelfsight.edge_app.kiosk.sources import open_recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig


@pytest.fixture()
def kiosk_config(tmp_path: Path, sample_catalog: Any, tiny_model: Path) -> KioskConfig:
    copy = tmp_path / "catalog.db"
    with Catalog(copy) as fresh:  # a private copy through the catalog's own snapshot, not a file copy of a live WAL db
        fresh.replace_with_snapshot(sample_catalog.export_snapshot())
    return parse_config(
        {
            "model": {"path": str(tiny_model), "threads": 1},
            "catalog": {"path": str(copy)},
            "camera": {"type": "folder", "path": str(tmp_path)},
            "recognition": RecognitionConfig(shortlist=8, unknown_threshold=0.5, accept_similarity=1.01).model_dump(),
        }
    )


def test_catalog_update_is_picked_up_without_restart(kiosk_config: KioskConfig, sample_set: SampleSet) -> None:
    kiosk = Kiosk(open_recognizer(kiosk_config.model.path, kiosk_config.catalog.path, kiosk_config))  # type: ignore[arg-type]
    photo = load_rgb(next(iter_image_files(sample_set.catalog_dir / "P0005")))
    assert kiosk.search(photo).product_id == "P0005"
    with Catalog(kiosk_config.catalog.path, create=False) as writer:  # what the sync worker does
        writer.remove_product("P0005")
    kiosk.reload_catalog()
    after = kiosk.search(photo)
    assert after.product_id != "P0005" and "P0005" not in [c.product_id for c in after.candidates]
    assert kiosk.health()["catalog_version"] == kiosk.recognizer.catalog.version


def test_broken_release_keeps_the_current_model(
    kiosk_config: KioskConfig, sample_set: SampleSet, tmp_path: Path
) -> None:
    kiosk = Kiosk(open_recognizer(kiosk_config.model.path, kiosk_config.catalog.path, kiosk_config))  # type: ignore[arg-type]
    before = kiosk.recognizer
    bogus = tmp_path / "release" / "model.tflite"
    bogus.parent.mkdir()
    bogus.write_bytes(b"not a model")
    kiosk.switch_release(bogus, kiosk_config.catalog.path, kiosk_config)
    assert kiosk.recognizer is before and kiosk.stats.errors == 1
    photo = load_rgb(next(iter_image_files(sample_set.catalog_dir / "P0002")))
    assert kiosk.search(photo).product_id == "P0002"
    # A good release replaces model and catalog together and closes the old ones.
    release = tmp_path / "good"
    release.mkdir()
    for f in (kiosk_config.model.path, Path(str(kiosk_config.model.path) + ".json")):  # type: ignore[arg-type]
        shutil.copy(f, release / f.name)
    kiosk.switch_release(release / kiosk_config.model.path.name, kiosk_config.catalog.path, kiosk_config)  # type: ignore[union-attr]
    assert kiosk.recognizer is not before
    assert kiosk.search(photo).product_id == "P0002"
