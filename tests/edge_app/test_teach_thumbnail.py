"""Teaching gives a new local product a thumbnail; it never rewrites a synced product's row."""

from __future__ import annotations

from shelfsight.catalog.quality import sharpness, thumbnail_jpeg
from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.core.images import decode_rgb
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.kiosk.app import Kiosk
from tests.edge_app.test_teach import kiosk  # noqa: F401 (a fixture)
from tests.support.teaching import views_of


def test_a_taught_product_gets_its_sharpest_view_as_thumbnail(
    kiosk: Kiosk,  # noqa: F811
    store_catalog: Catalog,
    sample_set: SampleSet,
    unknown_id: str,
) -> None:
    kiosk.teach("taught-here", "Taught here", frames=views_of(sample_set, unknown_id))
    views = [decode_rgb(store_catalog.reference_image(r)) for r in store_catalog.product("taught-here")["references"]]  # type: ignore[arg-type]
    assert store_catalog.thumbnail("taught-here") == thumbnail_jpeg(max(views, key=sharpness))
    assert store_catalog.product("taught-here")["local"] is True


def test_teaching_views_of_a_synced_product_leaves_its_row_alone(
    kiosk: Kiosk,  # noqa: F811
    store_catalog: Catalog,
    sample_set: SampleSet,
) -> None:
    known = store_catalog.products()[0]["id"]
    store_catalog.db.execute("UPDATE products SET thumbnail = NULL WHERE id = ?", [known])  # as HQ sent it
    version = store_catalog.version
    kiosk.teach(known, "ignored", frames=views_of(sample_set, known)[:1], add_to_existing=True)
    assert store_catalog.thumbnail(known) is None and store_catalog.version == version
