"""Geometric verification: do the query's ORB features map onto a reference's by one homography?

A flat printed face seen at an angle is a planar perspective warp of its
catalog photo, so true matches agree on one homography while coincidental
descriptor matches scatter. The inlier count after Lowe's ratio test and
RANSAC is therefore strong evidence that global embeddings cannot give.
It costs a few milliseconds per reference, so it runs on the candidates only
(the embedding's shortlist and the visual-word index's, see `pipeline`).

Same-brand siblings are the hard case: their shared design is a true planar
match too. So each candidate gets two counts (`match_references`): its own
inliers, and the unambiguous ones no other candidate explains as well, and
`family_inliers` lets a sibling with clearly more unambiguous evidence take the
match while twins ORB cannot tell apart both stay verified.

Query and reference features must come from the same extractor version
(`core.features`): the pipeline extracts the query both ways only when a
candidate still has version-1 features.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, NamedTuple, Sequence

import cv2
import numpy as np

from shelfsight.edge_app.core.features import LocalFeatures

log = logging.getLogger(__name__)

MIN_MATCHES = 6  # below this RANSAC cannot separate a homography from chance


def _plausible(h: np.ndarray) -> bool:
    """Reject mirrored or collapsed warps: a held product is never mirrored or squashed to a line."""
    det = float(np.linalg.det(h[:2, :2]))
    return 0.02 < det < 50.0 and abs(float(h[2, 0])) < 0.02 and abs(float(h[2, 1])) < 0.02


def _homography_inliers(
    src: np.ndarray, dst: np.ndarray, ransac_px: float, min_coverage: float, area: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Which of the matches (reference points `src`, query points `dst`) are inliers of a plausible
    homography, and that homography (reference work frame -> query work frame).

    All False and None when there is none, or when its inliers are too bunched to identify a design.
    """
    none = np.zeros(len(src), bool), None
    # MAGSAC++ (OpenCV's USAC), not classic RANSAC: its SPRT test drops a bad hypothesis after a
    # few points, so a wrong candidate no longer costs all 500 iterations (0.11 vs 4.9 ms per call
    # over 2,479 match sets). It also finds more inliers on same-brand siblings, which made a
    # product the catalog lacks verify as its sibling more often until aligned similarity
    # (`align`) separated them: with it, at <= 5% of held-out printed products' queries announced,
    # known queries right 99.3 / 97.1 / 98.9% with RANSAC and 100 / 97.8 / 99.3% with MAGSAC++
    # (packages_warped_clean, dev seeds 1-3); hard warped views 0.572 -> 0.580, GroZi query p50 54 -> 34 ms
    # (bench_pipeline runs one after the other on one host, not one process).
    homography, mask = cv2.findHomography(
        src.reshape(-1, 1, 2), dst.reshape(-1, 1, 2), cv2.USAC_MAGSAC, ransac_px, maxIters=500, confidence=0.99
    )
    if homography is None or mask is None or not _plausible(homography):
        return none
    keep = mask.ravel().astype(bool)
    inlier_points = src[keep]
    # Inliers bunched in one corner (a shared barcode, a common small print) do not identify a design.
    if len(inlier_points) < 3 or cv2.contourArea(cv2.convexHull(inlier_points)) < min_coverage * area:
        return none
    return keep, homography


_ROWS_PER_CHUNK = 32  # query rows per pass: keeps the temporaries in cache, ~2x faster than one big pass


def _k_nearest_numpy(query: np.ndarray, train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest train rows of each query row and their Hamming distances, nearest first (popcount
    per 64-bit word). About twice as fast as `cv2.BFMatcher.knnMatch` on the kiosk's sizes (400 x 2000).
    """
    q = np.ascontiguousarray(query).view(np.uint64)
    words = [np.ascontiguousarray(w) for w in np.ascontiguousarray(train).view(np.uint64).T]
    n_query, n_train = len(q), len(words[0])
    dist = np.zeros((n_query, n_train), np.uint16)
    xor = np.empty((_ROWS_PER_CHUNK, n_train), np.uint64)
    count = np.empty((_ROWS_PER_CHUNK, n_train), np.uint8)
    for start in range(0, n_query, _ROWS_PER_CHUNK):
        stop = min(n_query, start + _ROWS_PER_CHUNK)
        rows = stop - start
        for w, train_word in enumerate(words):
            np.bitwise_xor(q[start:stop, w, None], train_word[None, :], out=xor[:rows])
            np.bitwise_count(xor[:rows], out=count[:rows])
            dist[start:stop] += count[:rows]
    if k < n_train:
        nearest = np.argpartition(dist, k - 1, axis=1)[:, :k]
    else:
        nearest = np.tile(np.arange(n_train), (n_query, 1))
    near = np.take_along_axis(dist, nearest, axis=1)
    order = np.argsort(near, axis=1, kind="stable")
    labels = np.take_along_axis(nearest, order, axis=1).astype(np.int64)
    return labels, np.take_along_axis(near, order, axis=1).astype(np.float32)


@functools.cache
def _faiss() -> Any:
    """faiss, where its wheel exists (x86-64, 64-bit ARM); None elsewhere (32-bit Raspberry Pi OS).

    Its binary brute-force search finds the two nearest of 1,000 query descriptors among 13,000
    in 24 ms on one x86 core where the numpy popcount path takes 71 ms (same process, same
    data), and verification is the pipeline's most expensive stage. Imported on first use.
    """
    try:
        import faiss
    except ImportError:
        log.info("faiss is not installed: descriptor matching uses numpy (about 3x slower)")
        return None
    # One OpenMP thread: faiss' default (one per core) spins against the interpreter's threads on a
    # 2-core kiosk and made one verification take 760 ms instead of 20 (bench_kiosk, same run).
    # faiss keeps this setting process-wide; nothing else in the kiosk uses faiss.
    faiss.omp_set_num_threads(1)
    return faiss


def _k_nearest_faiss(query: np.ndarray, train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Same as `_k_nearest_numpy`, by faiss' exact binary index (Hamming distances are integers either way)."""
    faiss = _faiss()
    index = faiss.IndexBinaryFlat(train.shape[1] * 8)
    index.add(np.ascontiguousarray(train, dtype=np.uint8))
    distances, labels = index.search(np.ascontiguousarray(query, dtype=np.uint8), k)
    return labels.astype(np.int64), distances.astype(np.float32)


def _k_nearest(query: np.ndarray, train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    search = _k_nearest_faiss if _faiss() is not None else _k_nearest_numpy
    return search(query, train, min(k, len(train)))


def _two_nearest(query: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest train index and the two smallest distances per query row (train has two rows at least)."""
    labels, distances = _k_nearest(query, train, 2)
    return labels[:, 0], distances[:, 0], distances[:, 1]


def _ratio_matches_with_distance(query: np.ndarray, train: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    if len(train) < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    nearest, best, second = _two_nearest(query, train)
    keep = np.flatnonzero(best < ratio * second)
    return np.stack([keep, nearest[keep]], axis=1).astype(np.int64), best[keep]


def ratio_matches(query: np.ndarray, train: np.ndarray, ratio: float) -> np.ndarray:
    """(M, 2) [query index, train index] of nearest neighbours that pass Lowe's ratio test."""
    return _ratio_matches_with_distance(query, train, ratio)[0]


class Match(NamedTuple):
    """What verification found for one reference."""

    inliers: int  # RANSAC inliers of the matches that pass the ratio test among this reference's own features
    unambiguous: int  # those of them whose feature no other reference matches about as well
    homography: np.ndarray | None = None  # reference work frame -> query work frame, when there are inliers


# Neighbours searched per query feature in the union of the candidates' descriptors: enough to find
# each candidate's own two nearest where it matters (a feature of two siblings, a repeated pattern).
_NEIGHBOURS = 4


def match_references(
    query: LocalFeatures,
    references: Sequence[LocalFeatures],
    ratio: float = 0.8,
    ransac_px: float = 6.0,
    min_coverage: float = 0.08,
) -> list[Match]:
    """Inliers of each reference, from one nearest-neighbour search over all of their descriptors.

    Two counts per reference. `inliers`: Lowe's ratio test within the reference
    (its nearest feature against its second nearest), then RANSAC: the evidence
    that the query shows this design. `unambiguous`: the inliers whose query
    feature also passes the ratio test against every other reference, the
    evidence that it is this product rather than another with the same design. A
    feature shared by several products (a barcode, a white band, a sibling's logo
    and layout) counts towards the first and not the second; `family_inliers`
    combines them. Pass at most one reference per product, or a product's views
    would take each other's unambiguous matches.

    A reference's own second nearest is known when it is among the `_NEIGHBOURS`
    nearest of the union; otherwise the last of them stands in for it, which
    only makes the test stricter. The inliers must also cover `min_coverage` of
    the reference's work frame (convex hull area). References of another
    extractor version than the query's, or with too few features, score 0.
    """
    found = [Match(0, 0)] * len(references)
    usable = [i for i, r in enumerate(references) if len(r) >= MIN_MATCHES and r.version == query.version]
    if len(query) < MIN_MATCHES or not usable:
        return found
    descriptors = np.concatenate([references[i].descriptors for i in usable])
    points = np.concatenate([references[i].points for i in usable])
    owner = np.concatenate([np.full(len(references[i]), i, np.int32) for i in usable])
    labels, distances = _k_nearest(query.descriptors, descriptors, _NEIGHBOURS)
    owners = owner[labels]
    k = labels.shape[1]
    alone = distances[:, 0] < ratio * distances[:, 1] if k > 1 else np.zeros(len(labels), bool)
    rows = np.arange(len(labels))
    for i in usable:
        mine = owners == i
        first = mine.argmax(axis=1)
        mine[rows, first] = False
        second = np.where(mine.any(axis=1), mine.argmax(axis=1), k - 1)
        own = owners[rows, first] == i
        keep = np.flatnonzero(own & (distances[rows, first] < ratio * distances[rows, second]))
        if len(keep) < MIN_MATCHES:
            continue
        train = labels[keep, first[keep]]
        inlier, homography = _homography_inliers(
            points[train], query.points[keep], ransac_px, min_coverage, references[i].area
        )
        leading = keep[inlier]
        unambiguous = int(np.count_nonzero((first[leading] == 0) & alone[leading]))
        found[i] = Match(int(inlier.sum()), unambiguous, homography)
    return found


def family_inliers(found: Sequence[Match], min_inliers: int) -> list[int]:
    """The inlier count that scores each reference of one `match_references` call.

    A reference whose design matches (`inliers` >= `min_inliers`) keeps that count,
    unless another such reference has clearly more unambiguous inliers: then the
    query shows that other product, a sibling with the same design (the flavour
    or the fat content differs), and this one keeps only its unambiguous count.
    When neither has clearly more (siblings that differ only in colour, which
    ORB does not see), both stay verified and the embedding's similarity, which
    does see colour, orders them. Counting only unambiguous matches for
    everyone, as verification did before, left both siblings unverified.
    """
    designs = [m for m in found if m.inliers >= min_inliers]
    counts = []
    for m in found:
        rival = max((o.unambiguous for o in designs if o is not m), default=0)
        clearly_other = m.inliers >= min_inliers and rival > 2 * m.unambiguous + _SIBLING_MARGIN
        counts.append(m.unambiguous if clearly_other else m.inliers)
    return counts


_SIBLING_MARGIN = 8  # unambiguous inliers one sibling needs beyond twice the other's to take the match from it


def count_inliers(
    query: LocalFeatures,
    reference: LocalFeatures,
    ratio: float = 0.8,
    ransac_px: float = 6.0,
    min_coverage: float = 0.08,
) -> int:
    """RANSAC-homography inliers of one reference (0 if no plausible homography)."""
    return match_references(query, [reference], ratio, ransac_px, min_coverage)[0].inliers


def settles(match: Match, fast_inliers: int) -> bool:
    """Whether the top hit's own match (`match_against`) settles verification without the joint passes.

    It needs `fast_inliers` unambiguous inliers, and they must be most of its inliers. A sibling
    the query is not shares the design with the product it is, so most of its inliers are
    ambiguous: Alpro Fresh Soy Milk reached 40 unambiguous of 127 inliers on a view of Alpro
    Shelf Soy Milk, which has 239 (141 unambiguous); settling on the 40 answered the sibling.
    """
    return match.unambiguous >= fast_inliers and 2 * match.unambiguous >= match.inliers


def match_against(
    query: LocalFeatures,
    reference: LocalFeatures,
    others: Sequence[LocalFeatures],
    ratio: float = 0.8,
    ransac_px: float = 6.0,
    min_coverage: float = 0.08,
) -> Match:
    """`reference` matched on its own, its inliers then checked against `others`: the two counts of `Match`.

    A pairwise match cannot tell a product from a same-brand sibling: the shared
    design (logo, layout, most of the artwork) is a true planar match to either, and
    a sibling reached 48-80 pairwise inliers on queries of its brother. So an
    inlier is unambiguous only if its query feature also passes the ratio test
    against the other candidates' descriptors, as in `match_references`, at a
    fraction of its cost: only the inliers (tens to hundreds of query features)
    are searched among the others, not all 1,000.
    """
    if len(query) < MIN_MATCHES or len(reference) < MIN_MATCHES or reference.version != query.version:
        return Match(0, 0)
    good, distance = _ratio_matches_with_distance(query.descriptors, reference.descriptors, ratio)
    if len(good) < MIN_MATCHES:
        return Match(0, 0)
    keep, homography = _homography_inliers(
        reference.points[good[:, 1]], query.points[good[:, 0]], ransac_px, min_coverage, reference.area
    )
    rows, distance = good[keep, 0], distance[keep]
    rivals = [o.descriptors for o in others if len(o) and o.version == query.version]
    if not rivals or not len(rows):
        return Match(len(rows), len(rows), homography)
    _, rival_best = _k_nearest(query.descriptors[rows], np.concatenate(rivals), 1)
    return Match(len(rows), int(np.count_nonzero(distance < ratio * rival_best[:, 0])), homography)
