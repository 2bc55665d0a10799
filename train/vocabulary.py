"""Train the visual vocabulary the catalog's local-feature index uses (workstation; no TensorFlow).

Descriptors come from images that are NOT the catalog being searched (for the
shipped default: Grocery Store training photos and GroZi-120 shelf crops), so the
words describe packaging texture in general rather than one store's products,
and a catalog of products nobody trained on quantises as well as any other.
Every image gives at most `per_image` descriptors (its strongest keypoints), so a
few heavily textured images cannot dominate the clusters.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from shelfsight.edge_app.core.errors import InputError
from shelfsight.edge_app.core.features import EXTRACTOR, extract_features
from shelfsight.edge_app.core.images import iter_image_files, load_rgb
from shelfsight.edge_app.core.vocabulary import Vocabulary, train_vocabulary

log = logging.getLogger(__name__)


def collect_descriptors(
    sources: Sequence[str | Path], *, per_image: int = 300, max_descriptors: int = 300_000, seed: int = 0
) -> np.ndarray:
    """Version-2 ORB descriptors of the images under `sources`, a seeded sample of at most `max_descriptors`."""
    paths = [p for source in sources for p in iter_image_files(source)]
    if not paths:
        raise InputError(f"no images under {', '.join(str(s) for s in sources)}")
    rng = np.random.default_rng(seed)
    rng.shuffle(paths)  # type: ignore[arg-type]  # a list shuffles in place
    budget = max(1, max_descriptors // per_image)
    chunks = []
    for path in paths[:budget]:
        features = extract_features(load_rgb(path))
        if len(features):
            # `extract_features` returns keypoints strongest first.
            chunks.append(features.descriptors[:per_image])
    if not chunks:
        raise InputError("no local features found in the training images")
    descriptors = np.concatenate(chunks)
    log.info("vocabulary: %d descriptors from %d images", len(descriptors), len(chunks))
    return descriptors


def build_vocabulary(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    branching: int = 16,
    depth: int = 4,
    per_image: int = 300,
    max_descriptors: int = 300_000,
    seed: int = 0,
) -> Vocabulary:
    descriptors = collect_descriptors(sources, per_image=per_image, max_descriptors=max_descriptors, seed=seed)
    vocabulary = train_vocabulary(descriptors, extractor=EXTRACTOR, branching=branching, depth=depth, seed=seed)
    vocabulary.save(out)
    return vocabulary
