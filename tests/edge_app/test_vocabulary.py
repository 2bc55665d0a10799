"""The visual vocabulary: training, quantisation, and a file that refuses damage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shelfsight.edge_app.core.errors import InputError, ModelError
from shelfsight.edge_app.core.vocabulary import load_vocabulary, train_vocabulary


def clustered_descriptors(n: int, clusters: int, flip: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary descriptors around `clusters` random centres, each bit flipped with probability `flip`."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, (clusters, 32), dtype=np.uint8)
    owner = rng.integers(0, clusters, n)
    bits = np.unpackbits(centres[owner], axis=1) ^ (rng.random((n, 256)) < flip)
    return np.packbits(bits, axis=1), owner


@pytest.fixture(scope="module")
def vocabulary():
    descriptors, _ = clustered_descriptors(6000, 64, 0.05, seed=0)
    return train_vocabulary(descriptors, extractor="test", branching=8, depth=2, seed=1)


def test_quantize_gives_one_word_per_descriptor_within_the_vocabulary(vocabulary) -> None:
    descriptors, owner = clustered_descriptors(500, 64, 0.05, seed=0)
    words = vocabulary.quantize(descriptors)
    assert words.shape == (500,) and words.dtype == np.uint16 and int(words.max()) < vocabulary.n_words == 64
    # Descriptors of one cluster mostly share a word; of different clusters mostly do not.
    same = [len(set(words[owner == c])) for c in range(64) if (owner == c).sum() >= 5]
    assert np.median(same) <= 2
    assert len(set(words.tolist())) >= 32


def test_round_trip_keeps_the_fingerprint(vocabulary, tmp_path: Path) -> None:
    path = vocabulary.save(tmp_path / "v.npz")
    loaded = load_vocabulary(path, expect_fingerprint=vocabulary.fingerprint)
    assert loaded.fingerprint == vocabulary.fingerprint and loaded.extractor == "test"
    descriptors, _ = clustered_descriptors(50, 64, 0.05, seed=3)
    assert np.array_equal(loaded.quantize(descriptors), vocabulary.quantize(descriptors))


def test_damaged_foreign_or_other_vocabulary_files_are_refused(vocabulary, tmp_path: Path) -> None:
    path = vocabulary.save(tmp_path / "v.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError, match="not a readable vocabulary"):
        load_vocabulary(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, centres=np.zeros((3, 32), np.uint8))
    with pytest.raises(ModelError, match="not a readable vocabulary|not a shelfsight vocabulary"):
        load_vocabulary(foreign)
    with pytest.raises(ModelError, match="expected"):
        load_vocabulary(path, expect_fingerprint="0" * 64)
    with pytest.raises(ModelError, match="no such vocabulary"):
        load_vocabulary(tmp_path / "missing.npz")


def test_wrong_descriptor_shape_is_an_input_error(vocabulary) -> None:
    with pytest.raises(InputError):
        vocabulary.quantize(np.zeros((4, 61), np.uint8))
    assert vocabulary.quantize(np.zeros((0, 32), np.uint8)).shape == (0,)


def test_a_vocabulary_that_would_inflate_past_the_limit_is_refused_unread(tmp_path: Path) -> None:
    """A zip bomb: small on disk, huge once inflated; the sizes its archive claims are checked first."""
    from shelfsight.edge_app.core.vocabulary import MAX_FILE_BYTES

    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, centres=np.zeros(MAX_FILE_BYTES + 1, np.uint8), meta=np.zeros(1, np.uint8))
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ModelError, match="unpacks to"):
        load_vocabulary(bomb)
