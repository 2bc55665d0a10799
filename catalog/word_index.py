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

The index is immutable and built when the catalog's search index is built, in
two vectorised passes over chunks of references: the first checks the stored
words (in range, sorted and unique per reference) and counts each word's
references, the second sorts a chunk by word (uint16 keys, which numpy sorts by
radix in linear time) and drops its reference numbers into each word's posting
list. References index the words of their 400 strongest keypoints
(`catalog.references`), ~390 distinct, so 100k references make ~39M postings,
2 bytes each (~78 MB; the low 16 bits of the reference number, see `WordIndex`); the
build takes ~2-3 s there, which is why a kiosk starts serving by embedding first
(`Catalog.start_index`).
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
_BLOCK = 2**16  # references per posting segment: a posting stores a reference number's low 16 bits
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
        names: Sequence[str] | None = None,
    ) -> None:
        """`words`: every reference's word ids one after another (uint16); `lengths[i]`: reference i's count.

        Each reference's words must be sorted and unique, as `encode_words` stores them (checked:
        CatalogError naming the reference, from `names` when given). One flat buffer rather than
        10^5 small arrays: at 100k references those cost the kiosk ~100 MB more memory, which
        Python's allocator keeps after the build.
        """
        self.n_references = len(lengths)
        self.n_words = int(n_words)
        flat = np.ascontiguousarray(words, dtype=np.uint16)
        offsets = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])
        if int(offsets[-1]) != len(flat):
            raise CatalogError(f"word index: lengths add up to {int(offsets[-1])}, not {len(flat)} words")
        # Two passes over chunks of references, so the build's temporaries (sort order, owners) are
        # one chunk's, never all 40M entries' at once. Pass 1 checks the words and counts each word's
        # references (no sort: a word appears once per reference); pass 2 sorts a chunk by word and
        # drops its owners into their slots.
        # Postings hold the low 16 bits of each reference number (2 bytes, not 4: 78 MB instead of
        # 156 MB at 100k references). A word's list is ascending, so it splits into one segment per
        # block of 65,536 references, and a segment's block gives the high bits: `_starts` indexes
        # segments, word w's block b being segment w * blocks + b. A build chunk never straddles a
        # block (_BLOCK is a multiple of _BUILD_CHUNK), so each chunk fills one segment per word.
        blocks = max(1, -(-self.n_references // _BLOCK))
        self._blocks = blocks
        starts = range(0, self.n_references, _BUILD_CHUNK)
        segment_df = np.zeros((self.n_words, blocks), np.int64)
        for start in starts:
            counts = np.bincount(self._checked_chunk(flat, offsets, start, names), minlength=self.n_words)
            segment_df[:, start // _BLOCK] += counts
        df = segment_df.sum(axis=1)
        self._starts = np.concatenate([[0], np.cumsum(segment_df.ravel())]).astype(np.int64)
        self._postings = np.empty(int(self._starts[-1]), np.uint16)
        filled = self._starts[:-1].copy().reshape(self.n_words, blocks)  # next free slot of each segment
        with np.errstate(divide="ignore"):
            idf = np.where(df > 0, np.log(max(self.n_references, 1) / np.maximum(df, 1)), 0.0)
        self._weight = (idf**2).astype(np.float32)  # what one shared word adds to the dot product
        norms = np.zeros(self.n_references, np.float64)
        for start in starts:
            last = min(start + _BUILD_CHUNK, self.n_references)
            block = start // _BLOCK
            chunk = flat[offsets[start] : offsets[last]]
            owners = np.repeat(np.arange(start, last, dtype=np.uint32), np.diff(offsets[start : last + 1]))
            # Each reference's words are one run of the chunk: its norm is a difference of running sums.
            running = np.concatenate([[0.0], np.cumsum(self._weight[chunk], dtype=np.float64)])
            norms[start:last] = np.diff(running[offsets[start : last + 1] - offsets[start]])
            # A stable radix sort by word keeps each word's owners ascending, as search expects.
            order = np.argsort(chunk, kind="stable")
            sorted_words = chunk[order]
            counts = np.bincount(sorted_words, minlength=self.n_words)
            first_of_word = np.concatenate([[0], np.cumsum(counts)[:-1]])
            slots = filled[sorted_words, block] + (np.arange(len(order)) - first_of_word[sorted_words])
            # put: ~40% faster than item assignment here
            np.put(self._postings, slots, (owners[order] & 0xFFFF).astype(np.uint16))
            filled[:, block] += counts
        empty = np.diff(offsets) == 0
        self._usable = (df > 0) & (df <= max(1.0, stop_fraction * self.n_references))
        self._inverse_norm = np.where(norms > 0, 1.0 / np.sqrt(np.maximum(norms, 1e-12)), 0.0).astype(np.float32)
        self.references_with_words = int(np.count_nonzero(~empty))
        for array in (self._postings, self._starts, self._weight, self._usable, self._inverse_norm):
            array.setflags(write=False)

    @classmethod
    def from_lists(
        cls, lists: Sequence[np.ndarray], n_words: int, *, stop_fraction: float = DEFAULT_STOP_FRACTION
    ) -> "WordIndex":
        """From one array of word ids per reference (any order, repeats allowed: a word counts once)."""
        arrays = [np.unique(np.asarray(w, dtype=np.uint16).ravel()) for w in lists]
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.uint16)
        lengths = np.fromiter((len(a) for a in arrays), np.int64, count=len(arrays))
        return cls(flat, lengths, n_words, stop_fraction=stop_fraction)

    def _checked_chunk(
        self, flat: np.ndarray, offsets: np.ndarray, first: int, names: Sequence[str] | None
    ) -> np.ndarray:
        """One chunk's words after checking them: inside the vocabulary, sorted and unique per reference."""
        last = min(first + _BUILD_CHUNK, self.n_references)
        chunk = flat[offsets[first] : offsets[last]]
        if len(chunk) == 0:
            return chunk
        if int(chunk.max()) >= self.n_words:
            raise CatalogError(f"word index: word id {int(chunk.max())} outside a {self.n_words}-word vocabulary")
        rises = np.diff(chunk.astype(np.int32)) > 0
        reference_starts = offsets[first + 1 : last] - offsets[first]  # where a new reference begins
        rises[reference_starts[(reference_starts > 0) & (reference_starts < len(chunk))] - 1] = True
        if not bool(rises.all()):
            position = int(offsets[first]) + int(np.argmin(rises)) + 1
            reference = int(np.searchsorted(offsets, position, side="right")) - 1
            name = names[reference] if names is not None else f"reference {reference}"
            raise CatalogError(f"words of {name}: word ids must be sorted and unique")
        return chunk

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
        segments = (words.astype(np.int64)[:, None] * self._blocks + np.arange(self._blocks)).ravel()
        starts, stops = self._starts[segments], self._starts[segments + 1]
        lengths = stops - starts
        total = int(lengths.sum())
        if total == 0:
            return empty
        # One gather for every segment: position j of segment i is starts[i] + j.
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        owners = self._postings[offsets + np.arange(total)].astype(np.int64)
        if self._blocks > 1:
            owners += np.repeat((segments % self._blocks) * _BLOCK, lengths)
        weights = np.repeat(np.repeat(self._weight[words], self._blocks), lengths)
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
