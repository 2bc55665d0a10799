"""`Catalog`: one SQLite file per catalog (WAL mode), its change log and its search index.

This module is the CRUD store: products, references, metadata, the change log
they write, reads and the search index. The halves that talk to something else
live apart, each working on a `Catalog` without importing this module:
`catalog.replication` (deltas and snapshots to and from other catalogs) and
`catalog.references` (the embedder: images into reference rows, image search, a
model swap). `Catalog` keeps one-line methods for them (`export_snapshot()`,
`search_image()`, ...) so callers have one object to hold.

Versioning. Every add/update/remove of a product or of a (non-local) reference
bumps the catalog version by one and is recorded in the `changes` table. The
log is compacted as it is written: an entity keeps only its latest entry (a
product removal also drops the entries of its references and keeps a
tombstone), so `changes_since(v)` returns exactly what a copy at version `v`
needs, with row data read from the live tables. A reembed or a snapshot
restore moves the log floor up; older copies then need a snapshot.

Local references and local products (`local=True`) are what a clerk taught
one store's kiosk. They are searchable but are not part of HQ's versioned
catalog: they do not bump the version, never appear in deltas, snapshots or the
sync digest, and survive `apply_changes` and `replace_with_snapshot` (a local
reference while its product exists and the model is unchanged). A local product
is stored with row version 0 (versioned rows start at 1), so the schema needs
no extra column. When HQ publishes a product with a local product's id (after
approving the store's enrollment), HQ's row wins and the local references of
that product are dropped: HQ's copies of them arrive in the same delta.

Threads: one Catalog may be shared by threads (kiosk web requests, camera loop,
sync). SQLite access is serialised by a lock; searches run on an immutable
`SearchIndex` that writes replace with a single reference swap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import sqlite_utils

from shelfsight.catalog import records, references, replication
from shelfsight.catalog.index import SearchHit, SearchIndex, value_matches
from shelfsight.catalog.quality import sharpness, thumbnail_jpeg
from shelfsight.catalog.references import (
    PreparedReference,
    bundled_vocabulary,
    prepare_reference,
    reference_row,
    words_for,
    words_of,
)
from shelfsight.catalog.schema import (
    LOCAL_VERSION,
    PRODUCT_COLUMNS,
    RESERVED_META,
    SYNCED_PRODUCTS,
    bump_version,
    delete_product,
    log_change,
    open_catalog,
    query_all,
    query_one,
    read_meta,
    read_vocabulary,
    schema_version,
    write_meta,
    write_product,
    write_reference,
    write_vocabulary,
)
from shelfsight.catalog.word_index import MAX_WORDS_PER_REFERENCE, WordIndex
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import CatalogError, ImageError, InputError
from shelfsight.edge_app.core.features import LocalFeatures, deserialise_features
from shelfsight.edge_app.core.images import decode_rgb
from shelfsight.edge_app.core.vocabulary import Vocabulary, load_vocabulary

log = logging.getLogger(__name__)

MAX_THUMBNAIL_SOURCE_BYTES = 20 * 1024 * 1024  # an image `set_thumbnail` accepts (a camera's full-size JPEG fits)

_KEYPOINT_CACHE_SIZE = 4096
# What building the search index reads; both are answered from covering indexes (schema v2).
# Attributes a product's barcode may be stored under (CSV columns become attributes), in the order looked up.
BARCODE_ATTRIBUTES = ("barcode", "ean", "gtin", "upc")
INDEX_PRODUCTS_SQL = "SELECT id, name, description, category, price, attributes FROM products ORDER BY id"
INDEX_REFERENCES_SQL = (
    "SELECT id, product_id, embedding, scale FROM reference_images WHERE fingerprint = ? AND dim = ? ORDER BY id"
)
# Each indexed reference's words (NULL: none) in INDEX_REFERENCES_SQL's order, so no merge is needed.
INDEX_WORDS_SQL = (
    "SELECT r.id, w.words FROM reference_images r LEFT JOIN reference_words w ON w.id = r.id"
    " WHERE r.fingerprint = ? AND r.dim = ? ORDER BY r.id"
)


class Catalog:
    """A product catalog in one SQLite file (or on an open sqlite3 connection).

    `Catalog(path)` opens or creates the file (`create=False`: it must exist),
    migrates its schema, and switches it to WAL mode. With a connection, the
    caller keeps ownership of it (`close()` leaves it open).
    """

    def __init__(self, path_or_conn: str | Path | sqlite3.Connection, *, create: bool = True) -> None:
        self._lock = threading.RLock()
        self._build_lock = threading.Lock()
        self._index: SearchIndex | None = None
        self._words_thread: threading.Thread | None = None  # start_index's background build
        self._stale = True
        self._keypoint_cache: OrderedDict[str, LocalFeatures] = OrderedDict()
        self._vocabulary: tuple[str | None, Vocabulary | None] | None = None
        self.path: Path | None = None if isinstance(path_or_conn, sqlite3.Connection) else Path(path_or_conn)
        self.name = "catalog" if self.path is None else str(self.path)
        # A caller's connection stays the caller's: close() leaves it open.
        self._owns_connection = self.path is not None
        self.db = sqlite_utils.Database(open_catalog(path_or_conn, create=create))
        self._loaded_data_version = self.data_version

    # ---- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection if this Catalog opened it. Idempotent."""
        self.wait_for_index()  # the background build reads through the connection
        with self._lock:
            if self._owns_connection:
                with contextlib.suppress(sqlite3.Error):
                    self.db.conn.close()
                self._owns_connection = False

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({self.name!r})"

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite_utils.Database]:
        """Hold the catalog's lock for a consistent read of several statements; SQLite errors become CatalogError."""
        with self._lock:
            try:
                yield self.db
            except sqlite3.Error as exc:
                raise CatalogError(f"{self.name}: read failed ({exc})") from exc

    @contextlib.contextmanager
    def batch(self) -> Iterator["Catalog"]:
        """Group several writes into one transaction: all of them are stored, or none."""
        with self._lock:
            try:
                with self.db.atomic():
                    yield self
            except sqlite3.Error as exc:
                raise CatalogError(f"{self.name}: write failed, nothing was changed ({exc})") from exc
            finally:
                self._stale = True
                self._keypoint_cache.clear()

    # ---- metadata ---------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        """A metadata value (JSON), e.g. `get_meta("unknown_threshold")`."""
        with self.reading():
            return read_meta(self.db, key, default)

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable metadata value (not versioned; travels with snapshots)."""
        if key in RESERVED_META:
            raise InputError(f"meta key {key!r} is managed by the catalog itself")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError(f"meta {key!r}: value is not JSON-serialisable ({exc})") from exc
        with self.batch():
            write_meta(self.db, key, value)

    # ---- visual vocabulary -----------------------------------------------------------------

    def vocabulary(self) -> Vocabulary | None:
        """The vocabulary the references' visual words come from (None: no local-feature search yet)."""
        with self.reading():
            fingerprint = read_meta(self.db, "vocabulary_fingerprint")
            cached = self._vocabulary
            if cached is None or cached[0] != fingerprint:
                cached = self._vocabulary = (fingerprint, read_vocabulary(self.db, self.name))
            return cached[1]

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Make `vocabulary` the catalog's; every reference's words are recomputed from its keypoints."""
        with self.batch():
            write_vocabulary(self.db, vocabulary)
            rows = self.db.execute("SELECT id, keypoints FROM reference_images").fetchall()
            self.db.execute("DELETE FROM reference_words")
            for reference_id, keypoints in rows:
                words = words_for(keypoints, vocabulary, reference_id)
                if words:
                    self.db.execute("INSERT INTO reference_words (id, words) VALUES (?, ?)", [reference_id, words])
        log.info("%s: vocabulary %s set (%d references)", self.name, vocabulary.fingerprint[:12], len(rows))

    def ensure_vocabulary(self, default: str | Path | None = None) -> Vocabulary:
        """The catalog's vocabulary, installing `default` (or the bundled one) if it has none yet."""
        vocabulary = self.vocabulary()
        if vocabulary is None:
            vocabulary = load_vocabulary(default) if default is not None else bundled_vocabulary()
            self.set_vocabulary(vocabulary)
        return vocabulary

    @property
    def version(self) -> int:
        """Current catalog version (0 for an empty catalog)."""
        with self.reading():
            return int(read_meta(self.db, "version", 0))

    @property
    def indexed_version(self) -> int:
        """The version of the in-memory index that searches use (rebuilt first if stale).

        No SQLite read: the kiosk checks this on every frame to know when its cached product
        data went out of date, and reading `version` from the file cost 40-90 us a frame.
        """
        return self.index().version

    @property
    def model_fingerprint(self) -> str | None:
        """SHA-256 of the model every stored embedding came from; None until the first reference."""
        with self.reading():
            return read_meta(self.db, "model_fingerprint")

    @property
    def embedding_dim(self) -> int | None:
        with self.reading():
            value = read_meta(self.db, "embedding_dim")
            return None if value is None else int(value)

    def check_model(self, fingerprint: str) -> None:
        """CatalogError unless embeddings made by model `fingerprint` can be searched in this catalog."""
        own = self.model_fingerprint
        if own is not None and own != fingerprint:
            raise CatalogError(
                f"{self.name}: built with model {own[:12]}…, not with this model ({fingerprint[:12]}…); "
                "search with the catalog's model, or run `shelfsight catalog reembed` with the new one"
            )

    # ---- versioned writes -------------------------------------------------------------------

    def _product_row(self, product_id: str) -> dict[str, Any] | None:
        return query_one(self.db, f"SELECT {PRODUCT_COLUMNS}, thumbnail FROM products WHERE id = ?", [product_id])

    @staticmethod
    def _split_fields(fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        columns = {k: v for k, v in fields.items() if k in records.PRODUCT_COLUMNS}
        extra = {k: v for k, v in fields.items() if k not in records.PRODUCT_COLUMNS}
        return columns, extra

    def _checked_product(self, product_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """Validate product fields with the same rules as incoming sync records."""
        thumbnail = data.get("thumbnail")
        if thumbnail is not None and not isinstance(thumbnail, (bytes, bytearray)):
            raise InputError(f"product {product_id}: thumbnail must be image bytes")
        attributes = json.dumps(records.check_attributes(data.get("attributes", {})))
        record = records.product_record(
            {**data, "id": product_id, "attributes": attributes, "thumbnail": thumbnail, "version": 1}
        )
        try:
            row = records.decode_change(record, 0).row
        except CatalogError as exc:
            raise InputError(f"product {product_id}: {str(exc).split(': ', 1)[-1]}") from exc
        assert row is not None
        return row

    def add_product(self, product_id: str, name: str, *, local: bool = False, **fields: Any) -> int:
        """Create a product; returns the new catalog version (unchanged for a `local` product).

        Fields: description, category, price, attributes (dict), thumbnail (JPEG/PNG bytes);
        any other keyword becomes an attribute (`brand="Acme"`). Attributes are flat JSON scalars.
        `local=True`: taught at this store; not versioned, not synced (see the module docstring).
        """
        records.check_product_id(product_id)
        columns, extra = self._split_fields(fields)
        attributes = {**records.check_attributes(columns.pop("attributes", {})), **extra}
        data = {"name": name, "description": "", "category": "", "price": None, **columns, "attributes": attributes}
        row = self._checked_product(product_id, data)
        with self.batch():
            if self._product_row(product_id) is not None:
                raise CatalogError(f"product {product_id} already exists; use update_product")
            version = self._store_product(row, local=local)
        return version

    def _store_product(self, row: dict[str, Any], *, local: bool) -> int:
        """Write a product row; a synced one bumps the version and is logged, a local one is neither."""
        if local:
            row["version"] = LOCAL_VERSION
            write_product(self.db, row)
            return int(read_meta(self.db, "version", 0))
        row["version"] = version = bump_version(self.db)
        write_product(self.db, row)
        log_change(self.db, version, "upsert_product", row["id"], None)
        return version

    def update_product(self, product_id: str, **fields: Any) -> int:
        """Change some fields of a product; returns the new version (a local product stays local).

        `attributes=` replaces all attributes; other unknown keywords set single attributes
        (None removes one).
        """
        columns, extra = self._split_fields(fields)
        with self.batch():
            current = self._product_row(product_id)
            if current is None:
                raise CatalogError(f"no product {product_id!r} in {self.name}")
            attributes = json.loads(current["attributes"])
            if "attributes" in columns:
                attributes = records.check_attributes(columns.pop("attributes"))
            for key, value in extra.items():
                if value is None:
                    attributes.pop(key, None)
                else:
                    attributes[key] = value
            data = {k: current[k] for k in ("name", "description", "category", "price", "thumbnail")}
            data.update(columns, attributes=attributes)
            row = self._checked_product(product_id, data)
            version = self._store_product(row, local=current["version"] == LOCAL_VERSION)
        return version

    def remove_product(self, product_id: str) -> int:
        """Remove a product and all its references (local ones too); returns the new version."""
        with self.batch():
            row = self._product_row(product_id)
            if row is None:
                raise CatalogError(f"no product {product_id!r} in {self.name}")
            delete_product(self.db, product_id)
            if row["version"] == LOCAL_VERSION:
                return int(read_meta(self.db, "version", 0))
            version = bump_version(self.db)
            log_change(self.db, version, "remove_product", product_id, None)
        return version

    def remove_reference(self, reference_id: str) -> int:
        """Remove one reference image; returns the catalog version afterwards."""
        with self.batch():
            row = query_one(self.db, "SELECT product_id, local FROM reference_images WHERE id = ?", [reference_id])
            if row is None:
                raise CatalogError(f"no reference {reference_id!r} in {self.name}")
            self.db.execute("DELETE FROM reference_images WHERE id = ?", [reference_id])
            if row["local"]:
                return int(read_meta(self.db, "version", 0))
            version = bump_version(self.db)
            log_change(self.db, version, "remove_reference", row["product_id"], reference_id)
        return version

    def add_reference(
        self, product_id: str, rgb: np.ndarray, embedder: Embedder, source: str = "", *, local: bool = False
    ) -> int:
        """Embed an RGB image of a product and store it as a reference; returns the catalog version.

        Checks image quality (size, blur), computes its pHash, ORB keypoints and a stored JPEG copy.
        """
        self.check_model(embedder.fingerprint)
        return self.add_prepared(product_id, prepare_reference(rgb, embedder, source), local=local)

    def add_prepared(self, product_id: str, prepared: PreparedReference, *, local: bool = False) -> int:
        """Store a reference made by `prepare_reference`; returns the catalog version."""
        return self.add_reference_vector(
            product_id,
            prepared.embedding,
            fingerprint=prepared.fingerprint,
            phash=prepared.phash,
            source=prepared.source,
            image_jpeg=prepared.image_jpeg,
            keypoints=prepared.keypoints,
            local=local,
        )

    def add_reference_vector(
        self,
        product_id: str,
        embedding: np.ndarray,
        *,
        fingerprint: str,
        phash: str,
        source: str,
        image_jpeg: bytes | None,
        keypoints: bytes | None,
        local: bool = False,
    ) -> int:
        """Store a precomputed embedding as a reference of `product_id`; returns the catalog version.

        The embedding is L2-normalised and stored as int8 + scale. The first reference fixes
        the catalog's model fingerprint and embedding dim; later ones must match them.
        """
        features = (
            deserialise_features(keypoints, f"reference of {product_id}: keypoints") if keypoints is not None else None
        )
        # The first version-2 reference brings the bundled vocabulary; version 1 has no words.
        words = words_of(features, self.ensure_vocabulary()) if features is not None and features.version == 2 else None
        with self.batch():
            product = self._product_row(product_id)
            if product is None:
                raise CatalogError(f"no product {product_id!r} in {self.name}; add the product first")
            if product["version"] == LOCAL_VERSION and not local:
                # A synced reference to a product other stores do not have would orphan there.
                raise CatalogError(f"product {product_id!r} is local to this store; its references must be local too")
            self.check_model(fingerprint)
            dim = read_meta(self.db, "embedding_dim")
            row = reference_row(
                product_id,
                embedding,
                dim=dim,
                fingerprint=fingerprint,
                phash=phash,
                source=source,
                image_jpeg=image_jpeg,
                keypoints=keypoints,
                local=local,
            )
            if dim is None:
                write_meta(self.db, "embedding_dim", row["dim"])
                write_meta(self.db, "model_fingerprint", fingerprint)
            row["version"] = version = int(read_meta(self.db, "version", 0)) if local else bump_version(self.db)
            row["words"] = words
            write_reference(self.db, row)
            if not local:
                log_change(self.db, version, "upsert_reference", product_id, row["id"])
        return version

    def replace_embeddings(self, fingerprint: str, embeddings: Mapping[str, np.ndarray]) -> int:
        """Swap every reference's embedding for one from another model (see `references.replace_embeddings`)."""
        return references.replace_embeddings(self, fingerprint, embeddings)

    # ---- reads ------------------------------------------------------------------------------

    @staticmethod
    def _product_dict(row: Mapping[str, Any], reference_ids: list[str]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "name": row["name"],
            "description": row["description"],
            "category": row["category"],
            "price": row["price"],
            "attributes": json.loads(row["attributes"]),
            "version": row["version"],
            "local": row["version"] == LOCAL_VERSION,
            "references": reference_ids,
        }

    def product(self, product_id: str) -> dict[str, Any]:
        """{"id", "name", "description", "category", "price", "attributes", "version", "local", "references": [ids]}."""
        with self.reading():
            row = self._product_row(product_id)
            if row is None:
                raise CatalogError(f"no product {product_id!r} in {self.name}")
            refs = [
                r[0]
                for r in self.db.execute(
                    "SELECT id FROM reference_images WHERE product_id = ? ORDER BY id", [product_id]
                )
            ]
            return self._product_dict(row, refs)

    def products(self, **filters: Any) -> list[dict[str, Any]]:
        """All products (same dicts as `product`), sorted by id; filters match columns or attributes (`value_matches`)."""
        with self.reading():
            rows = query_all(self.db, f"SELECT {PRODUCT_COLUMNS} FROM products ORDER BY id")
            refs: dict[str, list[str]] = {}
            for reference_id, product_id in self.db.execute("SELECT id, product_id FROM reference_images ORDER BY id"):
                refs.setdefault(product_id, []).append(reference_id)
        result = []
        for row in rows:
            item = self._product_dict(row, refs.get(row["id"], []))
            fields = {**item["attributes"], **{k: v for k, v in item.items() if k != "attributes"}}
            if all(value_matches(fields.get(key), value) for key, value in filters.items()):
                result.append(item)
        return result

    def _cell(self, table: str, column: str, key: str) -> Any:
        """One column of the row with id `key`; CatalogError naming it if there is no such row."""
        with self.reading():
            row = self.db.execute(f"SELECT {column} FROM {table} WHERE id = ?", [key]).fetchone()
        if row is None:
            what = "product" if table == "products" else "reference"
            raise CatalogError(f"no {what} {key!r} in {self.name}")
        return row[0]

    def thumbnail(self, product_id: str) -> bytes | None:
        """The product's thumbnail image bytes, if it has one."""
        return self._cell("products", "thumbnail", product_id)

    def set_thumbnail(self, product_id: str, image: bytes) -> int:
        """Make the product's thumbnail from encoded image bytes (fitted to 256 px, JPEG); returns the version.

        ImageError for bytes that are not a readable image (decoding is bounded by the
        pixel limit of `decode_rgb`).
        """
        if len(image) > MAX_THUMBNAIL_SOURCE_BYTES:
            raise InputError(f"thumbnail of {product_id}: image larger than {MAX_THUMBNAIL_SOURCE_BYTES} bytes")
        self.product(product_id)  # CatalogError naming it before any decoding
        thumb = thumbnail_jpeg(decode_rgb(image, f"thumbnail of {product_id}"))
        return self.update_product(product_id, thumbnail=thumb)

    def fill_thumbnails(self, product_ids: Iterable[str] | None = None) -> list[str]:
        """Give each product without a thumbnail one made from its best reference; returns their ids.

        The best reference is the sharpest stored image (variance of the Laplacian), so a
        blurred view taken at an angle does not become the product's picture. Products without
        a stored reference image keep none. All in one transaction.
        """
        filled = []
        with self.batch():
            wanted = (
                [row[0] for row in self.db.execute("SELECT id FROM products WHERE thumbnail IS NULL ORDER BY id")]
                if product_ids is None
                else list(dict.fromkeys(product_ids))
            )
            for product_id in wanted:
                if self.thumbnail(product_id) is not None:
                    continue
                images = [
                    row[0]
                    for row in self.db.execute(
                        "SELECT image_jpeg FROM reference_images WHERE product_id = ? AND image_jpeg IS NOT NULL "
                        "ORDER BY id",
                        [product_id],
                    )
                ]
                if not images:
                    continue
                pixels = []
                for data in images:
                    try:
                        pixels.append(decode_rgb(data, f"stored reference of {product_id}"))
                    except ImageError as exc:  # a damaged copy is skipped; the others still serve
                        log.warning("%s", exc)
                if not pixels:
                    continue
                best = max(pixels, key=sharpness)
                self.update_product(product_id, thumbnail=thumbnail_jpeg(best))
                filled.append(product_id)
        return filled

    def reference(self, reference_id: str) -> dict[str, Any]:
        """A reference's metadata: id, product_id, source, phash, dim, fingerprint, local, version, has_image."""
        with self.reading():
            row = query_one(
                self.db,
                "SELECT id, product_id, source, phash, dim, fingerprint, local, version, image_jpeg IS NOT NULL AS has_image "
                "FROM reference_images WHERE id = ?",
                [reference_id],
            )
        if row is None:
            raise CatalogError(f"no reference {reference_id!r} in {self.name}")
        row["local"], row["has_image"] = bool(row["local"]), bool(row["has_image"])
        return row

    def reference_image(self, reference_id: str) -> bytes | None:
        """The stored JPEG of a reference's prepared square image (None if it was stored without one)."""
        return self._cell("reference_images", "image_jpeg", reference_id)

    def reference_embedding(self, reference_id: str) -> np.ndarray:
        """A reference's embedding as stored (float32, dequantised from its int8 codes); CatalogError if none."""
        with self.reading():
            row = self.db.execute(
                "SELECT embedding, scale, dim FROM reference_images WHERE id = ?", [reference_id]
            ).fetchone()
        if row is None:
            raise CatalogError(f"no reference {reference_id!r} in {self.name}")
        codes, scale, dim = row
        if not isinstance(codes, bytes) or len(codes) != dim:
            raise CatalogError(f"{self.name}: reference {reference_id!r} has a damaged embedding")
        return np.frombuffer(codes, np.int8).astype(np.float32) * np.float32(scale)

    def references(self) -> list[dict[str, Any]]:
        """id, product_id, source, phash, local for every reference, sorted by id."""
        with self.reading():
            return query_all(self.db, "SELECT id, product_id, source, phash, local FROM reference_images ORDER BY id")

    def features(self, reference_id: str) -> LocalFeatures:
        """Local features of a reference (version 1 or 2; none stored: 0 keypoints); cached."""
        with self._lock:
            cached = self._keypoint_cache.get(reference_id)
            if cached is not None:
                self._keypoint_cache.move_to_end(reference_id)
                return cached
            data = self._cell("reference_images", "keypoints", reference_id)
            if data is None:
                result = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), (1, 1), 2)
            else:
                result = deserialise_features(data, f"{self.name}: keypoints of {reference_id}")
            for array in (result.points, result.descriptors):
                array.setflags(write=False)
            self._keypoint_cache[reference_id] = result
            if len(self._keypoint_cache) > _KEYPOINT_CACHE_SIZE:
                self._keypoint_cache.popitem(last=False)
            return result

    def keypoints(self, reference_id: str) -> tuple[np.ndarray, np.ndarray]:
        """ORB keypoints of a reference: (points float32 (K, 2), descriptors uint8 (K, 32)); cached."""
        features = self.features(reference_id)
        return features.points, features.descriptors

    def find_code(self, code: str) -> str | None:
        """The id of the product whose id is `code`, else of one whose barcode attribute (BARCODE_ATTRIBUTES) is."""
        with self.reading():
            if self._product_row(code) is not None:
                return code
            for attribute in BARCODE_ATTRIBUTES:  # a scan against 100k products: one pass of json_extract, ~50 ms
                row = self.db.execute(
                    "SELECT id FROM products WHERE CAST(json_extract(attributes, ?) AS TEXT) = ? ORDER BY id LIMIT 1",
                    [f"$.{attribute}", code],
                ).fetchone()
                if row is not None:
                    return str(row[0])
        return None

    def product_count(self) -> int:
        """How many products the catalog holds (one indexed count: cheap enough for every health check)."""
        with self.reading():
            return int(self.db.execute("SELECT COUNT(*) FROM products").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """Counts and metadata: version, model, products, references, categories, file size, ..."""
        with self.reading():
            count = lambda sql: int(self.db.execute(sql).fetchone()[0])  # noqa: E731
            categories = dict(
                self.db.execute(
                    "SELECT category, COUNT(*) FROM products GROUP BY category ORDER BY category"
                ).fetchall()
            )
            meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
            result = {
                "catalog": self.name,
                "schema_version": schema_version(self.db),
                "version": int(read_meta(self.db, "version", 0)),
                "model_fingerprint": read_meta(self.db, "model_fingerprint"),
                "embedding_dim": read_meta(self.db, "embedding_dim"),
                "products": count("SELECT COUNT(*) FROM products"),
                "references": count("SELECT COUNT(*) FROM reference_images"),
                "local_references": count("SELECT COUNT(*) FROM reference_images WHERE local = 1"),
                "local_products": count(f"SELECT COUNT(*) FROM products WHERE NOT ({SYNCED_PRODUCTS})"),
                "products_without_references": count(
                    "SELECT COUNT(*) FROM products WHERE id NOT IN (SELECT product_id FROM reference_images)"
                ),
                "categories": categories,
                "log_floor": int(read_meta(self.db, "log_floor", 0)),
                "log_entries": count("SELECT COUNT(*) FROM changes"),
                "meta": {k: json.loads(v) for k, v in meta.items() if k not in RESERVED_META},
            }
        if self.path is not None and self.path.is_file():
            result["file_bytes"] = self.path.stat().st_size
        return result

    # ---- replication (the logic is in `catalog.replication`) ------------------------------

    def changes_since(self, version: int, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Change records after `version`, in version order (see `replication.changes_since`)."""
        return replication.changes_since(self, version, limit=limit)

    def apply_changes(self, base_version: int, changes: list[dict[str, Any]], target_version: int) -> None:
        """Apply a delta from another catalog's `changes_since`, all or nothing (see `replication.apply_changes`)."""
        replication.apply_changes(self, base_version, changes, target_version)

    def export_snapshot(self) -> dict[str, Any]:
        """The whole synced catalog as one JSON-serialisable dict (see `replication.export_snapshot`)."""
        return replication.export_snapshot(self)

    def replace_with_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Replace all synced contents with a snapshot, in one transaction (see `replication.replace_with_snapshot`)."""
        replication.replace_with_snapshot(self, snapshot)

    # ---- search -----------------------------------------------------------------------------

    def _build_index(self, *, with_words: bool = True) -> SearchIndex:
        with self.reading():
            version = int(read_meta(self.db, "version", 0))
            fingerprint = read_meta(self.db, "model_fingerprint")
            dim = int(read_meta(self.db, "embedding_dim", 0) or 0)
            products = query_all(self.db, INDEX_PRODUCTS_SQL)
            rows = self.db.execute(INDEX_REFERENCES_SQL, [fingerprint, dim]).fetchall()
            vocabulary = self.vocabulary() if with_words else None
            stored = None
            if vocabulary is not None:
                # Read inside the lock (the cursor must be drained before another thread writes),
                # indexed after it: the seconds of numpy work at 100k references block no reader.
                ids = [row[0] for row in rows]
                stored = self._stored_words(ids, self.db.execute(INDEX_WORDS_SQL, [fingerprint, dim]))
        words = None
        if vocabulary is not None and stored is not None:
            words = WordIndex(*stored, vocabulary.n_words, names=ids)
        position = {p["id"]: i for i, p in enumerate(products)}
        fields = [
            {**json.loads(p["attributes"]), **{k: p[k] for k in ("id", "name", "description", "category", "price")}}
            for p in products
        ]
        if not rows:
            return SearchIndex.empty(dim, fingerprint, version)
        codes = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.int8).reshape(len(rows), dim)
        return SearchIndex(
            reference_ids=[r[0] for r in rows],
            reference_products=np.fromiter((position[r[1]] for r in rows), np.int32, len(rows)),
            codes=codes,
            scales=np.fromiter((r[3] for r in rows), np.float32, len(rows)),
            product_ids=[p["id"] for p in products],
            product_fields=fields,
            dim=dim,
            fingerprint=fingerprint,
            version=version,
            words=words,
        )

    def _stored_words(self, ids: Sequence[str], word_rows: sqlite3.Cursor) -> tuple[np.ndarray, np.ndarray] | None:
        """The stored words of references `ids`, in that order: (flat uint16 words, count per reference).

        None if the catalog's indexed references are no longer exactly `ids` (it changed since).

        The blobs are joined batch by batch into one flat buffer, which `WordIndex` checks in
        vectorised passes: no per-reference arrays, Python checks or list of 10^5 blobs, which
        cost seconds at 100k references and memory the kiosk would keep after the build.
        """
        buffer = bytearray()
        lengths = np.zeros(len(ids), np.int64)
        done = 0
        while batch := word_rows.fetchmany(4096):
            if done + len(batch) > len(ids) or any(a != b for (a, _), b in zip(batch, ids[done:])):
                return None
            blobs = [blob or b"" for (_, blob) in batch]
            buffer += b"".join(blobs)
            lengths[done : done + len(blobs)] = [len(blob) for blob in blobs]
            done += len(blobs)
        if done != len(ids):
            return None
        bad = np.flatnonzero((lengths % 2 == 1) | (lengths > 2 * MAX_WORDS_PER_REFERENCE))
        if len(bad):
            raise CatalogError(
                f"words of {ids[int(bad[0])]}: {int(lengths[bad[0]])} bytes is not a list of at most "
                f"{MAX_WORDS_PER_REFERENCE} words"
            )
        lengths //= 2
        without = int(np.count_nonzero(lengths == 0))
        if without:
            # Catalogs built before version-2 features, plain box sides, fruit: found by embedding only.
            log.info("%s: %d of %d references have no visual words", self.name, without, len(ids))
        return np.frombuffer(buffer, dtype="<u2"), lengths

    def index(self) -> SearchIndex:
        """The current immutable in-memory index, rebuilt (and swapped in) after writes.

        A write through this object marks the index stale; the next call rebuilds it, and
        other threads calling meanwhile get the previous index rather than block.
        """
        current = self._index
        if current is not None and not self._stale:
            return current
        # While another thread rebuilds (seconds for a million references), searches keep
        # using the previous complete index instead of waiting.
        if not self._build_lock.acquire(blocking=current is None):
            return current  # type: ignore[return-value]
        try:
            if self._index is None or self._stale:
                # Cleared before reading: a write that lands during the build marks it stale again.
                self._stale = False
                try:
                    built = self._build_index()
                except BaseException:
                    self._stale = True
                    raise
                self._index = built
                log.debug("%s: index rebuilt (%d references, version %d)", self.name, len(built), built.version)
            return self._index
        finally:
            self._build_lock.release()

    def start_index(self) -> SearchIndex:
        """Load the index to serve at once: the embedding half now, the visual words in the background.

        At 100k references the inverted file takes seconds to build, and a kiosk that waited for
        it would show nothing meanwhile. Until it lands, searches use the embedding shortlist alone
        (verified as usual); then the complete index of the same catalog version is swapped in like
        any rebuild. A failure to build it is logged and the embedding-only index keeps serving.
        `index()` (evaluation, tools) always waits for the complete index.
        """
        with self._build_lock:
            if self._index is not None:
                return self._index
            self._stale = False  # as in index(): a write during the build marks it stale again
            partial = self._build_index(with_words=False)
            self._index = partial
            if self.vocabulary() is None:
                return partial  # no visual words to index: this is the complete index
        self._words_thread = threading.Thread(
            target=self._complete_index, args=(partial,), name=f"words-{self.name}", daemon=True
        )
        self._words_thread.start()
        return partial

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait for `start_index`'s background build; True when none is still running."""
        thread = self._words_thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _complete_index(self, partial: SearchIndex) -> None:
        started = time.perf_counter()
        with self._build_lock:
            if self._index is not partial:
                return  # a rebuild after a write has already replaced it
            serving: SearchIndex = partial  # (mypy narrows `partial` to the attribute's Optional type above)
            try:
                words = self._words_for(serving)
                self._index = serving.with_words(words) if words is not None else self._build_index()
            except (CatalogError, sqlite3.Error):
                log.exception("%s: no visual-word index; products are found by their embedding only", self.name)
                return
        log.info("%s: visual-word index ready after %.1f s", self.name, time.perf_counter() - started)

    def _words_for(self, partial: SearchIndex) -> WordIndex | None:
        """The word index over `partial`'s references, if the catalog still holds exactly those.

        The embedding half is kept rather than rebuilt: a second copy of its 10^5 product and
        reference objects, allocated while the first still serves, would leave the kiosk's
        memory ~45 MB larger after the first is freed (measured at 100k references).
        """
        with self.reading():
            same = (
                int(read_meta(self.db, "version", 0)) == partial.version
                and read_meta(self.db, "model_fingerprint") == partial.fingerprint
            )
            vocabulary = self.vocabulary()
            if not same or vocabulary is None:
                return None
            stored = self._stored_words(
                partial.reference_ids, self.db.execute(INDEX_WORDS_SQL, [partial.fingerprint, partial.dim])
            )
        if stored is None:
            return None
        return WordIndex(*stored, vocabulary.n_words, names=partial.reference_ids)

    @property
    def data_version(self) -> int:
        """SQLite's `PRAGMA data_version` on this catalog's connection (a few microseconds, no file read).

        It changes when another connection commits to the file (the CLI, sync's own connection)
        and never for writes through this object, so a watcher polling it does not wake up for
        the kiosk's own teaching.
        """
        with self.reading():
            return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    @property
    def loaded_data_version(self) -> int:
        """`data_version` as of the last successful `reload()` (or the opening): equal means nothing to re-read."""
        return self._loaded_data_version

    def reload(self) -> None:
        """Re-read the catalog from disk (after another process or connection changed it).

        All or nothing: if what another process wrote cannot be indexed (a row no index can hold,
        a file that is no longer a catalog), CatalogError, and the previous index and caches keep
        serving. Otherwise every frame would retry the failed rebuild and fail with it.
        """
        with self._build_lock:
            mark = self.data_version  # read first: a commit during the build is then seen again, never missed
            was_stale, self._stale = self._stale, False  # as in index(): a write during the build marks it again
            try:
                built = self._build_index()
            except BaseException as exc:
                self._stale = self._stale or was_stale
                if isinstance(exc, (ValueError, TypeError, KeyError)):  # malformed rows: blob sizes, a lost product
                    raise CatalogError(f"{self.name}: cannot be indexed ({type(exc).__name__}: {exc})") from exc
                raise
            self._index = built
            self._loaded_data_version = mark
        with self._lock:
            self._keypoint_cache.clear()

    def search(
        self,
        embedding: np.ndarray,
        k: int = 5,
        *,
        category: str | None = None,
        where: dict[str, Any] | None = None,
        fingerprint: str | None = None,
    ) -> list[SearchHit]:
        """Top-k products for an embedding (see `SearchIndex.search`).

        Pass the query model's `fingerprint` to get a CatalogError when the catalog was built with
        another model; a wrong-size embedding is an InputError.
        """
        index = self.index()
        if fingerprint is not None and index.fingerprint is not None and fingerprint != index.fingerprint:
            self.check_model(fingerprint)
        return index.search(embedding, k, category=category, where=where)

    def search_image(self, rgb: np.ndarray, embedder: Embedder, k: int = 5, **filters: Any) -> list[SearchHit]:
        """Embed an RGB image with `embedder` (which must be the catalog's model) and search."""
        return references.search_image(self, rgb, embedder, k, **filters)
