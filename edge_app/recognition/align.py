"""Aligned similarity: the query embedded again after rectifying it onto a verified reference.

The global embedding of a hand-held view compares a tilted, off-centre, partly
framed package with a straight catalog photo, so a true match often scores a
cosine of 0.3-0.5, no more than a same-brand sibling or a product the catalog
lacks. Verification has by then found the homography that maps the reference
onto the query. Warping the query back through it puts the package where the
reference has it, at its scale and upright, and the embedding of that
rectified view is compared with the reference's own. On warped printed
products (packages_warped_clean, dev seeds 1-3) a true match lines up (median
cosine 0.95; 5th percentile 0.86-0.90), while the sibling that a product the
catalog lacks verified as keeps its own colours and flavour art (median
0.38-0.46, at most 0.84): the embedding sees the colour that ORB descriptors,
which are grey-level, do not.

One interpreter invoke per aligned candidate, so the pipeline aligns only
verified candidates, the best `align_candidates` of them.
"""

from __future__ import annotations

import cv2
import numpy as np

from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.features import FEATURE_SIDE, LocalFeatures
from shelfsight.edge_app.core.images import fit_square


def rectify(roi: np.ndarray, query: LocalFeatures, reference: LocalFeatures, homography: np.ndarray) -> np.ndarray:
    """The region of interest warped onto the reference's work frame (RGB, the frame's size, at
    most FEATURE_SIDE on its longest side).

    `homography` maps reference work-frame points to query work-frame points (`verify.Match`);
    both feature sets must be version 2 (the whole image, aspect kept), whose work frame is the
    image resized, so a query work-frame point is a region pixel times the resize factor.
    Outside the region the border pixels are repeated, not black, so the framing a product
    partly out of view lacks does not read as a black band.
    """
    height, width = roi.shape[:2]
    # A synced catalog may hold frames up to MAX_FRAME_SIDE; the embedder sees a few hundred pixels.
    shrink = min(1.0, FEATURE_SIDE / max(reference.frame))
    size = (max(1, round(reference.frame[0] * shrink)), max(1, round(reference.frame[1] * shrink)))
    to_roi = np.diag([width / query.frame[0], height / query.frame[1], 1.0]) @ homography
    to_roi = to_roi @ np.diag([1.0 / shrink, 1.0 / shrink, 1.0])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # to_roi maps output pixels to region pixels
    return cv2.warpPerspective(np.ascontiguousarray(roi), to_roi, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)


def aligned_similarity(
    embedder: Embedder,
    roi: np.ndarray,
    query: LocalFeatures,
    reference: LocalFeatures,
    homography: np.ndarray,
    reference_embedding: np.ndarray,
) -> float | None:
    """Cosine between the rectified query's embedding and the reference's (None if it cannot be aligned)."""
    if query.version != 2 or reference.version != 2:
        return None  # version 1 work frames are centre squares: the mapping above does not hold
    rectified = rectify(roi, query, reference, homography)
    embedding = embedder.embed_batch(fit_square(rectified, embedder.input_size)[None])[0]
    norm = float(np.linalg.norm(embedding) * np.linalg.norm(reference_embedding))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return float(np.dot(embedding, reference_embedding)) / norm
