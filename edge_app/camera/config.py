"""The `[camera]` section: one model per frame source, told apart by `type`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field

from shelfsight.edge_app.core.config import StrictModel

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - Python 3.10 on older Raspberry Pi OS
    pass


class _CameraBase(StrictModel):
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
