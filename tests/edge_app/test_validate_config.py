"""`shelfsight kiosk --validate-config` fails for a config whose files are missing or unusable, and shows [sync]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.envelope import generate_keys
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.kiosk.cli import kiosk_command
from tests.edge_app.test_cli import write_config
from tests.support.fakes import ProjectionEmbedder, product_photo


def validate(config: Path) -> Any:
    return CliRunner().invoke(kiosk_command, ["--config", str(config), "--validate-config"])


def test_missing_model_catalog_and_folder_each_named(tmp_path: Path) -> None:
    config = write_config(tmp_path / "kiosk.toml", tmp_path / "gone.tflite", tmp_path / "gone.db", tmp_path / "none")
    result = validate(config)
    assert result.exit_code == 1 and "valid\n" not in result.output and "Traceback" not in result.output
    assert "model: " in result.output and "gone.tflite" in result.output
    assert "catalog: " in result.output and "no such catalog" in result.output
    assert "camera: " in result.output and "no such folder" in result.output


def test_a_video_that_is_gone(tmp_path: Path, tiny_model: Path, sample_catalog: Any) -> None:
    config = write_config(tmp_path / "kiosk.toml", tiny_model, sample_catalog.path, tmp_path)
    config.write_text(
        config.read_text().replace('type = "folder"', 'type = "video"').replace("interval_s = 0.05\n", "")
        .replace(f'path = "{tmp_path}"', 'path = "clip.avi"')
    )  # fmt: skip
    result = validate(config)
    assert result.exit_code == 1 and f"{tmp_path / 'clip.avi'}: no such video file" in result.output


def test_a_catalog_of_another_model(tmp_path: Path, tiny_model: Path, sample_set: SampleSet) -> None:
    with Catalog(tmp_path / "other.db") as catalog:
        catalog.add_product("cola", "Cola")
        catalog.add_reference("cola", product_photo(1), ProjectionEmbedder(seed=1))
    config = write_config(tmp_path / "kiosk.toml", tiny_model, tmp_path / "other.db", sample_set.queries_dir)
    result = validate(config)
    assert result.exit_code == 1 and "catalog: " in result.output and "built with model" in result.output


@pytest.mark.parametrize("with_key", [True, False])
def test_the_sync_section_is_printed_and_its_key_checked(
    tmp_path: Path, tiny_model: Path, sample_catalog: Any, sample_set: SampleSet, with_key: bool
) -> None:
    _, public = generate_keys(tmp_path / "keys")
    key = public if with_key else tmp_path / "keys" / "missing.pub"
    sync = f'\n[sync]\nhost = "broker.store"\nport = 1883\nkiosk_id = "till-3"\npublic_key = "{key}"\n'
    config = write_config(
        tmp_path / "kiosk.toml", tiny_model, sample_catalog.path, sample_set.queries_dir / "P0002", extra=sync
    )
    result = validate(config)
    assert "sync: mqtt://broker.store:1883" in result.output and "kiosk id till-3" in result.output
    if with_key:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1 and "sync public_key: " in result.output and "missing.pub" in result.output
