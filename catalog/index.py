"""The in-memory search index: an immutable snapshot of a catalog's embeddings.

Search is two-stage. Every reference keeps its int8 embedding and scale; in
addition its sign bits are packed into 64-bit words, stored word-major
(W, N) so each word is one contiguous pass for numpy. A query first ranks all
references by Hamming distance of sign bits (xor + `np.bitwise_count`), keeps a
shortlist, then re-ranks the shortlist exactly with the dequantised int8 vectors
and groups references by product (a product scores its best reference). With 256
bits or more, a coarse pass over half the words first picks a pool, and only the
pool gets the other half. Small catalogs skip all this and score exactly.

The shortlist threshold is estimated from a strided sample of the distances
instead of a full histogram or argpartition over N; on a million references
that saves more time than the distance pass itself costs.

An index never changes after construction, so a reader holding one can never
see half an update; `Catalog` builds a new one and swaps a single reference.
The visual-word index (`catalog.word_index`), when the catalog has one, is part
of the same snapshot, so both candidate sources always describe one catalog.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from shelfsight.catalog.word_index import WordIndex
from shelfsight.edge_app.core.errors import CatalogError, InputError

log = logging.getLogger(__name__)

# Up to this many references, exact float scoring is as fast as the two-stage search.
EXACT_LIMIT = 4096
# Below this many dimensions the sign bits say too little to shortlist on; score exactly.
MIN_BITS_DIM = 64
DEFAULT_SHORTLIST = 256
# From this many references the sign-bit pass is split between two threads.
THREADED_LIMIT = 250_000
_SAMPLE_STRIDE = 32
_POOL_FACTOR = 8  # coarse pool target, in shortlists (about twice that many are kept)
_FILTER_CACHE_SIZE = 32


@dataclass(frozen=True)
class _Filter:
    """References passing a filter: the mask, its complement's indices, and the count."""

    mask: np.ndarray
    excluded: np.ndarray
    count: int


class SearchHit(NamedTuple):
    """A product and how well the query matches it (cosine of its best reference).

    A NamedTuple, not a frozen dataclass: every search builds several, and a frozen dataclass
    costs ~1 us each to construct, a tenth of a 1k-reference search.
    """

    product_id: str
    score: float
    reference_id: str


class WordHit(NamedTuple):
    """A product found by shared visual words: its best reference by word score, and that
    reference's embedding cosine to the query (so both candidate sources rank on one scale)."""

    product_id: str
    score: float  # embedding cosine of `reference_id`
    reference_id: str
    word_score: float


def sign_codes(vectors: np.ndarray) -> np.ndarray:
    """(N, D) float or int8 -> (W, N) uint64 sign bits, D padded with zeros to a multiple of 64."""
    vectors = np.asarray(vectors)
    n, dim = vectors.shape
    words = max(1, math.ceil(dim / 64))
    packed = np.zeros((n, words * 8), np.uint8)
    packed[:, : math.ceil(dim / 8)] = np.packbits(vectors > 0, axis=1, bitorder="little")
    return np.ascontiguousarray(packed.view("<u8").T)


class SearchIndex:
    """Immutable embedding index over a catalog's references.

    `codes` is int8 (N, D) with per-row `scales` (float ~= int8 * scale);
    `reference_products[i]` indexes `product_ids`; `product_fields[p]` is a flat
    dict of product p's filterable fields (category, name, price, attributes).
    """

    def __init__(
        self,
        *,
        reference_ids: Sequence[str],
        reference_products: np.ndarray,
        codes: np.ndarray,
        scales: np.ndarray,
        product_ids: Sequence[str],
        product_fields: Sequence[Mapping[str, Any]],
        dim: int,
        fingerprint: str | None,
        version: int = 0,
        shortlist: int = DEFAULT_SHORTLIST,
        words: WordIndex | None = None,
    ) -> None:
        self.reference_ids: tuple[str, ...] = tuple(reference_ids)
        self.reference_products = np.ascontiguousarray(reference_products, dtype=np.int32)
        self.codes = np.ascontiguousarray(codes, dtype=np.int8)
        self.scales = np.ascontiguousarray(scales, dtype=np.float32)
        self.product_ids: tuple[str, ...] = tuple(product_ids)
        self.product_fields: tuple[Mapping[str, Any], ...] = tuple(product_fields)
        self.dim = int(dim)
        self.fingerprint = fingerprint
        self.version = int(version)
        self.shortlist = int(shortlist)
        n = len(self.reference_ids)
        if self.codes.shape != (n, self.dim) or self.scales.shape != (n,) or self.reference_products.shape != (n,):
            raise CatalogError(f"index arrays disagree: {n} ids, codes {self.codes.shape}, scales {self.scales.shape}")
        if n and (self.reference_products.min() < 0 or self.reference_products.max() >= len(self.product_ids)):
            raise CatalogError("index: reference points at an unknown product")
        for array in (self.reference_products, self.codes, self.scales):
            array.setflags(write=False)
        if words is not None and words.n_references != n:
            raise CatalogError(f"index: word index covers {words.n_references} references, the index {n}")
        self.words = words
        # Exact search scores dequantised vectors; the two-stage path re-ranks with the same numbers.
        exact = n <= EXACT_LIMIT or self.dim < MIN_BITS_DIM
        self._dense = (self.codes.astype(np.float32) * self.scales[:, None]) if exact else None
        self._bits = None if exact else sign_codes(self.codes)
        # Fewer bits or more references -> more near-ties in Hamming distance -> longer shortlist.
        bits = 64 * (len(self._bits) if self._bits is not None else 1)
        self._shortlist = int(
            self.shortlist * max(1.0, 256 / max(1, min(bits, self.dim))) * max(1.0, math.sqrt(n / 100_000))
        )
        self._filters: dict[tuple[Any, ...], _Filter] = {}
        self._filters_lock = threading.Lock()
        self._local = threading.local()
        # Sign-bit distances fit a byte up to 255 bits; 256 bits wrap only for an exact antipode.
        self._dist_dtype = np.uint8 if self._bits is not None and len(self._bits) <= 4 else np.uint16

    @classmethod
    def empty(cls, dim: int = 0, fingerprint: str | None = None, version: int = 0) -> "SearchIndex":
        return cls(
            reference_ids=(),
            reference_products=np.zeros(0, np.int32),
            codes=np.zeros((0, dim), np.int8),
            scales=np.zeros(0, np.float32),
            product_ids=(),
            product_fields=(),
            dim=dim,
            fingerprint=fingerprint,
            version=version,
        )

    def __len__(self) -> int:
        return len(self.reference_ids)

    def with_words(self, words: WordIndex) -> "SearchIndex":
        """This index with the word index `words` over the same references; the arrays are shared, not copied."""
        if words.n_references != len(self):
            raise CatalogError(f"index: word index covers {words.n_references} references, the index {len(self)}")
        twin = copy.copy(self)
        twin.words = words
        twin._filters, twin._filters_lock, twin._local = {}, threading.Lock(), threading.local()
        return twin

    # ---- filters --------------------------------------------------------------------------

    def _filter(self, category: str | None, where: Mapping[str, Any] | None) -> _Filter | None:
        """The references whose product passes the filters, or None for no filter (cached per filter)."""
        conditions: dict[str, Any] = dict(where or {})
        if category is not None:
            conditions["category"] = category
        if not conditions:
            return None
        key = tuple(
            sorted((k, tuple(v) if isinstance(v, (list, tuple, set, frozenset)) else v) for k, v in conditions.items())
        )
        with self._filters_lock:
            cached = self._filters.get(key)
        if cached is not None:
            return cached
        allowed = np.array([_matches(fields, conditions) for fields in self.product_fields], dtype=bool)
        mask = allowed[self.reference_products] if len(self) else np.zeros(0, bool)
        result = _Filter(mask, np.flatnonzero(~mask), int(mask.sum()))
        for array in (result.mask, result.excluded):
            array.setflags(write=False)
        with self._filters_lock:
            if len(self._filters) >= _FILTER_CACHE_SIZE:
                self._filters.pop(next(iter(self._filters)))
            self._filters[key] = result
        return result

    # ---- search ---------------------------------------------------------------------------

    def _query(self, embedding: np.ndarray) -> np.ndarray:
        query = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if query.shape != (self.dim,):
            raise InputError(f"query embedding has {query.size} values, the catalog's model makes {self.dim}")
        norm = float(np.linalg.norm(query))
        if not math.isfinite(norm) or norm == 0.0:
            raise InputError("query embedding is zero or not finite")
        return query / norm

    def _scratch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-thread work buffers: reusing them avoids page-faulting fresh megabytes every query."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            n = len(self)
            buffers = (np.empty(n, np.uint64), np.empty(n, np.uint8), np.empty(n, self._dist_dtype))
            self._local.buffers = buffers
        return buffers

    def _hamming(self, qbits: np.ndarray, words: int) -> np.ndarray:
        """Sign-bit Hamming distance over the first `words` words to every reference (per-thread buffer).

        Large indexes split the pass between two threads: numpy releases the GIL in these loops,
        and a million references take milliseconds, against ~0.1 ms to start a thread.
        """
        assert self._bits is not None
        word, count, dist = self._scratch()
        bits = self._bits

        def part(start: int, stop: int) -> None:
            w, c, d = word[start:stop], count[start:stop], dist[start:stop]
            np.bitwise_xor(bits[0, start:stop], qbits[0], out=w)
            np.bitwise_count(w, out=c)
            d[:] = c
            for j in range(1, words):
                np.bitwise_xor(bits[j, start:stop], qbits[j], out=w)
                np.bitwise_count(w, out=c)
                np.add(d, c, out=d)

        n = len(self)
        if n >= THREADED_LIMIT:
            helper = threading.Thread(target=part, args=(0, n // 2), name="search-half", daemon=True)
            helper.start()
            part(n // 2, n)
            helper.join()
        else:
            part(0, n)
        return dist

    def _nearest(self, dist: np.ndarray, allowed: "_Filter | None", size: int) -> np.ndarray:
        """Indices of at least `size` references (about 2x) with the smallest `dist` (filter respected)."""
        ceiling = int(np.iinfo(dist.dtype).max)
        eligible = len(self)
        if allowed is not None:
            dist[allowed.excluded] = ceiling
            eligible = allowed.count
        size = min(size, eligible)
        if size == 0:
            return np.zeros(0, np.intp)
        # Threshold from a histogram of a strided sample, then one cheap comparison pass.
        sample_counts = np.cumsum(np.bincount(dist[::_SAMPLE_STRIDE], minlength=ceiling + 1))
        threshold = int(np.searchsorted(sample_counts, (2 * size) // _SAMPLE_STRIDE + 1))
        while True:
            found = np.flatnonzero(dist <= threshold)
            if len(found) >= size or threshold >= ceiling:
                break
            threshold += 1
        if len(found) > 4 * size:
            found = found[np.argpartition(dist[found], 2 * size)[: 2 * size]]
        if allowed is not None:
            # A distance can reach the ceiling (or wrap to 0 for an exact antipode in uint8);
            # the filter is re-applied and the exact re-rank discards any stray far vector.
            found = found[allowed.mask[found]]
        return found

    def _candidates(self, query: np.ndarray, allowed: "_Filter | None", size: int) -> np.ndarray:
        """Indices of at least `size` references nearest by sign-bit Hamming distance (filter respected).

        With 256 bits or more, a coarse pass over the first half of the words keeps a generous
        pool (about 16x the shortlist, at least 1/64 of the index) and only that pool gets the other
        half: it halves the pass over every reference at no measured cost in recall. Where the pool
        would be more than 1/16 of the index (below ~33k references at the default shortlist),
        completing it costs more than it saves, and one full pass is used.
        """
        assert self._bits is not None
        qbits = sign_codes(query[None])[:, 0]
        words = len(self._bits)
        pool_size = max(_POOL_FACTOR * size, len(self) // 128)
        if words < 4 or len(self) < 16 * pool_size:  # the pool would be a large share: one full pass
            return self._nearest(self._hamming(qbits, words), allowed, size)
        coarse = words // 2
        dist = self._hamming(qbits, coarse)
        pool = self._nearest(dist, allowed, pool_size)
        if len(pool) <= 2 * size:
            return pool
        full = dist[pool].astype(np.uint16)
        for row, qword in zip(self._bits[coarse:], qbits[coarse:]):
            full += np.bitwise_count(row[pool] ^ qword)
        return pool[np.argpartition(full, 2 * size)[: 2 * size]]

    def search(
        self,
        embedding: np.ndarray,
        k: int = 5,
        *,
        category: str | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[SearchHit]:
        """Top-k products for a query embedding, best first; each scored by its best reference.

        `category` and `where` (field -> value, or -> list of accepted values;
        fields are product columns or attributes) restrict the products searched.
        """
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        query = self._query(embedding)
        if not len(self):
            return []
        allowed = self._filter(category, where)
        if self._dense is not None:
            scores = _dot(self._dense, query)
            if allowed is not None:
                scores[allowed.excluded] = -np.inf
            return self._top_products(np.arange(len(self)), scores, k)
        eligible = len(self) if allowed is None else allowed.count
        size = max(self._shortlist, 8 * k)
        while True:
            found = self._candidates(query, allowed, size)
            scores = _dot(self.codes[found], query) * self.scales[found]
            hits = self._top_products(found, scores, k)
            # Many references of one product can crowd the shortlist; widen it until k products appear.
            if len(hits) >= k or len(found) >= eligible:
                return hits
            size *= 4

    def search_words(
        self,
        words: np.ndarray,
        k: int,
        embedding: np.ndarray,
        *,
        category: str | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[WordHit]:
        """Top-k products by shared visual words (no word index, or nothing shared: empty), best first."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        if self.words is None or not len(self):
            return []
        query = self._query(embedding)
        allowed = self._filter(category, where)
        # References, not products, come back from the inverted file: ask for enough that
        # several views of one product cannot crowd out the k-th product.
        found = self.words.search(words, 4 * k, allowed=None if allowed is None else allowed.mask)
        if not len(found):
            return []
        similarity = _dot(self.codes[found.references], query) * self.scales[found.references]
        hits: list[WordHit] = []
        seen: set[int] = set()
        for row, word_score, cosine in zip(found.references.tolist(), found.scores.tolist(), similarity.tolist()):
            product = int(self.reference_products[row])
            if product in seen:
                continue
            seen.add(product)
            hits.append(WordHit(self.product_ids[product], float(cosine), self.reference_ids[row], float(word_score)))
            if len(hits) == k:
                break
        return hits

    def _top_products(self, rows: np.ndarray, scores: np.ndarray, k: int) -> list[SearchHit]:
        # Most queries find k distinct products among the best few dozen references: partition
        # those out and sort only them (a full argsort of 4k scores costs 0.2 ms), falling back
        # to the full order when one product's references crowd the head.
        head = min(len(scores), max(64, 16 * k))
        if head < len(scores):
            top = np.argpartition(-scores, head - 1)[:head]
            hits = self._group(rows, scores, top[np.argsort(-scores[top], kind="stable")], k)
            if len(hits) == k:
                return hits
        return self._group(rows, scores, np.argsort(-scores, kind="stable"), k)

    def _group(self, rows: np.ndarray, scores: np.ndarray, order: np.ndarray, k: int) -> list[SearchHit]:
        """The first k distinct products in `order` (positions into rows/scores), each with its best reference."""
        ranked_rows = rows[order]
        hits: list[SearchHit] = []
        seen: set[int] = set()
        # Plain Python numbers: numpy scalar indexing in this loop cost more than the search.
        for row, product, score in zip(
            ranked_rows.tolist(), self.reference_products[ranked_rows].tolist(), scores[order].tolist()
        ):
            if score == -math.inf:  # excluded by a filter; the rest are too
                break
            if product in seen:
                continue
            seen.add(product)
            hits.append(SearchHit(self.product_ids[product], score, self.reference_ids[row]))
            if len(hits) == k:
                break
        return hits


def _dot(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    """matrix @ query, one single-threaded dot per row. Not BLAS gemv: OpenBLAS wakes extra threads
    for a few hundred rows, and on two cores busy with the interpreter waiting for them costs more
    (milliseconds at p95) than the product itself. `vecdot` is 1.7x faster than `einsum` here
    (1k x 256: 29 vs 49 us); int8 rows are widened first (700 x 256: 42 vs 81 us)."""
    return np.vecdot(matrix.astype(np.float32, copy=False), query)


def value_matches(value: Any, wanted: Any) -> bool:
    """Whether a product's field `value` passes a filter's `wanted` value (or any of a list of them).

    Filters are typed by people (`--where price=1.95`, `--category Milk`): numbers compare as
    numbers whichever side is text, text compares case-insensitively.
    """
    if isinstance(wanted, (list, tuple, set, frozenset)):
        return any(value_matches(value, one) for one in wanted)
    if value is None or wanted is None:
        return value is None and wanted is None
    number, wanted_number = _as_number(value), _as_number(wanted)
    if number is not None and wanted_number is not None:
        return number == wanted_number
    if isinstance(value, str) and isinstance(wanted, str):
        return value.casefold() == wanted.casefold()
    return bool(value == wanted)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _matches(fields: Mapping[str, Any], conditions: Mapping[str, Any]) -> bool:
    return all(value_matches(fields.get(key), wanted) for key, wanted in conditions.items())
