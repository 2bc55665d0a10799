"""The kiosk's one configuration file, validated before anything starts.

A TOML (preferred, stdlib `tomllib`) or JSON file with the sections below.
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
    min_inliers = 12

    [web]
    port = 8080
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from catalog.sync.config import SyncConfig
from edge_app.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older Raspberry Pi OS
    import tomli as tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    path: Path | None = Field(None, description="A .tflite embedder with its .json sidecar; None: the bundled default")
    threads: int = Field(2, ge=1, le=16)


class CatalogConfig(_Strict):
    path: Path
    sync_dir: Path | None = Field(
        None, description="Where sync keeps HQ's releases (model + catalog); default: <catalog folder>/sync"
    )

    @property
    def sync_folder(self) -> Path:
        return self.sync_dir if self.sync_dir is not None else self.path.parent / "sync"


class _CameraBase(_Strict):
    reconnect: bool = True
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)


class PiCameraConfig(_CameraBase):
    type: Literal["picamera"] = "picamera"
    width: int = Field(640, ge=32)
    height: int = Field(480, ge=32)
    fps: float = Field(15.0, gt=0)


class OpenCVCameraConfig(_CameraBase):
    type: Literal["opencv"] = "opencv"
    device: int | str = Field(0, description="USB webcam index, or an rtsp:// / http:// stream URL")
    width: int | None = Field(None, ge=32)
    height: int | None = Field(None, ge=32)


class VideoConfig(_CameraBase):
    type: Literal["video"] = "video"
    path: Path
    loop: bool = True
    realtime: bool = Field(True, description="Deliver frames at the file's frame rate, like a camera")
    reconnect: bool = False


class FolderConfig(_CameraBase):
    type: Literal["folder"] = "folder"
    path: Path
    interval_s: float = Field(0.5, ge=0)
    loop: bool = True
    reconnect: bool = False


CameraConfig = Annotated[
    Union[PiCameraConfig, OpenCVCameraConfig, VideoConfig, FolderConfig], Field(discriminator="type")
]


class RoiConfig(_Strict):
    """Region of interest as fractions of the frame; the default is the central area."""

    x: float = Field(0.15, ge=0, lt=1)
    y: float = Field(0.05, ge=0, lt=1)
    width: float = Field(0.7, gt=0, le=1)
    height: float = Field(0.9, gt=0, le=1)

    @model_validator(mode="after")
    def _inside_frame(self) -> "RoiConfig":
        if self.x + self.width > 1.0 + 1e-9 or self.y + self.height > 1.0 + 1e-9:
            raise ValueError("the region of interest must lie inside the frame (x + width <= 1, y + height <= 1)")
        return self

    @classmethod
    def full_frame(cls) -> "RoiConfig":
        return cls(x=0.0, y=0.0, width=1.0, height=1.0)


class RecognitionConfig(_Strict):
    """Thresholds of the recognition pipeline (see edge_app.recognition.pipeline)."""

    verify: bool = Field(True, description="Geometric verification of the shortlist (the 'full' pipeline)")
    shortlist: int = Field(5, ge=1, le=50, description="Products verified with local features")
    top_k: int = Field(5, ge=1, le=50, description="Products reported (the winner and its runners-up)")
    min_inliers: int = Field(12, ge=4, description="RANSAC inliers that make a match geometrically verified")
    ratio: float = Field(0.8, gt=0, lt=1, description="Lowe's ratio test on ORB descriptor distances")
    ransac_px: float = Field(6.0, gt=0, description="RANSAC reprojection threshold in query pixels")
    min_coverage: float = Field(0.08, ge=0, lt=1, description="Share of the reference the inliers must span")
    fast_inliers: int = Field(36, ge=4, description="Inliers of the top hit alone that settle verification early")
    feature_side: int = Field(320, ge=64, description="Longest side of the ROI when extracting local features")
    orb_features: int = Field(400, ge=50)
    max_references: int = Field(3, ge=1, description="Reference views tried per shortlisted product")
    unknown_threshold: float | None = Field(
        None, description="Score below which the answer is 'not in catalog'; None: the catalog's calibrated value"
    )
    default_unknown_threshold: float = Field(0.5, description="Used when neither config nor catalog has one")
    accept_similarity: float = Field(
        0.97, description="A global match this similar (and clearly ahead) is accepted without verification"
    )
    accept_margin: float = Field(0.08, ge=0)
    require_verification: bool = Field(
        True, description="When verification runs, an unconfirmed candidate needs accept_similarity to be announced"
    )
    empty_std: float = Field(6.0, ge=0, description="Grey-level spread of the ROI below which the view is empty")
    background_frames: int = Field(
        50, ge=0, description="Still, unrecognised frames in a row after which the view is learned as empty (0: off)"
    )
    background_diff: float = Field(6.0, gt=0, description="Grey-level difference that still counts as the background")
    vote_window: int = Field(5, ge=1, description="Frames the temporal vote looks at")
    vote_min: int = Field(3, ge=1, description="Agreeing frames needed to announce a product or an empty view")

    @model_validator(mode="after")
    def _votes_fit(self) -> "RecognitionConfig":
        if self.vote_min > self.vote_window:
            raise ValueError("vote_min cannot exceed vote_window")
        return self


class WebConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    jpeg_quality: int = Field(80, ge=10, le=100)
    currency: str | None = Field(
        None, pattern=r"^[A-Z]{3}$", description="ISO 4217 code the page shows prices in, e.g. SEK; absent: a bare number"
    )
    locale: str | None = Field(
        None, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$",
        description="BCP 47 locale for prices on the page, e.g. sv-SE; absent: the browser's",
    )


class KioskConfig(_Strict):
    model: ModelConfig = ModelConfig()
    catalog: CatalogConfig
    camera: CameraConfig
    roi: RoiConfig = RoiConfig()
    recognition: RecognitionConfig = RecognitionConfig()
    web: WebConfig = WebConfig()
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
                update={"path": _resolve(config.catalog.path, base), "sync_dir": _resolve(config.catalog.sync_dir, base)}
            ),
            "camera": camera,
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
