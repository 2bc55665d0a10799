"""The in-memory search index: an immutable snapshot of a catalog's embeddings.

Search is two-stage. Every reference keeps its int8 embedding and scale; in
addition its sign bits are packed into 64-bit words, stored word-major
(W, N) so each word is one contiguous pass for numpy. A query first ranks all
references by Hamming distance of sign bits (xor + `np.bitwise_count`), keeps a
shortlist, then re-ranks the shortlist exactly with the dequantised int8
vectors and groups references by product (a product scores its best
reference). Small catalogs skip the first stage and score everything exactly.

The shortlist threshold is estimated from a strided sample of the distances
instead of a full histogram or argpartition over N; on a million references
that saves more time than the distance pass itself costs.

An index never changes after construction, so a reader holding one can never
see half an update; `Catalog` builds a new one and swaps a single reference.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from edge_app.errors import CatalogError, InputError

log = logging.getLogger(__name__)

# Up to this many references, exact float scoring is as fast as the two-stage search.
EXACT_LIMIT = 16_384
# Below this many dimensions the sign bits say too little to shortlist on; score exactly.
MIN_BITS_DIM = 64
DEFAULT_SHORTLIST = 256
_SAMPLE_STRIDE = 32
_MASK_CACHE_SIZE = 32


@dataclass(frozen=True)
class SearchHit:
    """A product and how well the query matches it (cosine of its best reference)."""

    product_id: str
    score: float
    reference_id: str


def sign_codes(vectors: np.ndarray) -> np.ndarray:
    """(N, D) float or int8 -> (W, N) uint64 sign bits, D padded with zeros to a multiple of 64."""
    vectors = np.asarray(vectors)
    n, dim = vectors.shape
    words = max(1, math.ceil(dim / 64))
    bits = np.zeros((n, words * 64), dtype=bool)
    bits[:, :dim] = vectors > 0
    packed = np.packbits(bits, axis=1, bitorder="little")  # (N, W*8) bytes
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
        # Exact search scores dequantised vectors; the two-stage path re-ranks with the same numbers.
        exact = n <= EXACT_LIMIT or self.dim < MIN_BITS_DIM
        self._dense = (self.codes.astype(np.float32) * self.scales[:, None]) if exact else None
        self._bits = None if exact else sign_codes(self.codes)
        self._masks: dict[tuple[Any, ...], np.ndarray] = {}
        self._masks_lock = threading.Lock()

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

    # ---- filters --------------------------------------------------------------------------

    def _reference_mask(self, category: str | None, where: Mapping[str, Any] | None) -> np.ndarray | None:
        """Boolean (N,) of references whose product passes the filters, or None for no filter."""
        conditions: dict[str, Any] = dict(where or {})
        if category is not None:
            conditions["category"] = category
        if not conditions:
            return None
        key = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple, set, frozenset)) else v) for k, v in conditions.items()))
        with self._masks_lock:
            cached = self._masks.get(key)
        if cached is not None:
            return cached
        allowed = np.array([_matches(fields, conditions) for fields in self.product_fields], dtype=bool)
        mask = allowed[self.reference_products] if len(self) else np.zeros(0, bool)
        mask.setflags(write=False)
        with self._masks_lock:
            if len(self._masks) >= _MASK_CACHE_SIZE:
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = mask
        return mask

    # ---- search ---------------------------------------------------------------------------

    def _query(self, embedding: np.ndarray) -> np.ndarray:
        query = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if query.shape != (self.dim,):
            raise InputError(f"query embedding has {query.size} values, the catalog's model makes {self.dim}")
        norm = float(np.linalg.norm(query))
        if not math.isfinite(norm) or norm == 0.0:
            raise InputError("query embedding is zero or not finite")
        return query / norm

    def _candidates(self, query: np.ndarray, mask: np.ndarray | None, size: int) -> np.ndarray:
        """Indices of about `size` references nearest by sign-bit Hamming distance (mask respected)."""
        assert self._bits is not None
        qbits = sign_codes(query[None])[:, 0]
        n = len(self)
        dist = np.empty(n, np.uint16)
        word = np.empty(n, np.uint64)
        count = np.empty(n, np.uint8)
        np.bitwise_xor(self._bits[0], qbits[0], out=word)
        np.bitwise_count(word, out=count)
        dist[:] = count
        for row, qword in zip(self._bits[1:], qbits[1:]):
            np.bitwise_xor(row, qword, out=word)
            np.bitwise_count(word, out=count)
            dist += count
        eligible = n
        if mask is not None:
            dist[~mask] = np.iinfo(np.uint16).max
            eligible = int(np.count_nonzero(mask))
        size = min(size, eligible)
        if size == 0:
            return np.zeros(0, np.intp)
        # Threshold from a sample, then one cheap comparison pass; rarely needs a second try.
        sample = np.sort(dist[::_SAMPLE_STRIDE])
        position = min(len(sample) - 1, (2 * size) // _SAMPLE_STRIDE + 1)
        threshold = int(sample[position])
        while True:
            found = np.flatnonzero(dist <= threshold)
            if len(found) >= size or threshold >= 64 * len(self._bits):
                break
            threshold += 2
        if len(found) > 4 * size:
            found = found[np.argpartition(dist[found], 2 * size)[: 2 * size]]
        if mask is not None:
            found = found[mask[found]]
        return found

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
        mask = self._reference_mask(category, where)
        if self._dense is not None:
            scores = self._dense @ query
            if mask is not None:
                scores = np.where(mask, scores, -np.inf)
            return self._top_products(np.arange(len(self)), scores, k)
        size = max(self.shortlist, 8 * k)
        while True:
            found = self._candidates(query, mask, size)
            scores = (self.codes[found].astype(np.float32) @ query) * self.scales[found]
            hits = self._top_products(found, scores, k)
            # Many references of one product can crowd the shortlist; widen it until k products appear.
            if len(hits) >= k or len(found) >= (len(self) if mask is None else int(mask.sum())) or size >= len(self):
                return hits
            size *= 4

    def _top_products(self, rows: np.ndarray, scores: np.ndarray, k: int) -> list[SearchHit]:
        order = np.argsort(-scores, kind="stable")
        hits: list[SearchHit] = []
        seen: set[int] = set()
        for position in order:
            score = float(scores[position])
            if score == -np.inf:
                break
            row = int(rows[position])
            product = int(self.reference_products[row])
            if product in seen:
                continue
            seen.add(product)
            hits.append(SearchHit(self.product_ids[product], score, self.reference_ids[row]))
            if len(hits) == k:
                break
        return hits


def _matches(fields: Mapping[str, Any], conditions: Mapping[str, Any]) -> bool:
    for key, wanted in conditions.items():
        value = fields.get(key)
        if isinstance(wanted, (list, tuple, set, frozenset)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True
