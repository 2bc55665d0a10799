"""The catalog's SQLite schema and its migrations.

The file is opened and migrated by `edge_app.core.sqlite` (the helper the
kiosk's sync state and HQ's inbox use too): the schema version lives in
`PRAGMA user_version` (and is mirrored in the `meta` table for people reading
the file with other tools), each migration moves the file from version N-1 to N
inside one transaction, and a file written by a newer shelfsight than this one
is refused instead of being misread. A catalog always carried a version, so a
file with tables but no version is refused as not a catalog.

Tables:
  meta              key -> JSON value (catalog version, model fingerprint, embedding dim, ...)
  products          one row per product (id = SKU)
  reference_images  one row per reference image: int8 embedding + scale, model fingerprint,
                    pHash, ORB keypoints, a small JPEG of the prepared image, source path
  changes           the compacted change log that feeds sync (see `catalog.store`)
  reference_words   visual words of a reference's version-2 keypoints (sorted, unique uint16), apart
                    from the wide reference rows so the word index loads without reading their blobs
  vocabularies      the visual vocabulary those words come from (meta `vocabulary_fingerprint`)

Below the migrations are the row statements that the store, replication and
references modules all write with. They sit here, under those modules, so each
of them can use them without importing another (and the store can delegate to
the other two without an import cycle).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import sqlite_utils

from shelfsight.edge_app.core.errors import CatalogError, ModelError
from shelfsight.edge_app.core.sqlite import Migration, open_database, user_version
from shelfsight.edge_app.core.vocabulary import Vocabulary, vocabulary_from_bytes


def _v1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key", not_null={"value"})
    db.table("products").create(
        {
            "id": str,
            "name": str,
            "description": str,
            "category": str,
            "price": float,
            "attributes": str,  # JSON object
            "thumbnail": bytes,
            "version": int,  # catalog version of the last change to this row
        },
        pk="id",
        not_null={"name", "description", "category", "attributes", "version"},
        defaults={"description": "", "category": "", "attributes": "{}"},
    )
    db.table("reference_images").create(
        {
            "id": str,  # "<product_id>/<sha1[:12]>", stable across catalogs so deltas can address it
            "product_id": str,
            "source": str,
            "phash": str,
            "embedding": bytes,  # int8 vector
            "scale": float,  # float embedding ~= int8 * scale
            "dim": int,
            "fingerprint": str,  # sha256 of the model that made the embedding
            "image_jpeg": bytes,  # the prepared square image, so reembed works without the originals
            "keypoints": bytes,  # catalog.keypoints serialisation
            "local": int,  # 1 = added at this store, not part of HQ's versioned catalog
            "version": int,
        },
        pk="id",
        not_null={"product_id", "source", "phash", "embedding", "scale", "dim", "fingerprint", "local", "version"},
        defaults={"source": "", "phash": "", "local": 0},
    )
    db.table("reference_images").create_index(["product_id"])
    db.table("changes").create(
        {"version": int, "op": str, "product_id": str, "reference_id": str},
        pk="version",
        not_null={"op", "product_id"},
    )
    db.table("changes").create_index(["product_id"])
    db.table("changes").create_index(["reference_id"])


def _v2(db: sqlite_utils.Database) -> None:
    # Covering indexes for what loading the search index reads. Without them SQLite steps through
    # every table row, pages of JPEG, keypoint and thumbnail blobs included: 1.6 GB for 100k
    # references, 11.5 s from a cold disk cache (a kiosk after boot) against 0.3 s with them.
    db.table("reference_images").create_index(
        ["fingerprint", "dim", "id", "product_id", "scale", "embedding"], index_name="reference_images_search"
    )
    db.table("products").create_index(
        ["id", "name", "description", "category", "price", "attributes"], index_name="products_fields"
    )


def _v3(db: sqlite_utils.Database) -> None:
    # Words live in their own narrow table: appended to `reference_images` they would sit behind
    # each row's JPEG and keypoint blobs, and loading them would read the whole 1-4 GB file.
    db.execute("CREATE TABLE reference_words (id TEXT PRIMARY KEY, words BLOB NOT NULL) WITHOUT ROWID")
    db.execute("CREATE TABLE vocabularies (fingerprint TEXT PRIMARY KEY, data BLOB NOT NULL)")
    # Every path that deletes a reference (a product removed, a delta, a snapshot) drops its words.
    db.execute(
        "CREATE TRIGGER reference_words_cleanup AFTER DELETE ON reference_images "
        "BEGIN DELETE FROM reference_words WHERE id = OLD.id; END"
    )


def _recorded(version: int, change: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite3.Connection], None]:
    """A schema step on sqlite-utils that also mirrors the new version into `meta`."""

    def apply(conn: sqlite3.Connection) -> None:
        db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        change(db)
        db.table("meta").upsert({"key": "schema_version", "value": str(version)}, pk="key")

    return apply


# Append only. The index-only step is deferrable: a catalog one short of it works, only loads
# slower, so when it cannot be written (a full disk) the catalog opens as it is and the step is
# retried at the next open; a kiosk must keep serving after an upgrade.
MIGRATIONS = (
    Migration(1, "create the tables", _recorded(1, _v1)),
    Migration(2, "add the indexes", _recorded(2, _v2), deferrable="the catalog works without them but loads slower"),
    Migration(3, "add visual words and the vocabulary", _recorded(3, _v3)),
)
SCHEMA_VERSION = len(MIGRATIONS)
# The row layout that sync snapshots carry. Migrations that only add indexes leave it alone, so
# headquarters and stores on different releases keep exchanging snapshots. Layout 2 adds each
# reference's visual words and the vocabulary they come from.
RECORD_SCHEMA = 2


def open_catalog(target: str | Path | sqlite3.Connection, *, create: bool = True) -> sqlite3.Connection:
    """Open (`create`: or create) a catalog file, or take a caller's connection, and bring it to SCHEMA_VERSION."""
    return open_database(
        target,
        MIGRATIONS,
        what="catalog",
        error=CatalogError,
        create=create,
        # FULL: a committed sync delta survives power loss, not just a process crash.
        synchronous="FULL",
    )


def schema_version(db: sqlite_utils.Database) -> int:
    return user_version(db.conn)


# ---- rows -------------------------------------------------------------------------------------

# Meta keys the catalog manages itself: `Catalog.set_meta` refuses them, snapshots carry them apart.
# Meta measured with the catalog's model (the recognizer's calibrated "not in catalog" threshold and
# what it was calibrated for): another model's scores are on another scale, so a reembed drops them.
MODEL_BOUND_META = ("unknown_threshold", "unknown_threshold_calibration")
RESERVED_META = frozenset(
    {"schema_version", "version", "model_fingerprint", "embedding_dim", "log_floor", "vocabulary_fingerprint"}
)
PRODUCT_COLUMNS = "id, name, description, category, price, attributes, version"
REFERENCE_COLUMNS = (
    "id, product_id, source, phash, embedding, scale, dim, fingerprint, image_jpeg, keypoints, local, version"
)
# Row version of a local product; every versioned row has version >= 1, so no extra column is needed.
LOCAL_VERSION = 0
SYNCED_PRODUCTS = f"version > {LOCAL_VERSION}"


def query_one(db: sqlite_utils.Database, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
    cursor = db.execute(sql, list(params))
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([c[0] for c in cursor.description], row))


def query_all(db: sqlite_utils.Database, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    cursor = db.execute(sql, list(params))
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def read_meta(db: sqlite_utils.Database, key: str, default: Any = None) -> Any:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return default if row is None else json.loads(row[0])


def write_meta(db: sqlite_utils.Database, key: str, value: Any) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, json.dumps(value)],
    )


def bump_version(db: sqlite_utils.Database) -> int:
    """Move the catalog version up by one (inside the caller's transaction); returns the new version."""
    version = int(read_meta(db, "version", 0)) + 1
    write_meta(db, "version", version)
    return version


def log_change(db: sqlite_utils.Database, version: int, op: str, product_id: str, reference_id: str | None) -> None:
    """Append to the change log, dropping the entries this one supersedes (see `catalog.store`)."""
    if op == "upsert_product":
        db.execute("DELETE FROM changes WHERE product_id = ? AND op = 'upsert_product'", [product_id])
    elif op == "remove_product":
        db.execute("DELETE FROM changes WHERE product_id = ?", [product_id])
    else:
        db.execute("DELETE FROM changes WHERE reference_id = ?", [reference_id])
    db.execute(
        "INSERT INTO changes (version, op, product_id, reference_id) VALUES (?, ?, ?, ?)",
        [version, op, product_id, reference_id],
    )


def write_product(db: sqlite_utils.Database, row: Mapping[str, Any]) -> None:
    db.execute(
        "INSERT INTO products (id, name, description, category, price, attributes, thumbnail, version) "
        "VALUES (:id, :name, :description, :category, :price, :attributes, :thumbnail, :version) "
        "ON CONFLICT(id) DO UPDATE SET name = excluded.name, description = excluded.description, "
        "category = excluded.category, price = excluded.price, attributes = excluded.attributes, "
        "thumbnail = excluded.thumbnail, version = excluded.version",
        dict(row),
    )


_REFERENCE_FIELDS = tuple(c.strip() for c in REFERENCE_COLUMNS.split(","))


def attach_words(db: sqlite_utils.Database, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each reference row its `words` (bytes or None), read in one query."""
    if rows:
        ids = [r["id"] for r in rows]
        found: dict[str, bytes] = {}
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(db.execute(f"SELECT id, words FROM reference_words WHERE id IN ({marks})", chunk).fetchall())
        for row in rows:
            row["words"] = found.get(row["id"])
    return rows


def write_reference(db: sqlite_utils.Database, row: Mapping[str, Any]) -> None:
    """Write a reference row and its words (`row["words"]`: bytes, or None/absent for none)."""
    values = {k: row[k] for k in _REFERENCE_FIELDS}
    db.execute(
        "INSERT OR REPLACE INTO reference_images "
        "(id, product_id, source, phash, embedding, scale, dim, fingerprint, image_jpeg, keypoints, local, version) "
        "VALUES (:id, :product_id, :source, :phash, :embedding, :scale, :dim, :fingerprint, :image_jpeg, "
        ":keypoints, :local, :version)",
        values,
    )
    # REPLACE does not fire the delete trigger (recursive triggers are off), so words are set here.
    words = row.get("words")
    if words:
        db.execute("INSERT OR REPLACE INTO reference_words (id, words) VALUES (?, ?)", [row["id"], words])
    else:
        db.execute("DELETE FROM reference_words WHERE id = ?", [row["id"]])


def vocabulary_file(db: sqlite_utils.Database, name: str = "catalog") -> tuple[str, bytes] | None:
    """(fingerprint, file bytes) of the catalog's vocabulary, None without one."""
    fingerprint = read_meta(db, "vocabulary_fingerprint")
    if fingerprint is None:
        return None
    row = db.execute("SELECT data FROM vocabularies WHERE fingerprint = ?", [fingerprint]).fetchone()
    if row is None:
        raise CatalogError(f"{name}: vocabulary {fingerprint[:12]} is missing from the file")
    return fingerprint, bytes(row[0])


def read_vocabulary(db: sqlite_utils.Database, name: str = "catalog") -> Vocabulary | None:
    """The catalog's vocabulary, checked against the fingerprint its meta records (None without one)."""
    stored = vocabulary_file(db, name)
    if stored is None:
        return None
    try:
        return vocabulary_from_bytes(stored[1], f"{name}: vocabulary", expect_fingerprint=stored[0])
    except ModelError as exc:
        raise CatalogError(str(exc)) from exc


def write_vocabulary(db: sqlite_utils.Database, vocabulary: Vocabulary, data: bytes | None = None) -> None:
    """Make `vocabulary` (whose file bytes are `data`, if already at hand) the catalog's only one."""
    db.execute("DELETE FROM vocabularies")
    db.execute(
        "INSERT INTO vocabularies (fingerprint, data) VALUES (?, ?)",
        [vocabulary.fingerprint, data if data is not None else vocabulary.to_bytes()],
    )
    write_meta(db, "vocabulary_fingerprint", vocabulary.fingerprint)


def delete_product(db: sqlite_utils.Database, product_id: str) -> None:
    """Delete a product and its references (local ones too)."""
    # No foreign keys: the cascade is explicit so it is visible and logged in one place.
    db.execute("DELETE FROM reference_images WHERE product_id = ?", [product_id])
    db.execute("DELETE FROM products WHERE id = ?", [product_id])
