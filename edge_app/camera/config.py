"""The `[camera]` section: one model per frame source, told apart by `type`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field

from shelfsight.edge_app.core.config import StrictModel


class _CameraBase(StrictModel):
    reconnect: bool = Field(True, description="Reopen the source with backoff when it stops delivering frames")
    reconnect_initial_s: float = Field(0.5, gt=0, description="First wait before reopening, doubled after each failure")
    reconnect_max_s: float = Field(10.0, gt=0, description="Longest wait between two reopening attempts")


class PiCameraConfig(_CameraBase):
    type: Literal["picamera"] = Field("picamera", description="A Raspberry Pi camera module, through picamera2")
    width: int = Field(640, ge=32, description="Frame width in pixels")
    height: int = Field(480, ge=32, description="Frame height in pixels")
    fps: float = Field(15.0, gt=0, description="Frames per second the sensor delivers")


class OpenCVCameraConfig(_CameraBase):
    type: Literal["opencv"] = Field("opencv", description="A USB webcam or network stream, through OpenCV")
    device: int | str = Field(0, description="USB webcam index, or an rtsp:// / http:// stream URL")
    width: int | None = Field(None, ge=32, description="Requested frame width; absent: the device's default")
    height: int | None = Field(None, ge=32, description="Requested frame height; absent: the device's default")


class VideoConfig(_CameraBase):
    type: Literal["video"] = Field("video", description="A video file played as if it were a camera")
    path: Path = Field(description="The video file (relative paths: from the config file's folder)")
    loop: bool = Field(True, description="Start again at the end instead of stopping")
    realtime: bool = Field(True, description="Deliver frames at the file's frame rate, like a camera")
    reconnect: bool = Field(False, description="Reopen the file when it cannot be read")


class FolderConfig(_CameraBase):
    type: Literal["folder"] = Field("folder", description="Image files in a folder, shown one after another")
    path: Path = Field(description="The folder (relative paths: from the config file's folder)")
    interval_s: float = Field(0.5, ge=0, description="Seconds each image is shown")
    loop: bool = Field(True, description="Start again after the last image instead of stopping")
    reconnect: bool = Field(False, description="Reread the folder when it cannot be read")


CameraConfig = Annotated[
    Union[PiCameraConfig, OpenCVCameraConfig, VideoConfig, FolderConfig], Field(discriminator="type")
]
