"""Teaching the kiosk an unknown product: POST /api/teach, then the same frames are recognised as it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.digest import content_digest
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import InputError, SimilarProductError
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.kiosk.teaching import lookalike
from shelfsight.edge_app.recognition import Recognition, Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.web.app import create_app
from tests.support.staff import log_in, staff_credential
from tests.support.teaching import show, views_of

TAUGHT = "new-product"


@pytest.fixture()
def kiosk(store_catalog: Catalog, embedder: Embedder, full_config: RecognitionConfig) -> Kiosk:
    return Kiosk(Recognizer(embedder, store_catalog, full_config))


@pytest.fixture()
def client(kiosk: Kiosk, tmp_path: Path) -> FlaskClient:
    """A test client logged in to staff mode (teaching needs it)."""
    client = create_app(kiosk, staff=staff_credential(tmp_path)).test_client()
    log_in(client)
    return client


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
    assert body["product_id"] == TAUGHT and body["new_product"] and "local" not in body  # one field, not two
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
    assert 'id="teach"' in page and 'name="product_id"' in page and "http" not in page.split("<body", 1)[1]
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


def test_views_of_a_known_product_under_a_new_id_need_a_confirmation(
    kiosk: Kiosk, store_catalog: Catalog, sample_set: SampleSet
) -> None:
    known = store_catalog.products()[0]
    frames = views_of(sample_set, known["id"])
    before = store_catalog.products()
    with pytest.raises(SimilarProductError) as refused:
        kiosk.teach(TAUGHT, "Looks familiar", frames=frames)
    error = refused.value
    assert error.product_id == known["id"] and error.name == known["name"] and 0.0 < error.confidence <= 1.0
    assert str(error).startswith(f"these views look like {known['name']} ({known['id']})")
    assert "confirm to teach them anyway" in str(error)
    assert error.to_dict() == {
        "product_id": known["id"],
        "name": known["name"],
        "confidence": round(error.confidence, 4),
    }
    assert store_catalog.products() == before  # nothing stored

    taught = kiosk.teach(TAUGHT, "Looks familiar", frames=frames, confirm_similar=True)
    assert taught.new_product and len(store_catalog.product(TAUGHT)["references"]) == len(frames)


def test_views_added_to_their_own_product_need_no_confirmation_but_to_another_do(
    kiosk: Kiosk, store_catalog: Catalog, sample_set: SampleSet
) -> None:
    first, second = store_catalog.products()[:2]
    own = kiosk.teach(first["id"], "ignored", frames=views_of(sample_set, first["id"]), add_to_existing=True)
    assert len(own.reference_ids) == len(views_of(sample_set, first["id"]))
    with pytest.raises(SimilarProductError) as refused:
        kiosk.teach(second["id"], "ignored", frames=views_of(sample_set, first["id"]), add_to_existing=True)
    assert refused.value.product_id == first["id"]
    assert store_catalog.product(second["id"])["references"] == second["references"]


def test_an_unknown_product_is_taught_without_a_warning(kiosk: Kiosk, sample_set: SampleSet, unknown_id: str) -> None:
    frames = views_of(sample_set, unknown_id)
    assert show(kiosk, frames) == [None] * len(frames)  # the kiosk does not know it: nothing to confuse it with
    assert kiosk.teach(TAUGHT, "Really new", frames=frames).new_product


def _recognised(product_id: str | None, confidence: float = 0.8) -> Recognition:
    if product_id is None:
        return Recognition("unknown", None, 0.0, ())
    return Recognition("product", {"product_id": product_id, "name": product_id.title()}, confidence, ())


def test_the_lookalike_rule_needs_more_than_half_of_the_usable_frames() -> None:
    two_of_five = [_recognised("cola"), _recognised("cola"), _recognised(None), _recognised("tea"), _recognised(None)]
    assert lookalike(two_of_five, "new") is None  # one stray match or a split vote does not stop the clerk
    three_of_five = [_recognised("cola", 0.9), _recognised("cola", 0.7), _recognised("cola", 0.8)] + two_of_five[2:4]
    found = lookalike(three_of_five, "new")
    assert found is not None and (found.product_id, found.name, found.frames) == ("cola", "Cola", 3)
    assert found.confidence == pytest.approx(0.8)
    assert lookalike(three_of_five, "cola") is None  # the same product's own views never warn
    assert lookalike([_recognised("cola", 1.7)] * 2, "new").confidence == 1.0  # type: ignore[union-attr]


def test_a_stores_first_product_is_taught_into_an_empty_catalog(
    tmp_path: Path, embedder: Embedder, full_config: RecognitionConfig, sample_set: SampleSet, unknown_id: str
) -> None:
    with Catalog(tmp_path / "empty.db") as catalog:  # nothing to look like: no warning, no search of an empty index
        kiosk = Kiosk(Recognizer(embedder, catalog, full_config))
        frames = views_of(sample_set, unknown_id)
        assert kiosk.teach(TAUGHT, "The first one", frames=frames).new_product
        assert show(kiosk, frames) == [TAUGHT] * len(frames)
