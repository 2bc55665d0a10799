"""`Catalog`: one SQLite file per catalog (WAL mode), its change log and its search index.

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
import hashlib
import json
import logging
import math
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import sqlite_utils

from shelfsight.catalog import records
from shelfsight.catalog.index import SearchHit, SearchIndex
from shelfsight.catalog.quality import check_image, describe_image
from shelfsight.catalog.schema import RECORD_SCHEMA, migrate, schema_version
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import CatalogError, InputError
from shelfsight.edge_app.core.features import deserialise_keypoints
from shelfsight.edge_app.core.images import fit_square

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "shelfsight-catalog-snapshot"
# Meta keys the catalog manages itself; `set_meta` refuses them.
RESERVED_META = frozenset({"schema_version", "version", "model_fingerprint", "embedding_dim", "log_floor"})
_KEYPOINT_CACHE_SIZE = 4096
_PRODUCT_COLUMNS = "id, name, description, category, price, attributes, version"
_REFERENCE_COLUMNS = (
    "id, product_id, source, phash, embedding, scale, dim, fingerprint, image_jpeg, keypoints, local, version"
)
# What building the search index reads; both are answered from covering indexes (schema v2).
INDEX_PRODUCTS_SQL = "SELECT id, name, description, category, price, attributes FROM products ORDER BY id"
INDEX_REFERENCES_SQL = (
    "SELECT id, product_id, embedding, scale FROM reference_images WHERE fingerprint = ? AND dim = ? ORDER BY id"
)
# Row version of a local product; every versioned row has version >= 1.
LOCAL_VERSION = 0
_SYNCED_PRODUCTS = f"version > {LOCAL_VERSION}"


def reference_id_for(product_id: str, image_jpeg: bytes | None, embedding: bytes) -> str:
    """Stable id `<product_id>/<sha1[:12]>` of the stored image (or of the embedding when there is none)."""
    digest = hashlib.sha1(image_jpeg if image_jpeg else embedding).hexdigest()[:12]
    return f"{product_id}/{digest}"


def _unit(embedding: np.ndarray, dim: int | None) -> np.ndarray:
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if dim is not None and vector.size != dim:
        raise InputError(f"embedding has {vector.size} values, this catalog stores {dim}")
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise InputError("embedding is zero or contains NaN/infinity")
    return vector / norm


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
        self._stale = True
        self._keypoint_cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        if isinstance(path_or_conn, sqlite3.Connection):
            self.path: Path | None = None
            self.name = "catalog"
            conn = path_or_conn
            self._owns_connection = False
        else:
            self.path = Path(path_or_conn)
            self.name = str(self.path)
            if not self.path.is_file():
                if not create:
                    raise CatalogError(f"{self.path}: no such catalog")
                if not self.path.parent.is_dir():
                    raise CatalogError(f"{self.path}: folder {self.path.parent} does not exist")
            try:
                conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
            except sqlite3.Error as exc:
                raise CatalogError(f"{self.path}: cannot open catalog ({exc})") from exc
            self._owns_connection = True
        self.db = sqlite_utils.Database(conn)
        try:
            if self.path is not None:
                self.db.enable_wal()
            # FULL: a committed sync delta survives power loss, not just a process crash.
            self.db.execute("PRAGMA synchronous=FULL")
            migrate(self.db, self.name)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise CatalogError(f"{self.name}: not a usable catalog ({exc})") from exc
        except CatalogError:
            self.close()
            raise

    # ---- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection if this Catalog opened it. Idempotent."""
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
    def _reading(self) -> Iterator[sqlite_utils.Database]:
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

    def _query_one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        cursor = self.db.execute(sql, list(params))
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cursor.description], row))

    def _query_all(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.db.execute(sql, list(params))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    # ---- metadata ---------------------------------------------------------------------------

    def _meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return default if row is None else json.loads(row[0])

    def _set_meta(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, json.dumps(value)],
        )

    def get_meta(self, key: str, default: Any = None) -> Any:
        """A metadata value (JSON), e.g. `get_meta("unknown_threshold")`."""
        with self._reading():
            return self._meta(key, default)

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable metadata value (not versioned; travels with snapshots)."""
        if key in RESERVED_META:
            raise InputError(f"meta key {key!r} is managed by the catalog itself")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError(f"meta {key!r}: value is not JSON-serialisable ({exc})") from exc
        with self.batch():
            self._set_meta(key, value)

    @property
    def version(self) -> int:
        """Current catalog version (0 for an empty catalog)."""
        with self._reading():
            return int(self._meta("version", 0))

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
        with self._reading():
            return self._meta("model_fingerprint")

    @property
    def embedding_dim(self) -> int | None:
        with self._reading():
            value = self._meta("embedding_dim")
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

    def _bump(self) -> int:
        version = int(self._meta("version", 0)) + 1
        self._set_meta("version", version)
        return version

    def _log(self, version: int, op: str, product_id: str, reference_id: str | None) -> None:
        """Append to the change log, dropping the entries this one supersedes."""
        if op == "upsert_product":
            self.db.execute("DELETE FROM changes WHERE product_id = ? AND op = 'upsert_product'", [product_id])
        elif op == "remove_product":
            self.db.execute("DELETE FROM changes WHERE product_id = ?", [product_id])
        else:
            self.db.execute("DELETE FROM changes WHERE reference_id = ?", [reference_id])
        self.db.execute(
            "INSERT INTO changes (version, op, product_id, reference_id) VALUES (?, ?, ?, ?)",
            [version, op, product_id, reference_id],
        )

    def _write_product(self, row: Mapping[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO products (id, name, description, category, price, attributes, thumbnail, version) "
            "VALUES (:id, :name, :description, :category, :price, :attributes, :thumbnail, :version) "
            "ON CONFLICT(id) DO UPDATE SET name = excluded.name, description = excluded.description, "
            "category = excluded.category, price = excluded.price, attributes = excluded.attributes, "
            "thumbnail = excluded.thumbnail, version = excluded.version",
            dict(row),
        )

    def _write_reference(self, row: Mapping[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO reference_images "
            "(id, product_id, source, phash, embedding, scale, dim, fingerprint, image_jpeg, keypoints, local, version) "
            "VALUES (:id, :product_id, :source, :phash, :embedding, :scale, :dim, :fingerprint, :image_jpeg, "
            ":keypoints, :local, :version)",
            dict(row),
        )

    def _delete_product(self, product_id: str) -> None:
        # No foreign keys: the cascade is explicit so it is visible and logged in one place.
        self.db.execute("DELETE FROM reference_images WHERE product_id = ?", [product_id])
        self.db.execute("DELETE FROM products WHERE id = ?", [product_id])

    def _product_row(self, product_id: str) -> dict[str, Any] | None:
        return self._query_one(f"SELECT {_PRODUCT_COLUMNS}, thumbnail FROM products WHERE id = ?", [product_id])

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
            self._write_product(row)
            return int(self._meta("version", 0))
        row["version"] = version = self._bump()
        self._write_product(row)
        self._log(version, "upsert_product", row["id"], None)
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
            self._delete_product(product_id)
            if row["version"] == LOCAL_VERSION:
                return int(self._meta("version", 0))
            version = self._bump()
            self._log(version, "remove_product", product_id, None)
        return version

    def remove_reference(self, reference_id: str) -> int:
        """Remove one reference image; returns the catalog version afterwards."""
        with self.batch():
            row = self._query_one("SELECT product_id, local FROM reference_images WHERE id = ?", [reference_id])
            if row is None:
                raise CatalogError(f"no reference {reference_id!r} in {self.name}")
            self.db.execute("DELETE FROM reference_images WHERE id = ?", [reference_id])
            if row["local"]:
                return int(self._meta("version", 0))
            version = self._bump()
            self._log(version, "remove_reference", row["product_id"], reference_id)
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
        if keypoints is not None:
            deserialise_keypoints(keypoints, f"reference of {product_id}: keypoints")
        with self.batch():
            product = self._product_row(product_id)
            if product is None:
                raise CatalogError(f"no product {product_id!r} in {self.name}; add the product first")
            if product["version"] == LOCAL_VERSION and not local:
                # A synced reference to a product other stores do not have would orphan there.
                raise CatalogError(f"product {product_id!r} is local to this store; its references must be local too")
            self.check_model(fingerprint)
            dim = self._meta("embedding_dim")
            vector = _unit(embedding, dim)
            codes, scale = records.quantize(vector)
            if dim is None:
                self._set_meta("embedding_dim", int(vector.size))
                self._set_meta("model_fingerprint", fingerprint)
            reference_id = reference_id_for(product_id, image_jpeg, codes)
            version = int(self._meta("version", 0)) if local else self._bump()
            row = {
                "id": reference_id,
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
                "version": version,
            }
            self._write_reference(row)
            if not local:
                self._log(version, "upsert_reference", product_id, reference_id)
        return version

    def replace_embeddings(self, fingerprint: str, embeddings: Mapping[str, np.ndarray]) -> int:
        """Swap every reference's embedding for one from another model, in one transaction.

        `embeddings` must cover every reference. The model change bumps the version once and
        moves the log floor there: copies of this catalog need a snapshot to follow.
        """
        with self.batch():
            ids = [r[0] for r in self.db.execute("SELECT id FROM reference_images").fetchall()]
            missing = set(ids) - set(embeddings)
            if missing:
                raise CatalogError(
                    f"reembed: no new embedding for {len(missing)} references (e.g. {sorted(missing)[0]})"
                )
            dims = {np.asarray(v).size for v in embeddings.values()}
            if len(dims) > 1:
                raise CatalogError(f"reembed: embeddings of different sizes {sorted(dims)}")
            version = self._bump()
            for reference_id in ids:
                codes, scale = records.quantize(_unit(embeddings[reference_id], None))
                self.db.execute(
                    "UPDATE reference_images SET embedding = ?, scale = ?, dim = ?, fingerprint = ?, version = ? WHERE id = ?",
                    [codes, scale, len(codes), fingerprint, version, reference_id],
                )
            self._set_meta("model_fingerprint", fingerprint)
            self._set_meta("embedding_dim", dims.pop() if dims else None)
            self.db.execute("DELETE FROM changes")
            self._set_meta("log_floor", version)
        return version

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
        with self._reading():
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
        """All products (same dicts as `product`), sorted by id; filters match columns or attributes exactly."""
        with self._reading():
            rows = self._query_all(f"SELECT {_PRODUCT_COLUMNS} FROM products ORDER BY id")
            refs: dict[str, list[str]] = {}
            for reference_id, product_id in self.db.execute("SELECT id, product_id FROM reference_images ORDER BY id"):
                refs.setdefault(product_id, []).append(reference_id)
        result = []
        for row in rows:
            item = self._product_dict(row, refs.get(row["id"], []))
            fields = {**item["attributes"], **{k: v for k, v in item.items() if k != "attributes"}}
            if all(fields.get(key) == value for key, value in filters.items()):
                result.append(item)
        return result

    def _cell(self, table: str, column: str, key: str) -> Any:
        """One column of the row with id `key`; CatalogError naming it if there is no such row."""
        with self._reading():
            row = self.db.execute(f"SELECT {column} FROM {table} WHERE id = ?", [key]).fetchone()
        if row is None:
            what = "product" if table == "products" else "reference"
            raise CatalogError(f"no {what} {key!r} in {self.name}")
        return row[0]

    def thumbnail(self, product_id: str) -> bytes | None:
        """The product's thumbnail image bytes, if it has one."""
        return self._cell("products", "thumbnail", product_id)

    def reference(self, reference_id: str) -> dict[str, Any]:
        """A reference's metadata: id, product_id, source, phash, dim, fingerprint, local, version, has_image."""
        with self._reading():
            row = self._query_one(
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

    def references(self) -> list[dict[str, Any]]:
        """id, product_id, source, phash, local for every reference, sorted by id."""
        with self._reading():
            return self._query_all("SELECT id, product_id, source, phash, local FROM reference_images ORDER BY id")

    def keypoints(self, reference_id: str) -> tuple[np.ndarray, np.ndarray]:
        """ORB keypoints of a reference: (points float32 (K, 2), descriptors uint8 (K, 32)); cached."""
        with self._lock:
            cached = self._keypoint_cache.get(reference_id)
            if cached is not None:
                self._keypoint_cache.move_to_end(reference_id)
                return cached
            data = self._cell("reference_images", "keypoints", reference_id)
            if data is None:
                result = (np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
            else:
                result = deserialise_keypoints(data, f"{self.name}: keypoints of {reference_id}")
            for array in result:
                array.setflags(write=False)
            self._keypoint_cache[reference_id] = result
            if len(self._keypoint_cache) > _KEYPOINT_CACHE_SIZE:
                self._keypoint_cache.popitem(last=False)
            return result

    def stats(self) -> dict[str, Any]:
        """Counts and metadata: version, model, products, references, categories, file size, ..."""
        with self._reading():
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
                "version": int(self._meta("version", 0)),
                "model_fingerprint": self._meta("model_fingerprint"),
                "embedding_dim": self._meta("embedding_dim"),
                "products": count("SELECT COUNT(*) FROM products"),
                "references": count("SELECT COUNT(*) FROM reference_images"),
                "local_references": count("SELECT COUNT(*) FROM reference_images WHERE local = 1"),
                "local_products": count(f"SELECT COUNT(*) FROM products WHERE NOT ({_SYNCED_PRODUCTS})"),
                "products_without_references": count(
                    "SELECT COUNT(*) FROM products WHERE id NOT IN (SELECT product_id FROM reference_images)"
                ),
                "categories": categories,
                "log_floor": int(self._meta("log_floor", 0)),
                "log_entries": count("SELECT COUNT(*) FROM changes"),
                "meta": {k: json.loads(v) for k, v in meta.items() if k not in RESERVED_META},
            }
        if self.path is not None and self.path.is_file():
            result["file_bytes"] = self.path.stat().st_size
        return result

    # ---- sync contract ----------------------------------------------------------------------

    def _changed_rows(self, table: str, columns: str, op: str, after: int, last: int) -> dict[str, dict[str, Any]]:
        """Rows of `table` with an `op` log entry in (after, last], by id."""
        key = "product_id" if op == "upsert_product" else "reference_id"
        rows = self._query_all(
            f"SELECT {columns} FROM {table} WHERE id IN "
            f"(SELECT {key} FROM changes WHERE op = ? AND version > ? AND version <= ?)",
            [op, after, last],
        )
        return {row["id"]: row for row in rows}

    def changes_since(self, version: int, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Change records after `version`, in version order (see `catalog.records` for their shape).

        `limit` returns only the first `limit` records, to page a large delta; apply each page
        with `apply_changes(base, page, page[-1]["version"])`. CatalogError if `version` is newer
        than this catalog or older than the log reaches (then a snapshot is needed).
        """
        with self._reading():
            current = int(self._meta("version", 0))
            floor = int(self._meta("log_floor", 0))
            if version > current:
                raise CatalogError(f"{self.name}: asked for changes since {version}, but the catalog is at {current}")
            if version < floor:
                raise CatalogError(
                    f"{self.name}: the change log starts at version {floor}; a copy at {version} needs a snapshot"
                )
            sql_limit = "" if limit is None else f" LIMIT {int(limit)}"
            log_rows = self.db.execute(
                f"SELECT version, op, product_id, reference_id FROM changes WHERE version > ? ORDER BY version{sql_limit}",
                [version],
            ).fetchall()
            if not log_rows:
                return []
            last = log_rows[-1][0]
            products = self._changed_rows("products", f"{_PRODUCT_COLUMNS}, thumbnail", "upsert_product", version, last)
            references = self._changed_rows("reference_images", _REFERENCE_COLUMNS, "upsert_reference", version, last)
        result = []
        for change_version, op, product_id, reference_id in log_rows:
            if op == "upsert_product":
                result.append(records.product_record(products[product_id], change_version))
            elif op == "upsert_reference":
                result.append(records.reference_record(references[reference_id]))
            else:
                result.append(records.removal_record(change_version, op, product_id, reference_id))
        return result

    def _validate_references(
        self, changes: Iterable[records.Change], fingerprint: str | None, dim: int | None
    ) -> tuple[str | None, int | None]:
        """All references must come from one model, the catalog's own if it has one."""
        for change in changes:
            if change.op != "upsert_reference":
                continue
            assert change.row is not None
            where = f"change version {change.version} ({change.reference_id})"
            fingerprint = fingerprint or change.row["fingerprint"]
            dim = dim or change.row["dim"]
            if change.row["fingerprint"] != fingerprint:
                raise CatalogError(
                    f"{where}: embedding from model {change.row['fingerprint'][:12]}…, catalog uses {fingerprint[:12]}…"
                )
            if change.row["dim"] != dim:
                raise CatalogError(f"{where}: embedding dim {change.row['dim']}, catalog uses {dim}")
        return fingerprint, dim

    def _check_no_orphans(self) -> None:
        orphan = self.db.execute(
            "SELECT id FROM reference_images WHERE product_id NOT IN (SELECT id FROM products) LIMIT 1"
        ).fetchone()
        if orphan is not None:
            raise CatalogError(f"reference {orphan[0]} belongs to a product that does not exist")

    def apply_changes(self, base_version: int, changes: list[dict[str, Any]], target_version: int) -> None:
        """Apply a delta from `changes_since(base_version)` of another catalog, all or nothing.

        Every record is validated before anything is written; then all are applied in one
        transaction (synchronous=FULL) and the version becomes `target_version`. CatalogError if
        this catalog is not at `base_version`, a record is malformed, or `target_version` is not
        the last record's version.
        """
        if not isinstance(changes, list):
            raise CatalogError(f"changes must be a list, got {type(changes).__name__}")
        decoded = [records.decode_change(raw, i) for i, raw in enumerate(changes)]
        previous = base_version
        for change in decoded:
            if change.version <= previous:
                raise CatalogError(f"change version {change.version} does not follow {previous}")
            previous = change.version
        if previous != target_version:
            raise CatalogError(f"target version {target_version} does not match the last change ({previous})")
        with self.batch():
            current = int(self._meta("version", 0))
            if current != base_version:
                raise CatalogError(f"{self.name}: delta is based on version {base_version}, catalog is at {current}")
            own_fingerprint, own_dim = self._meta("model_fingerprint"), self._meta("embedding_dim")
            fingerprint, dim = self._validate_references(decoded, own_fingerprint, own_dim)
            for change in decoded:
                self._apply(change)
            self._check_no_orphans()
            if own_fingerprint is None and fingerprint is not None:
                self._set_meta("model_fingerprint", fingerprint)
                self._set_meta("embedding_dim", dim)
            self._set_meta("version", target_version)
        log.info("%s: applied %d changes, version %d -> %d", self.name, len(decoded), base_version, target_version)
        self.index()

    def _apply(self, change: records.Change) -> None:
        if change.op == "upsert_product":
            assert change.row is not None
            # HQ's row replaces a local product of the same id; HQ's copies of its references follow.
            self.db.execute(
                "DELETE FROM reference_images WHERE local = 1 AND product_id IN "
                f"(SELECT id FROM products WHERE id = ? AND NOT ({_SYNCED_PRODUCTS}))",
                [change.product_id],
            )
            self._write_product(change.row)
        elif change.op == "remove_product":
            self._delete_product(change.product_id)
        elif change.op == "upsert_reference":
            assert change.row is not None
            self._write_reference(change.row)
        else:
            self.db.execute("DELETE FROM reference_images WHERE id = ? AND local = 0", [change.reference_id])
        self._log(change.version, change.op, change.product_id, change.reference_id)

    def export_snapshot(self) -> dict[str, Any]:
        """The whole synced (non-local) catalog at its current version as one JSON-serialisable dict.

        {"format", "schema_version", "version", "model_fingerprint", "embedding_dim", "meta",
         "records": [upsert_product records..., upsert_reference records...]}
        """
        with self._reading():
            products = self._query_all(
                f"SELECT {_PRODUCT_COLUMNS}, thumbnail FROM products WHERE {_SYNCED_PRODUCTS} ORDER BY id"
            )
            references = self._query_all(
                f"SELECT {_REFERENCE_COLUMNS} FROM reference_images WHERE local = 0 ORDER BY id"
            )
            meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        return {
            "format": SNAPSHOT_FORMAT,
            "schema_version": RECORD_SCHEMA,
            "version": int(json.loads(meta.get("version", "0"))),
            "model_fingerprint": json.loads(meta.get("model_fingerprint", "null")),
            "embedding_dim": json.loads(meta.get("embedding_dim", "null")),
            "meta": {k: json.loads(v) for k, v in meta.items() if k not in RESERVED_META},
            "records": [records.product_record(r) for r in products]
            + [records.reference_record(r) for r in references],
        }

    def _decode_snapshot(
        self, snapshot: Any
    ) -> tuple[int, str | None, int | None, dict[str, Any], list[records.Change]]:
        expected = {"format", "schema_version", "version", "model_fingerprint", "embedding_dim", "meta", "records"}
        if not isinstance(snapshot, dict) or set(snapshot) != expected:
            got = sorted(snapshot) if isinstance(snapshot, dict) else type(snapshot).__name__
            raise CatalogError(f"snapshot: expected keys {sorted(expected)}, got {got}")
        if snapshot["format"] != SNAPSHOT_FORMAT or snapshot["schema_version"] != RECORD_SCHEMA:
            raise CatalogError(
                f"snapshot: format {snapshot['format']!r} schema {snapshot['schema_version']!r} not supported"
            )
        version, fingerprint, dim, meta = (
            snapshot[k] for k in ("version", "model_fingerprint", "embedding_dim", "meta")
        )
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise CatalogError(f"snapshot: bad version {version!r}")
        if not (fingerprint is None or isinstance(fingerprint, str)) or not (dim is None or isinstance(dim, int)):
            raise CatalogError("snapshot: bad model_fingerprint or embedding_dim")
        if not isinstance(meta, dict) or RESERVED_META & set(meta):
            raise CatalogError("snapshot: meta must be an object without reserved keys")
        if not isinstance(snapshot["records"], list):
            raise CatalogError("snapshot: records must be a list")
        decoded = [records.decode_change(raw, i) for i, raw in enumerate(snapshot["records"])]
        product_ids = set()
        for change in decoded:
            if change.op not in ("upsert_product", "upsert_reference") or change.version > version:
                raise CatalogError(
                    f"snapshot: record {change.op} at version {change.version} does not belong in a snapshot at {version}"
                )
            if change.op == "upsert_product":
                product_ids.add(change.product_id)
        has_references = any(c.op == "upsert_reference" for c in decoded)
        if has_references and (fingerprint is None or dim is None):
            raise CatalogError("snapshot: references without a model fingerprint and embedding dim")
        self._validate_references(decoded, fingerprint, dim)
        for change in decoded:
            if change.op == "upsert_reference" and change.product_id not in product_ids:
                raise CatalogError(f"snapshot: reference {change.reference_id} belongs to a missing product")
        return version, fingerprint, dim, meta, decoded

    def replace_with_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Replace all (non-local) contents with a snapshot from `export_snapshot`, in one transaction.

        The snapshot is validated first. Local products survive unless the snapshot has their
        id (HQ's row wins, their local references go); local references survive if their
        product is still there and the model is unchanged. The log floor moves to the snapshot's version.
        """
        version, fingerprint, dim, meta, decoded = self._decode_snapshot(snapshot)
        product_ids = {c.product_id for c in decoded if c.op == "upsert_product"}
        with self.batch():
            local_rows = self._query_all(
                f"SELECT {_PRODUCT_COLUMNS}, thumbnail FROM products WHERE NOT ({_SYNCED_PRODUCTS})"
            )
            local_products = [p for p in local_rows if p["id"] not in product_ids]
            taken_over = product_ids & {p["id"] for p in local_rows}
            kept = [
                r
                for r in self._query_all(f"SELECT {_REFERENCE_COLUMNS} FROM reference_images WHERE local = 1")
                if r["fingerprint"] == fingerprint and r["product_id"] not in taken_over
            ]
            for table in ("reference_images", "products", "changes"):
                self.db.execute(f"DELETE FROM {table}")
            self.db.execute("DELETE FROM meta WHERE key NOT IN ('schema_version')")
            for change in decoded:
                assert change.row is not None
                (self._write_product if change.op == "upsert_product" else self._write_reference)(change.row)
            for product in local_products:
                self._write_product(product)
            surviving = product_ids | {p["id"] for p in local_products}
            for row in kept:
                if row["product_id"] in surviving:
                    self._write_reference(row)
            for key, value in meta.items():
                self._set_meta(key, value)
            self._set_meta("version", version)
            self._set_meta("log_floor", version)
            if fingerprint is not None:
                self._set_meta("model_fingerprint", fingerprint)
                self._set_meta("embedding_dim", dim)
        log.info("%s: replaced with snapshot at version %d (%d records)", self.name, version, len(decoded))
        self.index()

    # ---- search -----------------------------------------------------------------------------

    def _build_index(self) -> SearchIndex:
        with self._reading():
            version = int(self._meta("version", 0))
            fingerprint = self._meta("model_fingerprint")
            dim = int(self._meta("embedding_dim", 0) or 0)
            products = self._query_all(INDEX_PRODUCTS_SQL)
            rows = self.db.execute(INDEX_REFERENCES_SQL, [fingerprint, dim]).fetchall()
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
        )

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

    def reload(self) -> None:
        """Re-read the catalog from disk (after another process or connection changed it)."""
        self._stale = True
        with self._lock:
            self._keypoint_cache.clear()
        self.index()

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
        self.check_model(embedder.fingerprint)
        return self.search(embedder.embed_image(rgb), k, fingerprint=embedder.fingerprint, **filters)
