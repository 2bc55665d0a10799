"""The contract catalog/sync relies on: deltas, all-or-nothing apply, snapshots, log floor."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.core.errors import CatalogError
from tests.support.fakes import ProjectionEmbedder, product_photo


def contents(cat: Catalog) -> tuple[Any, ...]:
    refs = cat.db.execute(
        "SELECT id, product_id, embedding, scale, fingerprint, phash, keypoints, image_jpeg, version FROM reference_images WHERE local = 0 ORDER BY id"
    ).fetchall()
    products = [{k: v for k, v in p.items() if k != "references"} for p in cat.products()]
    return cat.version, products, refs, cat.model_fingerprint, cat.embedding_dim


@pytest.fixture
def edge(tmp_path: Path):
    with Catalog(tmp_path / "edge.db") as cat:
        yield cat


def sync(hq: Catalog, edge: Catalog) -> None:
    base = edge.version
    changes = json.loads(json.dumps(hq.changes_since(base)))  # over the wire
    edge.apply_changes(base, changes, changes[-1]["version"] if changes else base)


def test_deltas_reproduce_the_catalog(filled: Catalog, edge: Catalog, embedder: ProjectionEmbedder) -> None:
    sync(filled, edge)
    assert contents(edge) == contents(filled)
    query = embedder.embed_image(product_photo(3))
    assert edge.search(query) == filled.search(query)

    filled.update_product("chips", price=2.0)
    filled.remove_reference(filled.product("cola")["references"][0])
    filled.add_reference("soap", product_photo(8), embedder)
    filled.remove_product("chips")
    filled.add_product("chips", "Chips, new recipe", category="snacks")  # re-added: old references must not return
    sync(filled, edge)
    assert contents(edge) == contents(filled)
    assert edge.product("chips")["references"] == []
    assert edge.search(query) == filled.search(query)


def test_log_is_compacted(filled: Catalog) -> None:
    for price in (1.0, 2.0, 3.0):
        filled.update_product("cola", price=price)
    entries = [c for c in filled.changes_since(0) if c["product_id"] == "cola" and c["op"] == "upsert_product"]
    assert len(entries) == 1 and entries[0]["data"]["price"] == 3.0
    filled.remove_product("cola")
    assert [c["op"] for c in filled.changes_since(0) if c["product_id"] == "cola"] == ["remove_product"]
    assert filled.changes_since(filled.version) == []


def test_paged_deltas(filled: Catalog, edge: Catalog) -> None:
    while edge.version < filled.version:
        page = filled.changes_since(edge.version, limit=2)
        assert len(page) <= 2
        edge.apply_changes(edge.version, page, page[-1]["version"])
    assert contents(edge) == contents(filled)


def test_changes_since_limits(filled: Catalog) -> None:
    with pytest.raises(CatalogError, match="catalog is at 7"):
        filled.changes_since(8)


def _set(path: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    def mutate(changes: list[dict[str, Any]]) -> None:
        record = next(c for c in changes if c["op"] == "upsert_reference")
        *parents, last = path.split(".")
        target = record
        for key in parents:
            target = target[key]
        target[last] = value

    return mutate


BAD_DELTAS = {
    "unknown op": (lambda ch: ch[-1].update(op="drop_table"), "malformed"),
    "wrong dim": (_set("data.dim", 16), "16"),
    "short embedding": (_set("data.embedding", base64.b64encode(b"\x01" * 31).decode()), "31 values"),
    "nan scale": (_set("data.scale", float("nan")), "scale"),
    "bad base64": (_set("data.embedding", "not base64!"), "bad base64"),
    "wrong fingerprint": (_set("data.fingerprint", "f" * 64), "embedding from model"),
    "extra key": (_set("data.colour", "red"), "colour"),
    "bad keypoints": (_set("data.keypoints", base64.b64encode(b"junk").decode()), "keypoint"),
    "bad reference id": (_set("reference_id", "other/123"), "reference_id"),
    "string version": (lambda ch: ch[-1].update(version="7"), "malformed"),
    "versions out of order": (lambda ch: ch.reverse(), "does not follow"),
    "orphan reference": (lambda ch: ch[-1].update(product_id="ghost", reference_id="ghost/123"), "does not exist"),
}


@pytest.mark.parametrize("name", sorted(BAD_DELTAS))
def test_bad_deltas_change_nothing(name: str, filled: Catalog, edge: Catalog, embedder: ProjectionEmbedder) -> None:
    filled_base = copy.deepcopy(filled.changes_since(0)[:3])
    edge.apply_changes(0, filled_base, filled_base[-1]["version"])
    before = contents(edge)
    changes = filled.changes_since(edge.version)
    mutate, message = BAD_DELTAS[name]
    mutate(changes)
    with pytest.raises(CatalogError, match=message):
        edge.apply_changes(edge.version, changes, max(c["version"] for c in changes if isinstance(c["version"], int)))
    assert contents(edge) == before


def test_wrong_base_or_target(filled: Catalog, edge: Catalog) -> None:
    changes = filled.changes_since(0)
    with pytest.raises(CatalogError, match="based on version 3, catalog is at 0"):
        edge.apply_changes(3, [c for c in changes if c["version"] > 3], filled.version)
    with pytest.raises(CatalogError, match="does not match the last change"):
        edge.apply_changes(0, changes, filled.version + 1)
    with pytest.raises(CatalogError, match="must be a list"):
        edge.apply_changes(0, {"version": 1}, 1)  # type: ignore[arg-type]
    assert edge.version == 0 and edge.products() == []


def test_snapshot_round_trip_keeps_local_references(
    filled: Catalog, edge: Catalog, embedder: ProjectionEmbedder
) -> None:
    snapshot = json.loads(json.dumps(filled.export_snapshot()))
    filled.set_meta("unknown_threshold", 0.5)
    snapshot = json.loads(json.dumps(filled.export_snapshot()))
    edge.add_product("soap", "Soap from the store")
    edge.add_reference("soap", product_photo(11), embedder, local=True)
    edge.add_product("local-only", "Gone after the snapshot")
    edge.replace_with_snapshot(snapshot)
    assert contents(edge) == contents(filled)
    assert edge.get_meta("unknown_threshold") == 0.5
    assert edge.stats()["local_references"] == 1
    assert edge.search(embedder.embed_image(product_photo(11)), k=1)[0].product_id == "soap"
    with pytest.raises(CatalogError, match="needs a snapshot"):
        edge.changes_since(0)
    sync(filled, edge)  # deltas continue from the snapshot's version
    filled.update_product("cola", price=9.0)
    sync(filled, edge)
    assert edge.product("cola")["price"] == 9.0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.update(format="zip"), "not supported"),
        (lambda s: s.update(extra=1), "expected keys"),
        (
            lambda s: s["records"].append(
                {"version": 999, "op": "upsert_product", "product_id": "x", "reference_id": None, "data": {"name": "x"}}
            ),
            "does not belong",
        ),
        (lambda s: s["records"].pop(0), "missing product"),
        (lambda s: s.update(model_fingerprint="e" * 64), "catalog uses eeeeeeeeeeee"),
        (lambda s: s["meta"].update(version=5), "reserved"),
    ],
)
def test_bad_snapshots_change_nothing(
    filled: Catalog, edge: Catalog, mutate: Callable[[dict], None], message: str
) -> None:
    edge.add_product("mine", "Mine")
    before = contents(edge)
    snapshot = filled.export_snapshot()
    mutate(snapshot)
    with pytest.raises(CatalogError, match=message):
        edge.replace_with_snapshot(snapshot)
    assert contents(edge) == before


def test_new_model_needs_a_snapshot(filled: Catalog, edge: Catalog) -> None:
    sync(filled, edge)
    other = ProjectionEmbedder(seed=5, dim=48)
    new = {ref["id"]: np.random.default_rng(i).standard_normal(48) for i, ref in enumerate(filled.references())}
    filled.replace_embeddings(other.fingerprint, new)
    assert filled.model_fingerprint == other.fingerprint and filled.embedding_dim == 48
    with pytest.raises(CatalogError, match="needs a snapshot"):
        filled.changes_since(edge.version)
    edge.replace_with_snapshot(filled.export_snapshot())
    assert contents(edge) == contents(filled)


def words_of(cat: Catalog) -> dict[str, bytes]:
    return dict(cat.db.execute("SELECT id, words FROM reference_words ORDER BY id").fetchall())


def test_visual_words_and_their_vocabulary_travel_with_deltas_and_snapshots(
    filled: Catalog, edge: Catalog, tmp_path: Path
) -> None:
    assert len(words_of(filled)) == 4
    sync(filled, edge)  # an empty kiosk adopts the bundled vocabulary the words came from
    assert words_of(edge) == words_of(filled)
    assert edge.vocabulary() is not None and edge.vocabulary().fingerprint == filled.vocabulary().fingerprint
    snapshot = json.loads(json.dumps(filled.export_snapshot()))
    assert snapshot["schema_version"] == 2 and snapshot["vocabulary"] is not None
    with Catalog(tmp_path / "from-snapshot.db") as fresh:
        fresh.replace_with_snapshot(snapshot)
        assert words_of(fresh) == words_of(filled)
        assert fresh.vocabulary().fingerprint == filled.vocabulary().fingerprint
        assert fresh.index().words is not None and fresh.index().words.references_with_words == 4


def test_words_from_another_vocabulary_are_refused(filled: Catalog, edge: Catalog) -> None:
    changes = json.loads(json.dumps(filled.changes_since(0)))
    for change in changes:
        if change["op"] == "upsert_reference":
            change["data"]["vocabulary"] = "0" * 64
    with pytest.raises(CatalogError, match="vocabulary"):
        edge.apply_changes(0, changes, changes[-1]["version"])
    assert edge.version == 0 and words_of(edge) == {}


def test_malformed_words_are_refused(filled: Catalog, edge: Catalog) -> None:
    changes = json.loads(json.dumps(filled.changes_since(0)))
    reference = next(c for c in changes if c["op"] == "upsert_reference")
    reference["data"]["words"] = base64.b64encode(b"\x05\x00\x01\x00").decode()  # 5, 1: not sorted
    with pytest.raises(CatalogError, match="sorted"):
        edge.apply_changes(0, changes, changes[-1]["version"])
    reference["data"]["words"] = base64.b64encode(b"\x05").decode()  # half a word
    with pytest.raises(CatalogError, match="words"):
        edge.apply_changes(0, changes, changes[-1]["version"])
    assert edge.version == 0
