from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shelfsight.edge_app.camera import (
    FolderSource,
    ReconnectingSource,
    VideoFileSource,
    open_source,
)
from shelfsight.edge_app.camera.config import FolderConfig, PiCameraConfig, VideoConfig
from shelfsight.edge_app.camera.picamera import PiCameraSource
from shelfsight.edge_app.core.errors import CameraError
from shelfsight.edge_app.demo.samples import Clip


def write_frames(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(folder / f"f{i}.png")


def test_folder_source_reads_in_order_skips_corrupt_files_and_ends(tmp_path: Path) -> None:
    write_frames(tmp_path, 3)
    (tmp_path / "f1b.jpg").write_bytes(b"not a jpeg")
    with FolderSource(tmp_path) as source:
        frames = [source.read() for _ in range(4)]
    assert [f.rgb[0, 0, 0] for f in frames[:3] if f is not None] == [0, 40, 80]
    assert [f.index for f in frames[:3] if f is not None] == [1, 2, 3]
    assert frames[3] is None


def test_folder_source_loops(tmp_path: Path) -> None:
    write_frames(tmp_path, 2)
    with FolderSource(tmp_path, loop=True) as source:
        values = [source.read().rgb[0, 0, 0] for _ in range(5)]  # type: ignore[union-attr]
    assert values == [0, 40, 0, 40, 0]


def test_missing_folder_is_a_camera_error(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="no such image folder"):
        with FolderSource(tmp_path / "gone"):
            pass


def test_video_source_plays_the_generated_clip(sample_clip: Clip) -> None:
    with VideoFileSource(sample_clip.path, loop=False, realtime=False) as source:
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
    assert len(frames) == int(sample_clip.fps * sample_clip.segments[-1].end_s)
    assert frames[0].rgb.shape == (240, 320, 3) and frames[0].rgb.dtype == np.uint8
    assert source._cap is None  # released on exit


def test_video_source_loops_and_missing_file(sample_clip: Clip, tmp_path: Path) -> None:
    n = int(sample_clip.fps * sample_clip.segments[-1].end_s)
    with open_source(VideoConfig(path=sample_clip.path, realtime=False)) as source:
        assert all(source.read() is not None for _ in range(n + 3))
    with pytest.raises(CameraError, match="no such video file"):
        with VideoFileSource(tmp_path / "none.avi"):
            pass


class FakePicamera2:
    """Stands in for the Pi camera, which cannot exist on the test machine (the one allowed fake)."""

    instances: list["FakePicamera2"] = []

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.config: dict[str, Any] = {}
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any], controls: dict[str, Any]) -> dict[str, Any]:
        return {"main": main, "controls": controls}

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config

    def start(self) -> None:
        self.calls.append("start")

    def capture_array(self, name: str) -> np.ndarray:
        w, h = self.config["main"]["size"]
        bgr = np.zeros((h, w, 3), np.uint8)
        bgr[..., 0] = 255  # blue in libcamera's RGB888 memory order
        return bgr

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")


def test_picamera_source_with_injected_module(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    FakePicamera2.instances.clear()
    with open_source(PiCameraConfig(width=64, height=48, fps=10, reconnect=False)) as source:
        assert isinstance(source, PiCameraSource)
        frame = source.read()
    assert frame is not None and frame.rgb.shape == (48, 64, 3)
    assert tuple(frame.rgb[0, 0]) == (0, 0, 255)  # converted to RGB
    camera = FakePicamera2.instances[0]
    assert camera.calls == ["start", "stop", "close"]
    assert camera.config["controls"] == {"FrameRate": 10}


def test_picamera_missing_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes the import fail
    with pytest.raises(CameraError, match="picamera2 is not installed"):
        PiCameraSource().open()


def test_reconnecting_source_backs_off_until_the_camera_returns(tmp_path: Path) -> None:
    folder = tmp_path / "cam"
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 4:
            write_frames(folder, 2)  # the camera comes back
        return False

    source = ReconnectingSource(lambda: FolderSource(folder), initial_s=0.1, max_s=0.5, wait=wait)
    with source:  # opening does not block on the missing camera; the first read waits for it
        assert not source.connected
        assert source.read() is not None
        assert source.connected
    assert waits == [0.1, 0.2, 0.4, 0.5]
    assert "no such image folder" in source.last_error


def test_reconnecting_source_reopens_after_the_camera_fails(tmp_path: Path) -> None:
    write_frames(tmp_path, 1)

    class Flaky(FolderSource):
        """A real folder source whose device dies after its first frame."""

        def _grab(self) -> np.ndarray | None:
            if self._count >= 1:
                raise CameraError("unplugged")
            return super()._grab()

    opened: list[Flaky] = []

    def factory() -> Flaky:
        opened.append(Flaky(tmp_path))
        return opened[-1]

    with ReconnectingSource(factory, wait=lambda s: False) as source:
        assert source.read() is not None
        assert source.read() is not None  # the failure was absorbed by reopening
        assert source.reconnects == 1 and len(opened) == 2
    assert source.last_error == "unplugged"


def test_closing_stops_a_waiting_reconnect(tmp_path: Path) -> None:
    source = ReconnectingSource(lambda: FolderSource(tmp_path / "never"), initial_s=0.01)
    source.close()
    assert source.read() is None


def test_open_source_wraps_live_cameras_only(tmp_path: Path) -> None:
    assert isinstance(open_source(PiCameraConfig()), ReconnectingSource)
    assert isinstance(open_source(FolderConfig(path=tmp_path)), FolderSource)
