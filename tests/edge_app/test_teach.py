"""Teaching the kiosk an unknown product: POST /api/teach, then the same frames are recognised as it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from flask.testing import FlaskClient

from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.digest import content_digest
from shelfsight.edge_app.camera import Frame
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import InputError
from shelfsight.edge_app.core.images import iter_image_files, load_rgb
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.web.app import create_app
from tests.support.staff import log_in, staff_credential

TAUGHT = "new-product"


@pytest.fixture()
def unknown_id(sample_set: SampleSet) -> str:
    """A sample product the kiosk's catalog does not have."""
    return sorted(p.name for p in sample_set.catalog_dir.iterdir() if p.is_dir())[-1]


@pytest.fixture()
def store_catalog(tmp_path: Path, sample_catalog: Any, unknown_id: str) -> Iterator[Catalog]:
    """This test's own copy of the sample catalog (HQ's), without `unknown_id`."""
    with Catalog(tmp_path / "store.db") as catalog:
        catalog.replace_with_snapshot(json.loads(json.dumps(sample_catalog.export_snapshot())))
        catalog.remove_product(unknown_id)
        yield catalog


@pytest.fixture()
def kiosk(store_catalog: Catalog, embedder: Embedder, full_config: RecognitionConfig) -> Kiosk:
    return Kiosk(Recognizer(embedder, store_catalog, full_config))


@pytest.fixture()
def client(kiosk: Kiosk, tmp_path: Path) -> FlaskClient:
    """A test client logged in to staff mode (teaching needs it)."""
    client = create_app(kiosk, staff=staff_credential(tmp_path)).test_client()
    log_in(client)
    return client


def views_of(sample_set: SampleSet, product_id: str) -> list[np.ndarray]:
    """The rendered query photos of one product: what a clerk holds up to the camera."""
    return [load_rgb(p) for p in iter_image_files(sample_set.queries_dir / product_id)]


def show(kiosk: Kiosk, frames: list[np.ndarray]) -> list[str | None]:
    """Run frames through the recognition worker's path; the product id each was recognised as."""
    return [kiosk.process(Frame(rgb, time.monotonic(), i)).frame.product_id for i, rgb in enumerate(frames)]  # type: ignore[union-attr]


def test_teach_over_http_then_the_same_frames_are_recognised(
    client: FlaskClient, kiosk: Kiosk, store_catalog: Catalog, sample_set: SampleSet, unknown_id: str
) -> None:
    frames = views_of(sample_set, unknown_id)
    version, digest = content_digest(store_catalog)
    assert show(kiosk, frames) == [None] * len(frames)
    assert client.get("/api/state").json["decision"] == "unknown"
    assert len(kiosk.recent_crops()) == len(frames)

    response = client.post("/api/teach", json={"product_id": TAUGHT, "name": "Taught at the counter", "price": "2.40"})
    assert response.status_code == 201, response.json
    body = response.json
    assert body["product_id"] == TAUGHT and body["new_product"] and body["local"]
    assert body["references"] == len(frames) and body["sent_to_hq"] is False  # no sync running

    product = store_catalog.product(TAUGHT)
    assert product["local"] is True and product["price"] == 2.4 and len(product["references"]) == len(frames)
    assert content_digest(store_catalog) == (version, digest)  # HQ's catalog is untouched
    assert show(kiosk, frames) == [TAUGHT] * len(frames)
    assert client.get("/api/state").json["product"]["product_id"] == TAUGHT


def test_teach_from_given_frames_adds_views_to_an_existing_product(
    kiosk: Kiosk, store_catalog: Catalog, sample_set: SampleSet, unknown_id: str
) -> None:
    known = store_catalog.products()[0]
    version = store_catalog.version
    frames = views_of(sample_set, known["id"])[:1]
    with pytest.raises(InputError, match="already exists; confirm with add_to_existing"):
        kiosk.teach(known["id"], "a mistyped id", frames=frames)
    assert len(store_catalog.product(known["id"])["references"]) == len(known["references"])
    taught = kiosk.teach(known["id"], "ignored for an existing product", frames=frames, add_to_existing=True)
    assert not taught.new_product and taught.name == known["name"] and len(taught.references) == 1
    product = store_catalog.product(known["id"])
    assert product["local"] is False and len(product["references"]) == len(known["references"]) + 1
    assert store_catalog.version == version and store_catalog.stats()["local_references"] == 1


def test_a_form_post_works_too(client: FlaskClient, kiosk: Kiosk, sample_set: SampleSet, unknown_id: str) -> None:
    show(kiosk, views_of(sample_set, unknown_id)[:1])
    response = client.post("/api/teach", data={"product_id": TAUGHT, "name": "From the form", "description": "tin"})
    assert response.status_code == 201, response.json
    assert kiosk.recognizer.catalog.product(TAUGHT)["description"] == "tin"


@pytest.mark.parametrize(
    "form, reason",
    [
        ({"product_id": "a/b", "name": "Slash"}, "invalid product id"),
        ({"product_id": " padded", "name": "Spaces"}, "invalid product id"),
        ({"product_id": "x" * 201, "name": "Long"}, "product_id is longer than 200"),
        ({"product_id": "ok"}, "name is required"),
        ({"name": "No id"}, "product_id is required"),
        ({"product_id": "ok", "name": "Pricey", "price": "lots"}, "price must be a number"),
        ({"product_id": "ok", "name": "Free", "price": "-1"}, "price must be between"),
        ({"product_id": "ok", "name": "Odd", "colour": "red"}, "unknown fields: colour"),
        ({"product_id": "lone\ud800surrogate", "name": "Broken"}, "product_id may hold only printable"),
        ({"product_id": "ok", "name": "Bell\x07"}, "name may hold only printable"),
        ({"product_id": "ok", "name": "Huge", "description": "d" * 2001}, "description is longer than 2000"),
    ],
)
def test_bad_teach_requests_get_400_and_change_nothing(
    client: FlaskClient,
    kiosk: Kiosk,
    store_catalog: Catalog,
    sample_set: SampleSet,
    unknown_id: str,
    form: dict[str, str],
    reason: str,
) -> None:
    show(kiosk, views_of(sample_set, unknown_id)[:1])
    before = store_catalog.products()
    response = client.post("/api/teach", json=form)
    assert response.status_code == 400 and reason in response.json["error"]
    assert store_catalog.products() == before
    assert client.get("/health").status_code == 200


def test_teach_needs_usable_frames(client: FlaskClient, kiosk: Kiosk, store_catalog: Catalog) -> None:
    response = client.post("/api/teach", json={"product_id": TAUGHT, "name": "Nothing seen yet"})
    assert response.status_code == 400 and "show the product to the camera" in response.json["error"]
    flat = np.full((240, 320, 3), 128, np.uint8)
    with pytest.raises(Exception, match="no usable frame .*too blurry"):
        kiosk.teach(TAUGHT, "Blank", frames=[flat])
    assert TAUGHT not in {p["id"] for p in store_catalog.products()}


def test_kiosk_page_has_the_teach_form(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    assert 'id="teach"' in page and 'name="product_id"' in page and "http" not in page.split("<body>")[1]
    script = client.get("/static/app.js").get_data(as_text=True)
    assert "/api/teach" in script


def test_teaching_an_existing_id_over_http_needs_the_confirmation(
    client: FlaskClient, kiosk: Kiosk, store_catalog: Catalog, sample_set: SampleSet, unknown_id: str
) -> None:
    known = store_catalog.products()[0]
    show(kiosk, views_of(sample_set, unknown_id)[:1])
    refused = client.post("/api/teach", json={"product_id": known["id"], "name": "Mistyped"})
    assert refused.status_code == 400 and "confirm with add_to_existing" in refused.json["error"]
    assert store_catalog.product(known["id"])["references"] == known["references"]
    confirmed = client.post(
        "/api/teach", json={"product_id": known["id"], "name": "More views", "add_to_existing": True}
    )
    assert confirmed.status_code == 201 and confirmed.json["new_product"] is False
