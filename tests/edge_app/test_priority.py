"""The camera worker goes first at the pipeline (issue 13 item 3): searches take turns between frames."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from shelfsight.edge_app.camera import Frame
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.recognition import Recognition
from shelfsight.edge_app.recognition.config import RecognitionConfig, RoiConfig

FRAMES, SEARCHERS, SEARCHES_EACH = 40, 8, 10


class SlowPipeline:
    """Stands in for the recognizer: each use records who ran it and blocks briefly, GIL released,
    as an interpreter invoke does. Only the order of uses is checked, never how long they took."""

    def __init__(self) -> None:
        self.config = RecognitionConfig(background_frames=0)
        self.roi = RoiConfig()
        self.uses: list[str] = []
        self._pause = threading.Event()

    def recognize(self, rgb: np.ndarray, roi: RoiConfig | None = None, k: int | None = None) -> Recognition:
        self.uses.append("search" if roi is not None else "frame")
        self._pause.wait(0.002)
        return Recognition("unknown", None, 0.0, (), {})


def searches_between_frames(uses: list[str]) -> list[int]:
    """For each gap between two consecutive frames, how many searches ran in it."""
    frames = [i for i, use in enumerate(uses) if use == "frame"]
    return [b - a - 1 for a, b in zip(frames, frames[1:])]


def run_under_load(camera_first: bool) -> list[str]:
    """A camera worker that always has a frame ready, and 8 threads searching as fast as they can."""
    pipeline = SlowPipeline()
    kiosk = Kiosk(pipeline, camera_first=camera_first)  # type: ignore[arg-type]
    frame = Frame(np.zeros((48, 64, 3), np.uint8), 0.0, 0)
    photo = np.zeros((48, 64, 3), np.uint8)
    errors: list[BaseException] = []

    def search() -> None:
        try:
            for _ in range(SEARCHES_EACH):
                kiosk.search(photo)
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not swallowed
            errors.append(exc)

    searchers = [threading.Thread(target=search) for _ in range(SEARCHERS)]
    for thread in searchers:
        thread.start()
    for i in range(FRAMES):
        kiosk.process(replace_index(frame, i))
    for thread in searchers:
        thread.join(60)
    assert not errors and not any(t.is_alive() for t in searchers)
    assert kiosk.stats.frames_recognised == FRAMES and kiosk.stats.errors == 0
    return pipeline.uses


def replace_index(frame: Frame, index: int) -> Frame:
    return Frame(frame.rgb, frame.timestamp, index)


def test_at_most_one_search_runs_between_two_frames_under_load() -> None:
    uses = run_under_load(camera_first=True)
    assert uses.count("search") == SEARCHERS * SEARCHES_EACH  # searches are served, not starved
    assert max(searches_between_frames(uses)) <= 1, uses


def test_without_the_priority_searches_crowd_out_frames() -> None:
    """The plain lock of the previous release (kept as camera_first=False for the benchmark's "before")."""
    uses = run_under_load(camera_first=False)
    assert max(searches_between_frames(uses)) > 1


def test_searches_run_while_the_camera_has_no_frame() -> None:
    """No camera frame waiting (an API-only kiosk, or between frames): searches go straight through."""
    pipeline = SlowPipeline()
    kiosk = Kiosk(pipeline)  # type: ignore[arg-type]
    for _ in range(3):
        kiosk.search(np.zeros((8, 8, 3), np.uint8))
    assert pipeline.uses == ["search"] * 3


@pytest.mark.parametrize("camera_first", [True, False])
def test_an_error_in_the_pipeline_releases_it(camera_first: bool) -> None:
    kiosk = Kiosk(SimpleNamespace(config=RecognitionConfig(), roi=RoiConfig()), camera_first=camera_first)  # type: ignore[arg-type]
    frame = Frame(np.zeros((8, 8, 3), np.uint8), 0.0, 0)
    kiosk.process(frame)  # the fake has no recognize(): counted as an error, the lock is given back
    assert kiosk.stats.errors == 1
    with pytest.raises(AttributeError):
        kiosk.search(frame.rgb)
    kiosk.process(frame)
    assert kiosk.stats.errors == 2
