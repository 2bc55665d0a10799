"""The learned empty view: a textured counter becomes "empty", an unknown product held still never does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shelfsight.edge_app.camera import Frame
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.demo.samples import (
    Pose,
    SampleSet,
    cluttered_background,
    compose,
    make_designs,
    photometric,
    render_package,
)
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.background import RECHECK_EVERY, BackgroundModel, thumbnail
from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.recognition.pipeline import crop_roi

LEARN = 4  # still frames that make the first background in these tests (the kiosk's default is 50)


def view(seed: int) -> np.ndarray:
    """A textured scene of its own; views of different seeds are far apart, one seed's are identical."""
    return thumbnail(cluttered_background(np.random.default_rng(seed), 160, 120))


def feed(model: BackgroundModel, thumb: np.ndarray, frames: int, recognised: bool = False) -> None:
    for _ in range(frames):
        model.observe(thumb, recognised)


def test_the_first_still_view_is_learned_and_refreshed() -> None:
    model = BackgroundModel(LEARN)
    wall = view(1)
    feed(model, wall, LEARN)  # the first frame has nothing to be still against
    assert not model.learned
    feed(model, wall, 1)
    assert model.learned and model.matches(cluttered_background(np.random.default_rng(1), 160, 120))[0]
    feed(model, wall + 3.0, LEARN + 1)  # the same wall, a little brighter: still the background
    assert model.matches(cluttered_background(np.random.default_rng(1), 160, 120))[0]


def test_a_view_held_in_front_of_the_background_is_not_learned_until_much_later() -> None:
    model = BackgroundModel(LEARN, replace_frames=10 * LEARN)
    feed(model, view(1), LEARN + 1)
    held = view(2)
    feed(model, held, 10 * LEARN)  # ten times what made the first background: still not "empty"
    assert model.learned and not model._is_background(held)
    feed(model, held, 1)  # a changed counter, there for good: it is learned in the end
    assert model._is_background(held)


def test_a_recognised_or_moving_view_is_never_learned() -> None:
    model = BackgroundModel(LEARN)
    feed(model, view(3), 5 * LEARN, recognised=True)
    assert not model.learned
    for i in range(5 * LEARN):
        model.observe(view(10 + i), recognised=False)  # something moving about in front of the camera
    assert not model.learned


def test_recheck_cadence_and_forget() -> None:
    model = BackgroundModel(LEARN)
    feed(model, view(1), LEARN + 1)
    due = [model.recheck_due() for _ in range(2 * RECHECK_EVERY)]
    assert due.count(True) == 2 and due[RECHECK_EVERY - 1] and due[-1]
    model.forget()
    assert not model.learned


def test_impossible_settings_and_defaults() -> None:
    with pytest.raises(ValueError):
        BackgroundModel(10, replace_frames=5)
    assert BackgroundModel.from_config(RecognitionConfig()).replace_frames == 50 * 36
    off = BackgroundModel(0)
    feed(off, view(1), 100)
    assert not off.learned


def wall_frames(rng: np.random.Generator) -> tuple[np.ndarray, Any]:
    wall = cluttered_background(rng, 480, 360)  # a poster wall: far too textured to look "empty"
    return wall, lambda rgb: photometric(rgb, rng, 0.1)


def test_an_unknown_product_held_still_stays_not_recognised(
    sample_catalog: Any, embedder: Embedder, full_config: RecognitionConfig, sample_set: SampleSet
) -> None:
    """Issue 12: held still for ~5 s (the default 50 frames), an unknown product was learned and became 'empty'."""
    kiosk = Kiosk(Recognizer(embedder, sample_catalog, full_config.model_copy(update={"background_frames": LEARN})))
    rng = np.random.default_rng(7)
    wall, noisy = wall_frames(rng)
    for i in range(LEARN + 2):
        kiosk.process(Frame(noisy(wall), 0.0, i))
    assert kiosk.background.learned and kiosk.state().frame.decision == "empty"  # type: ignore[union-attr]
    # A design the catalog lacks (the next one, P0009, repeats P0001's kind and pattern and is taken for it).
    stranger = make_designs(sample_set.n_products + 2, sample_set.seed)[-1]
    assert stranger.sku not in {p["id"] for p in sample_catalog.products()}
    held = compose(wall, render_package(stranger), Pose(0.5, 0.5, 0.8, yaw=10))
    decisions = [kiosk.process(Frame(noisy(held), 0.0, 100 + i)).frame.decision for i in range(6 * LEARN)]  # type: ignore[union-attr]
    assert decisions == ["unknown"] * len(decisions)
    assert kiosk.state().announcement.decision == "unknown"
    # Taken away: the wall is the empty view again, at once.
    assert kiosk.process(Frame(noisy(wall), 0.0, 200)).frame.decision == "empty"  # type: ignore[union-attr]


def test_a_product_taught_while_it_was_the_background_is_found_again(
    sample_catalog: Any, embedder: Embedder, full_config: RecognitionConfig, sample_set: SampleSet
) -> None:
    """A still view learned while unknown (say, at start-up) that the catalog has since: the recheck drops it."""
    kiosk = Kiosk(Recognizer(embedder, sample_catalog, full_config.model_copy(update={"background_frames": LEARN})))
    rng = np.random.default_rng(8)
    wall, noisy = wall_frames(rng)
    design = sample_set.designs[2]
    held = compose(wall, render_package(design), Pose(0.5, 0.5, 0.8, yaw=15))
    # Learned as if the pipeline had not recognised it.
    feed(kiosk.background, thumbnail(crop_roi(held, kiosk.recognizer.roi)), LEARN + 1)
    assert kiosk.background.learned
    frames = [kiosk.process(Frame(noisy(held), 0.0, i)).frame for i in range(RECHECK_EVERY + 1)]
    assert [f.decision for f in frames[: RECHECK_EVERY - 1]] == ["empty"] * (RECHECK_EVERY - 1)  # type: ignore[union-attr]
    assert frames[RECHECK_EVERY - 1].product_id == design.sku  # type: ignore[union-attr]
    assert not kiosk.background.learned
    assert frames[RECHECK_EVERY].product_id == design.sku  # type: ignore[union-attr]
