"""The second candidate source: an inverted file from visual words to the references that contain them.

The embedding shortlist misses products the model never learnt to tell apart and
views it was not trained for (a box on its side, half covered by a hand). Local
features do not: a reference that shares many distinctive visual words with the
query is worth verifying whatever its embedding says. Scoring is the classic
tf-idf cosine of Nistér & Stewénius with binary term frequencies (a word counts
once per image, which keeps repeated texture such as a barcode from dominating):

    score(q, d) = sum over words w in both of idf(w)^2 / (|q| |d|),  idf(w) = log(N / df(w))

Words found in more than `stop_fraction` of the references say nothing about
which product this is and cost the most to look up, so queries skip them.

The index is immutable and built in one pass when the catalog's search index is
built: unique words per reference are sorted by word (uint16 keys, which numpy
sorts by radix in linear time), giving one contiguous posting list of reference
numbers per word. References index the words of their 400 strongest keypoints
(`catalog.references`), ~390 distinct, so 100k references make ~39M uint32
postings (~150 MB).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from shelfsight.edge_app.core.errors import CatalogError

log = logging.getLogger(__name__)

DEFAULT_STOP_FRACTION = 0.05
_BUILD_CHUNK = 2048  # references per build pass: ~25 MB of temporaries
MAX_WORDS_PER_REFERENCE = 4096  # one word per keypoint at most (core.features.MAX_KEYPOINTS)


def encode_words(words: np.ndarray) -> bytes:
    """A reference's words as stored and synced: sorted, unique, uint16 little endian."""
    return np.unique(np.asarray(words, dtype=np.uint16)).astype("<u2").tobytes()


def decode_words(data: bytes, n_words: int, name: str = "words") -> np.ndarray:
    """Inverse of `encode_words`, checked (length, order, range): CatalogError naming `name`."""
    if len(data) % 2 or len(data) > 2 * MAX_WORDS_PER_REFERENCE:
        raise CatalogError(f"{name}: {len(data)} bytes is not a list of at most {MAX_WORDS_PER_REFERENCE} words")
    words = np.frombuffer(data, dtype="<u2").astype(np.uint16)
    if len(words) and (int(words.max()) >= n_words or not bool(np.all(words[1:] > words[:-1]))):
        raise CatalogError(f"{name}: word ids must be sorted, unique and below {n_words}")
    return words


@dataclass(frozen=True)
class WordHits:
    """Reference numbers (rows of the search index) and their scores, best first."""

    references: np.ndarray  # (k,) int64
    scores: np.ndarray  # (k,) float32

    def __len__(self) -> int:
        return len(self.references)


class WordIndex:
    """Immutable inverted file over the visual words of N references."""

    def __init__(
        self,
        words: np.ndarray,
        lengths: np.ndarray,
        n_words: int,
        *,
        stop_fraction: float = DEFAULT_STOP_FRACTION,
    ) -> None:
        """`words`: every reference's word ids one after another (uint16); `lengths[i]`: reference i's count.

        One flat buffer rather than 10^5 small arrays: at 100k references those cost the kiosk
        ~100 MB more memory, which Python's allocator keeps after the build.
        """
        self.n_references = len(lengths)
        self.n_words = int(n_words)
        flat = np.ascontiguousarray(words, dtype=np.uint16)
        offsets = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])
        if int(offsets[-1]) != len(flat):
            raise CatalogError(f"word index: lengths add up to {int(offsets[-1])}, not {len(flat)} words")
        # Two passes over chunks of references, so the build's temporaries (sort order, copies) are
        # one chunk's, never all 40M entries' at once: the kiosk's memory holds little more than the
        # final posting lists. Pass 1 counts each word's references, pass 2 sorts a chunk by word
        # and drops it into its slots.
        starts = range(0, self.n_references, _BUILD_CHUNK)
        df = np.zeros(self.n_words, np.int64)
        for start in starts:
            df += self._sorted_chunk(flat, offsets, start)[2]
        self._starts = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
        self._postings = np.empty(int(self._starts[-1]), np.uint32)
        filled = self._starts[:-1].copy()  # next free slot of each word's list
        norms = np.zeros(self.n_references, np.float64)
        with_words = np.zeros(self.n_references, bool)
        with np.errstate(divide="ignore"):
            idf = np.where(df > 0, np.log(max(self.n_references, 1) / np.maximum(df, 1)), 0.0)
        self._weight = (idf**2).astype(np.float32)  # what one shared word adds to the dot product
        for start in starts:
            words, owners, counts = self._sorted_chunk(flat, offsets, start)
            chunk_starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self._postings[filled[words] + (np.arange(len(words)) - chunk_starts[words])] = owners
            filled += counts
            norms += np.bincount(owners, weights=self._weight[words].astype(np.float64), minlength=self.n_references)
            with_words[owners] = True
        self._usable = (df > 0) & (df <= max(1.0, stop_fraction * self.n_references))
        self._inverse_norm = np.where(norms > 0, 1.0 / np.sqrt(np.maximum(norms, 1e-12)), 0.0).astype(np.float32)
        self.references_with_words = int(np.count_nonzero(with_words))
        for array in (self._postings, self._starts, self._weight, self._usable, self._inverse_norm):
            array.setflags(write=False)

    @classmethod
    def from_lists(cls, lists: Sequence[np.ndarray], n_words: int, **options: float) -> "WordIndex":
        """From one array of word ids per reference."""
        arrays = [np.asarray(w, dtype=np.uint16).ravel() for w in lists]
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.uint16)
        return cls(flat, np.fromiter((len(a) for a in arrays), np.int64, count=len(arrays)), n_words, **options)

    def _sorted_chunk(
        self, flat: np.ndarray, offsets: np.ndarray, first: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One chunk's (word, owner) pairs sorted by word, a word repeated in one reference once, and counts per word."""
        last = min(first + _BUILD_CHUNK, self.n_references)
        all_words = flat[offsets[first] : offsets[last]]
        if len(all_words) and int(all_words.max()) >= self.n_words:
            raise CatalogError(f"word index: word id {int(all_words.max())} outside a {self.n_words}-word vocabulary")
        lengths = np.diff(offsets[first : last + 1])
        all_owners = np.repeat(np.arange(first, last, dtype=np.uint32), lengths)
        # Stable radix sort by word keeps each word's owners ascending, so a word repeated in one
        # reference lands on adjacent entries and one comparison drops it (binary term frequency).
        order = np.argsort(all_words, kind="stable")
        sorted_words, sorted_owners = all_words[order], all_owners[order]
        keep = np.ones(len(order), bool)
        keep[1:] = (sorted_words[1:] != sorted_words[:-1]) | (sorted_owners[1:] != sorted_owners[:-1])
        words, owners = sorted_words[keep], sorted_owners[keep]
        return words, owners, np.bincount(words, minlength=self.n_words).astype(np.int64)

    @property
    def nbytes(self) -> int:
        arrays = (self._postings, self._starts, self._weight, self._usable, self._inverse_norm)
        return int(sum(a.nbytes for a in arrays))

    def search(self, query_words: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> WordHits:
        """The `k` references with the highest tf-idf cosine to the query's words (none share a word: empty).

        `allowed`, if given, is a boolean mask over references (a search filter): others score 0.
        """
        empty = WordHits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        if self.n_references == 0 or k <= 0:
            return empty
        words = np.unique(np.asarray(query_words, dtype=np.uint16))
        words = words[words < self.n_words]
        words = words[self._usable[words]]
        if len(words) == 0:
            return empty
        starts, stops = self._starts[words], self._starts[words.astype(np.int64) + 1]
        lengths = stops - starts
        total = int(lengths.sum())
        if total == 0:
            return empty
        # One gather for every posting list: position j of list i is starts[i] + j.
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        owners = self._postings[offsets + np.arange(total)]
        weights = np.repeat(self._weight[words], lengths)
        scores = np.bincount(owners, weights=weights, minlength=self.n_references).astype(np.float32)
        query_norm = float(np.sqrt(self._weight[words].sum()))
        scores *= self._inverse_norm / max(query_norm, 1e-12)
        if allowed is not None:
            scores[~allowed] = 0.0
        k = min(k, self.n_references)
        top = np.argpartition(-scores, k - 1)[:k] if k < self.n_references else np.arange(self.n_references)
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[scores[top] > 0]
        return WordHits(top.astype(np.int64), scores[top])
