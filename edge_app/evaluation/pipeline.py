"""`shelfsight eval --pipeline full` and `--calibrate`: evaluation through the kiosk's own pipeline.

The reference folder is ingested into a temporary catalog exactly as
`shelfsight catalog build` would (screening, dedup, ORB keypoints), and
queries go through the kiosk's `Recognizer` (shortlist, geometric
verification, scoring). Eval labels are folder paths, which may contain `/`;
catalog ids may not, so each label gets an opaque id and is mapped back.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import InputError
from shelfsight.edge_app.core.images import load_rgb
from shelfsight.edge_app.core.labels import LabelledImages, scan_folder
from shelfsight.edge_app.evaluation.retrieval import GlobalRanker, Ranker, embed_paths
from shelfsight.edge_app.recognition.config import RecognitionConfig

log = logging.getLogger(__name__)

PIPELINES = ("global", "full")


class PipelineRanker:
    """The kiosk's recognition pipeline over a temporary catalog built from labelled reference images."""

    def __init__(
        self,
        embedder: Embedder,
        references: LabelledImages,
        config: RecognitionConfig | None = None,
        progress: bool = False,
    ) -> None:
        from shelfsight.catalog.ingest import IngestOptions, ProductEntry, build_catalog
        from shelfsight.catalog.store import Catalog
        from shelfsight.edge_app.recognition import Recognizer

        labels = sorted(set(references.products))
        ids = {label: f"p{i:05d}" for i, label in enumerate(labels)}
        self._labels = {v: k for k, v in ids.items()}
        images: dict[str, list[Path]] = {label: [] for label in labels}
        for path, label in zip(references.paths, references.products):
            images[label].append(path)
        entries = [ProductEntry(ids[label], {"name": label}, tuple(images[label])) for label in labels]
        self._tmp = tempfile.TemporaryDirectory(prefix="shelfsight-eval-")
        db = Path(self._tmp.name) / "eval-catalog.db"
        report = build_catalog(db, embedder, entries, IngestOptions(progress=progress))
        for rejected, reason in report.rejected:
            log.warning("reference not used by the pipeline: %s (%s)", rejected, reason)
        self.catalog = Catalog(db)
        self.recognizer = Recognizer(embedder, self.catalog, config)

    def label(self, product_id: str) -> str:
        """The eval label (folder path) of a catalog product id."""
        return self._labels[product_id]

    def rank(self, rgb: np.ndarray, k: int) -> list[tuple[str, float]]:
        return [(self.label(pid), score) for pid, score in self.recognizer.rank(rgb, k)]

    def close(self) -> None:
        self.catalog.close()
        self._tmp.cleanup()


def make_ranker(
    pipeline: str,
    embedder: Embedder,
    references: LabelledImages,
    config: RecognitionConfig | None = None,
    progress: bool = False,
) -> Ranker:
    if pipeline == "full":
        return PipelineRanker(embedder, references, config, progress)
    if pipeline == "global":
        return GlobalRanker(embedder, embed_paths(embedder, references.paths, progress=progress), references.products)
    raise InputError(f"unknown pipeline {pipeline!r}; choose one of {PIPELINES}")


@dataclass(frozen=True)
class Calibration:
    threshold: float
    known_accept_rate: float  # known products' queries answered with the right product
    unknown_reject_rate: float  # held-out products' queries answered "not in catalog"
    known_queries: int  # over all rounds: a query counts once per round its product was in the catalog
    unknown_queries: int
    held_out_products: list[str]  # every product some round held out
    pipeline: str
    # (threshold, known queries answered right, held-out queries announced as some product), from
    # the loosest threshold to the strictest: the trade-off a store picks its threshold on.
    curve: list[tuple[float, float, float]] = field(default_factory=list)
    rounds: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(correct_scores: np.ndarray, reject_scores: np.ndarray) -> tuple[float, float, float]:
    """Threshold maximising (right answers accepted) - (answers that should be refused but were accepted).

    `correct_scores`: top scores of known-product queries whose first answer was right.
    `reject_scores`: top scores that should be refused (held-out products and wrong first answers).
    """
    candidates = np.unique(np.concatenate([correct_scores, reject_scores, [np.inf]]))
    best = (-np.inf, float(candidates[-1]), 0.0, 1.0)
    for t in candidates:
        accept = float(np.mean(correct_scores >= t)) if len(correct_scores) else 0.0
        false_accept = float(np.mean(reject_scores >= t)) if len(reject_scores) else 0.0
        if accept - false_accept > best[0]:
            best = (accept - false_accept, float(t), accept, false_accept)
    return best[1], best[2], best[3]


def threshold_for_announced(correct_scores: np.ndarray, unknown_scores: np.ndarray, max_announced: float) -> float:
    """The loosest threshold at which at most `max_announced` of the held-out queries reach it."""
    finite = np.sort(unknown_scores[np.isfinite(unknown_scores)])[::-1]
    allowed = int(np.floor(max_announced * len(unknown_scores) + 1e-9))  # queries that may be announced
    if allowed >= len(finite):  # all of them may be: as loose as every known right answer needs
        everything = np.concatenate([correct_scores[np.isfinite(correct_scores)], finite])
        return float(everything.min()) if len(everything) else 0.0
    # Just above the first held-out score that must be refused; ties there are refused too.
    return float(np.nextafter(finite[allowed], np.inf))


def trade_off(
    correct_scores: np.ndarray, unknown_scores: np.ndarray, known_queries: int
) -> list[tuple[float, float, float]]:
    """Every operating point: (threshold, known queries answered right, held-out queries announced).

    One point just above each distinct held-out score, where the announced share drops, plus the
    loosest threshold; loosest first. Between these points only the known share changes, so the
    list is the whole trade-off, not a sample of it (quantile steps hid whether 5% announced at
    90% right lay between two of them).
    """
    finite = unknown_scores[np.isfinite(unknown_scores)]
    everything = np.concatenate([correct_scores, finite])
    if not len(everything):
        return []
    steps = np.unique(np.concatenate([[everything.min()], np.nextafter(np.unique(finite), np.inf)]))
    right = np.sort(correct_scores)
    announced = np.sort(unknown_scores)
    return [
        (
            round(float(t), 6),
            round(float(len(right) - np.searchsorted(right, t, side="left")) / known_queries, 4),
            round(float(len(announced) - np.searchsorted(announced, t, side="left")) / len(unknown_scores), 4),
        )
        for t in steps
    ]


def calibrate(
    embedder: Embedder,
    catalog_dir: str | Path,
    queries_dir: str | Path,
    *,
    pipeline: str = "full",
    holdout: float = 0.25,
    seed: int = 0,
    rounds: int | None = None,
    max_announced: float | None = None,
    config: RecognitionConfig | None = None,
    progress: bool = False,
) -> Calibration:
    """Hold some products out of the catalog and find the score that separates them from known ones.

    The products are shuffled (by `seed`) and split into 1 / `holdout` groups of near-equal size;
    each round holds one group out and builds a catalog of the rest. `rounds=None` runs every
    group, so each product is unknown once and the threshold does not rest on which eight
    products one draw hid (on 31 packaged products at 90% of known queries right, one draw's
    share of held-out queries announced ranged from 0 to 25% over six seeds). Every round's
    queries are pooled before the threshold is chosen.

    The threshold maximises right answers minus answers that should have been refused
    (`choose_threshold`), or, with `max_announced`, is the loosest one announcing at most that
    share of held-out queries as a product (`threshold_for_announced`): a store that would
    rather say "not in catalog" than name a sibling states it that way.
    """
    if not 0 < holdout < 1:
        raise InputError("--holdout must be between 0 and 1")
    if max_announced is not None and not 0 <= max_announced < 1:
        raise InputError("--max-announced must be at least 0 and below 1")
    if rounds is not None and rounds < 1:
        raise InputError("--rounds must be at least 1")
    references = scan_folder(catalog_dir, "catalog")
    queries = scan_folder(queries_dir, "queries")
    products = sorted(set(references.products))
    if len(products) < 2:
        raise InputError("calibration needs at least two catalog products")
    n_groups = min(len(products), max(2, int(round(1 / holdout))))
    order = np.random.default_rng(seed).permutation(len(products))
    groups = [[products[i] for i in part] for part in np.array_split(order, n_groups)]  # sizes differ by 1 at most
    correct: list[float] = []  # known product, right first answer
    wrong: list[float] = []  # known product, wrong first answer
    unknown: list[float] = []  # held-out product
    everything_held: set[str] = set()
    chosen = groups[: rounds or len(groups)]
    for group in chosen:
        held_out = set(group)
        everything_held |= held_out
        known = LabelledImages(
            [p for p, label in zip(references.paths, references.products) if label not in held_out],
            [label for label in references.products if label not in held_out],
        )
        ranker = make_ranker(pipeline, embedder, known, config, progress)
        try:
            for path, label in zip(queries.paths, queries.products):
                ranked = ranker.rank(load_rgb(path), 1)
                score = ranked[0][1] if ranked else -np.inf
                if label in held_out:
                    unknown.append(score)
                elif ranked and ranked[0][0] == label:
                    correct.append(score)
                else:
                    wrong.append(score)
        finally:
            if isinstance(ranker, PipelineRanker):
                ranker.close()
    known_queries = len(correct) + len(wrong)
    if not unknown or not known_queries:
        raise InputError("calibration needs queries of both held-out and catalog products")
    if max_announced is None:
        threshold, _, _ = choose_threshold(np.asarray(correct), np.asarray(wrong + unknown))
    else:
        threshold = threshold_for_announced(np.asarray(correct), np.asarray(unknown), max_announced)
    curve = trade_off(np.asarray(correct), np.asarray(unknown), known_queries)
    return Calibration(
        threshold=threshold,
        known_accept_rate=sum(s >= threshold for s in correct) / known_queries,
        unknown_reject_rate=sum(s < threshold for s in unknown) / len(unknown),
        known_queries=known_queries,
        unknown_queries=len(unknown),
        held_out_products=sorted(everything_held),
        rounds=len(chosen),
        pipeline=pipeline,
        curve=curve,
    )
