"""Fixtures for the catalog tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from shelfsight.catalog.store import Catalog
from tests.support.fakes import ProjectionEmbedder, product_photo


@pytest.fixture
def embedder() -> ProjectionEmbedder:
    return ProjectionEmbedder(seed=1)


@pytest.fixture
def catalog(tmp_path: Path):
    with Catalog(tmp_path / "catalog.db") as cat:
        yield cat


@pytest.fixture
def filled(catalog: Catalog, embedder: ProjectionEmbedder) -> Catalog:
    """Three products, two with two references each, one with none."""
    catalog.add_product("cola", "Cola 330ml", category="drinks", price=1.2, brand="Fizz")
    catalog.add_product("chips", "Salted chips", category="snacks", price=2.5)
    catalog.add_product("soap", "Hand soap", category="care")
    catalog.add_reference("cola", product_photo(1), embedder, "cola/1.jpg")
    catalog.add_reference("cola", product_photo(2), embedder, "cola/2.jpg")
    catalog.add_reference("chips", product_photo(3), embedder, "chips/1.jpg")
    catalog.add_reference("chips", product_photo(4), embedder, "chips/2.jpg")
    return catalog
