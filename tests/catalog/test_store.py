"""Catalog CRUD, versions, model fingerprints, local references, keypoints and reopening."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from shelfsight.catalog.schema import RECORD_SCHEMA, SCHEMA_VERSION
from shelfsight.catalog.store import INDEX_PRODUCTS_SQL, INDEX_REFERENCES_SQL, Catalog
from shelfsight.edge_app.core.errors import CatalogError, ImageError, InputError
from shelfsight.edge_app.core.features import compute_keypoints, serialise_keypoints
from tests.support.fakes import ProjectionEmbedder, product_photo


def test_products_crud_bumps_version(catalog: Catalog) -> None:
    assert catalog.version == 0 and catalog.model_fingerprint is None
    assert catalog.add_product("cola", "Cola", category="drinks", price=1.2, brand="Fizz") == 1
    assert catalog.update_product("cola", price=1.5, brand=None, size="330ml") == 2
    product = catalog.product("cola")
    assert product["price"] == 1.5 and product["attributes"] == {"size": "330ml"} and product["version"] == 2
    assert catalog.remove_product("cola") == 3
    with pytest.raises(CatalogError, match="no product 'cola'"):
        catalog.product("cola")


def test_product_errors_name_the_problem(catalog: Catalog) -> None:
    catalog.add_product("cola", "Cola")
    with pytest.raises(CatalogError, match="already exists"):
        catalog.add_product("cola", "Cola again")
    with pytest.raises(CatalogError, match="no product 'nope'"):
        catalog.update_product("nope", name="x")
    with pytest.raises(CatalogError, match="invalid product id"):
        catalog.add_product("a/b", "slash")
    with pytest.raises(InputError, match="price"):
        catalog.add_product("bad", "Bad price", price=float("nan"))
    with pytest.raises(CatalogError, match="value of 'tags'"):
        catalog.add_product("bad", "Nested", tags=["a", "b"])
    assert catalog.version == 1


def test_products_filters(filled: Catalog) -> None:
    assert [p["id"] for p in filled.products()] == ["chips", "cola", "soap"]
    assert [p["id"] for p in filled.products(category="drinks")] == ["cola"]
    assert [p["id"] for p in filled.products(brand="Fizz")] == ["cola"]
    assert len(filled.product("cola")["references"]) == 2


def test_search_ranks_products_by_best_reference(filled: Catalog, embedder: ProjectionEmbedder) -> None:
    hits = filled.search_image(product_photo(2, noise=4.0), embedder, k=5)
    assert hits[0].product_id == "cola" and hits[0].score > 0.95
    assert hits[0].reference_id in filled.product("cola")["references"]
    assert [h.product_id for h in hits] == ["cola", "chips"]  # soap has no references
    assert [h.product_id for h in filled.search_image(product_photo(2), embedder, category="snacks")] == ["chips"]
    assert filled.search_image(product_photo(2), embedder, where={"category": ["care"]}) == []
    assert [h.product_id for h in filled.search_image(product_photo(2), embedder, where={"brand": "Fizz"})] == ["cola"]


def test_another_model_is_refused(filled: Catalog) -> None:
    other = ProjectionEmbedder(seed=2)
    with pytest.raises(CatalogError, match="reembed"):
        filled.search_image(product_photo(1), other)
    with pytest.raises(CatalogError, match="not with this model"):
        filled.search(other.embed_image(product_photo(1)), fingerprint=other.fingerprint)
    with pytest.raises(CatalogError, match="not with this model"):
        filled.add_reference("soap", product_photo(9), other)
    with pytest.raises(InputError, match="makes 32"):
        filled.search(np.ones(16, np.float32))
    with pytest.raises(InputError, match="zero or not finite"):
        filled.search(np.full(32, np.nan, np.float32))


def test_embeddings_are_int8_with_scale(filled: Catalog, embedder: ProjectionEmbedder) -> None:
    row = filled.db.execute("SELECT embedding, scale, dim, fingerprint FROM reference_images LIMIT 1").fetchone()
    assert len(row[0]) == 32 and row[2] == 32 and row[3] == embedder.fingerprint
    vector = np.frombuffer(row[0], np.int8) * row[1]
    assert abs(np.linalg.norm(vector) - 1.0) < 0.02


def test_bad_reference_images(filled: Catalog, embedder: ProjectionEmbedder) -> None:
    with pytest.raises(ImageError, match="too small"):
        filled.add_reference("soap", product_photo(5, size=(40, 40)), embedder, "tiny.jpg")
    with pytest.raises(ImageError, match="too blurry"):
        filled.add_reference("soap", np.full((120, 160, 3), 128, np.uint8), embedder, "flat.jpg")
    with pytest.raises(CatalogError, match="add the product first"):
        filled.add_reference("ghost", product_photo(5), embedder)
    with pytest.raises(InputError, match="this catalog stores 32"):
        filled.add_reference_vector(
            "soap", np.ones(8), fingerprint=embedder.fingerprint, phash="", source="", image_jpeg=None, keypoints=None
        )
    assert filled.version == 7


def test_local_references_are_searchable_but_unversioned(filled: Catalog, embedder: ProjectionEmbedder) -> None:
    version = filled.version
    assert filled.add_reference("soap", product_photo(7), embedder, "kiosk", local=True) == version
    assert filled.version == version
    assert filled.search_image(product_photo(7), embedder, k=1)[0].product_id == "soap"
    assert all(c["product_id"] != "soap" or c["op"] == "upsert_product" for c in filled.changes_since(0))
    assert filled.stats()["local_references"] == 1


def test_keypoints_are_stored_and_cached(filled: Catalog) -> None:
    reference_id = filled.product("cola")["references"][0]
    points, descriptors = filled.keypoints(reference_id)
    assert points.dtype == np.float32 and points.shape[1] == 2 and 20 <= len(points) <= 1000
    assert descriptors.dtype == np.uint8 and descriptors.shape == (len(points), 32)
    assert filled.keypoints(reference_id)[0] is points
    features = filled.features(reference_id)  # version 2: the whole 160 x 120 photo at 640 px
    assert features.version == 2 and features.frame == (640, 480)
    assert points[:, 0].max() <= 640 and points[:, 1].max() <= 480
    with pytest.raises(CatalogError, match="no reference"):
        filled.keypoints("cola/nothing")


def test_reference_image_copy_is_kept(filled: Catalog) -> None:
    reference_id = filled.product("chips")["references"][0]
    assert filled.reference_image(reference_id)[:2] == b"\xff\xd8"
    info = filled.reference(reference_id)
    assert info["product_id"] == "chips" and info["has_image"] and info["source"].startswith("chips/")


def test_meta(filled: Catalog) -> None:
    filled.set_meta("unknown_threshold", 0.42)
    assert filled.get_meta("unknown_threshold") == 0.42 and filled.get_meta("missing", 3) == 3
    with pytest.raises(InputError, match="managed by the catalog"):
        filled.set_meta("version", 99)
    assert filled.stats()["meta"] == {"unknown_threshold": 0.42}


def test_reopen_wal_and_reload(tmp_path: Path, embedder: ProjectionEmbedder) -> None:
    path = tmp_path / "c.db"
    with Catalog(path) as writer, Catalog(path) as reader:
        assert writer.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        writer.add_product("cola", "Cola")
        writer.add_reference("cola", product_photo(1), embedder)
        assert len(reader.index()) == 1
        writer.add_reference("cola", product_photo(2), embedder)
        assert len(reader.index()) == 1  # a reader's index is its snapshot until reload()
        assert reader.version == 3 and reader.indexed_version == 2  # the file moved on, the index did not
        reader.reload()
        assert len(reader.index()) == 2 and reader.version == reader.indexed_version == 3
    with Catalog(path, create=False) as again:
        assert again.version == 3 and again.embedding_dim == 32


def test_unusable_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such catalog"):
        Catalog(tmp_path / "missing.db", create=False)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError, match="not a usable catalog"):
        Catalog(garbage)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(CatalogError, match="not a shelfsight catalog"):
        Catalog(foreign)
    newer = tmp_path / "newer.db"
    Catalog(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(CatalogError, match="newer than this shelfsight"):
        Catalog(newer)


def as_schema_2(path: Path) -> None:
    """Turn a catalog file back into what a schema-2 release left behind: version-1 keypoints, no words."""
    with sqlite3.connect(path) as conn:
        for (reference_id,) in conn.execute("SELECT id FROM reference_images").fetchall():
            rgb = product_photo(abs(hash(reference_id)) % 1000)
            conn.execute(
                "UPDATE reference_images SET keypoints = ? WHERE id = ?",
                [serialise_keypoints(*compute_keypoints(rgb)), reference_id],
            )
        conn.execute("DROP TRIGGER reference_words_cleanup")
        conn.execute("DROP TABLE reference_words")
        conn.execute("DROP TABLE vocabularies")
        conn.execute("DELETE FROM meta WHERE key = 'vocabulary_fingerprint'")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        conn.execute("PRAGMA user_version = 2")


def as_schema_1(path: Path) -> None:
    """Turn a catalog file back into what a schema-1 release left behind (no covering indexes)."""
    as_schema_2(path)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX reference_images_search")
        conn.execute("DROP INDEX products_fields")
        conn.execute("PRAGMA user_version = 1")


def test_schema_2_file_is_migrated_and_its_old_features_still_verify(
    tmp_path: Path, embedder: ProjectionEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    """Today's catalogs: the words table arrives empty, old references are found by embedding only."""
    path = tmp_path / "v2.db"
    with Catalog(path) as cat:
        cat.add_product("cola", "Cola")
        cat.add_reference("cola", product_photo(1), embedder)
    as_schema_2(path)
    with caplog.at_level("INFO", logger="shelfsight.catalog.store"), Catalog(path) as cat:
        assert cat.stats()["schema_version"] == SCHEMA_VERSION == 3
        assert cat.vocabulary() is None and cat.index().words is None
        reference_id = cat.product("cola")["references"][0]
        assert cat.features(reference_id).version == 1  # still there to verify against
        assert cat.search_image(product_photo(1), embedder, k=1)[0].product_id == "cola"
        # The next version-2 reference brings the vocabulary; the old one stays without words.
        cat.add_reference("cola", product_photo(2), embedder)
        index = cat.index()
        assert index.words is not None and index.words.references_with_words == 1 == len(index) - 1
    assert "1 of 2 references have no visual words" in caplog.text


def test_version_1_file_is_migrated_and_the_index_load_reads_covering_indexes(
    tmp_path: Path, embedder: ProjectionEmbedder
) -> None:
    path = tmp_path / "v1.db"
    with Catalog(path) as cat:
        cat.add_product("cola", "Cola", category="drinks")
        cat.add_reference("cola", product_photo(1), embedder)
    as_schema_1(path)
    with Catalog(path) as cat:
        assert cat.stats()["schema_version"] == SCHEMA_VERSION
        assert cat.export_snapshot()["schema_version"] == RECORD_SCHEMA
        assert cat.search_image(product_photo(1), embedder, k=1)[0].product_id == "cola"
        fingerprint = cat.stats()["model_fingerprint"]
        plans = {
            "references": cat.db.execute(
                "EXPLAIN QUERY PLAN " + INDEX_REFERENCES_SQL, [fingerprint, embedder.dim]
            ).fetchall(),
            "products": cat.db.execute("EXPLAIN QUERY PLAN " + INDEX_PRODUCTS_SQL).fetchall(),
        }
        # One step each, answered from the index alone: no table row (and none of its blobs) is read.
        assert [row[-1] for row in plans["references"]] == [
            "SEARCH reference_images USING COVERING INDEX reference_images_search (fingerprint=? AND dim=?)"
        ]
        assert [row[-1] for row in plans["products"]] == ["SCAN products USING COVERING INDEX products_fields"]


def test_upgrade_on_a_full_disk_opens_without_the_new_indexes_and_adds_them_later(
    tmp_path: Path, embedder: ProjectionEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "v1.db"
    with Catalog(path) as cat:
        cat.add_product("cola", "Cola")
        for seed in range(40):  # enough rows that the covering index needs new pages
            cat.add_reference("cola", product_photo(seed), embedder)
    as_schema_1(path)
    sqlite3.connect(path, isolation_level=None).execute("VACUUM").connection.close()  # no free pages left
    full = sqlite3.connect(path, check_same_thread=False)
    pages = full.execute("PRAGMA page_count").fetchone()[0]
    full.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow: a full disk, as SQLite sees it
    with caplog.at_level("WARNING", logger="shelfsight.catalog.schema"), Catalog(full) as cat:
        assert cat.stats()["schema_version"] == 1
        assert cat.search_image(product_photo(3), embedder, k=1)[0].product_id == "cola"  # still serves
    assert "cannot add the indexes of schema version 2" in caplog.text and "full" in caplog.text
    full.close()
    with Catalog(path) as cat:  # space again: the next open finishes the upgrade
        assert cat.stats()["schema_version"] == SCHEMA_VERSION
        assert cat.stats()["references"] == 40


def test_open_on_a_connection(embedder: ProjectionEmbedder) -> None:
    conn = sqlite3.connect(":memory:")
    with Catalog(conn) as cat:
        cat.add_product("cola", "Cola")
        cat.add_reference("cola", product_photo(1), embedder)
    assert conn.execute("SELECT COUNT(*) FROM reference_images").fetchone()[0] == 1  # still open


def test_index_swaps_atomically_under_concurrent_search(filled: Catalog, embedder: ProjectionEmbedder) -> None:
    before = filled.index()
    query = embedder.embed_image(product_photo(3))
    errors: list[str] = []
    stop = threading.Event()

    def searcher() -> None:
        while not stop.is_set():
            index = filled.index()
            for hit in index.search(query, k=3):
                if hit.reference_id not in index.reference_ids:
                    errors.append(hit.reference_id)

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        for seed in range(20, 26):
            filled.add_reference("soap", product_photo(seed), embedder)
    finally:
        stop.set()
        thread.join()
    assert not errors
    after = filled.index()
    assert after is not before and len(after) == len(before) + 6 and after.version == before.version + 6
    assert len(before) == 4  # the old index object was not modified


def test_references_get_visual_words_from_the_catalog_vocabulary(filled: Catalog) -> None:
    """The first version-2 reference installs the bundled vocabulary; every reference gets its words."""
    vocabulary = filled.vocabulary()
    assert vocabulary is not None and vocabulary.n_words == 65536
    index = filled.index()
    assert index.words is not None and index.words.n_references == len(index) == 4
    assert index.words.references_with_words == 4
    reference_id = filled.product("cola")["references"][0]
    row = index.reference_ids.index(reference_id)
    features = filled.features(reference_id)
    words = vocabulary.quantize(features.descriptors)
    assert index.words.search(words, 1).references.tolist() == [row]


def test_removing_a_reference_drops_its_words(filled: Catalog) -> None:
    reference_id = filled.product("chips")["references"][0]
    filled.remove_reference(reference_id)
    count = filled.db.execute("SELECT COUNT(*) FROM reference_words WHERE id = ?", [reference_id]).fetchone()[0]
    assert count == 0
    filled.remove_product("cola")
    assert filled.db.execute("SELECT COUNT(*) FROM reference_words").fetchone()[0] == 1


def test_start_index_serves_the_embedding_at_once_and_the_words_after(
    tmp_path: Path, filled: Catalog, embedder: ProjectionEmbedder
) -> None:
    """A kiosk's start: searches work before the visual words are indexed; the complete index follows."""
    with Catalog(tmp_path / "catalog.db", create=False) as fresh:
        first = fresh.start_index()
        assert len(first) == len(filled.index()) and first.version == filled.version
        assert fresh.search(embedder.embed_image(product_photo(1)), 1)[0].product_id == "cola"  # searchable now
        assert fresh.wait_for_index(timeout=30)
        complete = fresh.index()
        assert complete.words is not None and complete.words.references_with_words == 4
        assert complete.version == first.version
        assert fresh.start_index() is complete  # loaded once


def test_corrupt_words_keep_the_embedding_index_serving(
    tmp_path: Path, filled: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    """A words blob edited into nonsense: `index()` names the reference, a kiosk's start keeps serving."""
    reference_id = filled.product("chips")["references"][1]
    filled.db.execute("UPDATE reference_words SET words = ? WHERE id = ?", [b"\x05\x00\x05\x00", reference_id])
    filled.db.conn.commit()
    with Catalog(tmp_path / "catalog.db", create=False) as fresh:
        with pytest.raises(CatalogError, match=f"words of {reference_id}: word ids must be sorted and unique"):
            fresh.index()
    with Catalog(tmp_path / "catalog.db", create=False) as fresh:
        served = fresh.start_index()
        assert fresh.wait_for_index(timeout=30)
        assert fresh.index() is served and served.words is None and len(served) == 4
    assert "found by their embedding only" in caplog.text
