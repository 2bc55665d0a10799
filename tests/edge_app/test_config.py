from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shelfsight.edge_app.camera.config import FolderConfig, OpenCVCameraConfig
from shelfsight.edge_app.core.errors import ConfigError
from shelfsight.edge_app.kiosk.config import KioskConfig, load_config, parse_config

MINIMAL = """
[catalog]
path = "catalog.db"

[camera]
type = "folder"
path = "frames"
"""


def test_minimal_toml_resolves_paths_relative_to_the_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "kiosk.toml"
    cfg_file.write_text(MINIMAL)
    config = load_config(cfg_file)
    assert config.catalog.path == tmp_path / "catalog.db"
    assert isinstance(config.camera, FolderConfig) and config.camera.path == tmp_path / "frames"
    assert config.model.path is None and config.web.port == 8080
    assert (config.roi.x, config.roi.width) == (0.15, 0.7)  # the central area by default


def test_json_config_with_webcam(tmp_path: Path) -> None:
    cfg_file = tmp_path / "kiosk.json"
    cfg_file.write_text('{"catalog": {"path": "/c.db"}, "camera": {"type": "opencv", "device": "rtsp://cam/1"}}')
    config = load_config(cfg_file)
    assert isinstance(config.camera, OpenCVCameraConfig) and config.camera.device == "rtsp://cam/1"


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("[recognition]\ntreshold = 0.5\n", "recognition.treshold: unknown key"),
        ("colour = 'red'\n", "colour: unknown key"),
        ("[roi]\nx = 0.5\nwidth = 0.8\n", "inside the frame"),
        ("[recognition]\nvote_window = 2\nvote_min = 3\n", "vote_min"),
        ("[web]\ncurrency = 'kr'\n", "web.currency"),
        ("[web]\nlocale = 'sv_SE.UTF-8'\n", "web.locale"),
    ],
)
def test_bad_configs_are_rejected_with_the_key_named(tmp_path: Path, extra: str, expected: str) -> None:
    cfg_file = tmp_path / "kiosk.toml"
    cfg_file.write_text(extra + MINIMAL if not extra.startswith("[") else MINIMAL + extra)
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        load_config(cfg_file)


def test_unknown_camera_type_and_key_in_camera(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="camera"):
        parse_config({"catalog": {"path": "c.db"}, "camera": {"type": "kinect"}})
    with pytest.raises(ConfigError, match="camera.folder.fps: unknown key"):
        parse_config({"catalog": {"path": "c.db"}, "camera": {"type": "folder", "path": "x", "fps": 3}})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[catalog\npath=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_config_is_immutable() -> None:
    config = parse_config({"catalog": {"path": "c.db"}, "camera": {"type": "opencv"}})
    assert isinstance(config, KioskConfig)
    with pytest.raises(ValidationError):
        config.web.port = 1  # type: ignore[misc]


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "kiosk.example.toml"
    config = load_config(example)
    assert config.camera.type == "picamera" and config.web.host == "0.0.0.0"
    assert (config.web.currency, config.web.locale) == ("SEK", "sv-SE")


def test_sync_section_is_validated_by_the_sync_config() -> None:
    base = {"catalog": {"path": "/data/catalog.db"}, "camera": {"type": "opencv"}}
    config = parse_config({**base, "sync": {"host": "hq.local", "kiosk_id": "store-7"}})
    assert config.sync is not None and config.sync.kiosk_id == "store-7"
    assert config.catalog.sync_folder == Path("/data/sync")
    with pytest.raises(ConfigError, match="sync.colour: unknown key"):
        parse_config({**base, "sync": {"colour": "red"}})
    with pytest.raises(ConfigError, match="sync.port"):
        parse_config({**base, "sync": {"port": 0}})


def _config_models() -> list[type]:
    from shelfsight.edge_app.core.config import StrictModel
    from shelfsight.edge_app.kiosk.config import KioskConfig

    assert KioskConfig  # imports every section's module, so each model is a subclass by now
    found, todo = [], [StrictModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def test_every_config_field_is_described() -> None:
    """The config reference is generated from the models, so a field without a description is a blank line."""
    models = _config_models()
    assert len(models) >= 10
    missing = [f"{m.__name__}.{name}" for m in models for name, f in m.model_fields.items() if not f.description]
    assert missing == []
