"""The inverted file over visual words: who shares the most distinctive words with a query."""

from __future__ import annotations

import numpy as np
import pytest

from shelfsight.catalog.word_index import WordIndex
from shelfsight.edge_app.core.errors import CatalogError


def test_the_reference_sharing_distinctive_words_ranks_first() -> None:
    rng = np.random.default_rng(0)
    references = [rng.choice(4096, 80, replace=False).astype(np.uint16) for _ in range(300)]
    index = WordIndex.from_lists(references, 4096)
    query = np.concatenate([references[42][:30], rng.choice(4096, 50).astype(np.uint16)])
    hits = index.search(query, 5)
    assert hits.references[0] == 42
    assert list(hits.scores) == sorted(hits.scores, reverse=True) and 0 < hits.scores[0] <= 1.0001


def test_repeated_words_count_once_and_common_words_are_skipped() -> None:
    common = np.uint16(7)
    references = [np.array([common, common, common, i + 100], np.uint16) for i in range(50)]
    index = WordIndex.from_lists(references, 256, stop_fraction=0.5)
    assert len(index.search(np.array([common]), 5)) == 0  # in every reference: says nothing
    hits = index.search(np.array([common, 120]), 5)
    assert hits.references.tolist() == [20]


def test_no_shared_word_empty_catalog_and_filters() -> None:
    index = WordIndex.from_lists([np.array([1, 2], np.uint16), np.array([3], np.uint16), np.zeros(0, np.uint16)], 16)
    assert len(index.search(np.array([9, 10]), 3)) == 0
    assert len(index.search(np.zeros(0, np.uint16), 3)) == 0
    assert index.references_with_words == 2
    assert index.search(np.array([1, 3]), 3, allowed=np.array([False, True, True])).references.tolist() == [1]
    assert len(WordIndex.from_lists([], 16).search(np.array([1]), 3)) == 0


def test_word_ids_outside_the_vocabulary_are_refused() -> None:
    with pytest.raises(CatalogError, match="outside"):
        WordIndex.from_lists([np.array([300], np.uint16)], 256)


def test_unsorted_or_repeated_stored_words_are_refused_naming_the_reference() -> None:
    """The constructor takes words as stored (sorted, unique per reference) and checks them in bulk."""
    good = np.array([1, 5, 9], np.uint16)
    for bad in (np.array([5, 1], np.uint16), np.array([3, 3], np.uint16)):
        flat = np.concatenate([good, bad, good])
        with pytest.raises(CatalogError, match="words of b: word ids must be sorted and unique"):
            WordIndex(flat, np.array([3, 2, 3]), 16, names=["a", "b", "c"])
    # A reference ending low and the next starting high is fine: runs are checked per reference.
    index = WordIndex(np.array([9, 12, 1, 2], np.uint16), np.array([2, 0, 2]), 16)
    assert index.references_with_words == 2 and index.search(np.array([12]), 3).references.tolist() == [0]


def _tf_idf(lists: list[np.ndarray], query: np.ndarray, n_words: int, stop_fraction: float) -> np.ndarray:
    """The scores the module docstring defines, from flat (reference, word) pairs: the yardstick."""
    unique = [np.unique(w) for w in lists]
    words = np.concatenate(unique).astype(np.int64)
    owners = np.repeat(np.arange(len(lists)), [len(w) for w in unique])
    df = np.bincount(words, minlength=n_words).astype(float)
    idf2 = np.where(df > 0, np.log(len(lists) / np.maximum(df, 1)), 0.0) ** 2
    asked = np.zeros(n_words, bool)
    asked[np.unique(query)] = True
    asked &= (df > 0) & (df <= max(1.0, stop_fraction * len(lists)))
    norms = np.sqrt(np.bincount(owners, weights=idf2[words], minlength=len(lists)))
    shared = np.bincount(owners, weights=idf2[words] * asked[words], minlength=len(lists))
    query_norm = np.sqrt(idf2[asked].sum())
    return np.where(norms > 0, shared / np.maximum(norms, 1e-12) / max(query_norm, 1e-12), 0.0)


def test_references_past_65536_keep_their_numbers_and_scores() -> None:
    """Postings store a reference number's low 16 bits; its block of 65,536 references gives the rest."""
    rng = np.random.default_rng(5)
    n, n_words = 140_000, 4096  # three blocks, the last one partly filled
    lengths = rng.integers(0, 12, n)
    lists = np.split(rng.integers(0, 3900, int(lengths.sum())), np.cumsum(lengths)[:-1])
    for special in (65_535, 65_536, 131_072, n - 1):
        lists[special] = np.array([4000 + special % 7, 4090])  # words no one else has, but for 4090
        lists[(special * 7) % 1000] = np.array([4090])
    index = WordIndex.from_lists(lists, n_words)
    for special in (65_535, 65_536, 131_072, n - 1):
        query = np.array([4000 + special % 7, 4090, 17])
        hits = index.search(query, 5)
        expected = _tf_idf(lists, query, n_words, 0.05)
        assert int(hits.references[0]) == special
        np.testing.assert_allclose(hits.scores, np.sort(expected)[::-1][: len(hits)], rtol=1e-5)
        assert set(hits.references.tolist()) <= set(np.flatnonzero(expected > 0).tolist())


def test_indexed_keypoints_cover_the_whole_reference_not_only_its_boldest_print() -> None:
    """A package whose top is bold print and the rest faint: the faint part's keypoints are indexed too.

    The strongest 400 keypoints all sat on the bold top, so a view of the rest (the top out of the
    frame, a hand over the logo) shared few indexed words with its reference.
    """
    import cv2

    from shelfsight.catalog.references import MAX_INDEXED_KEYPOINTS, indexed_keypoints
    from shelfsight.edge_app.core.features import extract_features

    blocks = np.random.default_rng(5).integers(0, 256, (80, 60, 3)).astype(np.uint8)
    package = cv2.resize(blocks, (480, 640), interpolation=cv2.INTER_NEAREST)
    faint = package[160:].astype(np.float32)
    package[160:] = np.clip((faint - 128) * 0.6 + 128, 0, 255).astype(np.uint8)
    features = extract_features(package, 1000, 640)
    assert len(features) > MAX_INDEXED_KEYPOINTS
    chosen = indexed_keypoints(features)
    assert len(chosen) == MAX_INDEXED_KEYPOINTS and np.all(np.diff(chosen) > 0)
    below = features.points[:, 1] > 160
    assert below[:MAX_INDEXED_KEYPOINTS].sum() < 0.25 * below.sum()  # the strongest overall: the top
    assert below[chosen].sum() == below.sum()  # the faint part has few keypoints: all of them are kept
    # Within a cell the strongest (stored first) are the ones kept.
    cell = (features.points[:, 1] // 80).astype(int) * 8 + (features.points[:, 0] // 60).astype(int)
    for c in np.unique(cell):
        mine = np.flatnonzero(cell == c)
        assert np.array_equal(np.intersect1d(mine, chosen), mine[: len(np.intersect1d(mine, chosen))])
    few = extract_features(package[:100], 300, 320)
    assert np.array_equal(indexed_keypoints(few), np.arange(len(few)))  # under the limit: every keypoint
