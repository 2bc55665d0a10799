"""References and the embedder: images turned into reference rows, searches by image, a model swap.

This is the half of a catalog that knows about models. A reference image is
quality-checked, embedded and described (pHash, ORB keypoints, a stored JPEG)
once, in `prepare_reference`, so the kiosk can prepare taught frames before it
takes the catalog's lock and an enrollment can carry the result to HQ; an
embedding becomes a row in `reference_row` (unit length, int8 + scale, an id
stable across catalogs). The store decides when a row is written and versions
it.

It works on anything shaped like `ModelCatalog` (the store's `Catalog` is one)
and does not import the store, so `Catalog.search_image()` and
`Catalog.replace_embeddings()` stay one-line delegations without an import cycle.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np
import sqlite_utils

from shelfsight.catalog import records
from shelfsight.catalog.index import SearchHit
from shelfsight.catalog.quality import check_image, describe_image
from shelfsight.catalog.schema import MODEL_BOUND_META, bump_version, write_meta
from shelfsight.catalog.word_index import encode_words
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import CatalogError, InputError
from shelfsight.edge_app.core.features import LocalFeatures, deserialise_features
from shelfsight.edge_app.core.images import fit_square
from shelfsight.edge_app.core.vocabulary import Vocabulary, load_vocabulary


class ModelCatalog(Protocol):
    """What this module needs of a catalog (`store.Catalog` provides it)."""

    db: sqlite_utils.Database

    def batch(self) -> AbstractContextManager[object]:
        """One write transaction; the search index is stale afterwards."""
        ...

    def check_model(self, fingerprint: str) -> None:
        """CatalogError unless embeddings of model `fingerprint` can be searched here."""
        ...

    def search(
        self,
        embedding: np.ndarray,
        k: int = 5,
        *,
        category: str | None = None,
        where: dict[str, Any] | None = None,
        fingerprint: str | None = None,
    ) -> list[SearchHit]:
        """Top-k products for an embedding."""
        ...


@dataclass(frozen=True)
class PreparedReference:
    """A reference image ready to store: what `add_reference_vector` takes (and an enrollment carries)."""

    embedding: np.ndarray  # float32, unit norm
    fingerprint: str
    phash: str
    source: str
    image_jpeg: bytes
    keypoints: bytes


def prepare_reference(rgb: np.ndarray, embedder: Embedder, source: str = "") -> PreparedReference:
    """Check an RGB image's quality (ImageError naming `source`), embed it, and compute its extras."""
    check_image(rgb, name=source or "image")
    embedding = embedder.embed_batch(fit_square(rgb, embedder.input_size)[None])[0]
    extras = describe_image(rgb)
    return PreparedReference(embedding, embedder.fingerprint, extras.phash, source, extras.image_jpeg, extras.keypoints)


def reference_id_for(product_id: str, image_jpeg: bytes | None, embedding: bytes) -> str:
    """Stable id `<product_id>/<sha1[:12]>` of the stored image (or of the embedding when there is none)."""
    digest = hashlib.sha1(image_jpeg if image_jpeg else embedding).hexdigest()[:12]
    return f"{product_id}/{digest}"


def unit_vector(embedding: np.ndarray, dim: int | None) -> np.ndarray:
    """The embedding as float32 of unit length; InputError if it is not `dim` long (when given) or not finite."""
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if dim is not None and vector.size != dim:
        raise InputError(f"embedding has {vector.size} values, this catalog stores {dim}")
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise InputError("embedding is zero or contains NaN/infinity")
    return vector / norm


# Words of 400 of a reference's keypoints only: the inverted file holds one entry per distinct
# word and reference, and at 100k references 1,000 keypoints' words (~900 distinct) made it 770 MB
# of kiosk memory and an 11 s start; verification still uses all the keypoints.
MAX_INDEXED_KEYPOINTS = 400
# The 400 are the strongest of each cell of an 8 x 8 grid over the reference in turn, not the
# strongest overall: those crowd onto the highest-contrast print (a logo, a black title), and a view
# that shows the rest of the package (the top out of the frame, a hand over the logo) shared few
# indexed words with it. On the hard warped printed products (seed 1), the word index's top 8 held
# 70.7% of the views verifiable against their reference, 84.5% with the grid.
INDEX_GRID = 8


def bundled_vocabulary() -> Vocabulary:
    """The vocabulary every release ships (`edge_app/assets/default_vocabulary.npz`)."""
    from shelfsight.edge_app.assets import default_vocabulary_path

    return load_vocabulary(default_vocabulary_path())


def words_of(features: LocalFeatures, vocabulary: Vocabulary) -> bytes | None:
    """The stored words of a reference's features: None unless they are version 2 and not empty."""
    if features.version != 2 or len(features) == 0:
        return None
    return encode_words(vocabulary.quantize(features.descriptors[indexed_keypoints(features)]))


def indexed_keypoints(
    features: LocalFeatures, limit: int = MAX_INDEXED_KEYPOINTS, grid: int = INDEX_GRID
) -> np.ndarray:
    """Which keypoints' words the inverted file indexes: round-robin over grid cells, strongest first.

    Keypoints are stored strongest first, so a cell's j-th keypoint is its j-th strongest; the
    first `limit` by (j, strength) take every cell's strongest, then every cell's second, and so on.
    Sorted indices into `features`.
    """
    n = len(features)
    if n <= limit:
        return np.arange(n)
    width, height = features.frame
    column = np.clip((features.points[:, 0] * grid / max(width, 1)).astype(np.int64), 0, grid - 1)
    row = np.clip((features.points[:, 1] * grid / max(height, 1)).astype(np.int64), 0, grid - 1)
    cell = row * grid + column
    by_cell = np.argsort(cell, kind="stable")  # strongest first within each cell
    first = np.searchsorted(cell[by_cell], cell[by_cell], side="left")
    rank = np.empty(n, np.int64)
    rank[by_cell] = np.arange(n) - first
    return np.sort(np.lexsort((np.arange(n), rank))[:limit])


def words_for(keypoints: bytes | None, vocabulary: Vocabulary | None, name: str = "reference") -> bytes | None:
    """`words_of` the serialised keypoints (None without keypoints or a vocabulary)."""
    if keypoints is None or vocabulary is None:
        return None
    return words_of(deserialise_features(keypoints, f"{name}: keypoints"), vocabulary)


def reference_row(
    product_id: str,
    embedding: np.ndarray,
    *,
    dim: int | None,
    fingerprint: str,
    phash: str,
    source: str,
    image_jpeg: bytes | None,
    keypoints: bytes | None,
    local: bool,
) -> dict[str, Any]:
    """The `reference_images` row for an embedding, L2-normalised and stored as int8 + scale.

    `dim`: the catalog's embedding size (None before its first reference). The row's
    `version` is left for the store to set, since only it knows whether the row is versioned.
    """
    vector = unit_vector(embedding, dim)
    codes, scale = records.quantize(vector)
    return {
        "id": reference_id_for(product_id, image_jpeg, codes),
        "product_id": product_id,
        "source": source,
        "phash": phash,
        "embedding": codes,
        "scale": scale,
        "dim": int(vector.size),
        "fingerprint": fingerprint,
        "image_jpeg": image_jpeg,
        "keypoints": keypoints,
        "local": int(local),
        "version": None,
    }


def search_image(
    catalog: ModelCatalog, rgb: np.ndarray, embedder: Embedder, k: int = 5, **filters: Any
) -> list[SearchHit]:
    """Embed an RGB image with `embedder` (which must be the catalog's model) and search."""
    catalog.check_model(embedder.fingerprint)
    return catalog.search(embedder.embed_image(rgb), k, fingerprint=embedder.fingerprint, **filters)


def replace_embeddings(catalog: ModelCatalog, fingerprint: str, embeddings: Mapping[str, np.ndarray]) -> int:
    """Swap every reference's embedding for one from another model, in one transaction.

    `embeddings` must cover every reference. The model change bumps the version once and
    moves the log floor there: copies of this catalog need a snapshot to follow. Meta measured
    with the old model (`MODEL_BOUND_META`: the calibrated threshold) is dropped.
    """
    db = catalog.db
    with catalog.batch():
        ids = [r[0] for r in db.execute("SELECT id FROM reference_images").fetchall()]
        missing = set(ids) - set(embeddings)
        if missing:
            raise CatalogError(f"reembed: no new embedding for {len(missing)} references (e.g. {sorted(missing)[0]})")
        dims = {np.asarray(v).size for v in embeddings.values()}
        if len(dims) > 1:
            raise CatalogError(f"reembed: embeddings of different sizes {sorted(dims)}")
        version = bump_version(db)
        for reference_id in ids:
            codes, scale = records.quantize(unit_vector(embeddings[reference_id], None))
            db.execute(
                "UPDATE reference_images SET embedding = ?, scale = ?, dim = ?, fingerprint = ?, version = ? WHERE id = ?",
                [codes, scale, len(codes), fingerprint, version, reference_id],
            )
        write_meta(db, "model_fingerprint", fingerprint)
        db.execute(f"DELETE FROM meta WHERE key IN ({', '.join('?' * len(MODEL_BOUND_META))})", MODEL_BOUND_META)
        write_meta(db, "embedding_dim", dims.pop() if dims else None)
        db.execute("DELETE FROM changes")
        write_meta(db, "log_floor", version)
    return version
