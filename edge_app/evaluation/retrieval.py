"""Retrieval evaluation: queries against a catalog of reference images.

Both folders use the ImageFolder layout; a product id is the folder path of
an image relative to the root. Products are ranked by their best reference.
The ranking step is pluggable (`Ranker`): the default ranks by global
embedding similarity; the kiosk's full recognition pipeline (shortlist +
geometric verification) plugs in the same way, so `shelfsight eval` measures
exactly what the kiosk does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Protocol, Sequence

import numpy as np

from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.images import fit_square, load_rgb
from shelfsight.edge_app.core.labels import scan_folder

log = logging.getLogger(__name__)

RECALL_KS = (1, 2, 3, 5, 10)


def embed_paths(embedder: Embedder, paths: Sequence[Path], batch: int = 32, progress: bool = False) -> np.ndarray:
    from tqdm import tqdm

    out = np.zeros((len(paths), embedder.dim), np.float32)
    starts = range(0, len(paths), batch)
    for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
        chunk = paths[start : start + batch]
        images = np.stack([fit_square(load_rgb(p), embedder.input_size) for p in chunk])
        out[start : start + len(chunk)] = embedder.embed_batch(images)
    return out


class Ranker(Protocol):
    def rank(self, rgb: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Products for one query image, best first, with scores."""


class GlobalRanker:
    """Rank products by the best cosine similarity of any of their references."""

    def __init__(self, embedder: Embedder, vectors: np.ndarray, products: Sequence[str]) -> None:
        order = np.argsort(np.asarray(products), kind="stable")
        self.embedder = embedder
        self.vectors = np.ascontiguousarray(vectors[order])
        sorted_products = np.asarray(products)[order]
        self.names, self.starts = np.unique(sorted_products, return_index=True)

    def rank_vector(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        scores = np.maximum.reduceat(self.vectors @ query, self.starts)
        top = np.argsort(-scores)[:k]
        return [(str(self.names[i]), float(scores[i])) for i in top]

    def rank(self, rgb: np.ndarray, k: int) -> list[tuple[str, float]]:
        return self.rank_vector(self.embedder.embed_image(rgb), k)


@dataclass
class Confusion:
    query: str
    true_product: str
    predicted: str
    score: float
    true_score: float | None


@dataclass
class EvalResult:
    recall_at_1: float
    recall_at_5: float
    map_at_r: float
    queries: int
    products: int
    query_ms_p50: float
    query_ms_p95: float
    recall_at_k: dict[int, float] = field(default_factory=dict)
    per_product_recall: dict[str, float] = field(default_factory=dict)
    confusions: list[Confusion] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recall_at_k"] = {str(k): v for k, v in self.recall_at_k.items()}
        return data


def _map_at_r(ranked: list[str], truth: str, r: int) -> float:
    hits, total = 0, 0.0
    for i, product in enumerate(ranked[:r], 1):
        if product == truth:
            hits += 1
            total += hits / i
    return total / r if r else 0.0


def evaluate(
    embedder: Embedder,
    catalog_dir: str | Path,
    queries_dir: str | Path,
    *,
    ranker: Ranker | None = None,
    progress: bool = False,
    max_confusions: int = 24,
    products: Collection[str] | None = None,
) -> EvalResult:
    """Recall@K, MAP@R and per-query latency of `queries_dir` against `catalog_dir`.

    `products` restricts both sides to those product ids (e.g. products held out of training).
    """
    catalog = scan_folder(catalog_dir, "catalog", products)
    queries = scan_folder(queries_dir, "queries", products)
    known = set(catalog.products)
    unknown = sorted(set(queries.products) - known)
    if unknown:
        log.warning(
            "%d query products have no catalog reference (e.g. %s); they count as misses", len(unknown), unknown[0]
        )
    vectors = embed_paths(embedder, catalog.paths, progress=progress)
    global_ranker = GlobalRanker(embedder, vectors, catalog.products)
    refs_per_product = {p: catalog.products.count(p) for p in known}

    hits = {k: 0 for k in RECALL_KS}
    per_product: dict[str, list[int]] = {}
    map_sum, latencies, confusions = 0.0, [], []
    kmax = max(RECALL_KS)
    from tqdm import tqdm

    for path, truth in tqdm(list(zip(queries.paths, queries.products)), desc="queries", disable=not progress):
        rgb = load_rgb(path)
        started = time.perf_counter()
        if ranker is None:
            query = embedder.embed_image(rgb)
            ranked = global_ranker.rank_vector(query, kmax)
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            ranked = ranker.rank(rgb, kmax)
            latencies.append((time.perf_counter() - started) * 1000)
            query = embedder.embed_image(rgb)
        names = [name for name, _ in ranked]
        for k in RECALL_KS:
            hits[k] += truth in names[:k]
        per_product.setdefault(truth, []).append(int(bool(names) and names[0] == truth))
        # MAP@R over references: R = the product's reference count, ranking by reference similarity.
        r = refs_per_product.get(truth, 0)
        if r:
            order = np.argsort(-(vectors @ query))[:r]
            map_sum += _map_at_r([catalog.products[i] for i in order], truth, r)
        if names and names[0] != truth:
            true_score = next((s for n, s in ranked if n == truth), None)
            confusions.append(Confusion(str(path), truth, names[0], ranked[0][1], true_score))
    n = len(queries.paths)
    confusions.sort(key=lambda c: -c.score)
    return EvalResult(
        recall_at_1=hits[1] / n,
        recall_at_5=hits[5] / n,
        map_at_r=map_sum / n,
        queries=n,
        products=len(known),
        query_ms_p50=float(np.percentile(latencies, 50)),
        query_ms_p95=float(np.percentile(latencies, 95)),
        recall_at_k={k: hits[k] / n for k in RECALL_KS},
        per_product_recall={p: float(np.mean(v)) for p, v in sorted(per_product.items())},
        confusions=confusions[:max_confusions],
    )
