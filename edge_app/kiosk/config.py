"""The kiosk's one configuration file, validated before anything starts.

A TOML (preferred, stdlib `tomllib`) or JSON file with the sections below; every key is listed
in docs/config.md (generated from these models) and deploy/examples/ has a file per camera type.
Unknown keys anywhere are errors: a typo such as `treshold` must not silently
fall back to a default on a kiosk nobody is watching.

    [model]
    path = "/opt/shelfsight/model.tflite"   # omit for the bundled default model
    threads = 2

    [catalog]
    path = "/var/lib/shelfsight/catalog.db"

    [camera]
    type = "opencv"          # picamera | opencv | video | folder
    device = 0               # webcam index or "rtsp://..." / "http://..." stream URL

    [roi]                    # fractions of the frame
    x = 0.15
    y = 0.05
    width = 0.7
    height = 0.9

    [recognition]
    min_inliers = 20

    [web]
    port = 8080
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from shelfsight.edge_app.camera.config import CameraConfig, FolderConfig, VideoConfig
from shelfsight.edge_app.core.config import StrictModel
from shelfsight.edge_app.core.errors import ConfigError
from shelfsight.edge_app.kiosk.updates.config import SyncConfig
from shelfsight.edge_app.recognition.config import RecognitionConfig, RoiConfig
from shelfsight.edge_app.runtime.config import ModelConfig
from shelfsight.edge_app.web.config import WebConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older Raspberry Pi OS
    import tomli as tomllib


class CatalogConfig(StrictModel):
    path: Path = Field(description="The SQLite catalog built with `shelfsight catalog build`")
    sync_dir: Path | None = Field(
        None, description="Where sync keeps HQ's releases (model + catalog); default: <catalog folder>/sync"
    )
    watch_interval_s: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="How often the running kiosk checks whether another process (`shelfsight catalog remove`, "
        "`add`, `build`) changed its catalog file, and re-reads it if so (a few microseconds a check); 0: never",
    )

    @property
    def sync_folder(self) -> Path:
        return self.sync_dir if self.sync_dir is not None else self.path.parent / "sync"


class KioskConfig(StrictModel):
    model: ModelConfig = Field(ModelConfig(), description="The embedding model")
    catalog: CatalogConfig = Field(description="The product catalog")
    camera: CameraConfig = Field(description="The frame source; `type` picks picamera, opencv, video or folder")
    roi: RoiConfig = Field(RoiConfig(), description="The part of the frame a product is held in")
    recognition: RecognitionConfig = Field(RecognitionConfig(), description="Pipeline thresholds")
    web: WebConfig = Field(WebConfig(), description="The kiosk page and HTTP API")
    sync: SyncConfig | None = Field(None, description="HQ catalog updates over MQTT; absent: no sync")


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "config", base_dir: Path | None = None) -> KioskConfig:
    """Validate a config mapping; relative paths are taken relative to `base_dir` (the file's folder)."""
    try:
        config = KioskConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n{_format_errors(exc)}") from exc
    return _resolve_paths(config, base_dir) if base_dir is not None else config


def _resolve(path: Path | None, base: Path) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else base / path


def _resolve_paths(config: KioskConfig, base: Path) -> KioskConfig:
    camera = config.camera
    if isinstance(camera, (VideoConfig, FolderConfig)):
        camera = camera.model_copy(update={"path": _resolve(camera.path, base)})
    return config.model_copy(
        update={
            "model": config.model.model_copy(update={"path": _resolve(config.model.path, base)}),
            "catalog": config.catalog.model_copy(
                update={
                    "path": _resolve(config.catalog.path, base),
                    "sync_dir": _resolve(config.catalog.sync_dir, base),
                }
            ),
            "camera": camera,
            "web": config.web.model_copy(update={"staff_credential": _resolve(config.web.staff_credential, base)}),
        }
    )


def load_config(path: str | Path) -> KioskConfig:
    """Read and validate a `.toml` or `.json` kiosk config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable config file ({exc})") from exc
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a table/object at the top level")
    return parse_config(data, source=str(path), base_dir=path.resolve().parent)
