"""Aligned similarity: the query rectified onto a verified reference and embedded again."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pytest

from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import CatalogError
from shelfsight.edge_app.core.features import LocalFeatures
from shelfsight.edge_app.core.images import iter_image_files, load_rgb
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.align import aligned_similarity, rectify
from shelfsight.edge_app.recognition.config import RecognitionConfig
from tests.support.fakes import ProjectionEmbedder


def _frame(width: int, height: int, version: int = 2) -> LocalFeatures:
    return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), (width, height), version)


def _texture(width: int, height: int) -> np.ndarray:
    """Smooth random colour blobs: bilinear resampling changes them little, so a round trip compares well."""
    coarse = np.random.default_rng(4).integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def test_rectify_undoes_the_warp_between_the_reference_and_the_query_region() -> None:
    reference = _texture(640, 480)  # the reference's work frame (landscape, as a box side would be)
    # Reference work frame -> query work frame (640 x 640): tilted, smaller, off centre.
    homography = cv2.getPerspectiveTransform(
        np.array([[0, 0], [640, 0], [640, 480], [0, 480]], np.float32),
        np.array([[120, 90], [560, 140], [530, 500], [90, 470]], np.float32),
    )
    query_work = cv2.warpPerspective(reference, homography, (640, 640), flags=cv2.INTER_LINEAR)
    roi = cv2.resize(query_work, (400, 400), interpolation=cv2.INTER_AREA)  # the region is not work-frame sized
    back = rectify(roi, _frame(640, 640), _frame(640, 480), homography)
    assert back.shape == reference.shape
    inside = np.s_[40:440, 40:600]  # away from the edges, where resampling smears the border
    error = np.abs(back[inside].astype(np.int16) - reference[inside].astype(np.int16)).mean()
    unaligned = np.abs(cv2.resize(roi, (640, 480))[inside].astype(np.int16) - reference[inside].astype(np.int16)).mean()
    assert error < 6.0 < unaligned, (error, unaligned)


def test_a_huge_reference_frame_is_rectified_at_the_work_frame_size() -> None:
    roi = _texture(320, 320)
    back = rectify(roi, _frame(640, 640), _frame(4096, 2048), np.diag([640 / 4096, 640 / 4096, 1.0]))
    assert back.shape == (320, 640, 3)  # not 2048 x 4096: the embedder sees a few hundred pixels
    error = np.abs(back[20:300, 20:620].astype(np.int16) - cv2.resize(roi, (640, 640))[20:300, 20:620]).mean()
    assert error < 6.0


def test_legacy_centre_square_features_are_not_aligned(embedder: Embedder) -> None:
    roi = _texture(320, 320)
    similarity = aligned_similarity(
        embedder, roi, _frame(320, 320, version=1), _frame(320, 320, version=1), np.eye(3), np.ones(embedder.dim)
    )
    assert similarity is None


@pytest.fixture(scope="module")
def pixel_catalog(sample_set: SampleSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Embedder, Any]]:
    """The sample products catalogued with an embedder that compares pixels (`ProjectionEmbedder`).

    The suite's tiny model gives every rendered view a cosine near 0.99 to its reference, tilted or
    not, so only an embedder that sees the framing can show what rectifying changes.
    """
    from shelfsight.edge_app.demo.run import build_sample_catalog

    pixels = ProjectionEmbedder(seed=5, dim=64, input_size=64, grid=16)
    db = tmp_path_factory.mktemp("pixel-catalog") / "catalog.db"
    catalog = build_sample_catalog(db, sample_set.catalog_dir, sample_set.products_csv, pixels)
    yield pixels, catalog
    catalog.close()


def test_verified_candidates_score_with_the_aligned_similarity(
    sample_set: SampleSet, pixel_catalog: tuple[Embedder, Any], full_config: RecognitionConfig
) -> None:
    pixels, catalog = pixel_catalog
    unclear = full_config.model_copy(update={"unknown_threshold": 3.0})  # no score clears it: everything aligns
    aligned = Recognizer(pixels, catalog, unclear)
    plain = Recognizer(pixels, catalog, unclear.model_copy(update={"align": False}))
    paths = list(iter_image_files(sample_set.queries_dir))
    lifted = looked_at = 0
    for path in paths:
        rgb = load_rgb(path)
        best = aligned.recognize(rgb).candidates[0]
        assert all(c.aligned_similarity is None for c in plain.recognize(rgb).candidates)  # off: nothing aligned
        if not best.verified:
            assert best.aligned_similarity is None
            continue
        assert best.aligned_similarity is not None and -1.0 <= best.aligned_similarity <= 1.0
        # The score takes the better of the two similarities, so aligning never lowers a verified match.
        bonus = best.inliers / (best.inliers + full_config.min_inliers)
        assert best.score == pytest.approx(max(best.similarity, best.aligned_similarity) + bonus)
        looked_at += 1
        lifted += best.aligned_similarity > best.similarity + 0.05
    # A product held at an angle, rectified onto its reference, looks more like it than the raw view does.
    assert looked_at >= len(paths) // 2
    assert lifted >= 0.75 * looked_at, (lifted, looked_at)


def test_a_clear_winner_is_not_aligned_and_wins_all_the_same(
    sample_set: SampleSet, pixel_catalog: tuple[Embedder, Any], full_config: RecognitionConfig
) -> None:
    pixels, catalog = pixel_catalog
    clear = Recognizer(pixels, catalog, full_config)  # threshold 0.5: any verified top clears it
    everything = Recognizer(pixels, catalog, full_config.model_copy(update={"unknown_threshold": 3.0}))
    skipped = 0
    for path in iter_image_files(sample_set.queries_dir):
        rgb = load_rgb(path)
        quick, full = clear.recognize(rgb), everything.recognize(rgb)
        assert quick.candidates[0].product_id == full.candidates[0].product_id
        # eval's ranking never skips: its scores are the ones calibration must see
        assert clear.rank(rgb, k=1) == [(full.candidates[0].product_id, pytest.approx(full.candidates[0].score))]
        top = quick.candidates[0]
        rivals = [c for c in quick.candidates[1:] if c.verified]
        if top.verified and all(1.0 + c.score - c.similarity <= top.score for c in rivals):
            assert all(c.aligned_similarity is None for c in quick.candidates)
            skipped += 1
    assert skipped  # the rule fired on some of the views


def test_aligning_costs_no_more_invokes_than_align_candidates(
    sample_set: SampleSet, sample_catalog: Any, embedder: Embedder, full_config: RecognitionConfig
) -> None:
    calls = []

    class Counting(Embedder):
        spec = embedder.spec

        def embed_batch(self, images: np.ndarray) -> np.ndarray:
            calls.append(len(images))
            return embedder.embed_batch(images)

    config = full_config.model_copy(update={"align_candidates": 1, "unknown_threshold": 3.0})
    recognizer = Recognizer(Counting(), sample_catalog, config)
    for path in list(iter_image_files(sample_set.queries_dir))[:6]:
        calls.clear()
        recognizer.recognize(load_rgb(path))
        assert sum(calls) <= 2  # the frame's own embedding and at most one aligned candidate


def test_a_reference_embedding_is_read_back_as_stored(sample_catalog: Any, embedder: Embedder) -> None:
    reference_id = sample_catalog.references()[0]["id"]
    vector = sample_catalog.reference_embedding(reference_id)
    assert vector.shape == (embedder.dim,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-3)  # stored as a unit vector
    hit = sample_catalog.search(vector, k=1)[0]
    assert hit.reference_id == reference_id and hit.score == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(CatalogError, match="no reference"):
        sample_catalog.reference_embedding("no-such-reference")


def test_a_damaged_reference_embedding_is_logged_and_recognition_goes_on(
    tmp_path: Path,
    sample_set: SampleSet,
    sample_catalog: Any,
    embedder: Embedder,
    full_config: RecognitionConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from shelfsight.catalog.store import Catalog

    unclear = full_config.model_copy(update={"unknown_threshold": 3.0})  # so that every verified top is aligned
    with Catalog(tmp_path / "kiosk.db") as catalog:
        catalog.replace_with_snapshot(json.loads(json.dumps(sample_catalog.export_snapshot())))
        recognizer = Recognizer(embedder, catalog, unclear)
        path = next(iter(iter_image_files(sample_set.queries_dir)))
        before = recognizer.recognize(load_rgb(path)).candidates[0]
        assert before.verified and before.aligned_similarity is not None
        # Damaged after the index was built: the search still works, the stored row does not.
        catalog.db.execute("UPDATE reference_images SET embedding = x'00'")
        with caplog.at_level(logging.WARNING, logger="shelfsight.edge_app.recognition.pipeline"):
            after = recognizer.recognize(load_rgb(path)).candidates[0]
        assert after.product_id == before.product_id and after.verified and after.aligned_similarity is None
        assert "cannot align" in caplog.text and "damaged embedding" in caplog.text
