"""Replication: a catalog read as deltas and snapshots, and another catalog's applied to it.

This is the half of a catalog that talks to other catalogs (HQ publishing, a
kiosk following). The store owns the rows and records every versioned change
in the compacted change log (the rules are in `catalog.store`'s docstring);
this module reads that log as a delta (`changes_since`), exports and restores
whole snapshots, and applies another catalog's delta all or nothing. Records
arrive from the network, so each is validated (`catalog.records`) before
anything is written.

It works on anything shaped like `Replica`, which the store's `Catalog` is, and
does not import the store: `Catalog.changes_since()` and its siblings stay as
one-line delegations that sync code and tests call, without an import cycle.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import AbstractContextManager
from typing import Any, Iterable, Protocol

import sqlite_utils

from shelfsight.catalog import records
from shelfsight.catalog.index import SearchIndex
from shelfsight.catalog.references import bundled_vocabulary, words_for
from shelfsight.catalog.schema import (
    PRODUCT_COLUMNS,
    RECORD_SCHEMA,
    REFERENCE_COLUMNS,
    RESERVED_META,
    SYNCED_PRODUCTS,
    attach_words,
    delete_product,
    log_change,
    query_all,
    read_meta,
    read_vocabulary,
    vocabulary_file,
    write_meta,
    write_product,
    write_reference,
    write_vocabulary,
)
from shelfsight.catalog.word_index import decode_words
from shelfsight.edge_app.core.errors import CatalogError, ModelError
from shelfsight.edge_app.core.vocabulary import Vocabulary, vocabulary_from_bytes

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "shelfsight-catalog-snapshot"
_SNAPSHOT_KEYS = frozenset(
    {"format", "schema_version", "version", "model_fingerprint", "embedding_dim", "meta", "records", "vocabulary"}
)


class Replica(Protocol):
    """What replication needs of a catalog (`store.Catalog` provides it)."""

    name: str
    db: sqlite_utils.Database

    def reading(self) -> AbstractContextManager[sqlite_utils.Database]:
        """Hold the catalog's lock for a consistent read."""
        ...

    def batch(self) -> AbstractContextManager[object]:
        """One write transaction; the search index is stale afterwards."""
        ...

    def index(self) -> SearchIndex:
        """The search index, rebuilt if stale."""
        ...


# ---- reading a delta and a snapshot -----------------------------------------------------------


def _changed_rows(
    db: sqlite_utils.Database, table: str, columns: str, op: str, after: int, last: int
) -> dict[str, dict[str, Any]]:
    """Rows of `table` with an `op` log entry in (after, last], by id."""
    key = "product_id" if op == "upsert_product" else "reference_id"
    rows = query_all(
        db,
        f"SELECT {columns} FROM {table} WHERE id IN "
        f"(SELECT {key} FROM changes WHERE op = ? AND version > ? AND version <= ?)",
        [op, after, last],
    )
    return {row["id"]: row for row in rows}


def changes_since(catalog: Replica, version: int, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Change records after `version`, in version order (see `catalog.records` for their shape).

    `limit` returns only the first `limit` records, to page a large delta; apply each page
    with `apply_changes(base, page, page[-1]["version"])`. CatalogError if `version` is newer
    than this catalog or older than the log reaches (then a snapshot is needed).
    """
    with catalog.reading() as db:
        current = int(read_meta(db, "version", 0))
        floor = int(read_meta(db, "log_floor", 0))
        if version > current:
            raise CatalogError(f"{catalog.name}: asked for changes since {version}, but the catalog is at {current}")
        if version < floor:
            raise CatalogError(
                f"{catalog.name}: the change log starts at version {floor}; a copy at {version} needs a snapshot"
            )
        sql_limit = "" if limit is None else f" LIMIT {int(limit)}"
        log_rows = db.execute(
            f"SELECT version, op, product_id, reference_id FROM changes WHERE version > ? ORDER BY version{sql_limit}",
            [version],
        ).fetchall()
        if not log_rows:
            return []
        last = log_rows[-1][0]
        products = _changed_rows(db, "products", f"{PRODUCT_COLUMNS}, thumbnail", "upsert_product", version, last)
        references = _changed_rows(db, "reference_images", REFERENCE_COLUMNS, "upsert_reference", version, last)
        attach_words(db, list(references.values()))
        vocabulary = read_meta(db, "vocabulary_fingerprint")
    result = []
    for change_version, op, product_id, reference_id in log_rows:
        if op == "upsert_product":
            result.append(records.product_record(products[product_id], change_version))
        elif op == "upsert_reference":
            result.append(records.reference_record(references[reference_id], vocabulary))
        else:
            result.append(records.removal_record(change_version, op, product_id, reference_id))
    return result


def export_snapshot(catalog: Replica) -> dict[str, Any]:
    """The whole synced (non-local) catalog at its current version as one JSON-serialisable dict.

    {"format", "schema_version", "version", "model_fingerprint", "embedding_dim", "meta",
     "vocabulary" (base64 of the vocabulary file, or None),
     "records": [upsert_product records..., upsert_reference records...]}
    """
    with catalog.reading() as db:
        products = query_all(
            db, f"SELECT {PRODUCT_COLUMNS}, thumbnail FROM products WHERE {SYNCED_PRODUCTS} ORDER BY id"
        )
        references = query_all(db, f"SELECT {REFERENCE_COLUMNS} FROM reference_images WHERE local = 0 ORDER BY id")
        attach_words(db, references)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        stored = vocabulary_file(db, catalog.name)
        vocabulary_fingerprint = None if stored is None else stored[0]
        vocabulary = None if stored is None else records.encode_base64(stored[1])
    return {
        "format": SNAPSHOT_FORMAT,
        "schema_version": RECORD_SCHEMA,
        "version": int(json.loads(meta.get("version", "0"))),
        "model_fingerprint": json.loads(meta.get("model_fingerprint", "null")),
        "embedding_dim": json.loads(meta.get("embedding_dim", "null")),
        "meta": {k: json.loads(v) for k, v in meta.items() if k not in RESERVED_META},
        "vocabulary": vocabulary,
        "records": [records.product_record(r) for r in products]
        + [records.reference_record(r, vocabulary_fingerprint) for r in references],
    }


def content_digest(catalog: Replica) -> tuple[int, str]:
    """(version, SHA-256 hex) of the synced rows' content as records, read in one consistent read.

    Every field a product or reference record carries is covered, so a row edited in place (same
    id, same row version) changes the digest. Left out: local rows (a store's own teaching) and a
    reference's visual words, which a kiosk computes itself when HQ's record has none (they follow
    from its keypoints, which are covered). Records, not raw columns, are hashed: that is the form
    both sides agree on exactly (a kiosk's rows are written from HQ's records).
    """
    digest = hashlib.sha256()

    def add(record: dict[str, Any]) -> None:
        record["data"].pop("words", None)
        record["data"].pop("vocabulary", None)
        digest.update(json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
        digest.update(b"\n")

    with catalog.reading() as db:
        version = int(read_meta(db, "version", 0))
        for table, columns, where, to_record in (
            ("products", f"{PRODUCT_COLUMNS}, thumbnail", SYNCED_PRODUCTS, records.product_record),
            ("reference_images", REFERENCE_COLUMNS, "local = 0", records.reference_record),
        ):
            cursor = db.execute(f"SELECT {columns} FROM {table} WHERE {where} ORDER BY id")
            names = [c[0] for c in cursor.description]
            for row in cursor:
                add(to_record(dict(zip(names, row))))
    return version, digest.hexdigest()


# ---- validating what arrives ------------------------------------------------------------------


def _validate_references(
    changes: Iterable[records.Change], fingerprint: str | None, dim: int | None
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


def _check_words(changes: Iterable[records.Change], vocabulary: Vocabulary | None) -> None:
    """Words must come from this catalog's vocabulary; references without words get them here."""
    for change in changes:
        if change.op != "upsert_reference":
            continue
        assert change.row is not None
        where = f"change version {change.version} ({change.reference_id})"
        if change.row.get("words") is not None:
            if vocabulary is None or change.row["words_vocabulary"] != vocabulary.fingerprint:
                own = "none" if vocabulary is None else vocabulary.fingerprint[:12]
                raise CatalogError(
                    f"{where}: visual words from vocabulary {str(change.row['words_vocabulary'])[:12]}, "
                    f"this catalog's is {own}; a snapshot brings the vocabulary"
                )
            decode_words(change.row["words"], vocabulary.n_words, f"{where} words")
        else:
            change.row["words"] = words_for(change.row["keypoints"], vocabulary, where)


def _decode_delta(base_version: int, changes: Any, target_version: int) -> list[records.Change]:
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
    return decoded


def _adopt_bundled_vocabulary(db: sqlite_utils.Database, changes: Iterable[records.Change]) -> Vocabulary | None:
    """A catalog without a vocabulary takes the bundled one when the delta's words come from it.

    Every release ships that vocabulary, so a kiosk that starts empty and follows deltas from
    version 0 needs no snapshot to learn it; words from any other vocabulary still do.
    """
    wanted = {c.row.get("words_vocabulary") for c in changes if c.row is not None and c.row.get("words") is not None}
    if not wanted:
        return None
    bundled = bundled_vocabulary()
    if wanted != {bundled.fingerprint}:
        return None
    write_vocabulary(db, bundled)
    return bundled


def _snapshot_vocabulary(encoded: Any) -> tuple[Vocabulary, bytes] | None:
    if encoded is None:
        return None
    if not isinstance(encoded, str):
        raise CatalogError("snapshot: vocabulary must be base64 text or null")
    data = records.decode_base64(encoded, "snapshot vocabulary")
    assert data is not None
    try:
        return vocabulary_from_bytes(data, "snapshot vocabulary"), data
    except ModelError as exc:
        raise CatalogError(str(exc)) from exc


def _decode_snapshot(snapshot: Any) -> tuple[int, str | None, int | None, dict[str, Any], list[records.Change]]:
    if not isinstance(snapshot, dict) or set(snapshot) != _SNAPSHOT_KEYS:
        got = sorted(snapshot) if isinstance(snapshot, dict) else type(snapshot).__name__
        raise CatalogError(f"snapshot: expected keys {sorted(_SNAPSHOT_KEYS)}, got {got}")
    if snapshot["format"] != SNAPSHOT_FORMAT or snapshot["schema_version"] != RECORD_SCHEMA:
        raise CatalogError(
            f"snapshot: format {snapshot['format']!r} schema {snapshot['schema_version']!r} not supported"
        )
    version, fingerprint, dim, meta = (snapshot[k] for k in ("version", "model_fingerprint", "embedding_dim", "meta"))
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
    _validate_references(decoded, fingerprint, dim)
    for change in decoded:
        if change.op == "upsert_reference" and change.product_id not in product_ids:
            raise CatalogError(f"snapshot: reference {change.reference_id} belongs to a missing product")
    return version, fingerprint, dim, meta, decoded


# ---- applying it ------------------------------------------------------------------------------


def _check_no_orphans(db: sqlite_utils.Database) -> None:
    orphan = db.execute(
        "SELECT id FROM reference_images WHERE product_id NOT IN (SELECT id FROM products) LIMIT 1"
    ).fetchone()
    if orphan is not None:
        raise CatalogError(f"reference {orphan[0]} belongs to a product that does not exist")


def _apply(db: sqlite_utils.Database, change: records.Change) -> None:
    if change.op == "upsert_product":
        assert change.row is not None
        # HQ's row replaces a local product of the same id; HQ's copies of its references follow.
        db.execute(
            "DELETE FROM reference_images WHERE local = 1 AND product_id IN "
            f"(SELECT id FROM products WHERE id = ? AND NOT ({SYNCED_PRODUCTS}))",
            [change.product_id],
        )
        write_product(db, change.row)
    elif change.op == "remove_product":
        delete_product(db, change.product_id)
    elif change.op == "upsert_reference":
        assert change.row is not None
        write_reference(db, change.row)
    else:
        db.execute("DELETE FROM reference_images WHERE id = ? AND local = 0", [change.reference_id])
    log_change(db, change.version, change.op, change.product_id, change.reference_id)


def apply_changes(catalog: Replica, base_version: int, changes: list[dict[str, Any]], target_version: int) -> None:
    """Apply a delta from `changes_since(base_version)` of another catalog, all or nothing.

    Every record is validated before anything is written; then all are applied in one
    transaction (synchronous=FULL) and the version becomes `target_version`. CatalogError if
    this catalog is not at `base_version`, a record is malformed, or `target_version` is not
    the last record's version.
    """
    decoded = _decode_delta(base_version, changes, target_version)
    db = catalog.db
    with catalog.batch():
        current = int(read_meta(db, "version", 0))
        if current != base_version:
            raise CatalogError(f"{catalog.name}: delta is based on version {base_version}, catalog is at {current}")
        own_fingerprint, own_dim = read_meta(db, "model_fingerprint"), read_meta(db, "embedding_dim")
        fingerprint, dim = _validate_references(decoded, own_fingerprint, own_dim)
        _check_words(decoded, read_vocabulary(db, catalog.name) or _adopt_bundled_vocabulary(db, decoded))
        for change in decoded:
            _apply(db, change)
        _check_no_orphans(db)
        if own_fingerprint is None and fingerprint is not None:
            write_meta(db, "model_fingerprint", fingerprint)
            write_meta(db, "embedding_dim", dim)
        write_meta(db, "version", target_version)
    log.info("%s: applied %d changes, version %d -> %d", catalog.name, len(decoded), base_version, target_version)
    catalog.index()


def replace_with_snapshot(catalog: Replica, snapshot: dict[str, Any]) -> None:
    """Replace all (non-local) contents with a snapshot from `export_snapshot`, in one transaction.

    The snapshot is validated first. Local products survive unless the snapshot has their
    id (HQ's row wins, their local references go); local references survive if their
    product is still there and the model is unchanged. The log floor moves to the snapshot's version.
    """
    version, fingerprint, dim, meta, decoded = _decode_snapshot(snapshot)
    vocabulary = _snapshot_vocabulary(snapshot["vocabulary"])
    _check_words(decoded, None if vocabulary is None else vocabulary[0])
    product_ids = {c.product_id for c in decoded if c.op == "upsert_product"}
    db = catalog.db
    with catalog.batch():
        local_rows = query_all(db, f"SELECT {PRODUCT_COLUMNS}, thumbnail FROM products WHERE NOT ({SYNCED_PRODUCTS})")
        local_products = [p for p in local_rows if p["id"] not in product_ids]
        taken_over = product_ids & {p["id"] for p in local_rows}
        kept = [
            r
            for r in query_all(db, f"SELECT {REFERENCE_COLUMNS} FROM reference_images WHERE local = 1")
            if r["fingerprint"] == fingerprint and r["product_id"] not in taken_over
        ]
        attach_words(db, kept)
        previous_vocabulary = read_meta(db, "vocabulary_fingerprint")
        for table in ("reference_images", "reference_words", "products", "changes", "vocabularies"):
            db.execute(f"DELETE FROM {table}")
        db.execute("DELETE FROM meta WHERE key NOT IN ('schema_version')")
        if vocabulary is not None:
            write_vocabulary(db, *vocabulary)
        for change in decoded:
            assert change.row is not None
            (write_product if change.op == "upsert_product" else write_reference)(db, change.row)
        for product in local_products:
            write_product(db, product)
        surviving = product_ids | {p["id"] for p in local_products}
        same_words = vocabulary is not None and previous_vocabulary == vocabulary[0].fingerprint
        for row in kept:
            if row["product_id"] in surviving:
                # Local words made with a vocabulary the snapshot replaced are recomputed.
                if not same_words:
                    row["words"] = words_for(row["keypoints"], None if vocabulary is None else vocabulary[0])
                write_reference(db, row)
        for key, value in meta.items():
            write_meta(db, key, value)
        write_meta(db, "version", version)
        write_meta(db, "log_floor", version)
        if fingerprint is not None:
            write_meta(db, "model_fingerprint", fingerprint)
            write_meta(db, "embedding_dim", dim)
    log.info("%s: replaced with snapshot at version %d (%d records)", catalog.name, version, len(decoded))
    catalog.index()
