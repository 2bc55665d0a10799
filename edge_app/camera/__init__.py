"""Frame sources: Pi camera, OpenCV (webcam or stream), video file, image folder; one factory."""

from __future__ import annotations

from functools import partial
from typing import Callable

from shelfsight.edge_app.camera.base import Frame, FrameSource
from shelfsight.edge_app.camera.config import (
    CameraConfig,
    FolderConfig,
    OpenCVCameraConfig,
    PiCameraConfig,
    VideoConfig,
)
from shelfsight.edge_app.camera.folder import FolderSource
from shelfsight.edge_app.camera.opencv import OpenCVSource, VideoFileSource
from shelfsight.edge_app.camera.picamera import PiCameraSource
from shelfsight.edge_app.camera.reconnect import ReconnectingSource

__all__ = [
    "FolderSource",
    "Frame",
    "FrameSource",
    "OpenCVSource",
    "PiCameraSource",
    "ReconnectingSource",
    "VideoFileSource",
    "open_source",
    "source_factory",
]


def source_factory(config: CameraConfig) -> Callable[[], FrameSource]:
    """A callable that builds a fresh, unopened source for `config` (reconnecting needs new ones)."""
    if isinstance(config, PiCameraConfig):
        return partial(PiCameraSource, config.width, config.height, config.fps)
    if isinstance(config, OpenCVCameraConfig):
        return partial(OpenCVSource, config.device, config.width, config.height)
    if isinstance(config, VideoConfig):
        return partial(VideoFileSource, config.path, config.loop, config.realtime)
    if isinstance(config, FolderConfig):
        return partial(FolderSource, config.path, config.interval_s, config.loop)
    raise TypeError(f"unknown camera config {type(config).__name__}")


def open_source(config: CameraConfig) -> FrameSource:
    """The source for `config`, unopened (use it as a context manager); live cameras reconnect."""
    factory = source_factory(config)
    if config.reconnect:
        return ReconnectingSource(factory, config.reconnect_initial_s, config.reconnect_max_s)
    return factory()
