"""The recognition pipeline shared by the kiosk, the HTTP API and `shelfsight eval`.

frame -> region of interest -> (empty view?) -> embedding -> catalog shortlist,
and local features -> visual words -> the word index's shortlist -> geometric
verification of both shortlists together (ORB + ratio test + RANSAC) ->
decision: a product with a confidence, "unknown" (not in the catalog) or "empty".

Two candidate sources. The embedding finds products that look alike as a whole
and is all there is for untextured ones (fruit, vegetables); it misses products
the model never learnt to tell apart and views it was not trained for. The
visual-word index (`catalog.word_index`) finds references that share many
distinctive local features with the query, whatever the embedding says, so a
tilted, partly covered or never-trained package still reaches verification.
Verification then decides between them on geometry.

Scores. Each shortlisted product gets `score = similarity + g`, where the
cosine similarity comes from the global embedding and `g = n / (n + min_inliers)`
is a geometric bonus in [0.5, 1) when the best reference has n >= min_inliers
RANSAC inliers (0 otherwise). For the best verified candidates the similarity is
the higher of that and the aligned similarity (`align`): the query rectified
onto the verified reference by its homography and embedded again, which lines a
true match up with its reference and leaves a same-brand sibling, or a product
the catalog lacks, unlike it. A verified product therefore always outranks an
unverified one, and one threshold on the top score (calibrated by
`shelfsight eval --calibrate`, stored in the catalog as "unknown_threshold")
separates catalog products from unknown ones. With `require_verification`
(the default) a candidate that verification looked at and did not confirm
loses 1.0, unless its similarity alone reaches `accept_similarity`: a flat
package the features cannot confirm yields "not recognised - try turning the
product" rather than a guess.

Confidence. What clients see is one number in [0, 1] on the decision's own
scale (`decision_confidence`): 0.5 is the threshold, so a product is announced
exactly when its confidence is at least 0.5; a score one whole point below the
threshold (an unconfirmed guess) is 0 and one point above (a verified match of
a similar-looking view) is 1, linearly in between. Similarity and inliers stay
available as the evidence behind it.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import cv2
import numpy as np

from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import CatalogError, ImageError
from shelfsight.edge_app.core.features import LocalFeatures, extract_features, extract_legacy
from shelfsight.edge_app.core.images import fit_square
from shelfsight.edge_app.core.vocabulary import Vocabulary
from shelfsight.edge_app.recognition.align import aligned_similarity
from shelfsight.edge_app.recognition.config import RecognitionConfig, RoiConfig
from shelfsight.edge_app.recognition.verify import (
    MIN_MATCHES,
    Match,
    family_inliers,
    match_against,
    match_references,
    settles,
)

log = logging.getLogger(__name__)

THRESHOLD_META_KEY = "unknown_threshold"
# What the stored threshold was calibrated for: {"model", "vocabulary", "pipeline"}. Scores of
# another model, vocabulary or pipeline are on another scale, so the threshold does not carry over.
CALIBRATION_META_KEY = "unknown_threshold_calibration"
STAGES = ("preprocess", "invoke", "search", "local", "verification", "decision")
_TEXTURE_GRID = 64


class WordSearch(Protocol):
    """The part of `catalog.index.SearchIndex` the local candidate source uses."""

    @property
    def words(self) -> Any: ...

    def search_words(self, words: np.ndarray, k: int, embedding: np.ndarray) -> list[Any]: ...


class CatalogLike(Protocol):
    """The part of `catalog.store.Catalog` the pipeline uses."""

    @property
    def indexed_version(self) -> int: ...
    @property
    def model_fingerprint(self) -> str | None: ...
    @property
    def embedding_dim(self) -> int | None: ...

    def search(self, embedding: np.ndarray, k: int = 5) -> list[Any]: ...
    def index(self) -> WordSearch: ...
    def vocabulary(self) -> Vocabulary | None: ...
    def features(self, reference_id: str) -> LocalFeatures: ...
    def reference_embedding(self, reference_id: str) -> np.ndarray: ...
    def product(self, product_id: str) -> dict[str, Any]: ...
    def get_meta(self, key: str) -> Any: ...


class _Hit(NamedTuple):
    """A candidate product from either source: its embedding cosine and the reference that found it."""

    product_id: str
    score: float
    reference_id: str


class _View(NamedTuple):
    """The reference view that gave a product its inliers, and how it matched."""

    reference_id: str
    features: LocalFeatures
    match: Match


class _Verified(NamedTuple):
    inliers: dict[str, int]  # per candidate product, as scored (`family_inliers`)
    n_query: int  # query keypoints
    views: dict[str, _View]  # the best view of each product with inliers


@dataclass
class _Query:
    """The query's local features, extracted once per frame (version 1 only if a candidate needs it)."""

    roi: np.ndarray
    config: RecognitionConfig
    current: LocalFeatures | None = None
    legacy: LocalFeatures | None = None
    pending: Future[LocalFeatures] | None = None  # version 2 extraction started on another thread

    def start(self, executor: ThreadPoolExecutor) -> None:
        """Extract the version 2 features on `executor`'s thread; `features(2)` waits for them."""
        self.pending = executor.submit(self._extract)

    def _extract(self) -> LocalFeatures:
        cfg = self.config
        return extract_features(self.roi, cfg.orb_features, cfg.feature_side, cfg.query_fast_threshold)

    def features(self, version: int) -> LocalFeatures:
        if version == 1:
            if self.legacy is None:
                self.legacy = extract_legacy(self.roi)
            return self.legacy
        if self.current is None:
            self.current = self.pending.result() if self.pending is not None else self._extract()
        return self.current

    def count(self) -> int:
        """Keypoints found in the query (the newest extraction done), for the empty-view test."""
        done = self.current if self.current is not None else self.legacy
        return len(done) if done is not None else len(self.features(2))


@dataclass(frozen=True)
class Candidate:
    product_id: str
    similarity: float  # the global embeddings' cosine
    inliers: int
    score: float
    confidence: float
    verified: bool
    reference_id: str = ""
    name: str = ""
    aligned_similarity: float | None = None  # the rectified query's cosine to the verified view (`align`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "name": self.name,
            "score": round(self.score, 4),
            "similarity": round(self.similarity, 4),
            "inliers": self.inliers,
            "verified": self.verified,
            "confidence": round(self.confidence, 4),
        }


@dataclass(frozen=True)
class Recognition:
    decision: str  # "product" | "unknown" | "empty"
    product: dict[str, Any] | None  # catalog data of the recognised product (thumbnail bytes removed)
    confidence: float
    alternatives: tuple[Candidate, ...]  # runners-up (or, for "unknown", the closest products)
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage
    candidates: tuple[Candidate, ...] = ()  # the full ranking, best first
    threshold: float = 0.0

    @property
    def product_id(self) -> str | None:
        return None if self.product is None else str(self.product["product_id"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "product": self.product,
            "confidence": round(self.confidence, 4),
            "alternatives": [c.to_dict() for c in self.alternatives],
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
            "threshold": round(self.threshold, 4),
        }


def decision_confidence(score: float, threshold: float) -> float:
    """The pipeline score on the decision's scale: 0.5 at `threshold`, 0 and 1 one point below and above."""
    return min(1.0, max(0.0, 0.5 + 0.5 * (score - threshold)))


def geometric_bonus(inliers: int, min_inliers: int) -> float:
    return inliers / (inliers + min_inliers) if inliers >= min_inliers else 0.0


def crop_roi(rgb: np.ndarray, roi: RoiConfig) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"expected an RGB uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    x0, y0 = int(round(roi.x * w)), int(round(roi.y * h))
    x1, y1 = max(x0 + 1, int(round((roi.x + roi.width) * w))), max(y0 + 1, int(round((roi.y + roi.height) * h)))
    return rgb[y0:y1, x0:x1]


def texture(rgb: np.ndarray) -> float:
    """Grey-level standard deviation on a coarse grid: near zero for an empty, evenly lit view."""
    # Runs on every frame: OpenCV on a 64 x 64 nearest-neighbour sample costs ~10 us; numpy on a
    # strided view of the region cost ~90 us, 4% of an invoke.
    grid = cv2.resize(rgb, (_TEXTURE_GRID, _TEXTURE_GRID), interpolation=cv2.INTER_NEAREST)
    return float(cv2.meanStdDev(cv2.cvtColor(grid, cv2.COLOR_RGB2GRAY))[1][0, 0])


def public_product(data: dict[str, Any]) -> dict[str, Any]:
    """Product data for display: no binary fields, no internal reference list."""
    return {k: v for k, v in data.items() if k != "references" and not isinstance(v, (bytes, bytearray, memoryview))}


CatalogT = TypeVar("CatalogT", bound=CatalogLike)


class Recognizer(Generic[CatalogT]):
    """Recognise products in frames. The embedder (one interpreter) and catalog are shared, not copied.

    Generic in the catalog type, so the kiosk, which also writes taught products to its
    catalog, keeps the full `Catalog` type through `recognizer.catalog`.
    """

    def __init__(
        self,
        embedder: Embedder,
        catalog: CatalogT,
        config: RecognitionConfig | None = None,
        roi: RoiConfig | None = None,
    ) -> None:
        self.embedder, self.catalog = embedder, catalog
        self.config = config or RecognitionConfig()
        self.roi = roi or RoiConfig.full_frame()
        check_compatible(embedder, catalog)
        self._products: dict[str, dict[str, Any]] = {}
        self._public: dict[str, dict[str, Any]] = {}  # product_info per product: built once, not per frame
        self._threshold: float | None = None
        self._seen_version: int | None = None
        self._vocabulary_cache: tuple[int | None, Vocabulary | None] | None = None
        self._local_thread: ThreadPoolExecutor | None = None  # made on first use (`overlap_local`)

    # ------------------------------------------------------------------ catalog-derived state

    def _refresh(self) -> None:
        """Drop cached catalog data when the index searched changed (a sync update was applied)."""
        version = self.catalog.indexed_version
        if version != self._seen_version:
            self._products.clear()
            self._public.clear()
            self._threshold = None
            self._seen_version = version

    def forget_products(self) -> None:
        """Drop cached product data after an unversioned (local) catalog write, e.g. a taught or removed product."""
        self._products.clear()
        self._public.clear()
        self._threshold = None
        self._seen_version = None

    @property
    def unknown_threshold(self) -> float:
        if self.config.unknown_threshold is not None:
            return self.config.unknown_threshold
        if self._threshold is None:
            self._threshold = self._stored_threshold()
        return self._threshold

    def calibration_binding(self) -> dict[str, Any]:
        """What a threshold calibrated now would be valid for (stored beside it by `eval --calibrate`)."""
        vocabulary = self._vocabulary()
        local = self.config.verify and self.config.local_search and vocabulary is not None
        return {
            "model": self.embedder.fingerprint,
            "vocabulary": vocabulary.fingerprint if local and vocabulary is not None else None,
            "pipeline": ("full-aligned" if self.config.align else "full") if self.config.verify else "global",
        }

    def _stored_threshold(self) -> float:
        default = self.config.default_unknown_threshold
        raw = self.catalog.get_meta(THRESHOLD_META_KEY)
        if raw is None:
            return default
        try:
            threshold = float(raw)
        except (TypeError, ValueError):
            log.warning("catalog has an unreadable %s (%r); using the default %.3f", THRESHOLD_META_KEY, raw, default)
            return default
        bound = self.catalog.get_meta(CALIBRATION_META_KEY)
        wanted = self.calibration_binding()
        if bound != wanted:
            log.warning(
                "the catalog's 'not in catalog' threshold %.3f was calibrated for %s, this kiosk runs %s; "
                "using the default %.3f until `shelfsight eval --calibrate --store` is run again",
                threshold, bound or "an earlier release", wanted, default,
            )  # fmt: skip
            return default
        return threshold

    def _product_data(self, product_id: str) -> dict[str, Any]:
        data = self._products.get(product_id)
        if data is None:
            data = {**self.catalog.product(product_id), "product_id": product_id}
            self._products[product_id] = data
        return data

    def product_info(self, product_id: str) -> dict[str, Any]:
        """Catalog data of a product for a product card or an API answer (JSON-safe)."""
        data = self._public.get(product_id)
        if data is None:
            data = self._public[product_id] = public_product(self._product_data(product_id))
        return dict(data)  # a copy: callers may add fields

    # ------------------------------------------------------------------ stages

    def _shortlist(self, square: np.ndarray, k: int, timings: dict[str, float]) -> tuple[np.ndarray, list[Any]]:
        t = time.perf_counter()
        embedding = self.embedder.embed_batch(square[None])[0]
        timings["invoke"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        hits = list(self.catalog.search(embedding, k=k))
        timings["search"] = (time.perf_counter() - t) * 1000
        return embedding, hits

    def _local_shortlist(self, query: _Query, embedding: np.ndarray, timings: dict[str, float]) -> list[Any]:
        """Products sharing the most distinctive visual words with the query (none without a vocabulary)."""
        cfg = self.config
        vocabulary = self._vocabulary()
        if not cfg.local_search or cfg.local_shortlist == 0 or vocabulary is None:
            return []
        t = time.perf_counter()
        index = self.catalog.index()
        hits: list[Any] = []
        if index.words is not None:
            features = query.features(2)
            if len(features) >= MIN_MATCHES:
                words = vocabulary.quantize(features.descriptors)
                hits = list(index.search_words(words, cfg.local_shortlist, embedding))
        timings["local"] += (time.perf_counter() - t) * 1000
        return hits

    def _searches_words(self) -> bool:
        """Whether verification also asks the visual-word index (on, and the catalog has a vocabulary)."""
        return self.config.local_search and self._vocabulary() is not None

    def _overlaps_local(self) -> bool:
        """Whether this frame's local features are started beside the invoke (they are wasted only
        when the embedding alone settles the frame, which `accept_similarity` keeps rare)."""
        return self.config.overlap_local and self.config.verify and self._searches_words()

    def _local_executor(self) -> ThreadPoolExecutor:
        if self._local_thread is None:
            self._local_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shelfsight-local")
        return self._local_thread

    def _vocabulary(self) -> Vocabulary | None:
        if self._vocabulary_cache is None or self._vocabulary_cache[0] != self._seen_version:
            try:
                vocabulary = self.catalog.vocabulary()
            except CatalogError as exc:  # a damaged vocabulary row: keep recognising by embedding
                log.error("local-feature search is off: %s", exc)
                vocabulary = None
            self._vocabulary_cache = (self._seen_version, vocabulary)
        return self._vocabulary_cache[1]

    def _needs_verification(self, hits: list[Any]) -> bool:
        if not self.config.verify or not hits:
            return False
        top = float(hits[0].score)
        second = float(hits[1].score) if len(hits) > 1 else -1.0
        return not (top >= self.config.accept_similarity and top - second >= self.config.accept_margin)

    def _reference_features(self, product_id: str, reference_id: str) -> LocalFeatures | None:
        try:
            return self.catalog.features(reference_id)
        except CatalogError as exc:
            log.warning("cannot verify %s against %s: %s", product_id, reference_id, exc)
            return None

    def _inliers(self, query: _Query, references: list[LocalFeatures]) -> list[tuple[int, Match]]:
        """Scored inliers and match of each reference, each matched with the query features of its own extractor version."""
        cfg = self.config
        counts = [(0, Match(0, 0))] * len(references)
        for version in sorted({r.version for r in references}):
            mine = [i for i, r in enumerate(references) if r.version == version]
            found = match_references(
                query.features(version), [references[i] for i in mine], cfg.ratio, cfg.ransac_px, cfg.min_coverage
            )
            for i, n, match in zip(mine, family_inliers(found, cfg.min_inliers), found):
                counts[i] = (n, match)
        return counts

    def verify_shortlist(
        self, roi: np.ndarray, hits: list[Any], timings: dict[str, float]
    ) -> tuple[dict[str, int], int]:
        """Inliers per product of an embedding shortlist, and the query's keypoint count (benchmarks use it)."""
        verified = self._verify(_Query(roi, self.config), hits[: self.config.shortlist], timings)
        return verified.inliers, verified.n_query

    def _verify(
        self, query: _Query, hits: list[Any], timings: dict[str, float], *, first_view: dict[str, str] | None = None
    ) -> _Verified:
        """Inliers per candidate product.

        Fast path: the top hit's best view alone (`_settles`). Otherwise pass j
        matches the j-th view of every candidate at once, until one of them is
        verified. A product's views are tried in the order `_views` gives:
        `first_view[product]` if given (the reference the visual words found),
        then the one the embedding search found, then its others.
        """
        t = time.perf_counter()
        first_view = first_view or {}
        top = hits[0]
        settled = self._settles(query, hits, first_view.get(top.product_id, str(top.reference_id)))
        inliers, views = settled if settled is not None else self._passes(query, hits, first_view)
        timings["verification"] = (time.perf_counter() - t) * 1000
        return _Verified(inliers, query.count(), views)

    def _settles(
        self, query: _Query, hits: list[Any], reference_id: str
    ) -> tuple[dict[str, int], dict[str, _View]] | None:
        """Inliers per product if the top hit's view `reference_id` alone settles verification, else None.

        It settles when `fast_inliers` of its inliers, and most of them, are unambiguous: their
        query features match no other candidate's view about as well (`match_against`, `settles`).
        Such a match is never a wrong product on the development sets, and checking it costs half
        the joint passes. A count of the top hit's inliers alone is not enough: a same-brand
        sibling shares most of the design. Below the bar only the joint passes' counts are
        evidence. A settled match scores its own inliers, as the winner of the joint passes does
        (`family_inliers`).
        """
        cfg = self.config
        top = str(hits[0].product_id)
        first = self._reference_features(top, reference_id)
        if first is None:
            return None
        others = [
            f for h in hits[1:] if (f := self._reference_features(str(h.product_id), str(h.reference_id))) is not None
        ]
        match = match_against(query.features(first.version), first, others, cfg.ratio, cfg.ransac_px, cfg.min_coverage)
        if not settles(match, cfg.fast_inliers):
            return None
        return {**{str(h.product_id): 0 for h in hits}, top: match.inliers}, {top: _View(reference_id, first, match)}

    def _passes(
        self, query: _Query, hits: list[Any], first_view: dict[str, str]
    ) -> tuple[dict[str, int], dict[str, _View]]:
        cfg = self.config
        inliers = {h.product_id: 0 for h in hits}
        views: dict[str, _View] = {}
        tried = {h.product_id: self._views(h, first_view.get(h.product_id)) for h in hits}
        for j in range(cfg.max_references):
            if j > 0 and any(n >= cfg.min_inliers for n in inliers.values()):
                break
            loaded = [
                (pid, refs[j], f)
                for pid, refs in tried.items()
                if len(refs) > j
                if (f := self._reference_features(pid, refs[j])) is not None
            ]
            if not loaded:
                break
            counts = self._inliers(query, [f for _, _, f in loaded])
            for (pid, reference_id, features), (n, match) in zip(loaded, counts):
                if n > inliers[pid]:
                    inliers[pid] = n
                    views[pid] = _View(reference_id, features, match)
        return inliers, views

    def _verify_both(
        self, query: _Query, hits: list[Any], embedding: np.ndarray, timings: dict[str, float]
    ) -> tuple[_Verified, list[Any]]:
        """Verification of both shortlists: what it found, and the candidates verified.

        The word index is asked before anything is settled: a product the embedding ranks
        low but the words find is a rival the top hit must be checked against. Settling on
        the embedding's shortlist alone let a same-brand sibling (Tropicana Golden Grapefruit
        for Tropicana Apple, 70 inliers) win over the true product, which only the words had
        found, among 6,216 distractor products.
        """
        if self._searches_words():
            t = time.perf_counter()
            query.features(2)  # the word lookup and verification both use them: timed as the local stage
            timings["local"] = (time.perf_counter() - t) * 1000
        candidates, first_view = self._candidates(hits, self._local_shortlist(query, embedding, timings))
        return self._verify(query, candidates, timings, first_view=first_view), candidates

    def _align(
        self, query: _Query, hits: list[Any], verified: _Verified, timings: dict[str, float], *, every: bool = False
    ) -> dict[str, float]:
        """Aligned similarity (`align`) of the best `align_candidates` verified candidates, by score.

        Nothing is aligned when the top verified candidate already clears the "not in catalog"
        threshold and no rival, even with a perfect aligned similarity (1.0), could pass it; a
        runner-up is skipped when it could not pass an aligned candidate's score. Either way the
        answer is the one aligning everything would give (only the winner's confidence may be
        lower), and each skip saves an interpreter invoke. `every` aligns the best `align_candidates`
        regardless: `rank` reports scores, and calibration must see the ones an aligned kiosk
        compares with its threshold.
        """
        cfg = self.config
        if not cfg.align:
            return {}
        t = time.perf_counter()
        verified_hits = [
            (float(h.score), bonus, h.product_id)
            for h in hits
            if h.product_id in verified.views
            and (bonus := geometric_bonus(verified.inliers.get(h.product_id, 0), cfg.min_inliers)) > 0
        ]
        best_first = sorted(verified_hits, key=lambda c: c[0] + c[1], reverse=True)
        if best_first and not every:
            top = best_first[0][0] + best_first[0][1]
            if top >= self.unknown_threshold and all(1.0 + bonus <= top for _, bonus, _ in best_first[1:]):
                best_first = []  # aligning only raises scores: the top is announced, no rival could pass it
        aligned: dict[str, float] = {}
        leader = -np.inf  # the best score an aligned candidate has reached
        for similarity, bonus, product_id in best_first[: cfg.align_candidates]:
            view = verified.views[product_id]
            if view.match.homography is None or (leader >= 1.0 + bonus and not every):
                continue  # even a perfect aligned similarity could not take the lead: save the invoke
            try:
                reference_embedding = self.catalog.reference_embedding(view.reference_id)
            except CatalogError as exc:
                log.warning("cannot align %s on %s: %s", product_id, view.reference_id, exc)
                continue
            lined_up = aligned_similarity(
                self.embedder,
                query.roi,
                query.features(view.features.version),
                view.features,
                view.match.homography,
                reference_embedding,
            )
            if lined_up is not None:
                aligned[product_id] = lined_up
                leader = max(leader, max(similarity, lined_up) + bonus)
        timings["verification"] += (time.perf_counter() - t) * 1000
        return aligned

    def _candidates(self, hits: list[Any], word_hits: list[Any]) -> tuple[list[Any], dict[str, str]]:
        """The embedding's shortlist, then the word index's products it lacks; and, for products both
        found, the reference the words found, to try first: that view shares the query's features.
        """
        shortlist = [
            _Hit(str(h.product_id), float(h.score), str(h.reference_id)) for h in hits[: self.config.shortlist]
        ]
        known = {h.product_id: i for i, h in enumerate(shortlist)}
        first_view: dict[str, str] = {}
        for w in word_hits:
            product = str(w.product_id)
            if product in known:
                first_view.setdefault(product, str(w.reference_id))
            else:
                known[product] = len(shortlist)
                shortlist.append(_Hit(product, float(w.score), str(w.reference_id)))
        return shortlist, first_view

    def _views(self, hit: Any, first: str | None = None) -> list[str]:
        """The product's reference ids: `first`, then the one the search matched best, then the others."""
        lead = list(dict.fromkeys(r for r in (first, str(hit.reference_id)) if r is not None))
        others = [r for r in self._product_data(hit.product_id).get("references", []) if r not in lead]
        return [*lead, *others]

    def _rank(
        self, hits: list[Any], inliers: dict[str, int] | None, aligned: dict[str, float] | None = None
    ) -> list[Candidate]:
        """Candidates best first. `inliers` is None when verification did not run.

        A candidate with an aligned similarity scores with it where it beats the global one.
        """
        cfg = self.config
        threshold = self.unknown_threshold
        candidates = []
        for hit in hits:
            n = (inliers or {}).get(hit.product_id, 0)
            bonus = geometric_bonus(n, cfg.min_inliers)
            similarity = float(hit.score)
            lined_up = (aligned or {}).get(hit.product_id)
            score = max(similarity, lined_up if lined_up is not None else similarity) + bonus
            if inliers is not None and cfg.require_verification and bonus == 0 and similarity < cfg.accept_similarity:
                score -= 1.0  # looked at and not confirmed: below every verified or near-certain candidate
            candidates.append(
                Candidate(
                    product_id=str(hit.product_id),
                    similarity=similarity,
                    inliers=n,
                    score=score,
                    confidence=decision_confidence(score, threshold),
                    verified=bonus > 0,
                    reference_id=str(hit.reference_id),
                    name=str(self._product_data(str(hit.product_id)).get("name", "")),
                    aligned_similarity=lined_up,
                )
            )
        candidates.sort(key=lambda c: c.score, reverse=True)
        return candidates

    def _evaluate(self, rgb: np.ndarray, k: int, roi: RoiConfig | None, *, every_score: bool = False) -> _Outcome:
        self._refresh()
        timings = dict.fromkeys(STAGES, 0.0)
        t = time.perf_counter()
        crop = crop_roi(rgb, roi or self.roi)
        square = fit_square(crop, self.embedder.input_size)
        is_flat = texture(square) < self.config.empty_std
        timings["preprocess"] = (time.perf_counter() - t) * 1000
        if is_flat:
            return _Outcome(True, [], timings)
        query = _Query(crop, self.config)
        if self._overlaps_local():
            # Both release the GIL: ORB runs on the second core while the interpreter invokes.
            query.start(self._local_executor())
        embedding, hits = self._shortlist(square, max(k, self.config.shortlist, self.config.top_k), timings)
        inliers: dict[str, int] | None = None
        aligned: dict[str, float] = {}
        n_query = MIN_MATCHES
        if self._needs_verification(hits):
            verified, candidates = self._verify_both(query, hits, embedding, timings)
            inliers, n_query = verified.inliers, verified.n_query
            aligned = self._align(query, candidates, verified, timings, every=every_score)
            listed = {c.product_id for c in candidates}
            hits = candidates + [h for h in hits if str(h.product_id) not in listed]
        t = time.perf_counter()
        ranked = self._rank(hits, inliers, aligned)
        timings["decision"] = (time.perf_counter() - t) * 1000
        top_score = ranked[0].score if ranked else 0.0
        # Hardly any corners and nothing convincing: a bare wall or table, not an unknown product.
        empty = n_query < MIN_MATCHES and top_score < self.unknown_threshold
        return _Outcome(empty, ranked, timings)

    # ------------------------------------------------------------------ public API

    def rank(self, rgb: np.ndarray, k: int = 5, *, roi: RoiConfig | None = None) -> list[tuple[str, float]]:
        """The k best products for an image with their pipeline scores (used by `shelfsight eval`).

        Every score is computed in full (no alignment skipped), so a calibration sees the scores a
        kiosk compares with its threshold; `recognize` gives the same winner.
        """
        return [(c.product_id, c.score) for c in self._evaluate(rgb, k, roi, every_score=True).ranked[:k]]

    def recognize(self, rgb: np.ndarray, *, roi: RoiConfig | None = None, k: int | None = None) -> Recognition:
        """Recognise the product in the region of interest (`roi` overrides the configured one).

        `candidates` holds the `k` best products (default and at least `top_k`); the decision is the same for any k.
        """
        top_k = max(k or 0, self.config.top_k)
        outcome = self._evaluate(rgb, top_k, roi)
        timings = outcome.timings
        t = time.perf_counter()
        threshold = self.unknown_threshold
        ranked = tuple(outcome.ranked[:top_k])
        named = ranked[: self.config.top_k]
        if outcome.empty:
            result = Recognition("empty", None, 0.0, (), timings, ranked, threshold)
        elif not named or named[0].score < threshold:
            best_guess = named[0].confidence if named else 0.0  # below 0.5: how close the nearest product came
            result = Recognition("unknown", None, best_guess, named, timings, ranked, threshold)
        else:
            best = named[0]
            product = self.product_info(best.product_id)
            result = Recognition("product", product, best.confidence, named[1:], timings, ranked, threshold)
        timings["decision"] += (time.perf_counter() - t) * 1000
        return result


@dataclass
class _Outcome:
    empty: bool
    ranked: list[Candidate]
    timings: dict[str, float]


def check_compatible(embedder: Embedder, catalog: CatalogLike) -> None:
    """Refuse a catalog whose embeddings came from another model: its scores would be meaningless."""
    fingerprint = catalog.model_fingerprint
    if fingerprint and fingerprint != embedder.fingerprint:
        raise CatalogError(
            f"the catalog was built with model {fingerprint[:12]}…, but the kiosk runs model "
            f"{embedder.fingerprint[:12]}…; rebuild the catalog with this model"
        )
    dim = catalog.embedding_dim
    if dim is not None and int(dim) != embedder.dim:
        raise CatalogError(f"the catalog holds {dim}-d embeddings, the model makes {embedder.dim}-d ones")
