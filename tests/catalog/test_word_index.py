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
