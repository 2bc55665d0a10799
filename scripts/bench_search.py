#!/usr/bin/env python3
"""Benchmark catalog search: latency (p50/p95 per single query) and recall@5 vs exact float search.

References are random but clustered like a real catalog (products with several
photos each; queries are noisy views of a product), unit-normalised, stored int8
exactly as the catalog stores them, and searched through `SearchIndex`, the same
object the kiosk searches. Ground truth is exact float32 search on the original
(unquantised) vectors. Targets (2 cores): 100k refs p50 <= 0.5 ms, 1M refs p50 <= 5 ms,
recall@5 >= 0.99.

Beside ours, in the same run on the same vectors and queries: faiss exact float
search (IndexFlatIP) and three HNSW graph indexes (faiss IndexHNSWFlat, hnswlib,
usearch), each at the smallest search effort that reaches recall@5 >= 0.99, with
their memory and build time (`pip install -e '.[bench]'` for hnswlib and usearch;
`--no-libraries` skips them).

    .venv/bin/python scripts/bench_search.py --json bench-search.json
    .venv/bin/python scripts/bench_search.py --sizes 100000 --dims 256 --queries 300
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

# Single-threaded BLAS for the exact-search reference: on two shared cores, OpenBLAS threads
# waiting for each other make it look 50x slower than it is. (The index itself uses no BLAS.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import host_reference, write_report  # noqa: E402

from shelfsight.catalog.index import SearchIndex  # noqa: E402
from shelfsight.catalog.records import quantize_many  # noqa: E402

log = logging.getLogger("bench_search")

REFS_PER_PRODUCT = 8
PHOTO_SPREAD = 0.6  # a reference's offset from its product centre (cos ~0.86)
QUERY_SPREAD = 0.5  # a query's offset from the reference it was taken like


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered_references(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) float32 unit vectors in n / REFS_PER_PRODUCT clusters; built in chunks to bound memory."""
    centres = unit(rng.standard_normal((max(1, n // REFS_PER_PRODUCT), dim)).astype(np.float32))
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32) * (PHOTO_SPREAD / np.sqrt(dim))
        out[start:stop] = unit(centres[np.arange(start, stop) // REFS_PER_PRODUCT] + noise)
    return out


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = np.empty((len(queries), len(vectors)), np.float32)
    for start in range(0, len(vectors), 200_000):
        scores[:, start : start + 200_000] = queries @ vectors[start : start + 200_000].T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return top


def bench(
    n: int, dim: int, n_queries: int, seed: int, *, compare: bool = True, build_threads: int = 2
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    vectors = clustered_references(n, dim, rng)
    codes, scales = quantize_many(vectors)
    # One product per reference, so recall@5 over products is recall@5 over references.
    fields: list[dict[str, object]] = [{}] * n
    index = SearchIndex(
        reference_ids=[str(i) for i in range(n)],
        reference_products=np.arange(n, dtype=np.int32),
        codes=codes,
        scales=scales,
        product_ids=[str(i) for i in range(n)],
        product_fields=fields,
        dim=dim,
        fingerprint="bench",
    )
    build_s = time.perf_counter() - started
    picks = rng.integers(0, n, n_queries)
    noise = rng.standard_normal((n_queries, dim)).astype(np.float32) * (QUERY_SPREAD / np.sqrt(dim))
    # float32 like the references: a float64 query makes `matrix @ query` convert the whole matrix
    # first, which inflated the exact-float reference 5x (numpy 2 keeps the scalar's float64).
    queries = unit(vectors[picks] + noise).astype(np.float32)
    truth = exact_top(vectors, queries, 5)

    for query in queries[:5]:  # warm caches and lazy allocations
        index.search(query, k=5)
    latencies, found = [], 0
    for query, expected in zip(queries, truth):
        t0 = time.perf_counter()
        hits = index.search(query, k=5)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        found += len({int(h.product_id) for h in hits} & set(expected.tolist()))

    # Reference point on the same machine and load: brute-force float search over the same vectors.
    matrix = index.codes.astype(np.float32) * index.scales[:, None]
    exact_ms = []
    for query in queries[:20]:
        t0 = time.perf_counter()
        np.argpartition(-(matrix @ query), 5)[:5]
        exact_ms.append((time.perf_counter() - t0) * 1000.0)
    del matrix
    libraries = compare_libraries(vectors, queries, truth, build_threads) if compare else {}
    return {
        "references": n,
        "dim": dim,
        "queries": n_queries,
        "p50_ms": round(float(np.percentile(latencies, 50)), 4),
        "p95_ms": round(float(np.percentile(latencies, 95)), 4),
        "recall_at_5": round(found / (5 * n_queries), 4),
        "exact_float_p50_ms": round(float(np.median(exact_ms)), 4),
        "index_build_s": round(build_s, 2),
        "index_mb": round(
            (index.codes.nbytes + index.scales.nbytes + (index._bits.nbytes if index._bits is not None else 0)) / 2**20,
            1,
        ),
        "libraries": libraries,
    }


# Search-time effort settings tried in order until recall@5 reaches TARGET_RECALL: the figure
# reported for a graph index is the cheapest one that does (equal recall with ours).
TARGET_RECALL = 0.99
EF_SEARCH = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64


def _timed_search(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, truth: np.ndarray
) -> dict[str, float]:
    for query in queries[:5]:
        search(query)
    latencies, found = [], 0
    for query, expected in zip(queries, truth):
        t0 = time.perf_counter()
        ids = search(query)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        found += len(set(np.asarray(ids).ravel().tolist()) & set(expected.tolist()))
    return {
        "p50_ms": round(float(np.percentile(latencies, 50)), 4),
        "p95_ms": round(float(np.percentile(latencies, 95)), 4),
        "recall_at_5": round(found / (5 * len(queries)), 4),
    }


def _at_equal_recall(
    make_search: Callable[[int], Callable[[np.ndarray], np.ndarray]], queries: np.ndarray, truth: np.ndarray
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for ef in EF_SEARCH:
        result = {"ef_search": ef, **_timed_search(make_search(ef), queries, truth)}
        if result["recall_at_5"] >= TARGET_RECALL:
            break
    return result


def compare_libraries(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, threads: int) -> dict[str, Any]:
    """faiss (exact float and HNSW), hnswlib and usearch on the same vectors and queries.

    Single-threaded searches (the kiosk asks one query at a time), `threads` for building.
    A library that is not installed (`pip install -e '.[bench]'`) is reported as such.
    """
    n, dim = vectors.shape
    out: dict[str, Any] = {}
    try:
        import faiss
    except ImportError:
        out["faiss"] = {"skipped": "faiss-cpu is not installed"}
    else:
        faiss.omp_set_num_threads(1)
        flat = faiss.IndexFlatIP(dim)
        started = time.perf_counter()
        flat.add(vectors)
        out["faiss_flat_float32"] = {
            "index_build_s": round(time.perf_counter() - started, 2),
            "index_mb": round(n * dim * 4 / 2**20, 1),
            **_timed_search(lambda q: flat.search(q[None], 5)[1][0], queries[:100], truth[:100]),
        }
        del flat
        faiss.omp_set_num_threads(threads)
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        started = time.perf_counter()
        hnsw.add(vectors)
        built = time.perf_counter() - started
        faiss.omp_set_num_threads(1)

        def faiss_search(ef: int) -> Callable[[np.ndarray], np.ndarray]:
            params = faiss.SearchParametersHNSW(efSearch=ef)
            return lambda q: hnsw.search(q[None], 5, params=params)[1][0]

        out["faiss_hnsw_float32"] = {
            "M": HNSW_M,
            "ef_construction": HNSW_EF_CONSTRUCTION,
            "index_build_s": round(built, 2),
            "index_mb": round(len(faiss.serialize_index(hnsw)) / 2**20, 1),
            **_at_equal_recall(faiss_search, queries, truth),
        }
        del hnsw
    try:
        import hnswlib
    except ImportError:
        out["hnswlib"] = {"skipped": "hnswlib is not installed"}
    else:
        graph = hnswlib.Index(space="ip", dim=dim)
        graph.init_index(max_elements=n, M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
        graph.set_num_threads(threads)
        started = time.perf_counter()
        graph.add_items(vectors, np.arange(n))
        built = time.perf_counter() - started
        graph.set_num_threads(1)

        def hnswlib_search(ef: int) -> Callable[[np.ndarray], np.ndarray]:
            graph.set_ef(max(ef, 5))
            return lambda q: graph.knn_query(q, k=5)[0][0]

        # hnswlib's own estimate of its memory: vectors + links per element.
        per_element = dim * 4 + HNSW_M * 2 * 4 + 8
        out["hnswlib_float32"] = {
            "M": HNSW_M,
            "ef_construction": HNSW_EF_CONSTRUCTION,
            "index_build_s": round(built, 2),
            "index_mb": round(n * per_element / 2**20, 1),
            **_at_equal_recall(hnswlib_search, queries, truth),
        }
        del graph
    try:
        from usearch.index import Index as UsearchIndex
    except ImportError:
        out["usearch"] = {"skipped": "usearch is not installed"}
    else:
        # Half floats: usearch's int8 layout (one fixed scale for every vector) stopped at recall@5
        # 0.95 on these clustered vectors whatever the search effort, f16 reaches 0.99 like float32.
        usearch = UsearchIndex(
            ndim=dim, metric="ip", dtype="f16", connectivity=HNSW_M, expansion_add=HNSW_EF_CONSTRUCTION
        )
        started = time.perf_counter()
        usearch.add(np.arange(n), vectors, threads=threads)
        built = time.perf_counter() - started

        def usearch_search(ef: int) -> Callable[[np.ndarray], np.ndarray]:
            usearch.expansion_search = ef
            return lambda q: usearch.search(q, 5, threads=1).keys

        out["usearch_float16"] = {
            "M": HNSW_M,
            "ef_construction": HNSW_EF_CONSTRUCTION,
            "index_build_s": round(built, 2),
            "index_mb": round(usearch.memory_usage / 2**20, 1),
            **_at_equal_recall(usearch_search, queries, truth),
        }
        del usearch
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="Reference counts.")
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 128], help="Embedding dimensions.")
    parser.add_argument("--queries", type=int, default=300, help="Queries per configuration.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument(
        "--no-libraries",
        dest="libraries",
        action="store_false",
        help="Skip faiss / hnswlib / usearch (their graph builds take minutes at 1M references)",
    )
    parser.add_argument("--build-threads", type=int, default=2, help="Threads the libraries build with")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    results = []
    for n in args.sizes:
        for dim in args.dims:
            result = bench(n, dim, args.queries, args.seed, compare=args.libraries, build_threads=args.build_threads)
            results.append(result)
            print(
                f"{n:>9,} refs x {dim:>3}d: p50 {result['p50_ms']:.3f} ms  p95 {result['p95_ms']:.3f} ms  "
                f"recall@5 {result['recall_at_5']:.4f}  (exact float p50 {result['exact_float_p50_ms']} ms, "
                f"index {result['index_mb']} MB, built in {result['index_build_s']} s)",
                flush=True,
            )
            for name, row in result["libraries"].items():
                if "skipped" in row:
                    print(f"{'':>22}{name}: {row['skipped']}")
                    continue
                effort = f" ef {row['ef_search']}" if "ef_search" in row else ""
                print(
                    f"{'':>22}{name}{effort}: p50 {row['p50_ms']:.3f} ms  p95 {row['p95_ms']:.3f} ms  recall@5 "
                    f"{row['recall_at_5']:.4f}  (index {row['index_mb']} MB, built in {row['index_build_s']} s)",
                    flush=True,
                )
    reference = host_reference()
    print(
        f"host yardstick: {reference['operation']}: p50 {reference['p50_ms']} ms "
        f"(issue's machine {reference['issue_machine_ms']} ms; this host {reference['slowdown_vs_issue_machine']}x)"
    )
    if args.json:
        report = {
            "numpy": np.__version__,
            "host_reference": reference,
            "results": results,
        }
        write_report(args.json, report)


if __name__ == "__main__":
    main()
