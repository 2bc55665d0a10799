"""Local products (taught at one store): searchable at once, never synced, survive sync, lose to HQ's row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.digest import content_digest
from shelfsight.edge_app.core.errors import CatalogError
from tests.support.fakes import ProjectionEmbedder, product_photo


@pytest.fixture
def edge(tmp_path: Path, filled: Catalog):
    """A store's copy of `filled` (HQ), at HQ's version."""
    with Catalog(tmp_path / "edge.db") as cat:
        cat.replace_with_snapshot(json.loads(json.dumps(filled.export_snapshot())))
        yield cat


def teach(edge: Catalog, embedder: ProjectionEmbedder, product_id: str = "tea", photo: int = 21) -> str:
    """A local product with one local reference, in one transaction, as the kiosk does it."""
    with edge.batch():
        edge.add_product(product_id, "Green tea", price=3.0, local=True)
        edge.add_reference(product_id, product_photo(photo), embedder, "kiosk", local=True)
    return edge.product(product_id)["references"][0]


def sync(hq: Catalog, edge: Catalog) -> None:
    base = edge.version
    changes = json.loads(json.dumps(hq.changes_since(base)))  # over the wire
    edge.apply_changes(base, changes, changes[-1]["version"] if changes else base)


def test_local_product_is_searchable_but_not_versioned_or_synced(
    filled: Catalog, edge: Catalog, embedder: ProjectionEmbedder
) -> None:
    version, digest = content_digest(edge)
    assert content_digest(filled) == (version, digest)
    teach(edge, embedder)
    assert edge.version == version and edge.changes_since(version) == []
    assert content_digest(edge) == (version, digest)
    product = edge.product("tea")
    assert product["local"] is True and product["version"] == 0 and product["price"] == 3.0
    assert [p["id"] for p in edge.products(local=True)] == ["tea"]
    assert edge.product("cola")["local"] is False
    assert "tea" not in {r["product_id"] for r in edge.export_snapshot()["records"]}
    assert edge.search(embedder.embed_image(product_photo(21)), k=1)[0].product_id == "tea"
    assert edge.stats()["local_products"] == 1
    # Edits keep it local; removing it leaves the version alone.
    assert edge.update_product("tea", price=3.5) == version and edge.product("tea")["local"] is True
    assert edge.remove_product("tea") == version and edge.changes_since(version) == []


def test_a_local_product_takes_only_local_references(edge: Catalog, embedder: ProjectionEmbedder) -> None:
    teach(edge, embedder)
    with pytest.raises(CatalogError, match="local to this store"):
        edge.add_reference("tea", product_photo(22), embedder, "kiosk")
    assert len(edge.product("tea")["references"]) == 1


def test_local_product_survives_deltas_and_snapshots(
    filled: Catalog, edge: Catalog, embedder: ProjectionEmbedder
) -> None:
    reference = teach(edge, embedder)
    filled.update_product("cola", price=9.0)
    filled.add_product("water", "Still water")
    sync(filled, edge)
    assert edge.version == filled.version and edge.product("cola")["price"] == 9.0
    assert content_digest(edge) == content_digest(filled)
    assert edge.product("tea")["references"] == [reference]
    edge.replace_with_snapshot(json.loads(json.dumps(filled.export_snapshot())))
    assert edge.product("tea")["local"] is True and edge.product("tea")["references"] == [reference]
    assert content_digest(edge) == content_digest(filled)
    assert edge.search(embedder.embed_image(product_photo(21)), k=1)[0].product_id == "tea"


def approve_at_hq(filled: Catalog, edge: Catalog, reference: str, embedder: ProjectionEmbedder) -> None:
    """What `hq approve` does with the store's enrollment: the same image, so the same reference id."""
    with filled.batch():
        filled.add_product("tea", "Green tea (HQ)", price=3.2)
        filled.add_reference("tea", product_photo(21), embedder, "enrolled")
    assert filled.product("tea")["references"] == [reference]


def test_hq_version_wins_in_a_delta(filled: Catalog, edge: Catalog, embedder: ProjectionEmbedder) -> None:
    reference = teach(edge, embedder)
    edge.add_reference("tea", product_photo(23), embedder, "kiosk", local=True)  # a view HQ never got
    approve_at_hq(filled, edge, reference, embedder)
    sync(filled, edge)
    product = edge.product("tea")
    assert product["local"] is False and product["version"] == filled.product("tea")["version"]
    assert product["name"] == "Green tea (HQ)" and product["references"] == [reference]
    assert edge.reference(reference)["local"] is False and edge.stats()["local_references"] == 0
    assert content_digest(edge) == content_digest(filled)
    assert edge.search(embedder.embed_image(product_photo(21)), k=1)[0].product_id == "tea"


def test_hq_version_wins_in_a_snapshot(filled: Catalog, edge: Catalog, embedder: ProjectionEmbedder) -> None:
    reference = teach(edge, embedder)
    edge.add_reference("tea", product_photo(23), embedder, "kiosk", local=True)
    approve_at_hq(filled, edge, reference, embedder)
    edge.replace_with_snapshot(json.loads(json.dumps(filled.export_snapshot())))
    product = edge.product("tea")
    assert product["local"] is False and product["references"] == [reference]
    assert edge.stats()["local_products"] == 0 and edge.stats()["local_references"] == 0
    assert content_digest(edge) == content_digest(filled)
