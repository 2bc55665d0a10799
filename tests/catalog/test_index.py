"""SearchIndex: the two-stage (sign bits + exact re-rank) path agrees with exact search."""

from __future__ import annotations

import numpy as np
import pytest

from shelfsight.catalog.index import EXACT_LIMIT, SearchIndex, sign_codes
from shelfsight.catalog.records import quantize


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 20, dim))
    vectors = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def make_index(
    vectors: np.ndarray, products: np.ndarray, fields: list[dict] | None = None, shortlist: int = 256
) -> SearchIndex:
    quantized = [quantize(v) for v in vectors]
    n_products = int(products.max()) + 1
    return SearchIndex(
        reference_ids=[f"p{p}/{i}" for i, p in enumerate(products)],
        reference_products=products,
        codes=np.frombuffer(b"".join(q[0] for q in quantized), np.int8).reshape(vectors.shape),
        scales=np.array([q[1] for q in quantized], np.float32),
        product_ids=[f"p{i}" for i in range(n_products)],
        product_fields=fields or [{"category": "even" if i % 2 == 0 else "odd"} for i in range(n_products)],
        dim=vectors.shape[1],
        fingerprint="f",
        shortlist=shortlist,
    )


def test_sign_codes_pad_to_words() -> None:
    codes = sign_codes(np.array([[1.0, -1.0, 2.0] + [0.0] * 29], np.float32))
    assert codes.shape == (1, 1) and int(codes[0, 0]) == 0b101


# A short shortlist makes the coarse half-words pass worth it at test sizes (it needs an index
# 16x the size of its pool); the kiosk's default engages it from ~33k references.
@pytest.mark.parametrize(
    "dim, fast, shortlist", [(32, False, 256), (128, True, 256), (256, True, 256), (256, True, 32)]
)
def test_two_stage_matches_exact(dim: int, fast: bool, shortlist: int) -> None:
    n = EXACT_LIMIT + 4000
    vectors = clustered(n, dim)
    index = make_index(vectors, np.arange(n), shortlist=shortlist)
    assert (index._bits is not None) == fast  # low dims are always scored exactly
    rng = np.random.default_rng(1)
    queries = vectors[rng.integers(0, n, 40)] + 0.6 / np.sqrt(dim) * rng.standard_normal((40, dim)).astype(np.float32)
    found = 0
    for query in queries:
        query = query / np.linalg.norm(query)
        exact = {f"p{i}" for i in np.argsort(-(vectors @ query))[:5]}
        hits = index.search(query, k=5)
        assert len(hits) == 5 and all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        found += len(exact & {h.product_id for h in hits})
    assert found / (5 * len(queries)) >= 0.97


def test_threaded_pass_finds_what_the_single_thread_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    import shelfsight.catalog.index as index_module

    n = EXACT_LIMIT + 3001  # odd, so the halves differ in size
    vectors = clustered(n, 256, seed=5)
    index = make_index(vectors, np.arange(n) // 3, shortlist=32)
    queries = vectors[:: n // 20]
    single = [index.search(q, k=5) for q in queries]
    monkeypatch.setattr(index_module, "THREADED_LIMIT", 1000)
    threaded = [index.search(q, k=5) for q in queries]
    assert threaded == single
    assert all(hits[0].reference_id == f"p{i * (n // 20) // 3}/{i * (n // 20)}" for i, hits in enumerate(threaded))


def test_products_group_and_filters_on_fast_path() -> None:
    n = EXACT_LIMIT + 2000
    vectors = clustered(n, 64, seed=3)
    products = np.arange(n) // 50  # 50 references per product: crowds the shortlist
    index = make_index(vectors, products)
    query = vectors[123]
    hits = index.search(query, k=12)
    assert len({h.product_id for h in hits}) == 12
    assert hits[0].product_id == "p2" and hits[0].reference_id == "p2/123" and hits[0].score > 0.99
    odd = index.search(query, k=5, category="odd")
    assert len(odd) == 5 and all(int(h.product_id[1:]) % 2 == 1 for h in odd)
    listed = index.search(query, k=5, where={"category": ["odd", "even"]})
    assert listed[0].product_id == "p2"
    assert index.search(query, k=3, category="none") == []


def test_exact_path_and_empty() -> None:
    vectors = clustered(200, 32)
    index = make_index(vectors, np.arange(200) % 7)
    assert index._dense is not None
    hits = index.search(vectors[10], k=10)
    assert len(hits) == 7 and hits[0].product_id == "p3"
    assert SearchIndex.empty(32).search(vectors[0]) == []


def best_per_product(
    index: SearchIndex, query: np.ndarray, k: int, allowed: set[int] | None = None
) -> list[tuple[str, str]]:
    """Reference answer: every reference scored, each product by its best one."""
    scores = (index.codes.astype(np.float32) * index.scales[:, None]) @ (query / np.linalg.norm(query))
    best: dict[int, int] = {}
    for row in np.argsort(-scores, kind="stable"):
        product = int(index.reference_products[row])
        if (allowed is None or product in allowed) and product not in best:
            best[product] = int(row)
    return [(index.product_ids[p], index.reference_ids[r]) for p, r in list(best.items())[:k]]


def test_exact_path_when_one_product_crowds_the_head() -> None:
    # 300 near-copies of one view outrank everything: the first distinct products lie far
    # beyond the partitioned head, so the search must fall back to the full order.
    rng = np.random.default_rng(5)
    vectors = clustered(1000, 64, seed=5)
    products = np.arange(1000) % 40
    products[:300] = 0
    vectors[:300] = vectors[0] + 0.01 * rng.standard_normal((300, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = make_index(vectors, products)
    assert index._dense is not None
    for k in (1, 5, 12):
        hits = index.search(vectors[0], k=k)
        assert [(h.product_id, h.reference_id) for h in hits] == best_per_product(index, vectors[0], k)
    odd = index.search(vectors[0], k=5, category="odd")
    assert [(h.product_id, h.reference_id) for h in odd] == best_per_product(
        index, vectors[0], 5, {p for p in range(40) if p % 2 == 1}
    )
